"""Does the output carry what the condition says? A counterfactual condition, one factor changed (chapter 8).

    python benchmarks/bench_transfer.py --clips 200      # writes benchmarks/results/transfer.json (~1 min, 2 threads)

Chapter 7's probe reads the clip's shape from the very tokens the network draws with; chapter 8's
samples are round all the same. This benchmark asks the output directly. Each held-out ``test``
clip is drawn a second time with one factor changed -- its shape (``World.redraw``: the next shape,
on the same path) or its colour (the next colour) -- and encoded. The network is asked for its
one-step guess of the generated cells twice, with the same noisy input there (the *original* clip's
latents noised to step t, the same noise), once with the original condition cells and once with the
changed clip's. The difference of the two guesses, d, is compared with the difference of the two
clips' own latents in those cells, D (what a model that carried the factor over whole would change):

    transfer = <d, D> / <D, D>        (1: the change in the condition carried over whole; 0: ignored)

and the cosine of d and D (does the guess move the right way at all). Below 1 is expected where the
noisy input still shows the original (a good model partly trusts it), and from pure noise, where even
a perfect model's guess is blurred over where the object may be -- which takes more of a fine change
(a corner) than of a broad one (a colour). So the colour is a control, not a ceiling; what a perfect
model would carry is not measured. Two patterns: ``continue_2`` (the first two segments' picture and
sound given; the sound says the original shape) and ``continue_2_video`` (only the picture of the
first two segments given; the sound of all five is noised like the cells to make).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from avdit_mini import checkpoints
from avdit_mini.data import COLOURS, SHAPES, WorldDataset, collate, next_shape
from avdit_mini.diffusion import Latents
from avdit_mini.latents import video_segment_of_latent_frame
from avdit_mini.pipeline import CHECKPOINTS, load_pipeline, provenance
from avdit_mini.tasks import resolve_task

STEPS_T = (200, 400, 600, 800, 1000)
PATTERNS = {"continue_2": "continue_2", "continue_2_video": [[True, True, False, False, False], [False] * 5]}


def changed_clip(world, factors: dict, factor: str) -> torch.Tensor:
    """The clip of ``factors`` drawn with the next shape or the next colour, on its own path: video [3, T, H, W]."""
    if factor == "shape":
        return world.redraw(factors, next_shape(factors["shape"]))
    if factor != "colour":
        raise ValueError(f"unknown factor {factor!r}: 'shape' or 'colour'")
    colours = list(COLOURS)
    other = colours[(colours.index(factors["colour"]) + 1) % len(colours)]
    frames = world.render({**factors, "colour": other}, factors["trajectory"].numpy())
    return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()


def transfer(d: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip: the share of D that d carries, <d, D> / <D, D>, and the cosine of d and D ([B, ...] -> [B], [B])."""
    d, D = d.flatten(1), D.flatten(1)
    dot = (d * D).sum(1)
    return dot / D.square().sum(1).clamp(min=1e-12), dot / (d.norm(dim=1) * D.norm(dim=1)).clamp(min=1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200, help="held-out test clips")
    parser.add_argument("--name", default="monl", help="pipeline name: <folder>/avdit_<name>")
    parser.add_argument("--folder", default=str(CHECKPOINTS))
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cross-modal", action="store_true",
                        help="also a2v and v2a: the shape changed in the sound (its timbre) and in the picture")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "transfer.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.time()
    pipeline = load_pipeline(args.name, Path(args.folder), vocoder="griffin-lim").eval()
    diffusion, geometry = pipeline.diffusion, pipeline.geometry
    dataset = WorldDataset(args.clips, "test")
    frame_segment = torch.as_tensor(video_segment_of_latent_frame(geometry))
    factors_ = ("shape", "colour")
    sums = {task: {f: {t: {"transfer": [], "cosine": []} for t in STEPS_T} for f in factors_} for task in PATTERNS}
    originals: list[str] = []  # each clip's own shape (the shape change is to the next one: circle -> square -> triangle)
    loudness = {f: [] for f in factors_}  # |D|^2 per clip: how much the factor changes the generated cells
    cross = {task: {t: {"transfer": [], "cosine": []} for t in STEPS_T} for task in ("a2v", "v2a")}
    generator = torch.Generator().manual_seed(0)
    for start in range(0, args.clips, args.batch_size):
        items = [dataset[i] for i in range(start, min(start + args.batch_size, args.clips))]
        originals += [it["factors"]["shape"] for it in items]
        batch = collate(items)
        with torch.no_grad():
            clean = pipeline.encode(batch["video"], batch["audio"])
            changed = {f: pipeline.encode(torch.stack([changed_clip(dataset.world, it["factors"], f) for it in items]),
                                          batch["audio"]).video for f in factors_}
            noise = Latents(torch.randn(clean.video.shape, generator=generator), torch.randn(clean.audio.shape, generator=generator))
            for task, given in PATTERNS.items():
                pattern = resolve_task(given, geometry.segments)
                made = ~pattern[0][frame_segment]                                   # [F] generated video frames
                for t in STEPS_T:
                    grid = torch.where(pattern, 0, t).long().expand(len(items), -1, -1)
                    noisy = diffusion.q_sample(clean, grid, noise)                   # the original clip's targets
                    guess = diffusion.predict(pipeline.avdit, noisy, grid)[1].video
                    for f in factors_:
                        given_video = torch.where(made.reshape(1, 1, -1, 1, 1), noisy.video, changed[f])  # other condition
                        other = diffusion.predict(pipeline.avdit, Latents(given_video, noisy.audio), grid)[1].video
                        D = (changed[f] - clean.video)[:, :, made]
                        share, cosine = transfer((other - guess)[:, :, made], D)
                        sums[task][f][t]["transfer"] += share.tolist()
                        sums[task][f][t]["cosine"] += cosine.tolist()
                        if task == "continue_2" and t == STEPS_T[0]:
                            loudness[f] += D.flatten(1).square().sum(1).tolist()
            if args.cross_modal:  # the shape changed in both: a2v is given the changed sound, v2a the changed picture
                resounded = [dataset.world.resound(it["factors"], next_shape(it["factors"]["shape"])) for it in items]
                heard = pipeline.encode(batch["video"], torch.stack(resounded)).audio
                for task in cross:
                    pattern = resolve_task(task, geometry.segments)
                    for t in STEPS_T:
                        grid = torch.where(pattern, 0, t).long().expand(len(items), -1, -1)
                        noisy = diffusion.q_sample(clean, grid, noise)
                        swapped = Latents(noisy.video, heard) if task == "a2v" else Latents(changed["shape"], noisy.audio)
                        guess, other = (diffusion.predict(pipeline.avdit, x, grid)[1] for x in (noisy, swapped))
                        if task == "a2v":
                            share, cosine = transfer(other.video - guess.video, changed["shape"] - clean.video)
                        else:
                            share, cosine = transfer(other.audio - guess.audio, heard - clean.audio)
                        cross[task][t]["transfer"] += share.tolist()
                        cross[task][t]["cosine"] += cosine.tolist()
        print(f"{start + len(items)} clips", flush=True)

    def summary(values: list[float]) -> dict:
        x = torch.tensor(values)
        return {"mean": round(float(x.mean()), 4), "median": round(float(x.median()), 4)}

    result = {"pipeline": args.name, "made_by": provenance(pipeline), "clips": args.clips, "split": "test",
              "autoencoders": {name: checkpoints.sha256(Path(args.folder) / f"{name}.safetensors")[:12]
                               for name in ("video_ae", "audio_ae")},
              "patterns": {task: resolve_task(given, geometry.segments).int().tolist() for task, given in PATTERNS.items()},
              "steps_t": list(STEPS_T), "changed_latent_energy": {f: summary(v) for f, v in loudness.items()},
              "command": "python benchmarks/bench_transfer.py " + " ".join(sys.argv[1:]),
              "tasks": {task: {f: {str(t): {k: summary(v) for k, v in rows.items()} for t, rows in by_t.items()}
                               for f, by_t in by_factor.items()} for task, by_factor in sums.items()}}
    nxt = {s: next_shape(s) for s in SHAPES}
    result["shape_change_by_pair"] = {   # continue_2_video: the transfer of each change of shape
        f"{s} -> {nxt[s]}": {"clips": originals.count(s), **{str(t): summary(
            [v for v, o in zip(sums["continue_2_video"]["shape"][t]["transfer"], originals) if o == s]) for t in STEPS_T}}
        for s in SHAPES}
    if args.cross_modal:
        result["cross_modal_shape"] = {task: {str(t): {k: summary(v) for k, v in rows.items()} for t, rows in by_t.items()}
                                       for task, by_t in cross.items()}
        result["cross_modal_shape_by_pair"] = {task: {f"{s} -> {nxt[s]}": {str(t): summary(
            [v for v, o in zip(cross[task][t]["transfer"], originals) if o == s]) for t in STEPS_T} for s in SHAPES}
            for task in cross}
    result["seconds"] = round(time.time() - began, 1)
    for task, by_factor in result["tasks"].items():
        for f, by_t in by_factor.items():
            print(task, f, " | ".join(f"t={t}: {r['transfer']['mean']:.2f} (cos {r['cosine']['mean']:.2f})" for t, r in by_t.items()))
    for task, by_t in result.get("cross_modal_shape", {}).items():
        print(task, "shape", " | ".join(f"t={t}: {r['transfer']['mean']:.2f} (cos {r['cosine']['mean']:.2f})" for t, r in by_t.items()))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
