"""Which noise levels decide a task's outcome? Sample with one model above a threshold t and another below (chapter 8, exercise 4).

    python benchmarks/bench_switch.py --high monl --low monl_10k --task continue_2 --clips 200 --thresholds 300 700

It runs each model alone, then for each threshold the task twice -- model A for the steps whose
largest t is above the threshold and model B below, then the other way round -- with the same
clips and noise every time, and records the probes' measures.
Writes ``benchmarks/results/switch_<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from avdit_mini import checkpoints
from avdit_mini.metrics import evaluate_task
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline, provenance, vocoder_name


class Switch(nn.Module):
    """The steps whose largest t is above ``threshold`` go to ``high``, the others to ``low``."""

    def __init__(self, high: nn.Module, low: nn.Module, threshold: int):
        super().__init__()
        self.high, self.low, self.threshold, self.config = high, low, threshold, high.config

    def forward(self, video, audio, grid):
        return (self.high if int(grid.max()) > self.threshold else self.low)(video, audio, grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--high", default="monl", help="pipeline A (data/checkpoints/avdit_<name>)")
    parser.add_argument("--low", default="monl_10k", help="pipeline B")
    parser.add_argument("--task", default="continue_2")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--thresholds", type=int, nargs="+", default=[300, 700])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--folder", default=str(CHECKPOINTS), help="where both pipelines and their autoencoders are")
    parser.add_argument("--one-way", action="store_true",
                        help="only --high above each threshold and --low below (a low-noise expert is no model above)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/switch_<task>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a, b = load_pipeline(args.high, args.folder), load_pipeline(args.low, args.folder)
    expert_range = b.meta.get("run", {}).get("max_step")  # a low-noise expert (train avdit --max-step) saw steps 1..S only
    if expert_range and (not args.one_way or max(args.thresholds) > expert_range):
        raise ValueError(f"{args.low} was trained on steps 1..{expert_range} only (--max-step): pass --one-way and "
                         f"thresholds <= {expert_range}")
    networks = {args.high: a.avdit, args.low: b.avdit}
    keys = ("video_shape", "video_size", "video_colour", "boundary_jump_error_px", "bounces_matched", "audio_shape")
    results = {"task": args.task, "clips": args.clips, "steps": args.steps, "vocoder": vocoder_name(a.audio_ae),
               "command": "python benchmarks/bench_switch.py " + " ".join(sys.argv[1:]),
               "made_by": {args.high: provenance(a), args.low: provenance(b)},
               "autoencoders": {name: checkpoints.sha256(Path(args.folder) / f"{name}.safetensors")[:12]
                                for name in ("video_ae", "audio_ae")}, "runs": []}
    pairs = [(args.high, args.high, 0)] + ([] if args.one_way else [(args.low, args.low, 0)])  # alone, same clips and noise
    directions = ((args.high, args.low),) if args.one_way else ((args.high, args.low), (args.low, args.high))
    pairs += [pair + (threshold,) for threshold in args.thresholds for pair in directions]
    for high, low, threshold in pairs:
        a.avdit = Switch(networks[high], networks[low], threshold).eval()
        began = time.perf_counter()
        measured = evaluate_task(a, args.task, args.clips, steps=args.steps, batch_size=50)
        run = {"above": high, "below": low, "threshold": threshold,
               **{k: measured[k] for k in keys if measured.get(k) is not None},
               "seconds": round(time.perf_counter() - began, 1)}
        results["runs"].append(run)
        print(run, flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"switch_{args.task}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
