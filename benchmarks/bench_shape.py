"""Where is the shape lost in generation: in the generated latents, or in drawing them? (chapter 8)

    python benchmarks/bench_shape.py --clips 100      # writes benchmarks/results/shape.json

Trains chapter 3's small shape reader (two 3 x 3 convolutions per latent frame, a max over the
clip) on the *true* latents of training clips, then asks it about the latents each model
*generates* for held-out clips -- only the generated latent frames -- next to the probe's reading
of the decoded generated frames. If the reader fails too, the shape is missing from the latents
(the diffusion model's doing), not lost by the decoder. Each run also records both confusion tables
(true shape x shape read) and the generated object's fill ratio per true shape. Also samples the
shipped model's ``continue_2`` with more DDIM steps and with stochastic (eta = 1) steps (not with --no-extra).

    python benchmarks/bench_shape.py --models base_scratch monl --tasks a2v continue_2 --no-extra \
        --save-latents runs/generated.pt --out runs/shape.json             # sample once, keep the latents
    python benchmarks/bench_shape.py --models base_scratch monl --tasks a2v continue_2 --no-extra \
        --load-latents runs/generated.pt --video-ae runs/robust/video_ae --out runs/shape_robust.json
                                             # the same latents, drawn by another decoder
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench_noise_levels import encode, factor_labels, train_reader  # the same latent readers, one per factor
from avdit_mini.data import SHAPES, WorldDataset, collate
from avdit_mini.latents import video_segment_of_latent_frame
from avdit_mini import probes
from avdit_mini.metrics import _frames_in, generated_spans
from avdit_mini.checkpoints import sha256
from avdit_mini.diffusion import Latents
from avdit_mini.pipeline import CHECKPOINTS, load_autoencoder, load_pipeline
from avdit_mini.tasks import generate, resolve_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="held-out clips per task")
    parser.add_argument("--train-clips", type=int, default=3000)
    parser.add_argument("--reader-steps", type=int, default=1500)
    parser.add_argument("--models", nargs="*", default=["monl_4k", "monl_10k", "monl"])
    parser.add_argument("--tasks", nargs="+", default=["continue_2", "a2v"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-extra", action="store_true",
                        help="skip the shipped model's extra continue_2 runs (eta = 1, 200 DDIM steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models encode and sample (the reader always runs on the CPU)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shape.json"))
    parser.add_argument("--save-latents", default=None, metavar="FILE", help="keep every run's generated latents in FILE")
    parser.add_argument("--load-latents", default=None, metavar="FILE",
                        help="decode the latents an earlier run saved (same --clips, --models, --tasks) instead of sampling")
    parser.add_argument("--video-ae", default=None, metavar="STEM",
                        help="decode with this video autoencoder instead of the shipped one (a decoder fine-tuned "
                             "from it: the encoder, and so every latent, must be the shipped one's)")
    parser.add_argument("--latent-noise", type=float, nargs="*", default=[], metavar="SIGMA",
                        help="also decode the test clips' true latents plus Gaussian noise of these standard deviations "
                             "(the latents have unit variance): does the reader still find the shape, and the probe?")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    shipped = load_pipeline("monl", vocoder="griffin-lim", device=args.device)
    with torch.no_grad():
        train, train_factors = encode(shipped, "train", args.train_clips)
        test, test_factors = encode(shipped, "test", args.clips)
    test_latents, test_shapes = test.video.cpu(), factor_labels(test_factors, "shape")
    reader = train_reader(train.video.cpu(), factor_labels(train_factors, "shape"), "video", len(SHAPES), args.reader_steps)
    frame_segment = video_segment_of_latent_frame(shipped.geometry)
    decoder = None
    if args.video_ae:
        decoder = load_autoencoder("video", Path(args.video_ae).parent, name=Path(args.video_ae).name).to(args.device)
        mine, theirs = decoder.encoder.state_dict(), shipped.video_ae.encoder.state_dict()
        if any(not torch.equal(mine[k], theirs[k]) for k in theirs):
            raise ValueError(f"--video-ae {args.video_ae}: its encoder is not the shipped one, so its latents differ")
        shipped.video_ae = decoder
    loaded = torch.load(args.load_latents) if args.load_latents else None
    saved = {}

    def read(latents: torch.Tensor, frames: list[int]) -> float:
        with torch.no_grad():
            return float((reader(latents[:, :, frames]).argmax(1) == test_shapes).float().mean())

    def confusion(read_as: list[int | str | None]) -> list[list[int]]:
        """Rows: the true shape (SHAPES order); columns: the shape read (an index, or the probe's name; None: no object)."""
        table = np.zeros((len(SHAPES), len(SHAPES)), dtype=int)
        for true, seen in zip(test_shapes.tolist(), read_as):
            if seen in SHAPES:
                seen = SHAPES.index(seen)
            if isinstance(seen, int):
                table[true, seen] += 1
        return table.tolist()

    def probe_right(seen: list[dict]) -> float:
        """The share of clips whose probed shape is the true one."""
        return float(np.mean([s["shape"] == SHAPES[t] for s, t in zip(seen, test_shapes.tolist())]))

    def fill_ratios(seen: list[dict]) -> dict[str, float]:
        """Per true shape, the mean of the fill ratio (object area / its box's) that the probe decides the shape by."""
        return {shape: float(np.nanmean([s["fill_ratio"] for s, t in zip(seen, test_shapes.tolist()) if SHAPES[t] == shape]
                                        or [np.nan])) for shape in SHAPES}

    result = {"clips": args.clips, "train_clips": args.train_clips, "reader_steps": args.reader_steps,
              "video_ae": sha256(Path(args.video_ae).with_suffix(".safetensors") if args.video_ae else CHECKPOINTS / "video_ae.safetensors")[:12],
              "reader_on_true_latents": read(test_latents, list(range(test_latents.shape[2]))), "runs": []}
    dataset = WorldDataset(args.clips, "test")
    items = [dataset[i] for i in range(args.clips)]
    batch = collate(items)
    noise = torch.Generator().manual_seed(0)
    for sigma in args.latent_noise:  # a latent a little off, as a sample is: what survives the decoder?
        noisy = test_latents + sigma * torch.randn(test_latents.shape, generator=noise)
        with torch.no_grad():
            video, _ = shipped.decode(Latents(noisy.to(args.device), test.audio), audio=False)
        seen = [probes.measure_video(v) for v in video.cpu()]
        row = {"sigma": sigma, "reader": read(noisy, list(range(noisy.shape[2]))),
               "probe": probe_right(seen), "read_as_circle": float(np.mean([s["shape"] == "circle" for s in seen])),
               "probe_confusion": confusion([s["shape"] for s in seen]),
               "fill_ratio_by_true_shape": fill_ratios(seen)}
        result.setdefault("noisy_true_latents", []).append(row)
        print(row, flush=True)
    runs = [(name, task, "ddim", 0.0, 50) for name in args.models for task in args.tasks]
    if not args.no_extra:
        runs += [("monl", "continue_2", "ddim", 1.0, 50), ("monl", "continue_2", "ddim", 0.0, 200)]
    pipelines = {"monl": shipped}   # already loaded (with --video-ae's decoder, if given)
    for name, task, sampler, eta, steps in runs:
        if name not in pipelines:
            try:
                pipelines[name] = load_pipeline(name, vocoder="griffin-lim", device=args.device)
            except FileNotFoundError:
                if loaded is None:
                    raise
                # a model whose weights stayed on a lent GPU: its saved latents decode through the same autoencoders
                print(f"{name}: no checkpoint here; decoding its saved latents with the shipped autoencoders", flush=True)
                pipelines[name] = None
            if decoder is not None and pipelines[name] is not None:
                pipelines[name].video_ae = decoder
        pipeline = pipelines[name] or shipped
        task_pattern = resolve_task(task, pipeline.geometry.segments)
        generated_frames = [f for f in range(len(frame_segment)) if not task_pattern[0, frame_segment[f]]]
        key = f"{name} {task} {sampler} eta={eta} steps={steps}"
        if loaded is not None:
            if key not in loaded:
                raise KeyError(f"--load-latents {args.load_latents} has no run {key!r}; it has {sorted(loaded)}")
            latents = Latents(loaded[key]["video"].to(args.device), loaded[key]["audio"].to(args.device))
            with torch.no_grad():
                video, audio = (x.cpu() for x in pipeline.decode(latents))
        else:
            out = generate(pipeline, task_pattern, {"video": batch["video"], "audio": batch["audio"]}, steps=steps,
                           sampler=sampler, eta=eta, seed=0, batch_size=args.clips)
            latents, video, audio = out.latents, out.video, out.audio
        saved[key] = {"video": latents.video.cpu(), "audio": latents.audio.cpu()}
        # what each reads, clip by clip: the reader from the generated latent frames, the probe from the generated
        # frames' pixels (the frames metrics.score_clip reads), with the object's fill ratio the probe decides by (chapter 3)
        pixel_frames = _frames_in(generated_spans(task_pattern[0]), video.shape[2])
        seen = [probes.measure_video(v[:, pixel_frames]) for v in video]
        with torch.no_grad():
            reader_calls = reader(saved[key]["video"][:, :, generated_frames]).argmax(1).tolist()
        run = {"model": name, "trained_steps": pipelines[name].meta.get("step") if pipelines[name] else None, "task": task, "sampler": sampler, "eta": eta, "steps": steps,
               "reader_on_true_latents_same_frames": read(test_latents, generated_frames),
               "reader_on_generated_latents": float(np.mean(np.array(reader_calls) == test_shapes.numpy())),
               "probe_on_generated_frames": probe_right(seen),
               "reader_confusion": confusion(reader_calls), "probe_confusion": confusion([s["shape"] for s in seen]),
               "fill_ratio_by_true_shape": fill_ratios(seen)}
        result["runs"].append(run)
        print(run, flush=True)
        if args.save_latents:
            torch.save(saved, args.save_latents)
    result["seconds"] = round(time.perf_counter() - began, 1)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
