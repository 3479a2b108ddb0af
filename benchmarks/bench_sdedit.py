"""From how much noise does the model find its way back to the truth? (chapter 8: "Finding the way back")

    python benchmarks/bench_sdedit.py --clips 100      # writes benchmarks/results/sdedit.json (~10 min, 2 threads)

SDEdit (Meng et al. 2022) run as a measurement: each held-out clip's *own* latents, the target
cells noised to a step tau (``GridDiffusion.sample(start_step=tau)``), are sampled back to 0 with
the same 50-step DDIM grid below tau, decoded and probed like any generation (``evaluate_task``).
tau = 1000 is the task itself (but for the sqrt(alpha_bar_T) ~ 0.3% of the clean latent left in the start); small tau leaves the answer in the input. The round trip of the same
clips through the autoencoders alone (tau = 0) is the ceiling. Where the curve falls says at which
noise level the model loses what it is asked for: continue_2's shape (drawn from the clip's own
frames), v2a's timbre (heard from its video).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from avdit_mini import checkpoints
from avdit_mini.data import WorldDataset, collate
from avdit_mini.metrics import evaluate_task, score_clip, summarise
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline, provenance
from avdit_mini.tasks import resolve_task

KEYS = ("video_shape", "video_colour", "video_size", "audio_shape", "audio_size", "shape_counts", "timbre_counts")


def round_trip(pipeline, task: str, n_clips: int, batch_size: int = 16) -> dict:
    """The same clips' scores through the autoencoders alone: the ceiling of any generation."""
    pattern, dataset, rows = resolve_task(task, pipeline.geometry.segments), WorldDataset(n_clips, "test"), []
    for start in range(0, n_clips, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n_clips))]
        batch = collate(items)
        video, audio = pipeline.decode(pipeline.encode(batch["video"], batch["audio"]))
        rows += [score_clip(pattern, v.cpu(), a.cpu(), item) for v, a, item in zip(video, audio, items)]
    return summarise(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="monl", help="pipeline name: <folder>/avdit_<name>")
    parser.add_argument("--folder", default=str(CHECKPOINTS))
    parser.add_argument("--clips", type=int, default=100, help="held-out (test) clips per task and step")
    parser.add_argument("--tasks", nargs="+", default=["continue_2", "v2a"])
    parser.add_argument("--start-steps", type=int, nargs="+", default=[50, 100, 200, 300, 400, 500, 600, 700, 800, 1000])
    parser.add_argument("--steps", type=int, default=50,
                        help="the DDIM grid's steps over 1000; below tau it keeps those under tau (1: one jump from tau to 0)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sdedit.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.time()
    pipeline = load_pipeline(args.name, Path(args.folder))
    result = {"pipeline": args.name, "made_by": provenance(pipeline), "clips": args.clips, "steps": args.steps, "sampler": "ddim", "guidance": 1.0,
              "autoencoders": {name: checkpoints.sha256(Path(args.folder) / f"{name}.safetensors")[:12]
                               for name in ("video_ae", "audio_ae")},
              "command": "python benchmarks/bench_sdedit.py " + " ".join(sys.argv[1:]), "tasks": {}}
    for task in args.tasks:
        rows = {"0": {k: v for k, v in round_trip(pipeline, task, args.clips).items() if k in KEYS}}
        print(task, 0, {k: v for k, v in rows["0"].items() if not isinstance(v, dict)}, flush=True)
        for tau in args.start_steps:
            scored = evaluate_task(pipeline, task, args.clips, steps=args.steps, start_step=tau, progress=False)
            rows[str(tau)] = {k: v for k, v in scored.items() if k in KEYS}
            print(task, tau, {k: v for k, v in rows[str(tau)].items() if not isinstance(v, dict)}, flush=True)
        result["tasks"][task] = rows
    result["seconds"] = round(time.time() - began, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
