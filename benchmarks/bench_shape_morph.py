"""Between two shapes: where the decoder decides, and what a reader's push does (chapters 3 and 7).

    python benchmarks/bench_shape_morph.py --clips 120     # writes benchmarks/results/shape_morph.json

Each held-out ``test`` clip is drawn three times, once with each shape, on the same path, with the
same size, colour and background (``World.render`` of the clip's own trajectory), and each drawing is
encoded. For each pair of shapes (a, b) and each lambda in 0, 0.1, ..., 1:

* **latent**: the latent (1 - lambda) z_a + lambda z_b is decoded, and the fill-ratio probe names the
  shape it sees;
* **pixel**: the picture (1 - lambda) x_a + lambda x_b (the pixels' own average) is probed;
* **decoded ends**: the average of the two *reconstructions*, (1 - lambda) D(z_a) + lambda D(z_b):
  the pixel average with the autoencoder's own errors at the two ends, so that what the latent
  walk adds can be told from what the reconstructions already had.

So the curves say how much of the way from a to b a latent may go before the decoder draws
something else, against what the average picture itself reads as. (Each shape is drawn on the path
simulated for the clip's own shape, ``World.redraw``.)

**reader push**: the shipped latent reader (``data/checkpoints/latent_reader``, which the perceptual
loss of chapter 7 listens to) is asked to change its mind: the true latent takes ``--push-steps``
steps of length ``--push-size`` down the gradient of the reader's cross-entropy for the next shape.
How often the reader then names that shape, and how often the decoded picture shows it (against
the unpushed reconstruction), say whether what a reader reads is what the decoder draws.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from avdit_mini import checkpoints
from avdit_mini.data import SHAPES, SIZES, WorldDataset
from avdit_mini.perceptual import load_reader
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline
from avdit_mini.probes import measure_video

PAIRS = (("square", "circle"), ("triangle", "circle"), ("square", "triangle"))


def shares(readings: list[list[str | None]], a: str, b: str) -> dict[str, list[float]]:
    """For each lambda, the share of clips read as a, as b, and as a circle (readings: [clips][lambdas])."""
    n = len(readings)
    columns = list(zip(*readings))
    return {name: [round(sum(r == shape for r in col) / n, 4) for col in columns]
            for name, shape in (("from", a), ("to", b), ("circle", "circle"))}


def decision_point(share_from: list[float], lambdas: list[float]) -> float | None:
    """The first lambda at which fewer than half of the clips are still read as the starting shape."""
    return next((lam for lam, s in zip(lambdas, share_from) if s < 0.5), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--push-steps", type=int, default=20)
    parser.add_argument("--push-size", type=float, default=0.3, help="length of each push step (unit-variance latent)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shape_morph.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm
    began = time.time()
    reader = load_reader(CHECKPOINTS / "latent_reader")
    # the autoencoders and the latent scaling that the reader was trained with
    pipeline = load_pipeline(json.loads((CHECKPOINTS / "latent_reader.json").read_text()).get("pipeline", "monl"))
    video_ae = pipeline.video_ae.requires_grad_(False)
    no_audio = torch.zeros(1, pipeline.scaler.audio_mean.numel(), 1)
    scaled = lambda latent: pipeline.scaler.scale(latent, no_audio)[0]  # noqa: E731  (AE latent -> unit variance)
    unscaled = lambda latent: pipeline.scaler.unscale(latent, no_audio)[0]  # noqa: E731
    lambdas = [round(0.1 * k, 1) for k in range(11)]
    dataset = WorldDataset(args.clips, "test")
    kinds = ("latent", "pixel", "decoded ends")
    readings = {f"{a}->{b}": {kind: [] for kind in kinds} for a, b in PAIRS}
    radii, distances = [], {f"{a}->{b}": [] for a, b in PAIRS}
    push = dict.fromkeys(("reader_follows", "picture_follows", "picture_keeps_true", "before_push_true",
                          "before_push_target", "distance"), 0.0)
    for index in tqdm(range(args.clips), desc="clips"):
        clip = dataset[index]
        factors = clip["factors"]
        radii.append(factors["radius"])
        drawn = torch.stack([clip["video"] if s == factors["shape"] else dataset.world.redraw(factors, s)
                             for s in SHAPES])   # [3 shapes, 3, T, H, W]: the clip itself for its own shape
        with torch.no_grad():
            z = dict(zip(SHAPES, video_ae.encode(drawn)))
            ends = dict(zip(SHAPES, video_ae.decode(torch.stack(list(z.values()))).clamp(0, 1)))
        for a, b in PAIRS:
            key = f"{a}->{b}"
            mixed = torch.stack([(1 - lam) * z[a] + lam * z[b] for lam in lambdas])
            with torch.no_grad():
                decoded = video_ae.decode(mixed).clamp(0, 1)
            readings[key]["latent"].append([measure_video(v)["shape"] for v in decoded])
            x_a, x_b = drawn[SHAPES.index(a)], drawn[SHAPES.index(b)]
            readings[key]["pixel"].append([measure_video((1 - lam) * x_a + lam * x_b)["shape"] for lam in lambdas])
            readings[key]["decoded ends"].append([measure_video((1 - lam) * ends[a] + lam * ends[b])["shape"]
                                                  for lam in lambdas])
            distances[key].append((scaled(z[b][None]) - scaled(z[a][None])).norm().item())
        # the reader's push: from the clip's own shape towards the next one
        true = SHAPES.index(factors["shape"])
        target = torch.tensor([(true + 1) % 3])
        start = scaled(z[factors["shape"]][None])
        x = start.clone()
        for _ in range(args.push_steps):
            x.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(reader(x)["shape"], target), x)
            x = (x - args.push_size * grad / grad.norm().clamp_min(1e-12)).detach()
        with torch.no_grad():
            read = int(reader(x)["shape"].argmax())
            picture = measure_video(video_ae.decode(unscaled(x)).clamp(0, 1)[0])["shape"]
        push["reader_follows"] += read == int(target)
        push["picture_follows"] += picture == SHAPES[int(target)]
        push["picture_keeps_true"] += picture == factors["shape"]
        before = measure_video(ends[factors["shape"]])["shape"]           # the unpushed reconstruction
        push["before_push_true"] += before == factors["shape"]
        push["before_push_target"] += before == SHAPES[int(target)]
        push["distance"] += (x - start).norm().item()
    n = args.clips
    pairs = {}
    for a, b in PAIRS:
        key = f"{a}->{b}"
        entry = {"latent_distance": round(sum(distances[key]) / n, 3)}
        for kind in kinds:
            entry[kind] = {"all": shares(readings[key][kind], a, b)}
            for radius in SIZES:
                rows = [r for r, rad in zip(readings[key][kind], radii) if rad == radius]
                if rows:
                    entry[kind][f"radius {radius:g}"] = shares(rows, a, b)
            entry[kind]["decision_point"] = decision_point(entry[kind]["all"]["from"], lambdas)
        pairs[key] = entry
        print(key, {kind: entry[kind]["decision_point"] for kind in kinds},
              "latent:", entry["latent"]["all"]["from"], "pixel:", entry["pixel"]["all"]["from"])
    result = {"clips": n, "split": "test", "lambdas": lambdas, "threads": torch.get_num_threads(),
              "video_ae": checkpoints.sha256(CHECKPOINTS / "video_ae.safetensors")[:12],
              "latent_reader": checkpoints.sha256(CHECKPOINTS / "latent_reader.safetensors")[:12],
              "clips_by_radius": {f"{r:g}": radii.count(r) for r in SIZES}, "pairs": pairs,
              "reader_push": {"steps": args.push_steps, "step_size": args.push_size,
                              "reader_follows": round(push["reader_follows"] / n, 4),
                              "picture_follows": round(push["picture_follows"] / n, 4),
                              "picture_keeps_true": round(push["picture_keeps_true"] / n, 4),
                              "before_push_true": round(push["before_push_true"] / n, 4),
                              "before_push_target": round(push["before_push_target"] / n, 4),
                              "distance": round(push["distance"] / n, 3)},
              "seconds": round(time.time() - began, 1)}
    print(json.dumps(result["reader_push"]))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
