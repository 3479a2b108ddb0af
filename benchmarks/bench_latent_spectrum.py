"""Where in the video latent's spatial frequencies does each factor live? (chapter 7: making the shape louder)

    python benchmarks/bench_latent_spectrum.py --clips 300   # writes benchmarks/results/latent_spectrum.json

Each held-out ``val`` clip is drawn again on its own path with one factor changed (each other shape,
the next colour, the next size) and encoded with the shipped video autoencoder. The difference of the
two unit-variance latents (the shipped model's per-channel scaling) is what that factor changes in
the latent. Its energy, split by spatial frequency band of the 8 x 8 latent frame (f = the larger of
a frequency's two components, 0 ... 0.5 cycles per cell), says where the factor lives; the clips'
own latents (minus their mean) give the variance the squared error spreads over; per frequency bin
and latent number it falls from the coarsest band to the finest, where the noise (1 everywhere) is
loudest against it.

With a high-frequency gain G (``LatentScaler.emphasise``: each band multiplied by 1 + (G - 1)(2f)^2,
its energy by the square), the ``loudness`` of a factor is its difference energy over the total
variance: what share of a squared error the factor is worth. The json gives it for G = 1 ... 4.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from avdit_mini.data import COLOURS, SHAPES, SIZES, WorldDataset
from avdit_mini.latents import LatentScaler, spatial_frequency
from avdit_mini.pipeline import load_pipeline

GAINS = (1.0, 2.0, 3.0, 4.0)


def band_energy(x: torch.Tensor, bands: torch.Tensor) -> dict[float, float]:
    """Mean energy per clip in each frequency band of x [N, C, F, h, w] (Parseval: sums to the mean squared norm)."""
    power = torch.fft.fft2(x).abs().pow(2).mean(0).sum((0, 1)) / (x.shape[-1] * x.shape[-2])  # [h, w]
    return {round(float(b), 4): float(power[bands == b].sum()) for b in bands.unique()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300, help="held-out val clips")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="result file (default: benchmarks/results/latent_spectrum.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.time()
    pipeline = load_pipeline("monl", vocoder="griffin-lim")
    if float(pipeline.scaler.high_frequency_gain) != 1.0:
        raise SystemExit("the shipped model's scaler has a high-frequency gain; this measures the plain per-channel scaling")
    dataset = WorldDataset(args.clips, "val")
    world, colours = dataset.world, list(COLOURS)
    no_audio = torch.zeros(1, pipeline.scaler.audio_mean.numel(), 1)

    def encode(video: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return pipeline.scaler.scale(pipeline.video_ae.encode(video[None]), no_audio)[0][0]  # [C, 5, h, w]

    def drawn(factors: dict, **changed) -> torch.Tensor:
        frames = world.render({**factors, **changed}, factors["trajectory"].numpy())
        return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()

    own, changes = [], {"shape": [], "colour": [], "size": []}
    for i in range(args.clips):
        item = dataset[i]
        factors = item["factors"]
        z = encode(item["video"])
        own.append(z)
        for shape in SHAPES:
            if shape != factors["shape"]:
                changes["shape"].append(encode(world.redraw(factors, shape)) - z)
        colour = colours[(colours.index(factors["colour"]) + 1) % len(colours)]
        changes["colour"].append(encode(drawn(factors, colour=colour)) - z)
        size = (factors["size"] + 1) % len(SIZES)
        changes["size"].append(encode(drawn(factors, size=size, radius=SIZES[size])) - z)
    own = torch.stack(own)
    bands = spatial_frequency(*own.shape[-2:])
    total = band_energy(own - own.mean(0), bands)
    energy = {k: band_energy(torch.stack(v), bands) for k, v in changes.items()}

    def loudness(factor: dict[float, float], gain: float) -> float:
        gains = LatentScaler().emphasise(gain).frequency_gains(*own.shape[-2:])  # one gain per band: energy x its square
        weight = {b: float(gains[bands == b][0]) ** 2 for b in total}
        return sum(weight[b] * factor[b] for b in total) / sum(weight[b] * total[b] for b in total)

    result = {"clips": args.clips, "split": "val", "bands_cycles_per_cell": list(total),
              "bins_per_band": [int((bands == b).sum()) for b in bands.unique()],
              "total_variance": {str(b): round(v, 3) for b, v in total.items()},
              # per frequency bin and latent number (channel x frame): white noise of unit variance gives 1 in every band
              "variance_per_bin_and_number": {str(b): round(v / (int((bands == b).sum()) * own.shape[1] * own.shape[2]), 4)
                                              for b, v in total.items()},
              "difference_energy": {k: {str(b): round(v, 3) for b, v in e.items()} for k, e in energy.items()},
              "share_of_band": {k: {str(b): round(e[b] / total[b], 4) for b in total} for k, e in energy.items()},
              "loudness": {k: {str(g): round(loudness(e, g), 4) for g in GAINS} for k, e in energy.items()},
              "gains": list(GAINS)}
    result["seconds"] = round(time.time() - began, 1)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "latent_spectrum.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("share_of_band", "loudness")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
