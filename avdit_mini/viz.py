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


# ----------------------------------------------------------------------------------------------
# Chapters 4-6: timestep grids, noisy clips, tokens and attention
# ----------------------------------------------------------------------------------------------
ROW_NAMES = ("video", "audio")


def grid_heatmap(ax, grid, T: int = 1000, title: str = "", labels=None, fontsize: float = 7,
                 cmap: str = "magma_r", ticks: bool = True):
    """One timestep grid [M, N] as a heat map: light = clean (t = 0), dark = pure noise (t = T) (Chapter 5).

    ``labels`` ([M][N] strings) replaces the numbers written in the cells, e.g. "C" / "G" for tasks.
    """
    grid = np.asarray(torch.as_tensor(grid).detach().cpu(), dtype=float)  # [M, N]
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=T, aspect="equal")
    for (m, n), value in np.ndenumerate(grid):
        text = labels[m][n] if labels is not None else f"{value:.0f}"
        ax.text(n, m, text, ha="center", va="center", fontsize=fontsize,
                color="white" if value > 0.55 * T else "black")
    ax.set_xticks(range(grid.shape[1]) if ticks else [])
    ax.set_yticks(range(grid.shape[0]) if ticks else [])
    if ticks:
        ax.set_xticklabels([str(n) for n in range(grid.shape[1])], fontsize=6)
        ax.set_yticklabels([name[0].upper() for name in ROW_NAMES[: grid.shape[0]]], fontsize=6)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=7.5)
    return ax


def timestep_grids_figure(grids, T: int = 1000, row_labels: list[str] | None = None,
                          titles: list[list[str]] | None = None, suptitle: str = ""):
    """Rows of timestep grids [R, K, M, N] (or [K, M, N]) as small heat maps (Chapter 5)."""
    import matplotlib.pyplot as plt

    grids = torch.as_tensor(grids)
    if grids.dim() == 3:
        grids = grids[None]
    rows, columns = grids.shape[:2]
    fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns + 0.9, 0.95 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for k in range(columns):
            grid_heatmap(axes[r, k], grids[r, k], T, title=titles[r][k] if titles else "", fontsize=5.5,
                         ticks=k == 0)
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8, rotation=0, ha="right", va="center", labelpad=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def _segment_mel_edges(geometry: Geometry) -> list[float]:
    """Segment boundaries in mel frames (Chapter 4)."""
    from .latents import segment_bounds

    bounds = segment_bounds(geometry)  # [N, 2] seconds
    mel_rate = geometry.sample_rate / geometry.hop_length
    return [float(b) * mel_rate for b in bounds[1:, 0]]


def noisy_clips_figure(videos, log_mels, labels: list[str], grids=None, T: int = 1000,
                       frames: tuple[int, ...] = (0, 4, 8, 12, 16), geometry: Geometry | None = None,
                       mel_range: tuple[float, float] = (-1.2, 3.0), title: str = ""):
    """One row per clip: [its timestep grid], frames (one per segment) and its log-mel spectrogram (Chapters 4-5).

    videos [K, 3, F, H, W] in [0, 1]; log_mels [K, n_mels, frames] (normalised, as the audio
    autoencoder decodes them); grids [K, M, N] or None.
    """
    import matplotlib.pyplot as plt

    g = geometry or Geometry()
    from .latents import segment_bounds

    bounds = segment_bounds(g)
    rows = len(labels)
    lead = 1 if grids is not None else 0
    widths = [2.2] * lead + [1.0] * len(frames) + [3.2]
    fig = plt.figure(figsize=(sum(widths) * 1.05 + 0.6, 1.2 * rows + 0.5), constrained_layout=True)
    layout = fig.add_gridspec(rows, len(widths), width_ratios=widths)
    mel_edges = _segment_mel_edges(g)
    for r in range(rows):
        if grids is not None:
            grid_heatmap(fig.add_subplot(layout[r, 0]), grids[r], T, fontsize=6)
        for c, index in enumerate(frames):
            ax = fig.add_subplot(layout[r, lead + c])
            ax.imshow(_frame(videos[r], index), interpolation="nearest")
            segment = int(np.searchsorted(bounds[:, 0].numpy(), index / g.fps + 1e-9, side="right") - 1)
            for spine in ax.spines.values():
                spine.set_edgecolor(SEGMENT_COLOURS[segment])
                spine.set_linewidth(2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {index}\nseg {segment}", fontsize=6.5, color=SEGMENT_COLOURS[segment])
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=7.5)
        ax = fig.add_subplot(layout[r, -1])
        ax.imshow(np.asarray(torch.as_tensor(log_mels[r]).detach().cpu()), origin="lower", aspect="auto",
                  cmap="magma", vmin=mel_range[0], vmax=mel_range[1], interpolation="nearest")
        for edge in mel_edges:
            ax.axvline(edge - 0.5, color="white", lw=0.6, ls="--")
        ax.set_yticks([])
        ax.set_xticks([])
        if r == 0:
            ax.set_title("log-mel spectrogram (segments dashed)", fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def token_layout_figure(layout, geometry: Geometry | None = None, patch_grid: tuple[int, int] = (4, 4)):
    """Where each AVDiT token sits: video tokens on their latent frame, audio tokens on the time axis,
    every token coloured by its time segment, and the token count of each cell of the grid (Chapter 6)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .latents import AUDIO, VIDEO, segment_bounds

    g = geometry or Geometry()
    modality, segment, seconds = (np.asarray(x) for x in layout)
    rows, cols = patch_grid
    video_index = np.nonzero(modality == VIDEO)[0]
    audio_index = np.nonzero(modality == AUDIO)[0]
    frames = len(video_index) // (rows * cols)
    fig = plt.figure(figsize=(11, 4.4), constrained_layout=True)
    spec = fig.add_gridspec(2, frames + 1, height_ratios=[1.15, 1.0], width_ratios=[1] * frames + [1.5])
    for f in range(frames):
        ax = fig.add_subplot(spec[0, f])
        tokens = video_index[f * rows * cols:(f + 1) * rows * cols]
        colour = SEGMENT_COLOURS[segment[tokens[0]]]
        for k, token in enumerate(tokens):
            r, c = divmod(k, cols)
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=colour, alpha=0.35, edgecolor="white", lw=1.5))
            ax.text(c + 0.5, r + 0.5, str(token), ha="center", va="center", fontsize=6.5)
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"video latent frame {f}\n(segment {segment[tokens[0]]}, {seconds[tokens[0]]:.3f} s)",
                     fontsize=7, color=colour)
    ax = fig.add_subplot(spec[0, frames])
    counts = np.zeros((g.modalities, g.segments), dtype=int)
    np.add.at(counts, (modality, segment), 1)
    ax.imshow(np.ones_like(counts), cmap="Greys", vmin=0, vmax=4)
    for (m, n), count in np.ndenumerate(counts):
        ax.add_patch(Rectangle((n - 0.5, m - 0.5), 1, 1, facecolor=SEGMENT_COLOURS[n], alpha=0.35))
        ax.text(n, m, str(count), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(g.segments))
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["video", "audio"], fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title("tokens per cell of the\nM x N grid", fontsize=7.5)
    ax = fig.add_subplot(spec[1, :])
    bounds = segment_bounds(g).numpy()
    for n, (lo, hi) in enumerate(bounds):
        ax.axvspan(lo, hi, color=SEGMENT_COLOURS[n], alpha=0.12, lw=0)
        ax.text((lo + hi) / 2, 2.25, f"segment {n}", ha="center", fontsize=7, color=SEGMENT_COLOURS[n])
    step = g.hop_length * g.audio_time_down / g.sample_rate
    for token in audio_index:
        ax.add_patch(Rectangle((seconds[token] - step / 2, 0.1), step, 0.8, facecolor=SEGMENT_COLOURS[segment[token]],
                               alpha=0.55, edgecolor="white", lw=0.8))
        ax.text(seconds[token], 0.5, str(token), ha="center", va="center", fontsize=5, rotation=90)
    for f, (lo, hi) in enumerate(bounds):  # one video latent frame per segment
        tokens = video_index[f * rows * cols:(f + 1) * rows * cols]
        ax.add_patch(Rectangle((lo, 1.2), hi - lo, 0.8, facecolor=SEGMENT_COLOURS[segment[tokens[0]]],
                               alpha=0.55, edgecolor="white", lw=0.8))
        ax.text((lo + hi) / 2, 1.6, f"tokens {tokens[0]}-{tokens[-1]}", ha="center", va="center", fontsize=6)
    for token in range(len(seconds)):
        ax.plot(seconds[token], 2.0 if modality[token] == VIDEO else 0.9, "k|", ms=4)
    ax.set_xlim(0, g.duration)
    ax.set_ylim(0, 2.5)
    ax.set_yticks([0.5, 1.6])
    ax.set_yticklabels(["audio", "video"], fontsize=7)
    ax.set_xlabel("time (s); ticks = each token's time, the input of the sinusoidal position code", fontsize=7)
    ax.tick_params(labelsize=7)
    return fig


def _token_blocks(layout, segments: int) -> list[tuple[str, int, int]]:
    """Contiguous runs of tokens of one cell: (label, first, end) (Chapter 6)."""
    modality, segment = np.asarray(layout[0]), np.asarray(layout[1])
    blocks, start = [], 0
    for i in range(1, len(modality) + 1):
        if i == len(modality) or modality[i] != modality[start] or segment[i] != segment[start]:
            blocks.append((f"{ROW_NAMES[modality[start]][0].upper()}{segment[start]}", start, i))
            start = i
    return blocks


def token_matrix(ax, matrix, layout, segments: int = 5, title: str = "", cmap: str = "viridis", **imshow):
    """An L x L matrix over tokens (attention, similarity) with modality and segment separators (Chapter 6)."""
    matrix = np.asarray(torch.as_tensor(matrix).detach().float().cpu())
    image = ax.imshow(matrix, cmap=cmap, interpolation="nearest", **imshow)
    blocks = _token_blocks(layout, segments)
    modality = np.asarray(layout[0])
    video_end = int((modality == 0).sum())
    for label, start, end in blocks[1:]:
        width = 1.6 if start == video_end else 0.4
        colour = "white" if start == video_end else "#dddddd"
        ax.axhline(start - 0.5, color=colour, lw=width)
        ax.axvline(start - 0.5, color=colour, lw=width)
    centres = [(start + end - 1) / 2 for _, start, end in blocks]
    names = [label for label, _, _ in blocks]
    ax.set_xticks(centres)
    ax.set_xticklabels(names, fontsize=5.5, rotation=90)
    ax.set_yticks(centres)
    ax.set_yticklabels(names, fontsize=5.5)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=8)
    return image


def cell_attention(weights, layout, segments: int = 5) -> np.ndarray:
    """Attention mass [M*N, M*N] from each query cell to each key cell, relative to uniform attention (Chapter 6).

    weights [L, L] (rows sum to 1). Entry (i, j) = mean over queries of cell i of the mass on keys of
    cell j, divided by the share of keys in cell j (1 = what attention spread evenly would give).
    """
    weights = np.asarray(torch.as_tensor(weights).detach().float().cpu())
    cell = np.asarray(layout[0]) * segments + np.asarray(layout[1])  # [L]
    cells = segments * 2
    keys = np.zeros((weights.shape[0], cells))
    for j in range(cells):
        keys[:, j] = weights[:, cell == j].sum(axis=1)
    mass = np.stack([keys[cell == i].mean(axis=0) for i in range(cells)])  # [cells, cells]
    share = np.bincount(cell, minlength=cells) / len(cell)
    return mass / share


def attention_figure(weights, layout, segments: int = 5, title: str = ""):
    """An attention map [L, L] with separators, and the same map pooled to cells of the grid (Chapter 6)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    weights = torch.as_tensor(weights).detach().float().cpu()
    fig, (ax_tokens, ax_cells) = plt.subplots(1, 2, figsize=(10.5, 4.6), width_ratios=[1.25, 1])
    image = token_matrix(ax_tokens, weights, layout, segments, "token -> token (rows: queries, log colour)",
                         norm=LogNorm(vmin=max(float(weights.min()), 1e-5), vmax=float(weights.max())))
    fig.colorbar(image, ax=ax_tokens, fraction=0.046, pad=0.02)
    relative = cell_attention(weights, layout, segments)
    names = [f"{ROW_NAMES[m][0].upper()}{n}" for m in range(2) for n in range(segments)]
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(relative.min(), 0.99), vmax=max(relative.max(), 1.01))
    image = ax_cells.imshow(relative, cmap="RdBu_r", norm=norm)
    for (i, j), value in np.ndenumerate(relative):
        ax_cells.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=5.5)
    ax_cells.axhline(segments - 0.5, color="k", lw=1)
    ax_cells.axvline(segments - 0.5, color="k", lw=1)
    ax_cells.set_xticks(range(2 * segments))
    ax_cells.set_xticklabels(names, fontsize=6)
    ax_cells.set_yticks(range(2 * segments))
    ax_cells.set_yticklabels(names, fontsize=6)
    ax_cells.set_title("cell -> cell, relative to uniform attention", fontsize=8)
    fig.colorbar(image, ax=ax_cells, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_slider(render, options, description: str = "t", player=None):
    """A slider over ``options`` that redraws ``render(value) -> Figure`` (and ``player(value) -> html``) (Chapter 4).

    Filled with ``append_display_data`` (not ``with output:``), so it runs in kernels with no front end.
    """
    import ipywidgets as widgets
    from IPython.display import HTML, Image

    options = list(options)
    slider = widgets.SelectionSlider(options=options, value=options[0], description=description,
                                     continuous_update=False)
    out = widgets.Output()

    def draw(change=None):
        out.outputs = ()
        if player is not None:
            out.append_display_data(HTML(player(slider.value)))
        out.append_display_data(Image(figure_png(render(slider.value))))

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


def grid_painter(render, initial, T: int = 1000, step: int = 50, player=None):
    """A 2 x N grid of sliders, one noise level per cell, redrawing ``render(grid [M, N]) -> Figure`` (Chapter 5).

    ``player(grid) -> html`` optionally adds an inline player. Filled with ``append_display_data``.
    """
    import ipywidgets as widgets
    from IPython.display import HTML, Image

    initial = torch.as_tensor(initial).long()
    rows, columns = initial.shape
    sliders = [[widgets.IntSlider(value=int(initial[m, n]), min=0, max=T, step=step, orientation="vertical",
                                  continuous_update=False, description=f"{ROW_NAMES[m][0].upper()}{n}",
                                  layout=widgets.Layout(height="120px", width="70px"))
                for n in range(columns)] for m in range(rows)]
    out = widgets.Output()

    def current() -> torch.Tensor:
        return torch.tensor([[s.value for s in row] for row in sliders])  # [M, N]

    def draw(change=None):
        grid = current()
        out.outputs = ()
        if player is not None:
            out.append_display_data(HTML(player(grid)))
        out.append_display_data(Image(figure_png(render(grid))))

    for row in sliders:
        for slider in row:
            slider.observe(draw, names="value")
    draw()
    controls = widgets.VBox([widgets.HBox([widgets.Label(ROW_NAMES[m], layout=widgets.Layout(width="50px"))] + row)
                             for m, row in enumerate(sliders)])
    return widgets.HBox([controls, out])


# ----------------------------------------------------------------------------------------------
# Chapters 2-3: autoencoders and their latents
# ----------------------------------------------------------------------------------------------
def comparison_bars(groups: dict, title: str = "", xlabel: str = "accuracy", limit: float | None = 1.0):
    """Grouped horizontal bars: ``{"original": {"timbre": 0.98, ...}, "reconstructed": {...}}`` (Chapters 2-3)."""
    import matplotlib.pyplot as plt

    names = list(next(iter(groups.values())))
    height = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) * max(len(groups), 2) / 2 + 0.9))
    for k, (label, scores) in enumerate(groups.items()):
        y = np.arange(len(names)) + (k - (len(groups) - 1) / 2) * height
        values = [scores[n] for n in names]
        ax.barh(y, values, height=height * 0.95, label=label, color=f"C{k}")
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {100 * v:.0f}%" if limit == 1.0 else f" {v:.3g}", va="center", fontsize=6.5)
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    if limit is not None:
        ax.set_xlim(0, limit * 1.12)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _segment_edges_in(geometry: Geometry, frames_per_second: float) -> list[float]:
    """Segment edges measured in frames of a sequence with ``frames_per_second`` (Chapters 2-3)."""
    from .latents import segment_bounds

    bounds = segment_bounds(geometry)
    return [float(b) * frames_per_second for b in bounds[:, 0].tolist() + [float(bounds[-1, 1])]]


def audio_latent_figure(log_mel: torch.Tensor, latent: torch.Tensor, geometry: Geometry | None = None,
                        title: str = ""):
    """A log-mel [64, 136] above its audio latent [C_a, 34], both cut into the N time segments (Chapter 2)."""
    import matplotlib.pyplot as plt

    g = geometry or Geometry()
    mel_rate = g.sample_rate / g.hop_length
    latent_rate = mel_rate / g.audio_time_down
    fig, (ax_mel, ax_lat) = plt.subplots(2, 1, figsize=(9, 4.4), constrained_layout=True,
                                         gridspec_kw={"height_ratios": [1.4, 1]})
    ax_mel.imshow(log_mel.cpu().numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, g.duration, 0, log_mel.shape[0]))
    ax_mel.set_ylabel("mel bin")
    ax_mel.set_title(f"log-mel [{log_mel.shape[0]}, {log_mel.shape[1]}]", fontsize=8, loc="left", pad=14)
    limit = float(latent.abs().max())
    image = ax_lat.imshow(latent.cpu().numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                          extent=(0, g.duration, latent.shape[0] - 0.5, -0.5), interpolation="nearest")
    ax_lat.set_ylabel("latent channel")
    ax_lat.set_xlabel("time (s)")
    ax_lat.set_title(f"audio latent [{latent.shape[0]}, {latent.shape[1]}]: one column per {1000 / latent_rate:.1f} ms",
                     fontsize=8, loc="left")
    fig.colorbar(image, ax=ax_lat, shrink=0.8)
    edges = _segment_edges_in(g, 1.0)
    for ax in (ax_mel, ax_lat):
        for n in range(g.segments):
            ax.axvline(edges[n], color="white" if ax is ax_mel else "k", lw=1.2, ls="--")
        for n in range(g.segments if ax is ax_mel else 0):
            ax.text((edges[n] + edges[n + 1]) / 2, 1.02, f"segment {n}", transform=ax.get_xaxis_transform(),
                    ha="center", fontsize=7, color=SEGMENT_COLOURS[n])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def reconstruction_strip(original: torch.Tensor, reconstruction: torch.Tensor, frames: list[int] | None = None,
                         title: str = "", fps: int = 8):
    """Frames of a video [3, T, H, W], its reconstruction and their absolute error, in three rows (Chapter 3)."""
    import matplotlib.pyplot as plt

    frames = list(range(0, original.shape[1], 2)) if frames is None else frames
    error = (reconstruction.clamp(0, 1) - original).abs().mean(0).cpu()  # [T, H, W]
    fig, axes = plt.subplots(3, len(frames), figsize=(0.95 * len(frames), 3.2), squeeze=False)
    for column, i in enumerate(frames):
        axes[0, column].imshow(_frame(original, i), interpolation="nearest")
        axes[1, column].imshow(_frame(reconstruction, i), interpolation="nearest")
        axes[2, column].imshow(error[i].numpy(), cmap="gray_r", vmin=0, vmax=0.5, interpolation="nearest")
        axes[0, column].set_title(f"{i / fps:.2f} s", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(("original", "decoded", "|error|")):
        axes[row, 0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


def video_latent_figure(latent: torch.Tensor, geometry: Geometry | None = None, title: str = ""):
    """A video latent [C_v, 5, h, w] as a channels x latent-frames grid of small images (Chapter 3).

    Each channel has its own colour scale (its min to its max over the clip), so a channel's offset
    does not hide its structure.
    """
    import matplotlib.pyplot as plt

    from .latents import segment_bounds

    g = geometry or Geometry()
    channels, frames = latent.shape[:2]
    bounds = segment_bounds(g)
    fig, axes = plt.subplots(channels, frames, figsize=(1.0 * frames + 0.6, 0.95 * channels), squeeze=False)
    for c in range(channels):
        lo, hi = float(latent[c].min()), float(latent[c].max()) + 1e-8  # one colour scale per channel
        for j in range(frames):
            ax = axes[c, j]
            ax.imshow(latent[c, j].cpu().numpy(), cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(f"frame {j}\n{bounds[j, 0]:.3g}-{bounds[j, 1]:.3g} s", fontsize=6.5,
                             color=SEGMENT_COLOURS[j % len(SEGMENT_COLOURS)])
            if j == 0:
                ax.set_ylabel(f"ch {c}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.25, rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight() if title else 1))
    return fig


def latent_cells_figure(video_latent: torch.Tensor, audio_latent: torch.Tensor, geometry: Geometry | None = None,
                        video_frames: torch.Tensor | None = None, title: str = ""):
    """The 2 x N grid of latent cells of one clip (Chapter 3).

    Row 0: each video latent frame [C_v, h, w] (channels 0-2 shown as RGB, normalised per clip);
    row 1: the audio latent frames [C_a, k] of each segment. With ``video_frames`` [3, T, H, W] the
    last video frame each cell covers is drawn small above it.
    """
    import matplotlib.pyplot as plt

    from .latents import audio_segment_of_latent_frame, segment_bounds

    g = geometry or Geometry()
    owners = audio_segment_of_latent_frame(g)
    bounds = segment_bounds(g)
    widths = [max(int((owners == n).sum()), 3) for n in range(g.segments)]
    rows = 3 if video_frames is not None else 2
    fig, axes = plt.subplots(rows, g.segments, figsize=(10, 1.7 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": widths}, constrained_layout=True)
    rgb = video_latent[:3]
    lo, hi = rgb.min(), rgb.max()  # one scale for the three channels: their balance shows as colour
    rgb = ((rgb - lo) / (hi - lo + 1e-8)).permute(1, 2, 3, 0).cpu().numpy()  # [5, h, w, 3]
    limit = float(audio_latent.abs().max())
    offset = 0
    for n in range(g.segments):
        colour = SEGMENT_COLOURS[n % len(SEGMENT_COLOURS)]
        if video_frames is not None:
            last = min(int(round(float(bounds[n, 1]) * g.fps)) - 1, video_frames.shape[1] - 1)
            axes[0, n].imshow(_frame(video_frames, last), interpolation="nearest")
            axes[0, n].set_title(f"segment {n}: {bounds[n, 0]:.3g}-{bounds[n, 1]:.3g} s\n(video frame {last})",
                                 fontsize=7, color=colour)
        ax_v, ax_a = axes[rows - 2, n], axes[rows - 1, n]
        ax_v.imshow(rgb[n], interpolation="nearest")
        ax_v.set_title(f"video latent frame {n}", fontsize=7)
        chunk = audio_latent[:, owners == n].cpu().numpy()
        ax_a.imshow(chunk, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax_a.set_title(f"audio latents {offset}-{offset + chunk.shape[1] - 1}", fontsize=7)
        offset += chunk.shape[1]
        for ax in axes[:, n]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
    axes[rows - 2, 0].set_ylabel("row 0: video\n(ch 0-2 as RGB)", fontsize=7)
    axes[rows - 1, 0].set_ylabel("row 1: audio\n(channels x time)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
