"""Does the video latent *say* its shape? (chapter 3, "Teaching the latent its shape")

    python benchmarks/bench_shape_code.py --autoencoders data/checkpoints/video_ae runs/align/video_ae \
        --clips 500 --out benchmarks/results/shape_code.json

For each video autoencoder named (a checkpoint stem), on the same clips:

* **a read-out per cell**: a linear :class:`ShapeReadout` (unit-length rows over the latent in units
  of each channel's spread) fitted on ``--fit-clips`` train clips' latents to tell the shape from
  each latent cell the object covers, then scored on ``--clips`` held-out val clips: the share of
  the object's cells it reads right (weighed by how much of each cell the object covers), and of
  clips when the cells vote (their logits summed, weighed the same way). Chance is a third.
* **where the shape lives**: each of ``--spectrum-clips`` val clips drawn again as each other shape
  on its own path (``World.redraw``) and encoded; the difference's energy by spatial frequency band,
  as a share of the latents' own variance in that band (``bench_latent_spectrum.py``'s measure, with
  each autoencoder's latents scaled to unit variance per channel), and its loudness: the share of a
  squared error a wrong shape is worth.
* **the round trip**: PSNR and chapter 1's video probes on the reconstructions of the ``--clips`` val
  clips, with the shape right by true shape and size (``bench_decoders.py``'s score).

With ``--generated NAME`` (the pipeline ``<folder of the last autoencoder>/avdit_NAME``), the last
autoencoder's read-out is also turned on what that diffusion model generates: for ``--tasks`` on
``--generated-clips`` test clips, the cells of the generated latent frames vote, each weighed by how much
of it the *decoded* object covers, and the vote is compared with the condition clip's true shape and with
what the probe reads from the decoded clip. It tells whether the model wrote the shape's code into
the latent (and the decoder did not draw it), or did not write it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avdit_mini import checkpoints, probes
from avdit_mini.data import SHAPES, WorldDataset
from avdit_mini.latents import spatial_frequency
from avdit_mini.metrics import score_clip
from avdit_mini.pipeline import load_autoencoder, load_pipeline
from avdit_mini.tasks import generate, resolve_task
from avdit_mini.train import val_batches
from avdit_mini.video_ae import ShapeReadout, object_cells, shape_alignment_error
from bench_decoders import score
from bench_latent_spectrum import band_energy


def encoded(model: torch.nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict]]:
    """Latents, object cells, videos and factors of every clip in ``batches``."""
    latents, cells, videos, factors = [], [], [], []
    for batch in batches:
        with torch.no_grad():
            latents.append(model.encode(batch["video"]))
        cells.append(object_cells(batch["video"]))
        videos.append(batch["video"])
        factors += batch["factors"]
    return torch.cat(latents), torch.cat(cells), torch.cat(videos), factors


def fit_readout(latents: torch.Tensor, cells: torch.Tensor, shapes: torch.Tensor, spread: torch.Tensor,
                steps: int = 400, seed: int = 0) -> ShapeReadout:
    """A :class:`ShapeReadout` fitted by Adam on all the given latents at once."""
    torch.manual_seed(seed)
    readout = ShapeReadout(latents.shape[1], len(SHAPES))
    optimizer = torch.optim.Adam(readout.parameters(), lr=3e-2)
    for _ in range(steps):
        error = shape_alignment_error(readout(latents, spread), shapes, cells)
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
    return readout


def readout_scores(readout: ShapeReadout, latents: torch.Tensor, cells: torch.Tensor, shapes: torch.Tensor,
                   spread: torch.Tensor) -> dict[str, float]:
    """Cross-entropy and accuracy per object cell (weighed by coverage), and per clip when the cells vote."""
    with torch.no_grad():
        logits = readout(latents, spread)
        right = (logits.argmax(dim=1) == shapes.reshape(-1, 1, 1, 1)).float()
        votes = (logits.log_softmax(dim=1) * cells[:, None]).sum(dim=(2, 3, 4))  # [N, K]
        return {"cross_entropy": round(float(shape_alignment_error(logits, shapes, cells)), 4),
                "cells_right": round(float((right * cells).sum() / cells.sum()), 4),
                "clips_right_by_vote": round(float((votes.argmax(dim=1) == shapes).float().mean()), 4)}


def spectrum(model: torch.nn.Module, n_clips: int, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """The shape change's share of each frequency band's variance, and its loudness (share of a squared error)."""
    dataset = WorldDataset(n_clips, "val")

    def encode(video: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ((model.encode(video[None]) - mean) / std)[0]

    own, changes = [], []
    for i in range(n_clips):
        item = dataset[i]
        z = encode(item["video"])
        own.append(z)
        changes += [encode(dataset.world.redraw(item["factors"], s)) - z for s in SHAPES if s != item["factors"]["shape"]]
    own = torch.stack(own)
    bands = spatial_frequency(*own.shape[-2:])
    total = band_energy(own - own.mean(0), bands)
    energy = band_energy(torch.stack(changes), bands)
    return {"share_of_band": {str(b): round(energy[b] / total[b], 4) for b in total},
            "loudness": round(sum(energy.values()) / sum(total.values()), 4)}


def generated_code(name: str, folder: Path, read, tasks: list[str], n_clips: int, batch_size: int = 25) -> dict:
    """What the read-out ``read`` (latent [B, C, 5, 8, 8] -> logits) sees in the latents pipeline ``name`` generates."""
    pipeline = load_pipeline(name, folder, vocoder="griffin-lim")
    dataset = WorldDataset(n_clips, "test")
    out = {}
    for task in tasks:
        pattern = resolve_task(task, pipeline.geometry.segments)
        generated_frames = (~pattern[0]).nonzero().flatten()  # the video latent frames the model generates
        votes_right, probe_right, agree = [], [], []
        counts = {s: {d: 0 for d in SHAPES} for s in SHAPES}
        for start in range(0, n_clips, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n_clips))]
            condition = {"video": torch.stack([i["video"] for i in items]), "audio": torch.stack([i["audio"] for i in items])}
            with torch.no_grad():
                g = generate(pipeline, task, condition, seed=start, batch_size=len(items))
                latent = pipeline.scaler.unscale(g.latents.video, g.latents.audio)[0]
                cells = object_cells(g.video)[:, generated_frames]
                logits = read(latent).log_softmax(dim=1)[:, :, generated_frames]
            vote = (logits * cells[:, None]).sum(dim=(2, 3, 4)).argmax(dim=1)
            for k, item in enumerate(items):
                truth = item["factors"]["shape"]
                drawn = score_clip(pattern, g.video[k], g.audio[k], item)["generated_shape"]
                said = SHAPES[int(vote[k])]
                votes_right.append(said == truth)
                probe_right.append(drawn == truth)
                agree.append(said == drawn)
                counts[truth][said] += 1
        out[task] = {"clips": n_clips, "code_says_true_shape": round(float(np.mean(votes_right)), 4),
                     "probe_reads_true_shape": round(float(np.mean(probe_right)), 4),
                     "code_and_probe_agree": round(float(np.mean(agree)), 4), "code_counts_by_true_shape": counts}
        print(name, task, {k: v for k, v in out[task].items() if k != "code_counts_by_true_shape"}, flush=True)
    return out


def add_generated_arguments(parser: argparse.ArgumentParser, beside: str) -> None:
    """``--generated NAME``, ``--tasks``, ``--generated-clips`` and ``--threads`` (``beside``: where avdit_NAME lies)."""
    parser.add_argument("--generated", default=None, metavar="NAME", help=f"also read what avdit_NAME ({beside}) generates")
    parser.add_argument("--tasks", nargs="+", default=["continue_2", "a2v"])
    parser.add_argument("--generated-clips", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoders", nargs="+", default=["data/checkpoints/video_ae"],
                        help="checkpoint stems of the video autoencoders to compare")
    parser.add_argument("--clips", type=int, default=500, help="held-out val clips (read-out test, round trip)")
    parser.add_argument("--fit-clips", type=int, default=800, help="train clips the read-out is fitted on")
    parser.add_argument("--spectrum-clips", type=int, default=300, help="val clips drawn again as each other shape")
    add_generated_arguments(parser, "beside the last autoencoder")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shape_code.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    result = {"clips": args.clips, "fit_clips": args.fit_clips, "spectrum_clips": args.spectrum_clips,
              "shape_classes": list(SHAPES), "autoencoders": {}}
    for stem in args.autoencoders:
        model = load_autoencoder("video", Path(stem).parent, name=Path(stem).name).eval()
        meta = json.loads(checkpoints.checkpoint_paths(stem)["meta"].read_text())
        fit_set = encoded(model, val_batches(args.fit_clips, 50, split="train"))
        test_set = encoded(model, val_batches(args.clips, 50))
        mean = fit_set[0].mean(dim=(0, 2, 3, 4), keepdim=True)
        std = fit_set[0].std(dim=(0, 2, 3, 4), keepdim=True)
        spread = std.flatten()
        shape_of = lambda factors: torch.tensor([SHAPES.index(f["shape"]) for f in factors])  # noqa: E731
        readout = fit_readout(fit_set[0] - mean, fit_set[1], shape_of(fit_set[3]), spread)
        entry = {"sha256": checkpoints.sha256(checkpoints.checkpoint_paths(stem)["weights"])[:12],
                 "command": meta.get("command"), "trained_steps": meta.get("step"),
                 "readout_train": readout_scores(readout, fit_set[0] - mean, fit_set[1], shape_of(fit_set[3]), spread),
                 "readout_val": readout_scores(readout, test_set[0] - mean, test_set[1], shape_of(test_set[3]), spread),
                 "shape_spectrum": spectrum(model, args.spectrum_clips, mean, std),
                 "round_trip": score(model, test_set[0], test_set[2], test_set[3])}
        result["autoencoders"][stem] = entry
        last_read = lambda z, r=readout, m=mean, s=spread: r(z - m, s)  # noqa: E731
        print(stem, json.dumps({k: entry[k] for k in ("readout_val", "shape_spectrum")}),
              {k: entry["round_trip"][k] for k in ("psnr_db", "video_shape", "video_colour", "video_size")}, flush=True)
    if args.generated:
        folder = Path(args.autoencoders[-1]).parent
        result["generated"] = {"pipeline": args.generated, "folder": str(folder), "autoencoder": args.autoencoders[-1],
                               "tasks": generated_code(args.generated, folder, last_read, args.tasks, args.generated_clips)}
    result["seconds"] = round(time.perf_counter() - began, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
