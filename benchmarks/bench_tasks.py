"""Benchmark every task of a shipped pipeline with the probes (chapter 8).

    python benchmarks/bench_tasks.py --clips 200 --steps 50     # writes benchmarks/results/tasks_<name>.json
    python benchmarks/bench_tasks.py --tasks continue_2          # re-measures one task, keeps the others

Condition clips come from the held-out ``test`` split. Also measures sampling speed (clips per
second at the given number of DDIM steps) on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from avdit_mini.metrics import evaluate_task
from avdit_mini import checkpoints
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline, provenance, vocoder_name
from avdit_mini.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="monl", help="pipeline name: <folder>/avdit_<name>")
    parser.add_argument("--folder", default=str(CHECKPOINTS),
                        help="the checkpoints folder: the pipeline and the autoencoders that decode it")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's noise (ddpm is eta = 1)")
    parser.add_argument("--autoguide", default=None, metavar="NAME",
                        help="guide with a weaker model of the same latents, data/checkpoints/avdit_<NAME> (autoguidance, "
                             "weight --guidance), instead of MoNL's unconditional branch")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--vocoder", default="auto", choices=["auto", "postnet", "griffin-lim"],
                        help="how decoded log-mels become waveforms (auto: the shipped post-net if there is one)")
    parser.add_argument("--out", default=None, help="result file (default: benchmarks/results/tasks_<name>.json)")
    parser.add_argument("--replace", action="store_true",
                        help="replace --out even if it holds a run measured with other settings (else: an error)")
    args = parser.parse_args()
    if args.sampler == "ddpm" and args.eta not in (0.0, 1.0):
        parser.error("--sampler ddpm is eta = 1; to sample with another eta, use --sampler ddim --eta E")
    if args.sampler == "ddpm":
        args.eta = 1.0
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(args.folder)
    pipeline = load_pipeline(args.name, folder, device=device, vocoder=args.vocoder)
    guide = load_pipeline(args.autoguide, folder, device=device, vocoder=args.vocoder) if args.autoguide else None
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"tasks_{args.name}.json"
    result = {"pipeline": args.name, "trained_steps": pipeline.meta.get("step"),
              "warm_started_from": pipeline.meta.get("run", {}).get("init"), "clips": args.clips,
              "steps": args.steps, "guidance": args.guidance, "sampler": args.sampler,
              "eta": args.eta, "device": device, "machine": platform.processor(),
              "threads": args.threads,
              # which autoencoders decoded the generations (their sha256 in data/checkpoints/MANIFEST.json)
              "autoencoders": {name: checkpoints.sha256(folder / f"{name}.safetensors")[:12]
                               for name in ("video_ae", "audio_ae")},
              # how decoded log-mels became waveforms: the trained post-net + Griffin-Lim, or Griffin-Lim alone
              "vocoder": vocoder_name(pipeline.audio_ae),
              "made_by": provenance(pipeline),  # its run's settings and training loss (a pilot's --init, its terms)
              "tasks": {}}
    if guide is not None:  # chapter 8, "Guided by a weaker self"
        result["autoguide"] = {"pipeline": args.autoguide, "trained_steps": guide.meta.get("step")}
    if float(pipeline.scaler.high_frequency_gain) != 1.0:  # chapter 7, "Making the shape louder"
        result["high_frequency_gain"] = float(pipeline.scaler.high_frequency_gain)
    if pipeline.avdit.config.self_condition:  # chapter 7, "Reading its own guess"
        result["self_condition"] = True
    settings = ("pipeline", "trained_steps", "clips", "steps", "guidance", "sampler", "eta", "autoencoders", "vocoder",
                "autoguide")
    if out.exists():  # re-measuring some tasks keeps the others, if they were measured the same way
        earlier = json.loads(out.read_text())
        earlier.setdefault("vocoder", "griffin-lim")  # results from before the post-net
        earlier.setdefault("sampler", "ddim")  # results from before the sampler was a flag
        earlier.setdefault("eta", 0.0)
        if all(earlier.get(k) == result.get(k) for k in settings):
            result["tasks"] = {k: v for k, v in earlier.get("tasks", {}).items() if k not in args.tasks}
        elif args.replace:
            print(f"{out} was measured with other settings; it is replaced")
        else:
            differing = {k: (earlier.get(k), result.get(k)) for k in settings if earlier.get(k) != result.get(k)}
            raise SystemExit(f"{out} holds a run measured with other settings {differing} (theirs, these); pass --out "
                             "to write this one elsewhere, or --replace to overwrite it")
    for task in args.tasks:
        began = time.perf_counter()
        result["tasks"][task] = evaluate_task(pipeline, task, args.clips, steps=args.steps, guidance=args.guidance,
                                              batch_size=args.batch_size, sampler=args.sampler, eta=args.eta,
                                              guide=guide)
        result["tasks"][task]["seconds"] = time.perf_counter() - began
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))  # after every task: nothing lost if interrupted
        print(task, json.dumps(result["tasks"][task]), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
