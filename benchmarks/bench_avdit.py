"""Benchmark AVDiT presets on CPU and the MoNL mixture frequencies (chapter 6 / chapter 5).

Run from the repository root: ``python benchmarks/bench_avdit.py``. Prints a table and writes
``benchmarks/results/avdit.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from avdit_mini.avdit import PRESETS, AVDiT, AVDiTConfig, num_parameters
from avdit_mini.monl import STRATEGIES, sample_timestep_grid

RESULTS = Path(__file__).parent / "results" / "avdit.json"


def time_forward_backward(preset: str, batch_size: int, warmup: int, repeats: int) -> dict:
    """Parameter count and mean forward + backward seconds per batch for one preset (Chapter 6)."""
    torch.manual_seed(0)
    config = AVDiTConfig.preset(preset)
    model = AVDiT(config)
    geometry = config.geometry
    video_shape = (config.video_channels, geometry.video_latent_frames, *geometry.video_latent_hw)
    video_latent = torch.randn(batch_size, *video_shape)  # [B, C_v, 5, h, w]
    audio_latent = torch.randn(batch_size, config.audio_channels, geometry.audio_latent_frames)  # [B, C_a, 34]
    timestep_grid = sample_timestep_grid(batch_size, generator=torch.Generator().manual_seed(0))  # [B, 2, 5]
    seconds = []
    for step in range(warmup + repeats):
        start = time.perf_counter()
        eps_video, eps_audio = model(video_latent, audio_latent, timestep_grid)
        (eps_video.square().mean() + eps_audio.square().mean()).backward()
        model.zero_grad(set_to_none=True)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    milliseconds = 1000 * sum(seconds) / len(seconds)
    tokens = model.token_cell.numel()
    return {"parameters": num_parameters(model), "tokens": tokens, "ms_per_fwd_bwd": round(milliseconds, 1)}


def monl_frequencies(draws: int) -> dict:
    """Share of examples that picked each strategy under the default (uniform) MoNL mixture (Chapter 5)."""
    _, chosen = sample_timestep_grid(draws, return_strategy=True, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(chosen, minlength=len(STRATEGIES))
    return {name: round(count / draws, 4) for name, count in zip(STRATEGIES, counts.tolist())}


def main() -> None:
    """Time every preset, measure the MoNL mixture, print and save the results (Chapter 6)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    presets = {}
    for preset in args.presets:
        result = presets[preset] = time_forward_backward(preset, args.batch_size, args.warmup, args.repeats)
        print(f"{preset:>6}: {result['parameters']:>12,} parameters, "
              f"{result['ms_per_fwd_bwd']:>9.1f} ms per forward+backward of {args.batch_size}", flush=True)
    frequencies = monl_frequencies(args.draws)
    print(f"MoNL strategy frequencies over {args.draws:,} draws: {frequencies}")
    results = {
        "device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} threads",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "presets": presets,
        "monl_frequencies": {"draws": args.draws, **frequencies},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
