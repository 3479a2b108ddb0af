"""A decoder that knows the shape: does it draw it? (chapter 3, "A decoder that reads the shape")

    python benchmarks/bench_shape_head.py --decoder runs/head/video_ae --generated monl --clips 300 \
        --generated-clips 100 --out benchmarks/results/shape_head.json

``--decoder`` is a video autoencoder whose decoder has its own shape reader (``train autoencoder
--finetune-decoder data/checkpoints/video_ae --shape-head W``), so its encoder is the shipped one. This asks
where its knowledge goes:

* **the smallest objects, frame by frame**: on the radius-4 objects among ``--clips`` held-out ``val`` clips,
  the fill ratio (area / (width x height), as the shape probe measures it, ``probes.object_coverage``) of
  the originals, the shipped decoder's reconstructions and this decoder's, in every one of the 17 frames.
  Frame 0 has a latent frame of its own; frames 1-16 share one per group of four, so a decoder must place
  the object in four frames from one latent frame. A square's fill is 1, a circle's pi/4: where it sinks
  towards pi/4, the probe calls the square a circle.
* **does the decoder listen?** The same ``--clips`` val clips decoded with the head's guess replaced by a sure
  one for each shape in turn (a logit of 10 for it in every cell): how the probe reads the drawings, by true
  shape and size. If the decoder follows the hint, a forced "square" draws squares.
* **on a diffusion model's samples** (``--generated NAME``: the pipeline ``<folder of --decoder>/avdit_NAME``):
  for ``--tasks`` on ``--generated-clips`` test clips, the head's vote (its per-cell probabilities' log,
  the cells weighed by how much of each the *decoded* object covers) against the condition clip's true
  shape and against what the probe reads from the decoded clip (``bench_shape_code.generated_code``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avdit_mini import checkpoints, probes
from avdit_mini.data import SHAPES
from avdit_mini.pipeline import load_autoencoder
from avdit_mini.train import val_batches
from bench_decoders import check_same_encoder
from bench_shape_code import add_generated_arguments, generated_code


def fill_by_frame(video: torch.Tensor) -> list[float]:
    """The probe's fill ratio of the object in each frame of ``video`` [3, T, H, W] (NaN where it is under 4 pixels)."""
    coverage, _, _ = probes.object_coverage(video)
    return [probes._frame_shape(c)[2] for c in coverage]


def held_out(encoder: torch.nn.Module, n_clips: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """The first ``n_clips`` val clips, their latents and their factors, drawn and encoded once for every measure below."""
    videos, latents, factors = [], [], []
    for batch in val_batches(n_clips, 25):
        with torch.no_grad():
            latents.append(encoder.encode(batch["video"]))
        videos.append(batch["video"])
        factors += batch["factors"]
    return torch.cat(videos), torch.cat(latents), factors


def decode(model: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.decode(z) for z in latents.split(25)])


def small_fills(decoders: dict, videos: torch.Tensor, latents: torch.Tensor, factors: list[dict]) -> dict:
    """Mean fill ratio per frame of the radius-4 objects, by true shape, for the originals and each decoder."""
    keep = [i for i, f in enumerate(factors) if f["size"] == 0]
    drawn = {"originals": videos[keep], **{k: decode(m, latents[keep]) for k, m in decoders.items()}}
    rows = {name: {s: [fill_by_frame(v) for v, i in zip(clips, keep) if factors[i]["shape"] == s] for s in SHAPES}
            for name, clips in drawn.items()}
    return {name: {s: {"clips": len(v), "fill_by_frame": np.round(np.nanmean(np.array(v), axis=0), 4).tolist()}
                   for s, v in by_shape.items() if v} for name, by_shape in rows.items()}


def forced_hint(model: torch.nn.Module, latents: torch.Tensor, factors: list[dict]) -> dict:
    """The probe's reading of ``model``'s decodings when its shape head is made to say one shape everywhere."""
    head, result = model.shape_head, {}
    for forced in [None, *SHAPES]:
        original = head.forward
        if forced is not None:  # a sure guess: a logit of 10 for the forced shape in every cell
            def sure(latent, k=SHAPES.index(forced)):
                logits = torch.zeros(latent.shape[0], len(SHAPES), *latent.shape[2:], device=latent.device)
                logits[:, k] = 10.0
                return logits
            head.forward = sure
        try:
            drawn = decode(model, latents)
        finally:
            head.forward = original
        counts = {s: {size: {d: 0 for d in SHAPES} for size in range(3)} for s in SHAPES}
        for video, f in zip(drawn, factors):
            seen = probes.measure_video(video)["shape"]
            if seen is not None:
                counts[f["shape"]][f["size"]][seen] += 1
        result[forced or "its own guess"] = counts
        print("hint:", forced or "its own guess", {s: {d: sum(counts[s][z][d] for z in range(3)) for d in SHAPES}
                                                   for s in SHAPES}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", required=True, help="checkpoint stem of a video autoencoder with a shape head")
    parser.add_argument("--clips", type=int, default=300, help="held-out val clips (their radius-4 objects)")
    add_generated_arguments(parser, "beside --decoder")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shape_head.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    stem = Path(args.decoder)
    headed = load_autoencoder("video", stem.parent, name=stem.name).eval()
    if headed.shape_head is None:
        raise ValueError(f"{stem} has no shape head: train one with `train autoencoder --finetune-decoder "
                         "data/checkpoints/video_ae --shape-head W`")
    shipped = load_autoencoder("video").eval()
    check_same_encoder(headed, shipped, str(stem))
    videos, latents, factors = held_out(shipped, args.clips)
    meta = json.loads(checkpoints.checkpoint_paths(stem)["meta"].read_text())
    result = {"clips": args.clips, "shape_classes": list(SHAPES), "decoder": str(stem),
              "sha256": checkpoints.sha256(checkpoints.checkpoint_paths(stem)["weights"])[:12],
              "shipped_sha256": checkpoints.sha256(checkpoints.checkpoint_paths(Path("data/checkpoints/video_ae"))["weights"])[:12],
              "command": meta.get("command"), "trained_steps": meta.get("step"),
              "radius_4_fill": small_fills({"shipped": shipped, "shape_head": headed}, videos, latents, factors),
              "forced_hint": forced_hint(headed, latents, factors)}
    for name, by_shape in result["radius_4_fill"].items():
        print(name, {s: (d["clips"], round(d["fill_by_frame"][0], 3), round(float(np.mean(d["fill_by_frame"][1:])), 3))
                     for s, d in by_shape.items()}, flush=True)
    if args.generated:
        result["generated"] = {"pipeline": args.generated, "folder": str(stem.parent),
                               "tasks": generated_code(args.generated, stem.parent, headed.shape_logits, args.tasks,
                                                       args.generated_clips)}
    result["seconds"] = round(time.perf_counter() - began, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
