"""Train the latent reader that the perceptual loss listens to (chapter 7, avdit_mini.perceptual).

    python benchmarks/train_latent_reader.py --clips 3000 --out data/checkpoints/latent_reader

Encodes ``--clips`` training clips with the shipped autoencoders and latent scaling (those of
``--pipeline``), trains a :class:`~avdit_mini.perceptual.LatentReader` to name the object's shape,
size and colour from the unit-variance video latent, and reports its accuracy on 500 held-out
``val`` clips next to the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from avdit_mini.checkpoints import checkpoint_paths, update_manifest
from avdit_mini.data import COLOURS, SHAPES, SIZES, WorldDataset, collate
from avdit_mini.perceptual import factor_labels, fit_reader, reader_accuracy, save_reader
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline

CLASSES = {"shape": list(SHAPES), "radius": list(SIZES), "colour": list(COLOURS)}


def encode_video(pipeline, split: str, n: int) -> tuple[torch.Tensor, list[dict]]:
    dataset, video, factors = WorldDataset(n, split), [], []
    for start in range(0, n, 64):
        batch = collate([dataset[i] for i in range(start, min(n, start + 64))])
        with torch.no_grad():
            video.append(pipeline.encode(batch["video"], batch["audio"]).video)
        factors += batch["factors"]
    return torch.cat(video), factors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--val-clips", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--pipeline", default="monl", help="whose autoencoders and latent scaling (avdit_<name>)")
    parser.add_argument("--out", default="data/checkpoints/latent_reader")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.time()
    pipeline = load_pipeline(args.pipeline)
    video, factors = encode_video(pipeline, "train", args.clips)
    val_video, val_factors = encode_video(pipeline, "val", args.val_clips)
    reader = fit_reader(video, factor_labels(factors, CLASSES), steps=args.steps, progress=True)
    accuracy = reader_accuracy(reader, val_video, factor_labels(val_factors, CLASSES))
    print("held-out accuracy:", {k: round(v, 3) for k, v in accuracy.items()})
    command = "python benchmarks/train_latent_reader.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "threads")
    save_reader(reader, args.out, {"val_accuracy": accuracy, "train_clips": args.clips, "steps": args.steps,
                                   "pipeline": args.pipeline, "seconds": round(time.time() - began, 1), "command": command})
    out = Path(args.out)
    if out.parent.resolve() == CHECKPOINTS.resolve():  # a shipped reader: list it in the MANIFEST
        paths = checkpoint_paths(out)
        update_manifest(CHECKPOINTS, out.name, [paths["weights"], paths["meta"]], command,
                        metrics={"val_accuracy": accuracy}, config=json.loads(paths["meta"].read_text())["config"])


if __name__ == "__main__":
    main()
