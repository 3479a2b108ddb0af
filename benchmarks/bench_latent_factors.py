"""How loud is each factor in a video latent? (chapter 7: why the plain loss does not hear the shape)

    python benchmarks/bench_latent_factors.py --clips 1500   # writes benchmarks/results/latent_factors.json

For each latent frame, the 3 x 3 latent cells around the object (where the world's ground truth
puts it at that frame; minus the clip's median cell, the background) form a 72-number vector. Over
``--clips`` training clips, the share of that vector's variance that the factor's class means
explain (between-class over total) says how much of the squared error the factor is worth; a linear
classifier on 70% of the clips, tested on the rest, says whether it is there at all. For the first
latent frame, the distance between the square's and the circle's mean vectors, and the diffusion
step at which noise of the same size hides it (sqrt(alpha_bar) d / 2 = sqrt(1 - alpha_bar), cosine
schedule), and how much the square-circle direction turns with the object's place inside its cell.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from avdit_mini.data import COLOURS, SHAPES, SIZES
from avdit_mini.perceptual import factor_labels
from avdit_mini.pipeline import load_pipeline
from avdit_mini.schedules import NoiseSchedule
from train_latent_reader import encode_video  # benchmarks/, beside this script

CLASSES = {"shape": list(SHAPES), "colour": list(COLOURS), "radius": list(SIZES)}


def object_neighbourhoods(video: torch.Tensor, factors: list[dict], latent_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C*9] background-subtracted 3 x 3 cells around the object, and its place inside its cell [N, 2] (px)."""
    frame = 0 if latent_frame == 0 else 4 * latent_frame  # the last video frame of the latent frame's group
    lat = video[:, :, latent_frame]
    lat = lat - lat.flatten(2).median(-1).values[:, :, None, None]
    padded = F.pad(lat, (1, 1, 1, 1), mode="replicate")
    xy = torch.stack([f["trajectory"][frame] for f in factors])
    cx, cy = (xy[:, 0] // 8).long().clamp(0, 7), (xy[:, 1] // 8).long().clamp(0, 7)
    cells = torch.stack([padded[i, :, cy[i]:cy[i] + 3, cx[i]:cx[i] + 3] for i in range(len(factors))])
    return cells.flatten(1), xy % 8


def between_share(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x - x.mean(0)
    total = (x ** 2).sum(1).mean()
    between = sum((x[y == c].mean(0) ** 2).sum() * (y == c).float().mean() for c in y.unique())
    return (between / total).item()


def linear_accuracy(x: torch.Tensor, y: torch.Tensor, steps: int = 600) -> float:
    torch.manual_seed(0)
    cut = int(0.7 * len(x))
    z = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    weight = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    bias = torch.zeros(int(y.max()) + 1, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(z[:cut] @ weight + bias, y[:cut]) + 1e-3 * (weight ** 2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return ((z[cut:] @ weight + bias).argmax(1) == y[cut:]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1500)
    parser.add_argument("--pipeline", default="monl", help="whose autoencoders and latent scaling (avdit_<name>)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latent_factors.json"))
    args = parser.parse_args()
    began = time.time()
    pipeline = load_pipeline(args.pipeline)
    video, factors = encode_video(pipeline, "train", args.clips)
    labels = factor_labels(factors, CLASSES)
    frames = []
    for latent_frame in range(video.shape[2]):
        x, _ = object_neighbourhoods(video, factors, latent_frame)
        frames.append({"latent_frame": latent_frame, "variance": round((x - x.mean(0)).pow(2).sum(1).mean().item(), 2),
                       **{k: {"between_share": round(between_share(x, y), 4), "linear_accuracy": round(linear_accuracy(x, y), 4)}
                          for k, y in labels.items()}})
        print(frames[-1])
    x, offset = object_neighbourhoods(video, factors, 0)
    shape = labels["shape"]
    means = lambda mask: {c: x[mask & (shape == c)].mean(0) for c in range(3)}  # noqa: E731
    whole = means(torch.ones_like(shape, dtype=torch.bool))
    pairs = {f"{SHAPES[a]}-{SHAPES[b]}": (a, b) for a, b in ((1, 0), (2, 0), (2, 1))}
    distance = {name: round((whole[a] - whole[b]).norm().item(), 3) for name, (a, b) in pairs.items()}
    alpha_bar = NoiseSchedule("cosine", 1000).alpha_bar
    hidden_at = {}
    for name, d in distance.items():  # the first step where the noise's spread along the difference exceeds half of it
        signal = alpha_bar.sqrt() * d / 2
        hidden_at[name] = int(torch.nonzero(signal < (1 - alpha_bar).sqrt())[0])
    turns = {}
    for name, mask in (("upper-left of its cell", (offset < 4).all(1)), ("lower-right of its cell", (offset >= 4).all(1))):
        part = means(mask)
        turns[name] = round(F.cosine_similarity(part[1] - part[0], whole[1] - whole[0], dim=0).item(), 3)
    result = {"pipeline": args.pipeline, "clips": args.clips, "split": "train", "frames": frames,
              "first_frame_mean_distance": distance, "hidden_by_noise_at_step": hidden_at,
              "square_circle_direction_cosine_to_overall": turns, "seconds": round(time.time() - began, 1)}
    print(json.dumps({k: v for k, v in result.items() if k != "frames"}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
