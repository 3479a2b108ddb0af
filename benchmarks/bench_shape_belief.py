"""How sure is the model of the shape? Its guess as a mixture of three drawings (chapter 8).

    python benchmarks/bench_shape_belief.py --clips 200     # writes benchmarks/results/shape_belief.json

Chapter 8's one-step guesses are read by small latent readers, and a reader can be fooled (chapter
7, "A caution about readers"). This benchmark reads the guess without one. Each held-out ``test``
clip is drawn three times on its own path, once with each shape (``World.redraw``), and encoded:
z_circle, z_square, z_triangle. For every generated latent frame of a task, in the 3 x 3 latent
cells around the object, the model's one-step guess x0_hat (the true latents noised to step t in the
generated cells, as ``bench_noise_levels.py`` does) is written as the nearest mixture

    x0_hat ~ w_circle z_circle + w_square z_square + w_triangle z_triangle,   w summing to 1

(least squares). The weights say how much of each drawing the guess holds; chapter 3 showed what the
decoder draws for such mixtures. How far the guess lies from the plane of the three drawings
(``off_plane``, against the distance between the two closest drawings) says whether it is a mixture
of shapes at all, or a blur of other things too (where the object is, mostly).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from avdit_mini import checkpoints
from avdit_mini.data import SHAPES, WorldDataset, collate
from avdit_mini.diffusion import Latents
from avdit_mini.latents import video_segment_of_latent_frame
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline
from avdit_mini.tasks import resolve_task

STEPS_T = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


def object_window(x: torch.Tensor, trajectory: torch.Tensor, latent_frame: int) -> torch.Tensor:
    """The 3 x 3 latent cells around the object in one latent frame, flattened: x [..., C, F, h, w] -> [..., C*9]."""
    frame = 0 if latent_frame == 0 else 4 * latent_frame  # the last video frame of the latent frame's group
    cx, cy = (int(v) // 8 for v in trajectory[frame])
    cx, cy = min(max(cx, 1), x.shape[-1] - 2), min(max(cy, 1), x.shape[-2] - 2)  # keep the window inside
    return x[..., latent_frame, cy - 1:cy + 2, cx - 1:cx + 2].flatten(-3)


def mixture_weights(drawings: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares weights w (summing to 1) with drawings.T @ w ~ y; drawings [3, D], y [D]. Returns w and the residual."""
    a = drawings.T.double()
    kkt = torch.zeros(4, 4, dtype=torch.float64)
    kkt[:3, :3] = 2 * a.T @ a
    kkt[:3, 3] = kkt[3, :3] = 1
    w = torch.linalg.solve(kkt, torch.cat([2 * a.T @ y.double(), torch.ones(1, dtype=torch.float64)]))[:3]
    return w.float(), float((a @ w - y.double()).norm())


def summarise(x: torch.Tensor, drawn: torch.Tensor, trajectories: torch.Tensor, truth: torch.Tensor,
              frames: list[int]) -> dict:
    """Mean weights by true shape, the weight on the truth, and the distances, over clips and generated frames."""
    weights, off, pair = [], [], []
    for i in range(len(x)):
        per_frame = []
        for f in frames:
            a = object_window(drawn[i], trajectories[i], f)          # [3, D]
            closest = float(torch.pdist(a).min())
            if closest < 1e-3:                                       # two drawings alike here (object out of view): no mixture to solve
                continue
            w, residual = mixture_weights(a, object_window(x[i], trajectories[i], f))
            per_frame.append(w)
            off.append(residual)
            pair.append(closest)
        weights.append(torch.stack(per_frame).mean(0) if per_frame else torch.full((3,), float("nan")))
    weights = torch.stack(weights)                                  # [N, 3]
    seen = ~weights.isnan().any(1)                                  # clips with at least one window to read
    weights, truth = weights[seen], truth[seen]
    on_truth = weights[torch.arange(len(weights)), truth]
    return {"weight_on_truth": round(float(on_truth.mean()), 4),
            "largest_weight_on_truth": round(float((weights.argmax(1) == truth).float().mean()), 4),
            "clips_read": int(seen.sum()),
            "weights_by_true_shape": {s: [round(float(v), 3) for v in weights[truth == k].mean(0)]
                                      for k, s in enumerate(SHAPES) if (truth == k).any()},
            "off_plane": round(float(torch.tensor(off).median()), 3), "closest_drawings": round(float(torch.tensor(pair).median()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200, help="held-out test clips")
    parser.add_argument("--model", default="monl", help="pipeline name: data/checkpoints/avdit_<model>")
    parser.add_argument("--tasks", nargs="*", default=["continue_2", "a2v"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="result file (default: benchmarks/results/shape_belief.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = load_pipeline(args.model, device=device, vocoder="griffin-lim").eval()
    dataset = WorldDataset(args.clips, "test")
    items = [dataset[i] for i in range(args.clips)]
    batch = collate(items)
    no_audio = torch.zeros(len(SHAPES), pipeline.scaler.audio_mean.numel(), 1, device=device)
    with torch.no_grad():
        clean = pipeline.encode(batch["video"], batch["audio"])
        drawn = torch.stack([pipeline.scaler.scale(pipeline.video_ae.encode(torch.stack(   # the clip itself for its own shape
            [item["video"] if s == item["factors"]["shape"] else dataset.world.redraw(item["factors"], s) for s in SHAPES])
            .to(device)), no_audio)[0].cpu() for item in items])
    # every model is read in the per-channel unit-variance latent (a model trained with a high-frequency gain
    # sees its latents emphasised; the weights and distances are measured without it, so models compare)
    plain = lambda video: pipeline.scaler.deemphasised(video.to(device)).cpu()  # noqa: E731
    drawn = torch.stack([plain(d) for d in drawn])
    truth = torch.tensor([SHAPES.index(item["factors"]["shape"]) for item in items])
    trajectories = torch.stack([item["factors"]["trajectory"] for item in items])
    frame_segment = video_segment_of_latent_frame(pipeline.geometry)
    generator = torch.Generator().manual_seed(0)
    noise = Latents(torch.randn(clean.video.shape, generator=generator).to(device),
                    torch.randn(clean.audio.shape, generator=generator).to(device))
    result = {"model": args.model, "trained_steps": pipeline.meta.get("step"), "clips": args.clips, "split": "test",
              "high_frequency_gain": float(pipeline.scaler.high_frequency_gain),
              "video_ae": checkpoints.sha256(CHECKPOINTS / "video_ae.safetensors")[:12], "steps_t": list(STEPS_T),
              "tasks": {}}
    for task in args.tasks:
        task_pattern = resolve_task(task, pipeline.geometry.segments)
        frames = [f for f in range(len(frame_segment)) if not task_pattern[0, frame_segment[f]]]
        rows = {"generated_latent_frames": frames, "clean": summarise(plain(clean.video), drawn, trajectories, truth, frames),
                "guess": [], "noisy_input": []}
        for t in STEPS_T:
            noisy, x0 = pipeline.diffusion.one_step_guess(pipeline.avdit, clean, task_pattern, t, noise)
            rescaled = noisy.video * float(pipeline.diffusion.schedule.alpha_bar[t]) ** -0.5
            rows["guess"].append(summarise(plain(x0.video), drawn, trajectories, truth, frames))
            rows["noisy_input"].append(summarise(plain(rescaled), drawn, trajectories, truth, frames))
            print(task, t, json.dumps(rows["guess"][-1]), flush=True)
        result["tasks"][task] = rows
    result["seconds"] = round(time.time() - began, 1)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "shape_belief.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
