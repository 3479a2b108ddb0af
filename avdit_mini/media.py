"""Audio and video files, and players for notebooks (chapter 1).

mp4 (H.264 video + AAC audio) goes through PyAV, which bundles FFmpeg; wav goes through
soundfile. ``show_clip`` plays a clip with its sound inline -- in Jupyter, in Colab and in the
rendered book, because the mp4 is embedded in the page -- and draws a static figure under it.
"""

from __future__ import annotations

import base64
import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Geometry


def _check_clip(video: torch.Tensor, audio: torch.Tensor | None) -> None:
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W] in [0, 1], got shape {list(video.shape)}")
    if audio is not None and audio.ndim != 1:
        raise ValueError(f"audio must be mono [S] in [-1, 1], got shape {list(audio.shape)}")


def _to_uint8_frames(video: torch.Tensor, scale: int) -> np.ndarray:
    """[3, T, H, W] in [0, 1] -> [T, H*scale, W*scale, 3] uint8 (nearest-neighbour upscaling)."""
    video = video.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        video = video.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return (video.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()  # [T, H, W, 3]


def write_mp4(
    path: str | Path,
    video: torch.Tensor,
    audio: torch.Tensor | None = None,
    fps: int = 8,
    sample_rate: int = 16_000,
    scale: int = 1,
    crf: int = 12,
) -> Path:
    """Write video [3, T, H, W] (and mono audio [S]) as H.264 + AAC mp4; returns the path."""
    _check_clip(video, audio)
    import av

    path = Path(path)
    frames = _to_uint8_frames(video, scale)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.height, vstream.width = frames.shape[1], frames.shape[2]
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"crf": str(crf), "preset": "medium"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
            astream.bit_rate = 128_000
        for frame in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            samples = audio.detach().float().cpu().clamp(-1, 1).numpy()[None, :]  # [1, S] planar mono
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="mono")
            aframe.sample_rate = sample_rate
            aframe.time_base = Fraction(1, sample_rate)
            aframe.pts = 0
            for packet in astream.encode(aframe):
                container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def probe_mp4(path: str | Path, min_duration: float = 0.0) -> dict:
    """Check that ``path`` is a readable mp4 with video and audio lasting ``min_duration`` s."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path.name} has no video stream")
            if not container.streams.audio:
                raise ValueError(f"{path.name} has no audio stream (the book needs audio and video)")
            duration = container.duration / 1e6 if container.duration else 0.0
    except av.error.FFmpegError as error:
        raise ValueError(f"{path.name} could not be decoded: {error}") from error
    if duration + 1e-3 < min_duration:
        raise ValueError(f"{path.name} lasts {duration:.2f} s, shorter than the {min_duration:.3f} s a clip needs")
    return {"duration": duration}


def read_mp4(path: str | Path) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, int]:
    """Decode a whole mp4: (video [3, T, H, W] in [0, 1], frame times [T] s, mono audio [S], rate)."""
    import av

    frames, times, chunks, rate = [], [], [], 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time or 0.0))
    with av.open(str(path)) as container:
        if container.streams.audio:
            rate = container.streams.audio[0].codec_context.sample_rate
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray()[0])
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 255  # [T, H, W, 3] -> [3, T, H, W]
    audio = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0)
    return video, np.array(times), audio, rate


def read_clip(path: str | Path, geometry: Geometry | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``geometry.duration`` seconds of an mp4 in the book's geometry.

    Frames are sampled at ``geometry.fps`` (the last decoded frame at or before each instant),
    centre-cropped to square and area-resized; audio is resampled to mono ``sample_rate``.
    """
    import av

    g = geometry or Geometry()
    probe_mp4(path, min_duration=g.duration)
    video, times, _, _ = read_mp4(path)
    wanted = np.arange(g.frames) / g.fps
    index = np.clip(np.searchsorted(times, wanted + 1e-6, side="right") - 1, 0, len(times) - 1)
    video = video[:, torch.from_numpy(index)]  # [3, T, H0, W0]
    _, _, h0, w0 = video.shape
    side = min(h0, w0)
    top, left = (h0 - side) // 2, (w0 - side) // 2
    video = video[:, :, top : top + side, left : left + side]
    video = F.interpolate(video, size=(g.height, g.width), mode="area").clamp(0, 1)
    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=g.sample_rate)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray()[0])
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray()[0])
    audio = torch.from_numpy(np.concatenate(chunks).astype(np.float32))
    if len(audio) < g.audio_samples:
        raise ValueError(f"{Path(path).name}: its audio lasts {len(audio) / g.sample_rate:.2f} s, "
                         f"shorter than the {g.duration:.3f} s a clip needs")
    return video.contiguous(), audio[: g.audio_samples].clamp(-1, 1).contiguous()


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int = 16_000) -> Path:
    """Write mono audio [S] in [-1, 1] as 16-bit PCM wav."""
    import soundfile

    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [S], got shape {list(audio.shape)}")
    soundfile.write(str(path), audio.detach().float().cpu().clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")
    return Path(path)


def read_wav(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read a wav as mono float audio [S] and its sample rate."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.mean(axis=1)), rate


# ----------------------------------------------------------------------------------------------
# Notebook players
# ----------------------------------------------------------------------------------------------
def clip_html(
    video: torch.Tensor,
    audio: torch.Tensor | None = None,
    fps: int = 8,
    sample_rate: int = 16_000,
    scale: int = 4,
    caption: str = "",
    loop: bool = False,
) -> str:
    """An HTML ``<video>`` element with the clip embedded as base64 mp4 (plays without a server)."""
    _check_clip(video, audio)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = write_mp4(Path(folder) / "clip.mp4", video, audio, fps, sample_rate, scale=scale)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    size = video.shape[-1] * scale
    caption_html = f"<figcaption style='font-size:90%'>{caption}</figcaption>" if caption else ""
    return (
        f"<figure class='avdit-clip' style='display:inline-block;margin:4px'>"
        f"<video width='{size}' height='{size}' controls {'loop' if loop else ''} preload='metadata' "
        f"src='data:video/mp4;base64,{data}'></video>{caption_html}</figure>"
    )


def clip_figure(video: torch.Tensor, audio: torch.Tensor | None = None, sample_rate: int = 16_000, fps: int = 8,
                n_frames: int = 9, title: str = ""):
    """A static figure of a clip: a strip of frames, the waveform and a log spectrogram under it."""
    _check_clip(video, audio)
    import matplotlib.pyplot as plt

    total = video.shape[1]
    picks = np.linspace(0, total - 1, min(n_frames, total)).round().astype(int)
    rows = 1 if audio is None else 3
    fig = plt.figure(figsize=(1.1 * len(picks), 1.3 + 1.4 * (rows - 1)), constrained_layout=True)
    grid = fig.add_gridspec(rows, len(picks), height_ratios=[1.0] + [0.9] * (rows - 1))
    for column, index in enumerate(picks):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(video[:, index].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        ax.set_title(f"{index / fps:.2f} s", fontsize=7)
        ax.axis("off")
    if audio is not None:
        samples = audio.detach().float().cpu().numpy()
        time = np.arange(len(samples)) / sample_rate
        ax_wave = fig.add_subplot(grid[1, :])
        ax_wave.plot(time, samples, lw=0.5, color="#333")
        ax_wave.set_xlim(0, time[-1])
        ax_wave.set_ylim(-1, 1)
        ax_wave.set_ylabel("amplitude", fontsize=8)
        ax_wave.tick_params(labelsize=7, labelbottom=False)
        ax_spec = fig.add_subplot(grid[2, :], sharex=ax_wave)
        ax_spec.specgram(samples + 1e-9, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma", vmin=-120)
        ax_spec.set_ylabel("Hz", fontsize=8)
        ax_spec.set_xlabel("time (s)", fontsize=8)
        ax_spec.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def show_clip(video: torch.Tensor, audio: torch.Tensor | None = None, caption: str = "", figure: bool = True,
              fps: int = 8, sample_rate: int = 16_000, scale: int = 4):
    """Play a clip inline (video with sound) and draw its static figure under it."""
    import matplotlib.pyplot as plt
    from IPython.display import HTML, display

    display(HTML(clip_html(video, audio, fps, sample_rate, scale, caption)))
    if figure:
        fig = clip_figure(video, audio, sample_rate=sample_rate, fps=fps, title=caption)
        plt.show()
        return fig
    return None


def show_clips(clips: list[tuple[torch.Tensor, torch.Tensor | None]], captions: list[str] | None = None,
               scale: int = 3, fps: int = 8, sample_rate: int = 16_000) -> None:
    """Several players side by side (e.g. a condition and what was generated from it)."""
    from IPython.display import HTML, display

    captions = captions or [""] * len(clips)
    html = "".join(clip_html(v, a, fps, sample_rate, scale, c) for (v, a), c in zip(clips, captions))
    display(HTML(f"<div>{html}</div>"))


def audio_html(audio: torch.Tensor, sample_rate: int = 16_000) -> str:
    """An HTML ``<audio>`` element with a wav embedded as base64."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, audio.detach().float().cpu().clamp(-1, 1).numpy(), sample_rate, format="WAV")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<audio controls src='data:audio/wav;base64,{data}'></audio>"
