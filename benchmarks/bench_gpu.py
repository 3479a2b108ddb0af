"""Training and sampling speed of AVDiT on a GPU: steps/s, TFLOP/s, MFU, clips/s (chapters 6-8).

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu.json

For each preset and batch size it times full training steps as ``python -m avdit_mini.train
avdit`` runs them on a GPU (bf16 autocast, the MoNL loss, gradient clipping, AdamW, the EMA),
counts their FLOPs with ``torch.utils.flop_counter`` (forward + backward of the network) and
reports model FLOPs utilisation against the chip's dense bf16 peak. Then it times sampling with
the shipped pipeline: 50 DDIM steps of a2v (audio -> video, decoding included) per batch size.
It also runs as the first check of a GPU session: every CUDA code path of training and sampling.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from avdit_mini.avdit import AVDiT, AVDiTConfig, num_parameters
from avdit_mini.data import WorldDataset, collate
from avdit_mini.diffusion import GridDiffusion, Latents
from avdit_mini.monl import sample_timestep_grid
from avdit_mini.schedules import NoiseSchedule
from avdit_mini.train import EMA

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of the chips this may run on
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})"


def time_training(preset: str, batch_size: int, seconds: float = 4.0, compile: bool = False) -> dict:
    """Full training steps of one preset on random latents: steps/s, TFLOP/s, MFU.

    ``compile``: the network runs through ``torch.compile`` (its compilation, in the warm-up steps,
    is timed apart); the FLOPs are counted on the eager network, which does the same arithmetic.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    config = AVDiTConfig.preset(preset, prediction="v")
    model = AVDiT(config).to(device)
    ema = EMA(model, 0.999)
    diffusion = GridDiffusion(NoiseSchedule("cosine", config.T), config.geometry, config.prediction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = config.geometry
    clean = Latents(torch.randn(batch_size, config.video_channels, g.video_latent_frames, *g.video_latent_hw, device=device),
                    torch.randn(batch_size, config.audio_channels, g.audio_latent_frames, device=device))
    generator = torch.Generator().manual_seed(0)

    network = torch.compile(model) if compile else model

    def step() -> None:
        grid = sample_timestep_grid(batch_size, generator=generator).to(device)
        with autocast:
            loss, _ = diffusion.loss(network, clean, grid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model, 1000)  # the training loop's EMA, past its warm-up

    grid = sample_timestep_grid(batch_size, generator=torch.Generator().manual_seed(1)).to(device)
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss, _ = diffusion.loss(model, clean, grid)
        loss.backward()
    flops = counter.get_total_flops()
    warm = time.perf_counter()
    for _ in range(5):
        step()
    synchronize()
    warmup_seconds = time.perf_counter() - warm
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        steps += 10
        synchronize()
    elapsed = time.perf_counter() - start
    tflops = flops * steps / elapsed / 1e12
    peak = peak_tflops(device_name())
    return {"preset": preset, "parameters": num_parameters(model), "batch_size": batch_size,
            "steps_per_s": round(steps / elapsed, 2), "clips_per_s": round(steps * batch_size / elapsed, 1),
            "gflop_per_step": round(flops / 1e9, 2), "tflops": round(tflops, 2),
            "mfu_percent": round(100 * tflops / peak, 3) if peak else None,
            "compiled": compile, "warmup_seconds": round(warmup_seconds, 1)}


def time_sampling(batch_sizes: list[int], steps: int = 50) -> list[dict]:
    """a2v with the shipped pipeline on the GPU: clips per second, decoding included."""
    from avdit_mini.pipeline import load_pipeline
    from avdit_mini.tasks import generate

    pipeline = load_pipeline("monl", device="cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for batch_size in batch_sizes:
        audio = collate([WorldDataset(batch_size, "test")[i] for i in range(batch_size)])["audio"]
        generate(pipeline, "a2v", {"audio": audio[:2]}, steps=2)  # warm-up
        synchronize()
        start = time.perf_counter()
        out = generate(pipeline, "a2v", {"audio": audio}, steps=steps)
        synchronize()
        elapsed = time.perf_counter() - start
        assert out.video.shape == (batch_size, 3, 17, 64, 64) and torch.isfinite(out.video).all()
        results.append({"task": "a2v", "batch_size": batch_size, "ddim_steps": steps,
                        "seconds": round(elapsed, 2), "clips_per_s": round(batch_size / elapsed, 1)})
        print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--sample-batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per configuration")
    parser.add_argument("--compile", action="store_true", help="also time each configuration through torch.compile")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: timing on the CPU (a dry run of the script; benchmarks/bench_avdit.py is the CPU benchmark)")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = device_name()
    print(f"{name}, torch {torch.__version__}", flush=True)
    training = []
    for preset in args.presets:
        for batch_size in args.batch_sizes:
            for compiled in (False, True) if args.compile else (False,):
                training.append(time_training(preset, batch_size, args.seconds, compiled))
                print(training[-1], flush=True)
    sampling = time_sampling(args.sample_batch_sizes)
    result = {"device": name, "peak_bf16_tflops": peak_tflops(name), "torch": torch.__version__,
              "host": platform.node(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "training": training, "sampling": sampling}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
