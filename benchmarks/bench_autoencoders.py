"""Benchmark the shipped autoencoders (chapters 2-3).

    python benchmarks/bench_autoencoders.py --clips 500     # writes benchmarks/results/autoencoders.json

On ``--clips`` held-out ``val`` clips: video PSNR and audio log-mel L1, chapter 1's probes on the
originals and on the reconstructions, latent sizes and compression ratios, and encode / decode
throughput (clips per second, batch 8) on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from avdit_mini.config import Geometry
from avdit_mini.pipeline import load_autoencoder, vocoder_name
from avdit_mini.train import evaluate_autoencoder


def clips_per_second(function, argument: torch.Tensor, repeats: int = 3) -> float:
    """Best of ``repeats`` timed calls (the machine may be busy)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            function(argument)
        best = min(best, time.perf_counter() - start)
    return len(argument) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--folder", default="data/checkpoints")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modalities", nargs="+", default=["video", "audio"], choices=["video", "audio"],
                        help="measure only these (the others' results are kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = Geometry()
    out = Path(__file__).parent / "results" / "autoencoders.json"
    result = {"clips": args.clips, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    if out.exists():
        earlier = json.loads(out.read_text())
        result.update({m: earlier[m] for m in ("video", "audio") if m in earlier and m not in args.modalities
                       and earlier.get("clips") == args.clips})
    for modality in args.modalities:
        model = load_autoencoder(modality, args.folder).eval()  # audio: with the shipped post-net, if there is one
        began = time.perf_counter()
        metrics = evaluate_autoencoder(model, modality, args.clips)
        x = torch.rand(8, 3, g.frames, g.height, g.width) if modality == "video" else 0.1 * torch.randn(8, g.audio_samples)
        with torch.inference_mode():
            z = model.encode(x)
        data_size, latent_size = int(np.prod(x.shape[1:])), int(np.prod(z.shape[1:]))
        metrics.update({
            "parameters": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("inverter.")),
            "latent_shape": list(z.shape[1:]), "compression": data_size / latent_size,
            "encode_clips_per_second": clips_per_second(model.encode, x),
            "decode_clips_per_second": clips_per_second(model.decode, z),
            "seconds": time.perf_counter() - began,
        })
        if modality == "audio":
            mel = model.decode(z)
            metrics["vocoder"] = vocoder_name(model)
            metrics["vocoder_parameters"] = sum(p.numel() for p in model.inverter.parameters())
            metrics["griffin_lim_clips_per_second"] = clips_per_second(model.mel_to_audio, mel, repeats=1)  # with the post-net
        result[modality] = metrics
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(modality, json.dumps(metrics), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
