"""Measuring generated clips with the probes: cross-modal accuracy, sync, consistency (chapters 8-9).

Every number compares what the probes measure on a *generated* clip with the ground truth of the
*condition* clip it was generated from (or, for joint generation, with the clip's own other
modality). Nothing here is learned: the instruments are those of chapter 1.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch

from . import probes
from .data import COLOURS, SHAPES, WorldDataset, collate
from .latents import segment_bounds
from .tasks import generate, resolve_task

VIDEO_FACTORS = ("shape", "size", "background", "colour")
AUDIO_FACTORS = ("shape", "size", "background")  # heard as timbre, pitch and drone


def _first_target_frame(task_pattern: torch.Tensor, frames_per_group: int = 4) -> int | None:
    """The first video frame of the first generated video segment after a condition segment."""
    row = task_pattern[0].tolist()
    for n in range(1, len(row)):
        if row[n - 1] and not row[n]:
            return 1 + frames_per_group * (n - 1)  # segment n >= 1 starts at video frame 4(n-1)+1
    return None


def _video_checks(seen: dict, factors: dict) -> dict:
    return {f"video_{k}": seen[k] == factors[k] for k in VIDEO_FACTORS}


def _audio_checks(heard: dict, factors: dict) -> dict:
    return {f"audio_{k}": heard[k] == factors[k] for k in AUDIO_FACTORS}


def _bounces_on_impacts(bounce_frames: list[int], impact_times: list[float], fps: int = 8) -> float | None:
    """Fraction of video bounce frames that have an audio impact within one frame (125 ms)."""
    if not bounce_frames:
        return None
    return float(np.mean([any(abs(b / fps - t) <= 1.0 / fps for t in impact_times) for b in bounce_frames]))


def generated_spans(row: torch.Tensor) -> list[tuple[float, float]]:
    """[start, end) in seconds of each stretch of a row's generated segments ([] if it has none).

    Every task of the registry generates one stretch; a designed pattern such as ``CGCGC`` has several.
    """
    bounds, spans = segment_bounds(), []
    for n, given in enumerate(row.tolist()):
        if given:
            continue
        start, end = float(bounds[n, 0]), float(bounds[n, 1])
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)  # the next segment of the same stretch
        else:
            spans.append((start, end))
    return spans


def _frames_in(spans: list[tuple[float, float]], frames: int, fps: int = 8) -> list[int]:
    """The video frames whose time f / fps lies in one of the spans."""
    return [f for f in range(frames) if probes.in_spans(f / fps, spans)]


def score_clip(task_pattern: torch.Tensor, video: torch.Tensor, audio: torch.Tensor, condition: dict) -> dict:
    """Probe one generated clip against the ground truth of the clip it was conditioned on.

    The generated video is checked when its row has target cells, the audio likewise. Factors
    the condition determines must match; the colour is reported but only *must* match when the
    condition contains video (a2v has to invent it). The identity (shape, size, scene, colour) is
    measured on the **generated segments alone** (``generated_spans``): in a continuation the
    given frames come back bit-identical in the latent, and letting them vote would credit the model with what it was
    handed. The audio's timbre and pitch are heard only at impacts, so they are scored where the
    condition clip has an impact inside the generated span (None -- not measurable -- elsewhere).
    """
    factors = condition["factors"]
    fps = 8
    result: dict = {}
    video_spans, audio_spans = generated_spans(task_pattern[0]), generated_spans(task_pattern[1])
    seen = probes.measure_video(video) if video_spans else None
    heard = probes.measure_audio(audio, span=audio_spans) if audio_spans else None
    if seen is not None:
        frames = _frames_in(video_spans, video.shape[1], fps)
        identity = seen if len(frames) == video.shape[1] else probes.measure_video(video[:, frames])
        result.update(_video_checks(identity, factors))
        result["generated_colour"] = identity["colour"]
        result["generated_shape"], result["condition_shape"] = identity["shape"], factors["shape"]
        truth = probes.resolvable_bounce_frames(factors, fps=fps)
        if task_pattern[1].all():  # audio fully given: bounces must land on its impacts
            result["bounces_matched"] = (float(np.mean([any(abs(b - p) <= 1 for p in seen["bounce_frames"]) for b in truth]))
                                         if truth else None)
        boundary = _first_target_frame(task_pattern)
        if boundary is not None:
            trajectory = seen["trajectory"].numpy()
            true = factors["trajectory"].numpy()
            jump = np.linalg.norm(trajectory[boundary] - trajectory[boundary - 1])
            true_jump = np.linalg.norm(true[boundary] - true[boundary - 1])
            result["boundary_jump_error_px"] = float(abs(jump - true_jump)) if np.isfinite(jump) else None
    if heard is not None:
        result.update(_audio_checks(heard, factors))
        if not any(probes.in_spans(t, audio_spans) for t in factors["impact_times"]):
            result["audio_shape"] = result["audio_size"] = None  # no impact to hear them by in the generated span
        elif heard["shape"] is not None:  # the timbre heard, kept for the confusion (chapter 8)
            result["heard_shape"], result["condition_shape"] = heard["shape"], factors["shape"]
        if task_pattern[0].all():  # video fully given: impacts must land on its events
            matched = probes.match_times(heard["impact_times"], factors["impact_times"], tolerance=1.0 / fps)
            result["impact_errors_s"] = matched["errors"]
            result["impact_recall"] = 1 - matched["missed"] / max(len(factors["impact_times"]), 1)
    if seen is not None and heard is not None and not task_pattern.any():  # joint (all generated: identity is seen)
        result["joint_shape_timbre"] = seen["shape"] == heard["shape"]
        result["joint_size_pitch"] = seen["size"] == heard["size"]
        result["joint_scene_drone"] = seen["background"] == heard["background"]
        result["joint_bounces_on_impacts"] = _bounces_on_impacts(seen["bounce_frames"], heard["impact_times"], fps)
    return result


def summarise(rows: list[dict]) -> dict:
    """Average each measurement over clips (None = not measurable on that clip, skipped)."""
    summary: dict = {"clips": len(rows)}
    keys = sorted({k for r in rows for k in r} - {"generated_colour", "generated_shape", "heard_shape", "condition_shape",
                                                  "impact_errors_s", "code_shape"})
    for key in keys:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        summary[key] = float(np.mean(values)) if values else None
    errors = [e for r in rows for e in r.get("impact_errors_s", [])]
    if any("impact_errors_s" in r for r in rows):
        summary["impact_median_error_ms"] = 1000 * float(np.median(errors)) if errors else None
    colours = [r["generated_colour"] for r in rows if r.get("generated_colour")]
    if colours:
        counts = Counter(colours)
        summary["colour_counts"] = {c: counts.get(c, 0) for c in COLOURS}
        p = np.array([counts.get(c, 0) for c in COLOURS], dtype=float) / len(colours)
        summary["colour_entropy_bits"] = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
        summary["colour_entropy_max_bits"] = math.log2(len(COLOURS))
    # what the probe saw drawn (chapter 8: "every object is round") and the timbre heard at the generated impacts,
    # each by the condition clip's shape
    for key, name in (("generated_shape", "shape_counts"), ("heard_shape", "timbre_counts"), ("code_shape", "code_counts")):
        pairs = Counter((r["condition_shape"], r[key]) for r in rows if r.get(key))
        if pairs:
            summary[name] = {true: {said: pairs.get((true, said), 0) for said in SHAPES} for true in SHAPES}
    return summary


def code_votes(pipeline, latents, task_pattern: torch.Tensor) -> list[str]:
    """The shape each generated clip's shape code says (its channels summed over the generated video latent frames;
    the largest wins), for a video autoencoder with a shape code (``train autoencoder --shape-code``); else []."""
    video_ae = pipeline.video_ae
    if getattr(video_ae, "shape_coder", None) is None:
        return []
    generated = ~task_pattern[0].bool()  # one video latent frame per segment
    if not generated.any():
        return []
    video, _ = pipeline.scaler.unscale(latents.video, latents.audio)
    _, code = video_ae.split_code(video)
    return [SHAPES[i] for i in video_ae.shape_coder.vote(code[:, :, generated.to(video.device)]).tolist()]


def evaluate_task(pipeline, task: str | torch.Tensor, n_clips: int, steps: int = 50, guidance: float = 1.0,
                  batch_size: int = 16, seed: int = 0, split: str = "test", progress: bool = True,
                  sampler: str = "ddim", eta: float = 0.0, guide=None, start_step: int | None = None) -> dict:
    """Generate ``n_clips`` clips of a task from held-out condition clips and score them.

    ``sampler`` and ``eta`` are :meth:`GridDiffusion.sample`'s (DDIM with eta = 0 by default);
    ``guide`` a weaker pipeline for autoguidance (:func:`~avdit_mini.tasks.generate`); ``start_step``:
    the target cells start from the condition clip's own latents noised to that step (SDEdit)."""
    task_pattern = resolve_task(task, pipeline.geometry.segments)
    dataset = WorldDataset(n_clips, split)
    rows, seconds = [], 0.0
    batches = range(0, n_clips, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{task if isinstance(task, str) else 'pattern'}", leave=False)
    for start in batches:
        items = [dataset[i] for i in range(start, min(start + batch_size, n_clips))]
        batch = collate(items)
        began = time.perf_counter()
        out = generate(pipeline, task_pattern, {"video": batch["video"], "audio": batch["audio"]}, steps=steps,
                       guidance=guidance, seed=seed + start, batch_size=len(items), sampler=sampler, eta=eta,
                       guide=guide, start_step=start_step)
        seconds += time.perf_counter() - began
        scored = [score_clip(task_pattern, v, a, item) for v, a, item in zip(out.video, out.audio, items)]
        for row, said in zip(scored, code_votes(pipeline, out.latents, task_pattern)):
            row["code_shape"] = said  # an autoencoder with a shape code: what the generated code says
            row["video_code_shape"] = said == row["condition_shape"]
        rows += scored
    summary = summarise(rows)
    summary.update({"steps": steps, "guidance": guidance, "clips_per_second": n_clips / seconds})
    if (sampler, eta) != ("ddim", 0.0):
        summary.update({"sampler": sampler, "eta": eta})
    if start_step is not None:
        summary["start_step"] = start_step
    return summary
