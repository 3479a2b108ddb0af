"""Measuring a clip from its pixels and samples alone (chapter 1).

The probes are the book's instruments: every later chapter uses them to ask whether a generated
clip agrees with its condition. They use no learned model (an instrument must not share the
failure modes of what it measures) and no ground truth: only what a viewer sees and hears.

* video: background colour, object colour, shape, size, centroid trajectory, bounce frames;
* audio: impact onset times, timbre, pitch (-> size), drone (-> background).

They are benchmarked against the world's ground truth in chapter 1 before they are trusted.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import BACKGROUNDS, COLOURS, PITCHES, SHAPES, SIZES, TIMBRES

_BACKGROUND_RGB = np.array([rgb for rgb, _ in BACKGROUNDS.values()])  # [4, 3]
_COLOUR_RGB = np.array(list(COLOURS.values()))  # [6, 3]
_DRONES = np.array([hz for _, hz in BACKGROUNDS.values()])  # [4]
# area of each shape in units of radius^2 (see data._shape_mask): circle, square, triangle
_AREA_PER_R2 = {"circle": math.pi, "square": 1.8**2, "triangle": 3 * math.sqrt(3) / 4 * 1.2**2}
# fill ratio of the bounding box: pi/4 for a circle, 1 for a square, 1/2 for a triangle
_FILL_RATIOS = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


def _nearest(value: np.ndarray, table: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(table - value[None, :], axis=1)))


def _majority(labels: list) -> object:
    labels = [x for x in labels if x is not None]
    if not labels:
        return None
    values, counts = np.unique(np.array(labels, dtype=object).astype(str), return_counts=True)
    return str(values[np.argmax(counts)])


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------
def object_coverage(video: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel object coverage [T, H, W] in [0, 1], the background RGB and the object RGB.

    The background is the median pixel of the clip (the object covers a few per cent of it).
    The object's colour is the median of the pixels farthest from the background; a pixel's
    coverage is its projection on the background -> object colour line, so anti-aliased edges
    count fractionally and areas are measured to sub-pixel accuracy.
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W] in [0, 1], got shape {list(video.shape)}")
    pixels = video.detach().float().cpu().clamp(0, 1).permute(1, 2, 3, 0).numpy()  # [T, H, W, 3]
    background = np.median(pixels.reshape(-1, 3), axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)  # [T, H, W]
    far = distance > max(0.5 * distance.max(), 0.15)
    if far.sum() == 0:
        return np.zeros(distance.shape), background, background
    core = distance >= np.quantile(distance[far], 0.5)
    obj = np.median(pixels[core & far], axis=0)
    direction = obj - background
    coverage = ((pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    coverage = np.clip(coverage, 0, 1)
    coverage[coverage < 0.1] = 0  # compression noise and faint artefacts are not the object
    return coverage, background, obj


def _frame_shape(coverage: np.ndarray) -> tuple[str | None, float, float]:
    """Shape (by bounding-box fill ratio), area and fill ratio of one frame's coverage [H, W]."""
    area = float(coverage.sum())
    if area < 4:
        return None, area, float("nan")
    width = float(coverage.max(axis=0).sum())  # sub-pixel extents: partial edge pixels count partially
    height = float(coverage.max(axis=1).sum())
    fill = area / max(width * height, 1e-6)
    shape = min(_FILL_RATIOS, key=lambda s: abs(_FILL_RATIOS[s] - fill))
    return shape, area, fill


def centroid_trajectory(coverage: np.ndarray) -> np.ndarray:
    """Coverage-weighted centroid (x, y) in pixels per frame [T, 2]; NaN where no object is seen."""
    frames, height, width = coverage.shape
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    mass = coverage.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (coverage * xs).sum(axis=(1, 2)) / mass
        y = (coverage * ys).sum(axis=(1, 2)) / mass
    trajectory = np.stack([x, y], axis=1)
    trajectory[mass < 4] = np.nan
    return trajectory


def bounce_frames(trajectory: np.ndarray, min_rise: float = 0.75) -> list[int]:
    """Frames where the object stops falling and starts rising (a floor bounce; y grows downwards).

    A bounce is a local maximum of y that the object then leaves, rising at least ``min_rise``
    pixels within two frames. A bounce in the last frame cannot be seen: nothing comes after it.
    """
    y = trajectory[:, 1]
    found = []
    for i in range(1, len(y) - 1):
        window = y[i - 1 : i + 3]
        if np.isnan(window).any() and i + 2 < len(y):
            continue
        after = y[i + 1 : i + 3]
        if y[i] >= y[i - 1] and y[i] > y[i + 1] and y[i] - np.nanmin(after) > min_rise:
            found.append(i)
    return found


def measure_video(video: torch.Tensor) -> dict:
    """What the pixels show: background, colour, shape, size, trajectory [T, 2], bounce frames."""
    coverage, background_rgb, object_rgb = object_coverage(video)
    shapes, areas, fills = zip(*(_frame_shape(frame) for frame in coverage))
    shape = _majority(list(shapes))
    seen = [a for s, a in zip(shapes, areas) if s is not None]
    radius = math.sqrt(np.median(seen) / _AREA_PER_R2[shape]) if shape else float("nan")
    trajectory = centroid_trajectory(coverage)
    return {
        "background": list(BACKGROUNDS)[_nearest(background_rgb, _BACKGROUND_RGB)],
        "colour": list(COLOURS)[_nearest(object_rgb, _COLOUR_RGB)] if shape else None,
        "shape": shape,
        "size": int(np.argmin([abs(radius - s) for s in SIZES])) if shape else None,
        "radius": radius,
        "fill_ratio": float(np.nanmedian(fills)) if shape else float("nan"),
        "trajectory": torch.from_numpy(trajectory.astype(np.float32)),
        "bounce_frames": bounce_frames(trajectory),
        "visible_frames": int(sum(s is not None for s in shapes)),
        "background_rgb": background_rgb,
        "object_rgb": object_rgb,
    }


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------
def highpass(audio: np.ndarray, sample_rate: int, cutoff: float = 400.0) -> np.ndarray:
    """Remove everything below ``cutoff`` Hz (the drone) with a smooth FFT mask."""
    n = 2 * len(audio)  # zero-padded: no wrap-around from the clip's end to its start
    fade = np.minimum(1.0, np.minimum(np.arange(len(audio)), np.arange(len(audio))[::-1]) / (0.01 * sample_rate))
    spectrum = np.fft.rfft(audio * fade, n)  # 10 ms fades: the clip's edges are not clicks
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    mask = np.clip((freqs - 0.75 * cutoff) / (0.25 * cutoff), 0, 1)
    return np.fft.irfft(spectrum * mask, n)[: len(audio)]


def onset_times(audio: np.ndarray, sample_rate: int = 16_000, rise_db: float = 9.0, floor_db: float = -40.0,
                min_gap: float = 0.04) -> list[float]:
    """Impact onsets in seconds: sharp rises of the high-passed energy, to the millisecond.

    The energy is measured in 1 ms bins. An onset is a bin where the mean level of the next
    3 ms rises more than ``rise_db`` above the mean of the 8 ms before (averaging tames the
    fluctuations of noisy sounds) and reaches ``floor_db`` dBFS (and the loudest level - 30 dB).
    It is then placed at the first bin that reaches half of the local peak amplitude.
    """
    signal = highpass(audio, sample_rate)
    hop = sample_rate // 1000  # 1 ms bins
    bins = len(signal) // hop
    framed = signal[: bins * hop].reshape(bins, hop)
    power = (framed**2).mean(axis=1)
    envelope = np.abs(framed).max(axis=1)
    ahead = np.convolve(power, np.ones(3) / 3, mode="full")[2:][:bins]  # mean of bins k..k+2
    behind = np.convolve(power, np.ones(8) / 8, mode="full")[:bins]  # mean of bins k-7..k
    level_ahead = 10 * np.log10(ahead + 1e-12)
    level_behind = 10 * np.log10(np.concatenate([[1e-12], behind[:-1]]) + 1e-12)  # bins k-8..k-1
    floor_db = max(floor_db, level_ahead.max() - 30)  # relative too: a quiet clip's noise is not an impact
    onsets: list[float] = []
    k = 1
    while k < bins:
        if level_ahead[k] > floor_db and level_ahead[k] - level_behind[k] > rise_db:
            peak = envelope[k : k + 15].max()
            lo = max(k - 3, 0)
            first = lo + int(np.argmax(envelope[lo : k + 15] >= 0.5 * peak))
            time = first / 1000.0
            if not onsets or time - onsets[-1] >= min_gap:
                onsets.append(time)
            k += int(min_gap * 1000)
            continue
        k += 1
    return onsets


def _impact_spectrum(signal: np.ndarray, start: int, sample_rate: int, length: float = 0.04):
    window = signal[start : start + int(length * sample_rate)]
    if len(window) < 64:
        return None, None
    power = np.abs(np.fft.rfft(window * np.hanning(len(window)), 8192)) ** 2
    freqs = np.fft.rfftfreq(8192, 1 / sample_rate)
    return freqs, power


def _band(freqs: np.ndarray, power: np.ndarray, centre: float, rel: float = 0.06) -> float:
    return float(power[(freqs > centre * (1 - rel)) & (freqs < centre * (1 + rel))].sum())


def classify_impact(freqs: np.ndarray, power: np.ndarray) -> tuple[str, float]:
    """Timbre and pitch of one impact's spectrum.

    Pitch: the peak of the spectrum smoothed over a sixth of an octave. Timbre: a noise *tick*
    spreads its power (little of it near the peak), a square-wave *clack* has a third harmonic,
    a sine *ping* has neither.
    """
    band = (freqs > 400) & (freqs < 7800)
    freqs, power = freqs[band], power[band]
    log_f = np.log2(freqs)
    grid = np.arange(log_f.min(), log_f.max(), 1 / 48)  # 48 bins per octave
    binned = np.bincount(np.digitize(log_f, grid), weights=power, minlength=len(grid) + 1)[1:]
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)  # ~1/6 octave Gaussian
    smooth = np.convolve(binned, kernel, mode="same")
    pitch = float(2 ** grid[int(np.argmax(smooth))])
    total = float(power.sum()) + 1e-12
    concentration = _band(freqs, power, pitch) / total
    third = _band(freqs, power, 3 * pitch) / (_band(freqs, power, pitch) + 1e-12)
    if concentration < 0.5:
        timbre = "tick"
    elif third > 0.02:
        timbre = "clack"
    else:
        timbre = "ping"
    return timbre, pitch


def drone_frequency(audio: np.ndarray, sample_rate: int = 16_000) -> float:
    """Which of the world's drone pitches carries the most power."""
    power = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / sample_rate)

    def near(hz: float) -> float:
        return float(power[np.abs(freqs - hz) < 0.06 * hz].sum())

    scores = [near(hz) for hz in _DRONES]
    return float(_DRONES[int(np.argmax(scores))])


def in_spans(time: float, spans: list[tuple[float, float]]) -> bool:
    """Whether ``time`` (s) lies in one of the [start, end) ``spans``."""
    return any(start <= time < end for start, end in spans)


def measure_audio(audio: torch.Tensor, sample_rate: int = 16_000,
                  span: tuple[float, float] | list[tuple[float, float]] | None = None) -> dict:
    """What the soundtrack says: impact times (s), timbre, pitch and size, drone and background.

    ``span=(start, end)`` in seconds (or a list of such stretches) measures the identity there
    alone: only the impacts that begin inside vote for timbre and pitch, and the drone is read from
    those samples (the impact times are still those of the whole clip). Chapter 8 uses it to judge
    the generated segments of a continuation without the given ones.
    """
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [S], got shape {list(audio.shape)}")
    samples = audio.detach().float().cpu().numpy().astype(np.float64)
    spans = None if span is None else ([span] if isinstance(span[0], (int, float)) else list(span))
    if spans is not None and not all(0 <= start < end for start, end in spans):
        raise ValueError(f"span must be (start, end) in seconds with 0 <= start < end, or a list of them; got {span}")
    onsets = onset_times(samples, sample_rate)
    signal = highpass(samples, sample_rate)
    timbres, pitches, weights = [], [], []
    for onset in onsets:
        if spans is not None and not in_spans(onset, spans):
            continue
        start = int(onset * sample_rate) + int(0.003 * sample_rate)
        freqs, power = _impact_spectrum(signal, start, sample_rate)
        if freqs is None:
            continue
        timbre, pitch = classify_impact(freqs, power)
        timbres.append(timbre)
        pitches.append(pitch)
        weights.append(float(power.sum()))
    drone = drone_frequency(samples if spans is None else np.concatenate(
        [samples[int(start * sample_rate): int(end * sample_rate)] for start, end in spans]), sample_rate)
    timbre = _weighted_vote(timbres, weights)
    pitch = float(np.exp(np.median(np.log(pitches)))) if pitches else float("nan")
    size = int(np.argmin([abs(math.log(pitch / p)) for p in PITCHES])) if pitches else None
    return {
        "impact_times": onsets,
        "timbre": timbre,
        "shape": SHAPES[TIMBRES.index(timbre)] if timbre else None,
        "pitch": pitch,
        "size": size,
        "drone": drone,
        "background": list(BACKGROUNDS)[int(np.argmin(np.abs(_DRONES - drone)))],
        "impact_timbres": timbres,
    }


def _weighted_vote(labels: list[str], weights: list[float]) -> str | None:
    if not labels:
        return None
    totals: dict[str, float] = {}
    for label, weight in zip(labels, weights):
        totals[label] = totals.get(label, 0.0) + math.log1p(weight)
    return max(totals, key=totals.get)


def measure_clip(video: torch.Tensor, audio: torch.Tensor, sample_rate: int = 16_000) -> dict:
    """Both probes on one clip: ``{"video": ..., "audio": ...}``."""
    return {"video": measure_video(video), "audio": measure_audio(audio, sample_rate)}


# ----------------------------------------------------------------------------------------------
# Comparing measurements with ground truth (or with a condition clip)
# ----------------------------------------------------------------------------------------------
def match_times(predicted: list[float], reference: list[float], tolerance: float = 0.05) -> dict:
    """Greedy one-to-one matching of event times; errors of the matched pairs, misses, extras."""
    pairs = sorted(
        ((abs(p - r), i, j) for i, p in enumerate(predicted) for j, r in enumerate(reference)),
        key=lambda x: x[0],
    )
    used_p, used_r, errors = set(), set(), []
    for error, i, j in pairs:
        if error <= tolerance and i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            errors.append(error)
    return {"errors": errors, "missed": len(reference) - len(used_r), "extra": len(predicted) - len(used_p)}


def resolvable_bounce_frames(factors: dict, fps: int = 8, frames: int = 17) -> list[int]:
    """Ground-truth floor bounces a video probe can see: not before frame 0.5, not after T - 2."""
    return [
        int(round(t * fps))
        for t, surface in zip(factors["impact_times"], factors["impact_surfaces"])
        if surface == "floor" and 0.5 <= t * fps <= frames - 2
    ]


def benchmark(clips, tolerance: float = 0.05) -> dict:
    """Score the probes against ground truth on ``clips`` (an iterable of World clips or dicts).

    Returns accuracies (fractions) for every factor seen and heard, the onset detector's recall
    and precision at ``tolerance`` seconds and its median timing error in milliseconds.
    """
    hits: dict[str, list[bool]] = {k: [] for k in (
        "video_shape", "video_colour", "video_size", "video_background", "video_bounces_within_1_frame",
        "audio_timbre", "audio_size", "audio_background")}
    errors, missed, extra, total = [], 0, 0, 0
    for clip in clips:
        item = clip.as_dict() if hasattr(clip, "as_dict") else clip
        factors = item["factors"]
        seen, heard = measure_video(item["video"]), measure_audio(item["audio"])
        for key in ("shape", "colour", "size", "background"):
            hits[f"video_{key}"].append(seen[key] == factors[key])
        truth = resolvable_bounce_frames(factors, frames=item["video"].shape[1])
        hits["video_bounces_within_1_frame"].append(
            all(any(abs(b - p) <= 1 for p in seen["bounce_frames"]) for b in truth))
        hits["audio_timbre"].append(heard["timbre"] == factors["timbre"])
        hits["audio_size"].append(heard["size"] == factors["size"])
        hits["audio_background"].append(heard["background"] == factors["background"])
        matched = match_times(heard["impact_times"], factors["impact_times"], tolerance)
        errors += matched["errors"]
        missed, extra = missed + matched["missed"], extra + matched["extra"]
        total += len(factors["impact_times"])
    result = {key: float(np.mean(values)) for key, values in hits.items()}
    found = total - missed
    result.update({
        "clips": len(hits["video_shape"]),
        "onset_recall": found / max(total, 1),
        "onset_precision": found / max(found + extra, 1),
        "onset_median_error_ms": 1000 * float(np.median(errors)) if errors else float("nan"),
    })
    return result
