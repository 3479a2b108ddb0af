"""What does the model know at each noise level? (chapter 8)

    python benchmarks/bench_noise_levels.py --clips 200    # writes benchmarks/results/noise_levels.json

For a task whose condition *determines* a factor of the generated cells -- the shape, size and
colour of the object for ``continue_2`` (it is in view in the given segments), its shape and size
for ``a2v`` (the impact's timbre and pitch say them), the timbre and pitch for ``v2a`` (the object's
shape and size) -- the true latents of held-out clips are noised to step t in the generated cells
(the condition cells stay clean, as in sampling) and the shipped model makes *one* prediction of the
clean latent x0. Small readers trained on true latents (chapter 3's shape reader, one per factor;
a 1-D one for the audio latents) then say how often that guess carries the factor, at each t.

Two references beside it: the same readers on the noisy input itself (rescaled by 1/sqrt(alpha_bar):
how much of the truth is still there to be seen), and on the latents a full 50-step DDIM sampling
ends with (what the model finally commits to).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avdit_mini.data import COLOURS, SHAPES, WorldDataset, collate
from avdit_mini.diffusion import Latents
from avdit_mini.latents import video_segment_of_latent_frame
from avdit_mini.pipeline import load_pipeline
from avdit_mini.tasks import resolve_task

STEPS_T = (30, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
# what each task's condition determines: (modality, factor) pairs read in the generated cells
DETERMINED = {"continue_2": [("video", "shape"), ("video", "size"), ("video", "colour")],
              "a2v": [("video", "shape"), ("video", "size")],
              "v2a": [("audio", "shape"), ("audio", "size")]}  # the sound of the shape (timbre) and of the size (pitch)
CLASSES = {"shape": list(SHAPES), "size": [0, 1, 2], "colour": list(COLOURS)}


def factor_labels(factors: list[dict], factor: str) -> torch.Tensor:
    return torch.tensor([CLASSES[factor].index(f[factor]) for f in factors])


def encode(pipeline, split: str, n: int) -> tuple[Latents, list[dict]]:
    """Unit-variance latents of a split's first n clips, and their factors."""
    dataset, video, audio, factors = WorldDataset(n, split), [], [], []
    for start in range(0, n, 64):
        batch = collate([dataset[i] for i in range(start, min(n, start + 64))])
        latents = pipeline.encode(batch["video"], batch["audio"])
        video.append(latents.video), audio.append(latents.audio)
        factors += batch["factors"]
    return Latents(torch.cat(video), torch.cat(audio)), factors


def make_reader(modality: str, channels: int, classes: int) -> nn.Module:
    """Chapter 3's small reader: two 3-tap convolutions per latent frame, then a max over the clip."""
    if modality == "video":
        conv = lambda i, o: nn.Conv3d(i, o, (1, 3, 3), padding=(0, 1, 1))  # noqa: E731
    else:
        conv = lambda i, o: nn.Conv1d(i, o, 3, padding=1)  # noqa: E731
    pool = nn.AdaptiveMaxPool3d(1) if modality == "video" else nn.AdaptiveMaxPool1d(1)
    return nn.Sequential(conv(channels, 64), nn.SiLU(), conv(64, 64), nn.SiLU(), pool, nn.Flatten(), nn.Linear(64, classes))


def train_reader(latents: torch.Tensor, labels: torch.Tensor, modality: str, classes: int, steps: int,
                 reader: nn.Module | None = None, cosine: bool = False) -> nn.Module:
    """Fit ``reader`` (default: chapter 3's, :func:`make_reader`) to the labels; ``cosine``: decay the learning rate."""
    if reader is None:
        torch.manual_seed(0)
        reader = make_reader(modality, latents.shape[1], classes)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps) if cosine else None
    for _ in range(steps):
        pick = torch.randint(0, len(latents), (64,))
        loss = F.cross_entropy(reader(latents[pick]), labels[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
    return reader.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200, help="held-out clips")
    parser.add_argument("--train-clips", type=int, default=3000, help="clips the readers learn from")
    parser.add_argument("--reader-steps", type=int, default=1500)
    parser.add_argument("--model", default="monl", help="pipeline name: data/checkpoints/avdit_<model>")
    parser.add_argument("--out", default=None, help="result file (default: benchmarks/results/noise_levels.json)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    pipeline = load_pipeline(args.model, vocoder="griffin-lim").eval()
    with torch.no_grad():
        train, train_factors = encode(pipeline, "train", args.train_clips)
        clean, test_factors = encode(pipeline, "test", args.clips)
    readers, truth = {}, {}
    for modality, factor in sorted({pair for pairs in DETERMINED.values() for pair in pairs}):
        latents = train.video if modality == "video" else train.audio
        readers[modality, factor] = train_reader(latents, factor_labels(train_factors, factor), modality,
                                                 len(CLASSES[factor]), args.reader_steps)
        truth[factor] = factor_labels(test_factors, factor)
    frame_segment = video_segment_of_latent_frame(pipeline.geometry)

    @torch.no_grad()
    def read(latents: Latents, modality: str, factor: str, frames: list[int]) -> float:
        x = latents.video[:, :, frames] if modality == "video" else latents.audio
        return round(float((readers[modality, factor](x).argmax(1) == truth[factor]).float().mean()), 4)

    result = {"model": args.model, "clips": args.clips, "train_clips": args.train_clips, "reader_steps": args.reader_steps,
              "steps_t": list(STEPS_T), "tasks": {}}
    generator = torch.Generator().manual_seed(0)
    noise = Latents(torch.randn(clean.video.shape, generator=generator), torch.randn(clean.audio.shape, generator=generator))
    for task, pairs in DETERMINED.items():
        task_pattern = resolve_task(task, pipeline.geometry.segments)
        frames = [f for f in range(len(frame_segment)) if not task_pattern[0, frame_segment[f]]]
        rows = {f"{m}_{f}": {"true": read(clean, m, f, frames), "x0_prediction": [], "noisy_input": []} for m, f in pairs}
        for t in STEPS_T:
            noisy, x0 = pipeline.diffusion.one_step_guess(pipeline.avdit, clean, task_pattern, t, noise)
            scale = float(pipeline.diffusion.schedule.alpha_bar[t]) ** -0.5
            rescaled = Latents(noisy.video * scale, noisy.audio * scale)
            for m, f in pairs:
                rows[f"{m}_{f}"]["x0_prediction"].append(read(x0, m, f, frames))
                rows[f"{m}_{f}"]["noisy_input"].append(read(rescaled, m, f, frames))
        with torch.no_grad():  # where a whole 50-step DDIM run ends, from the same clean condition cells
            sampled = pipeline.diffusion.sample(pipeline.avdit, task_pattern, clean, steps=50,
                                                generator=torch.Generator().manual_seed(0))
        for m, f in pairs:
            rows[f"{m}_{f}"]["sampled"] = read(sampled, m, f, frames)
        result["tasks"][task] = rows
        print(task, json.dumps(rows), flush=True)
    result["seconds"] = round(time.perf_counter() - began, 1)
    out_path = Path(args.out) if args.out else Path(__file__).parent / "results" / "noise_levels.json"
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
