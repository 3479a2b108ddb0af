"""Figures and widgets for the chapters. The core package never imports this module.

Every widget has a static fallback figure, so the rendered book shows what the widget shows.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import Geometry

SEGMENT_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]


def _frame(video: torch.Tensor, index: int) -> np.ndarray:
    return video[:, index].permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def clip_gallery(clips: list, captions: list[str] | None = None, frame: int = 0, columns: int = 8):
    """A grid of one frame per clip, captioned (e.g. with each clip's factors)."""
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(clips) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.35 * columns, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, clip in enumerate(clips):
        video = clip["video"] if isinstance(clip, dict) else clip.video
        ax = axes.flat[i]
        ax.imshow(_frame(video, frame), interpolation="nearest")
        if captions:
            ax.set_title(captions[i], fontsize=6.5)
    fig.tight_layout()
    return fig


def motion_figure(video: torch.Tensor, trajectory: torch.Tensor | np.ndarray, fps: int = 8):
    """All frames overlaid as a stroboscope picture, with the centroid path drawn on top."""
    import matplotlib.pyplot as plt

    frames = video.clamp(0, 1).cpu()
    background = frames.median(dim=1).values  # [3, H, W]: the object moves, the scene does not
    distance = (frames - background[:, None]).abs().sum(0)  # [T, H, W]
    strobe = background.permute(1, 2, 0).numpy().copy()
    for i in range(frames.shape[1]):
        mask = (distance[i] > 0.3).numpy()
        alpha = 0.35 + 0.65 * i / max(frames.shape[1] - 1, 1)
        strobe[mask] = (1 - alpha) * strobe[mask] + alpha * frames[:, i].permute(1, 2, 0).numpy()[mask]
    trajectory = np.asarray(trajectory)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.imshow(strobe, interpolation="nearest", extent=(0, strobe.shape[1], strobe.shape[0], 0))
    ax.plot(trajectory[:, 0], trajectory[:, 1], "w.-", lw=0.8, ms=3)
    for i in range(0, len(trajectory), 4):
        ax.annotate(f"{i / fps:.1f}s", trajectory[i], color="white", fontsize=6, xytext=(3, -3),
                    textcoords="offset points")
    ax.set_title("all 17 frames overlaid (later = brighter)", fontsize=8)
    ax.axis("off")
    return fig


def segment_layout_figure(video: torch.Tensor, audio: torch.Tensor, geometry: Geometry | None = None,
                          segment_edges: list[float] | None = None):
    """The M x N grid drawn over a clip: frames and waveform coloured by time segment."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    g = geometry or Geometry()
    if segment_edges is None:
        from .latents import segment_bounds

        bounds = segment_bounds(g)  # [N, 2] seconds
        segment_edges = bounds[:, 0].tolist() + [float(bounds[-1, 1])]
    fig = plt.figure(figsize=(11, 3.6), constrained_layout=True)
    grid = fig.add_gridspec(2, g.frames, height_ratios=[1, 1.1])
    for i in range(g.frames):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(_frame(video, i), interpolation="nearest")
        segment = int(np.searchsorted(segment_edges, i / g.fps, side="right") - 1)
        for spine in ax.spines.values():
            spine.set_edgecolor(SEGMENT_COLOURS[segment])
            spine.set_linewidth(3)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{i}", fontsize=7, color=SEGMENT_COLOURS[segment])
    ax = fig.add_subplot(grid[1, :])
    time = np.arange(len(audio)) / g.sample_rate
    ax.plot(time, audio.cpu().numpy(), lw=0.4, color="#222")
    for n in range(g.segments):
        lo, hi = segment_edges[n], segment_edges[n + 1]
        ax.add_patch(Rectangle((lo, -1), hi - lo, 2, color=SEGMENT_COLOURS[n], alpha=0.18, lw=0))
        ax.text((lo + hi) / 2, 0.82, f"segment {n}", ha="center", fontsize=8, color=SEGMENT_COLOURS[n])
    ax.set_xlim(0, g.duration)
    ax.set_ylim(-1, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("audio")
    fig.suptitle("video frames (top, numbered) and audio (bottom) cut into N = 5 time segments", fontsize=9)
    return fig


def probe_figure(clip: dict, seen: dict, heard: dict, sample_rate: int = 16_000, fps: int = 8):
    """What the probes measured, drawn over the truth: trajectory and bounces, onsets on the audio."""
    import matplotlib.pyplot as plt

    factors = clip["factors"]
    fig, (ax_y, ax_a) = plt.subplots(2, 1, figsize=(9, 4.2), sharex=True, constrained_layout=True)
    times = np.arange(len(factors["trajectory"])) / fps
    ax_y.plot(times, factors["trajectory"][:, 1], "o-", color="#999", label="true height (px, down)")
    ax_y.plot(times, seen["trajectory"][:, 1], "x--", color="C0", label="measured centroid")
    for b in seen["bounce_frames"]:
        ax_y.axvline(b / fps, color="C0", ls=":", lw=1)
    ax_y.invert_yaxis()
    ax_y.set_ylabel("y (pixels)")
    ax_y.legend(fontsize=7, loc="lower left")
    ax_y.set_title("video probe: centroid trajectory; dotted = measured bounce frames", fontsize=8)
    audio = clip["audio"].cpu().numpy()
    ax_a.plot(np.arange(len(audio)) / sample_rate, audio, lw=0.4, color="#333")
    for t in factors["impact_times"]:
        ax_a.axvline(t, color="#999", lw=3, alpha=0.5)
    for t in heard["impact_times"]:
        ax_a.axvline(t, color="C3", lw=1, ls="--")
    ax_a.set_xlabel("time (s)")
    ax_a.set_title("audio probe: true impacts (grey bands) and detected onsets (red dashes)", fontsize=8)
    return fig


def score_bars(scores: dict, title: str = "", target: float | None = None):
    """Horizontal bars of accuracies in [0, 1], with an optional target line."""
    import matplotlib.pyplot as plt

    names = list(scores)
    values = [scores[n] for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(names) + 0.8))
    ax.barh(names, values, color="C0")
    for i, v in enumerate(values):
        ax.text(min(v, 1.0) - 0.01, i, f"{100 * v:.1f}%", va="center", ha="right", color="white", fontsize=7)
    if target is not None:
        ax.axvline(target, color="C3", ls="--", lw=1, label=f"target {100 * target:.0f}%")
        ax.legend(fontsize=7, loc="lower left")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closes the figure)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def clip_browser(world, seeds: range | list[int], show_player: bool = True):
    """An ipywidgets browser over the world's clips: a seed slider, frames, factors and a player.

    The output area is filled with ``append_display_data`` rather than ``with output:``, which
    keeps the widget usable in kernels with no front end (papermill, nbval, the book build).
    """
    import ipywidgets as widgets
    from IPython.display import HTML, Image

    from .media import clip_figure, clip_html

    seeds = list(seeds)
    slider = widgets.SelectionSlider(options=seeds, value=seeds[0], description="seed")
    out = widgets.Output()

    def draw(change=None):
        clip = world.clip(slider.value)
        f = clip.factors
        caption = (f"{f['colour']} {f['shape']} (size {f['size']}) on {f['background']}; "
                   f"impacts at {', '.join(f'{t:.2f}' for t in f['impact_times'])} s")
        out.outputs = ()
        if show_player:
            out.append_display_data(HTML(clip_html(clip.video, clip.audio, caption=caption)))
        out.append_display_data(Image(figure_png(clip_figure(clip.video, clip.audio, title=caption))))

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])
