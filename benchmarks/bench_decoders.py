"""Compare video decoders that share the shipped encoder (chapter 3, "A critic for the corners").

    python benchmarks/bench_decoders.py --clips 200 --decoders runs/l1/video_ae runs/adv0.2/video_ae \
        --out benchmarks/results/decoder_losses.json

Every decoder named (a checkpoint stem made by ``python -m avdit_mini.train autoencoder
--finetune-decoder data/checkpoints/video_ae ...``, so its encoder must be the shipped one, bit for bit)
decodes the same latents of ``--clips`` held-out ``val`` clips. For each: PSNR, chapter 1's video probes,
the shape probe's confusion table and the median fill ratio by true shape (originals: 1 for a square,
pi/4 for a circle, about 0.57 for a triangle) and how many of each shape and size the probe names right, next to the shipped decoder's.
A decoder with its own shape reader (``--shape-head``) also says what that reader votes, each latent cell weighed by
the object's share of it. An autoencoder with a shape code (``--shape-code``) decodes the shipped latents with its own
code beside them, and says what its code votes and whether it draws what the code says when the code is moved to
another shape, and from a latent unsure of its shape (the mean of the clip's three drawings' latents) with the code. (For a diffusion model's generated latents,
``bench_shape.py --load-latents FILE --video-ae STEM``.) The command that trained each decoder, and its steps, come from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avdit_mini import checkpoints, probes
from avdit_mini.data import SHAPES, SIZES, next_shape
from avdit_mini.pipeline import load_autoencoder
from avdit_mini.train import unsure_latents, val_batches
from avdit_mini.video_ae import object_cells, psnr


def load_decoder(stem: str) -> tuple[torch.nn.Module, dict]:
    """The video AE of checkpoint ``stem`` (``pipeline.load_autoencoder``) and its stored meta (command, step, note)."""
    model = load_autoencoder("video", Path(stem).parent, name=Path(stem).name)
    return model, json.loads(checkpoints.checkpoint_paths(stem)["meta"].read_text())


def check_same_encoder(model: torch.nn.Module, shipped: torch.nn.Module, stem: str) -> None:
    """Refuse a decoder whose encoder is not the shipped one bit for bit: its latents would not be the shipped latents."""
    if any(not torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), shipped.encoder.state_dict().values())):
        raise ValueError(f"{stem}: its encoder is not the shipped one; only decoders fine-tuned with "
                         "--finetune-decoder data/checkpoints/video_ae can be compared on the same latents")


def right_by_shape_and_size(truths: list[dict], calls: list) -> dict[str, list[str]]:
    """``"right/clips"`` per true shape and true size (radius 4, 6, 8 px): how often ``calls`` name the true shape."""
    counts = np.zeros((len(SHAPES), len(SIZES), 2), dtype=int)
    for truth, call in zip(truths, calls):
        counts[SHAPES.index(truth["shape"]), truth["size"]] += (call == truth["shape"], 1)
    return {s: [f"{right}/{n}" for right, n in counts[i]] for i, s in enumerate(SHAPES)}


def small_object_parts(videos, factors: list[dict]) -> dict[str, dict[str, float]]:
    """Where a radius-4 object's fill ratio goes: its area and its sub-pixel width and height, as the probe
    measures them (``probes.object_coverage``), median over frames, mean over clips, by true shape.

    fill = area / (width x height), so a decoder can lower it by eating the corners (less area) or by
    drawing a faint halo around the object (a wider box).
    """
    parts: dict[str, list[list[float]]] = {s: [] for s in SHAPES}
    for video, f in zip(videos, factors):
        if f["size"] != 0:
            continue
        coverage, _, _ = probes.object_coverage(video)
        frames = [(c.sum(), c.max(axis=0).sum(), c.max(axis=1).sum()) for c in coverage if c.sum() >= 4]
        if frames:
            parts[f["shape"]].append(np.median(np.array(frames), axis=0).tolist())
    return {s: dict(zip(("area", "width", "height"), np.mean(v, axis=0).round(3).tolist())) for s, v in parts.items() if v}


def with_code(model: torch.nn.Module, latents: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """The shipped encoder's ``latents``, plus ``model``'s shape code of ``videos`` where it has one (``--shape-code``)."""
    if getattr(model, "shape_coder", None) is None:
        return latents
    with torch.no_grad():
        code = torch.cat([model.shape_coder(v) for v in videos.split(25)])
    return torch.cat([latents, code], dim=1)


def code_scores(model: torch.nn.Module, latents: torch.Tensor, factors: list[dict]) -> dict:
    """A shape code's vote (its channels summed over the clip: the largest names the shape) and whether the decoder
    draws what the code says: (1) each clip decoded with its code moved to the next shape's channel (circle -> square
    -> triangle -> circle), its own latent channels untouched: the share the probe then reads as that next shape;
    (2) the latent channels replaced by the mean of the clip's three drawings' (``train.unsure_latents``), the code
    its own, then moved on: the shares the probe reads as the code says."""
    own, code = model.split_code(latents)
    votes = [SHAPES[i] for i in model.shape_coder.vote(code).tolist()]
    unsure = torch.cat([unsure_latents(model, factors[i:i + 25]) for i in range(0, len(factors), 25)])
    wanted = [next_shape(f["shape"]) for f in factors]
    result = {"shape_code_vote": float(np.mean([v == f["shape"] for v, f in zip(votes, factors)]))}
    for name, appearance, shift, truth in (("code_swapped", own, 1, wanted),
                                           ("unsure_own_code", unsure, 0, [f["shape"] for f in factors]),
                                           ("unsure_code_swapped", unsure, 1, wanted)):
        edited = torch.cat([appearance, code.roll(shift, dims=1)], dim=1)
        with torch.no_grad():
            decoded = torch.cat([model.decode(z) for z in edited.split(25)])
        drawn = [probes.measure_video(v)["shape"] for v in decoded]
        result[f"{name}_drawn_as_the_code_says"] = float(np.mean([d == w for d, w in zip(drawn, truth)]))
        result[f"{name}_right_by_true_size"] = right_by_shape_and_size([{**f, "shape": w} for f, w in zip(factors, truth)],
                                                                       drawn)
        result[f"{name}_drawn"] = {s: drawn.count(s) for s in SHAPES}
    return result


def score(model: torch.nn.Module, latents: torch.Tensor, videos: torch.Tensor, factors: list[dict]) -> dict:
    """PSNR, the video probes, the shape confusion (rows: true shape) and fill ratios of ``model``'s decodings."""
    latents = with_code(model, latents, videos)
    with torch.no_grad():
        decoded = torch.cat([model.decode(z) for z in latents.split(25)])
    confusion = np.zeros((len(SHAPES), len(SHAPES)), dtype=int)
    fills: dict[str, list[float]] = {s: [] for s in SHAPES}
    calls = []
    hits: dict[str, list[bool]] = {k: [] for k in ("shape", "size", "colour", "background")}
    for video, f in zip(decoded, factors):
        seen = probes.measure_video(video)
        for key in hits:
            hits[key].append(seen[key] == f[key])
        if seen["shape"] is not None:
            confusion[SHAPES.index(f["shape"]), SHAPES.index(seen["shape"])] += 1
        fills[f["shape"]].append(seen["fill_ratio"])
        calls.append(seen["shape"])
    head = {}
    if getattr(model, "shape_head", None) is not None:  # the decoder's own shape reader: its vote, cells weighed by the object
        with torch.no_grad():
            probs = torch.cat([model.shape_logits(z).softmax(dim=1) for z in latents.split(25)])  # [N, 3, 5, 8, 8]
        votes = (probs * object_cells(videos)[:, None]).sum(dim=(2, 3, 4)).argmax(dim=1)
        head_calls = [SHAPES[i] for i in votes.tolist()]
        head = {"shape_head_vote": float(np.mean([c == f["shape"] for c, f in zip(head_calls, factors)])),
                "shape_head_right_by_true_size": right_by_shape_and_size(factors, head_calls)}
    if getattr(model, "shape_coder", None) is not None:
        head.update(code_scores(model, latents, factors))
    return {
        **head,
        "psnr_db": float(psnr(decoded, videos).mean()),
        **{f"video_{k}": float(np.mean(v)) for k, v in hits.items()},
        "shape_confusion": confusion.tolist(),
        "fill_ratio_by_true_shape": {s: float(np.nanmedian(v)) for s, v in fills.items() if v},
        "shape_right_by_true_size": right_by_shape_and_size(factors, calls),
        "radius_4_parts": small_object_parts(decoded, factors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoders", nargs="+", required=True, help="checkpoint stems of the decoders to compare")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/decoder_losses.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    shipped = load_autoencoder("video").eval()
    latents, videos, factors = [], [], []
    for batch in val_batches(args.clips, 25):
        with torch.no_grad():
            latents.append(shipped.encode(batch["video"]))
        videos.append(batch["video"])
        factors += batch["factors"]
    latents, videos = torch.cat(latents), torch.cat(videos)
    originals = [probes.measure_video(v) for v in videos]
    result = {
        "clips": args.clips,
        "shape_classes": list(SHAPES),
        "originals": {"video_shape": float(np.mean([m["shape"] == f["shape"] for m, f in zip(originals, factors)])),
                      "fill_ratio_by_true_shape": {s: float(np.nanmedian([m["fill_ratio"] for m, f in zip(originals, factors)
                                                                          if f["shape"] == s])) for s in SHAPES},
                      "radius_4_parts": small_object_parts(videos, factors)},
        "decoders": {},
    }
    named = {"shipped": ("data/checkpoints/video_ae", shipped, None)}
    for stem in args.decoders:
        model, meta = load_decoder(stem)
        check_same_encoder(model, shipped, stem)
        named[Path(stem).parent.name or stem] = (stem, model, meta)
    for name, (stem, model, meta) in named.items():
        entry = {"stem": stem, "sha256": checkpoints.sha256(checkpoints.checkpoint_paths(stem)["weights"])[:12]}
        if meta is not None:
            entry.update({"command": meta.get("command"), "trained_steps": meta.get("step")})
            if meta.get("note"):
                entry["note"] = meta["note"]
        entry.update(score(model, latents, videos, factors))
        result["decoders"][name] = entry
        print(name, {k: v for k, v in entry.items() if k not in ("command", "shape_confusion")}, flush=True)
    result["seconds"] = time.perf_counter() - began
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
