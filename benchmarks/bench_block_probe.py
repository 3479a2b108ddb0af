"""Where inside the network is the shape known? (chapter 7: a teacher for the model's middle)

    python benchmarks/bench_block_probe.py                                        # the shipped avdit_monl
    python benchmarks/bench_block_probe.py --folder runs/shapesup --name shapesup # a pilot, its autoencoders beside it

The tokens each block of an AVDiT puts out, on held-out clips set up as two tasks with their
condition cells clean (t = 0) and the rest pure noise (t = 999):

- ``v2a``: the video given, the audio to make. The audio tokens' mean is what the soundtrack's
  timbre must come from;
- ``continue_2``: segments 0-1 given, 2-4 to make. The mean of the generated video segments' tokens
  is what their drawing of the shape must come from.

A linear classifier (``bench_latent_factors.linear_accuracy``: 70% of the clips to fit, 30% to test)
on each mean says how much of the shape -- and, for comparison, of the size -- the tokens hold after
each block (block 0 = the embedded input). Chance is 1/3 for both.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from avdit_mini.data import SHAPES, SIZES, WorldDataset, collate
from avdit_mini.latents import audio_segment_of_latent_frame, video_segment_of_latent_frame
from avdit_mini.perceptual import factor_labels
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline
from avdit_mini.tasks import resolve_task
from bench_latent_factors import linear_accuracy  # benchmarks/, beside this script

CLASSES = {"shape": list(SHAPES), "radius": list(SIZES)}


@torch.no_grad()
def pooled_block_outputs(model, video: torch.Tensor, audio: torch.Tensor, grid: torch.Tensor, chosen: dict,
                         batch: int = 200) -> dict[str, list[torch.Tensor]]:
    """For each named token mask [L] in ``chosen``, the mean of those tokens after each block: {name: [depth + 1] of
    [B, D]} (index 0: the embedded input). The blocks are run as AVDiT.forward runs them; only the means are kept."""
    pooled = {name: [[] for _ in range(len(model.blocks) + 1)] for name in chosen}
    for start in range(0, len(video), batch):
        part = slice(start, start + batch)
        x = model.embed_tokens(video[part], audio[part])
        conditioning = model.token_conditioning(grid[part])
        for depth in range(len(model.blocks) + 1):
            if depth:
                x = model.blocks[depth - 1](x, conditioning)
            for name, mask in chosen.items():
                pooled[name][depth].append(x[:, mask].mean(1))
    return {name: [torch.cat(parts) for parts in per_block] for name, per_block in pooled.items()}


def probe_task(model, video: torch.Tensor, audio: torch.Tensor, labels: dict, task: str, noise_t: int = 999,
               seed: int = 0) -> dict:
    """Per block, the linear probe's held-out accuracy for each factor from the mean of the tokens to be made,
    one modality at a time: {"<modality>_<factor>": [depth + 1 accuracies]}."""
    mask = resolve_task(task, model.config.geometry.segments).bool()  # [M, N], True where given
    grid = torch.where(mask, 0, noise_t).long().expand(len(video), -1, -1)
    g = torch.Generator().manual_seed(seed)
    noise = (torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g))
    # the cells to make hold pure noise (at t = 999 the clean latent's share is below 1%: left out)
    geometry = model.config.geometry
    video_in = torch.where(mask[0][video_segment_of_latent_frame(geometry)][None, None, :, None, None], video, noise[0])
    audio_in = torch.where(mask[1][audio_segment_of_latent_frame(geometry)][None, None, :], audio, noise[1])
    made = ~mask[model.token_modality, model.layout.segment]  # [L], the tokens of the cells to make
    chosen = {name: made & (model.token_modality == modality) for modality, name in enumerate(("video", "audio"))}
    result = {}
    for name, per_block in pooled_block_outputs(model, video_in, audio_in, grid,
                                                {k: m for k, m in chosen.items() if m.any()}).items():
        for pooled in per_block:  # [B, D]
            for factor, y in labels.items():
                result.setdefault(f"{name}_{factor}", []).append(round(linear_accuracy(pooled, y), 3))
    return result


def encode_clips(pipeline, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """The unit-variance video and audio latents of a split's first n clips, and their factors."""
    dataset, video, audio, factors = WorldDataset(n, split), [], [], []
    for start in range(0, n, 64):
        batch = collate([dataset[i] for i in range(start, min(n, start + 64))])
        latents = pipeline.encode(batch["video"], batch["audio"])
        video.append(latents.video)
        audio.append(latents.audio)
        factors += batch["factors"]
    return torch.cat(video), torch.cat(audio), factors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="monl", help="pipeline name: <folder>/avdit_<name>")
    parser.add_argument("--folder", default=str(CHECKPOINTS))
    parser.add_argument("--clips", type=int, default=1500, help="held-out (val) clips")
    parser.add_argument("--tasks", nargs="+", default=["v2a", "continue_2"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/block_probe_<name>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.time()
    torch.manual_seed(0)
    pipeline = load_pipeline(args.name, Path(args.folder))
    model = pipeline.avdit.eval()
    video, audio, factors = encode_clips(pipeline, "val", args.clips)
    labels = factor_labels(factors, CLASSES)
    result = {"model": f"{os.path.relpath(args.folder)}/avdit_{args.name}", "clips": args.clips, "noise_t": 999,
              "blocks": len(model.blocks), "command": "python benchmarks/bench_block_probe.py "
              + (f"--folder {args.folder} " if args.folder != str(CHECKPOINTS) else "") + f"--name {args.name}"
              + f" --clips {args.clips}", "tasks": {}}
    for task in args.tasks:
        result["tasks"][task] = probe_task(model, video, audio, labels, task)
        print(task, json.dumps(result["tasks"][task]), flush=True)
    result["seconds"] = round(time.time() - began, 1)
    out = Path(args.out or Path(__file__).parent / "results" / f"block_probe_{args.name}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
