"""Latents and their time-segment layout (chapters 2-3).

The M x N timestep grid (DESIGN.md section 4) speaks of *cells*: row 0 is video, row 1 is
audio, and column n is a time segment in seconds. The latents speak of *frames*: 5 causal video
latent frames and 34 audio latent frames. This module owns the mapping between the two, and the
mapping from transformer tokens to cells, so that every other module asks it instead of
repeating the arithmetic.
"""

from __future__ import annotations

import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader

from avdit_mini.config import Geometry

MODALITIES = ("video", "audio")
VIDEO, AUDIO = 0, 1  # row indices of the timestep grid

Span = tuple[Fraction, Fraction]  # [start, end) in seconds, exact


@lru_cache(maxsize=None)
def _video_latent_spans(geometry: Geometry) -> tuple[Span, ...]:
    """[start, end) in seconds of the video frames each causal latent frame covers (Chapter 3)."""
    frame = Fraction(1, geometry.fps)
    spans = [(Fraction(0), frame)]  # latent frame 0 = video frame 0 alone
    for k in range(1, geometry.video_latent_frames):
        first = geometry.video_time_down * (k - 1) + 1  # latent frame k = video frames 4k-3 .. 4k
        spans.append((first * frame, (first + geometry.video_time_down) * frame))
    return tuple(spans)


@lru_cache(maxsize=None)
def _audio_latent_spans(geometry: Geometry) -> tuple[Span, ...]:
    """[start, end) in seconds of the samples each audio latent frame covers (Chapter 3)."""
    step = Fraction(geometry.hop_length * geometry.audio_time_down, geometry.sample_rate)  # 62.5 ms
    return tuple((j * step, (j + 1) * step) for j in range(geometry.audio_latent_frames))


@lru_cache(maxsize=None)
def _segment_spans(geometry: Geometry) -> tuple[Span, ...]:
    """[start, end) in seconds of each time segment: one per video latent frame (Chapter 3)."""
    if geometry.segments != geometry.video_latent_frames:
        raise ValueError(
            f"geometry.segments={geometry.segments} but the causal video latent has "
            f"{geometry.video_latent_frames} frames; the layout gives each segment exactly one "
            "video latent frame, so set segments = 1 + (frames - 1) // video_time_down"
        )
    return _video_latent_spans(geometry)


@lru_cache(maxsize=None)
def _audio_segments(geometry: Geometry) -> tuple[int, ...]:
    """The segment holding each audio latent frame; no frame may straddle two (Chapter 3)."""
    segments = _segment_spans(geometry)
    owners = []
    for j, (start, end) in enumerate(_audio_latent_spans(geometry)):
        inside = [n for n, (s0, s1) in enumerate(segments) if s0 <= start and end <= s1]
        if not inside:
            raise ValueError(
                f"audio latent frame {j} covers [{float(start)}, {float(end)}) s and straddles a "
                "segment boundary; choose hop_length * audio_time_down so that audio latent frames "
                "tile every video latent frame exactly"
            )
        owners.append(inside[0])
    return tuple(owners)


def video_segment_of_latent_frame(geometry: Geometry = Geometry()) -> Tensor:
    """Segment index of each video latent frame, LongTensor [5] (Chapter 3)."""
    _segment_spans(geometry)  # validates the geometry
    return torch.arange(geometry.video_latent_frames)


def audio_segment_of_latent_frame(geometry: Geometry = Geometry()) -> Tensor:
    """Segment index of each audio latent frame, LongTensor [34] (Chapter 3)."""
    return torch.tensor(_audio_segments(geometry))


def _centres(spans: tuple[Span, ...]) -> Tensor:
    """Centre time in seconds of each span, FloatTensor [len(spans)] (Chapter 3)."""
    return torch.tensor([float((start + end) / 2) for start, end in spans])


def video_latent_frame_times(geometry: Geometry = Geometry()) -> Tensor:
    """Centre time in seconds of what each video latent frame covers, FloatTensor [5] (Chapter 3)."""
    return _centres(_video_latent_spans(geometry))


def audio_latent_frame_times(geometry: Geometry = Geometry()) -> Tensor:
    """Centre time in seconds of what each audio latent frame covers, FloatTensor [34] (Chapter 3)."""
    return _centres(_audio_latent_spans(geometry))


def segment_bounds(geometry: Geometry = Geometry()) -> Tensor:
    """[start, end) in seconds of each time segment, FloatTensor [N, 2] (Chapter 3)."""
    return torch.tensor([[float(start), float(end)] for start, end in _segment_spans(geometry)])


def _check_grid(timestep_grid: Tensor, geometry: Geometry) -> None:
    """Raise if the grid is not [B, M, N] for this geometry (Chapter 3)."""
    expected = (geometry.modalities, geometry.segments)
    if timestep_grid.dim() != 3 or tuple(timestep_grid.shape[1:]) != expected:
        raise ValueError(
            f"timestep_grid must be [B, {expected[0]}, {expected[1]}] (row 0 video, row 1 audio; "
            f"one column per time segment), got {list(timestep_grid.shape)}"
        )


def expand_grid(timestep_grid: Tensor, geometry: Geometry = Geometry()) -> tuple[Tensor, Tensor]:
    """Per-latent-frame t of each modality: grid [B, M, N] -> ([B, 5], [B, 34]) (Chapter 3)."""
    _check_grid(timestep_grid, geometry)
    video_segment = video_segment_of_latent_frame(geometry).to(timestep_grid.device)
    audio_segment = audio_segment_of_latent_frame(geometry).to(timestep_grid.device)
    t_video = timestep_grid[:, VIDEO, video_segment]  # [B, 5]
    t_audio = timestep_grid[:, AUDIO, audio_segment]  # [B, 34]
    return t_video, t_audio


def _first_frame_of_each_segment(frame_segment: Tensor, segments: int) -> Tensor:
    """Index of the first latent frame of every segment, LongTensor [N] (Chapter 3)."""
    return torch.stack([torch.nonzero(frame_segment == n)[0, 0] for n in range(segments)])


def grid_from_frames(t_video: Tensor, t_audio: Tensor, geometry: Geometry = Geometry()) -> Tensor:
    """Inverse of expand_grid: per-frame t ([B, 5], [B, 34]) -> grid [B, M, N] (Chapter 3)."""
    frames = (geometry.video_latent_frames, geometry.audio_latent_frames)
    if t_video.dim() != 2 or t_audio.dim() != 2 or (t_video.shape[1], t_audio.shape[1]) != frames:
        raise ValueError(
            f"t_video must be [B, {frames[0]}] and t_audio [B, {frames[1]}] (one t per latent "
            f"frame), got {list(t_video.shape)} and {list(t_audio.shape)}"
        )
    if t_video.shape[0] != t_audio.shape[0]:
        raise ValueError(f"t_video and t_audio disagree on the batch size: {t_video.shape[0]} vs {t_audio.shape[0]}")
    first_video = _first_frame_of_each_segment(video_segment_of_latent_frame(geometry), geometry.segments)
    first_audio = _first_frame_of_each_segment(audio_segment_of_latent_frame(geometry), geometry.segments)
    timestep_grid = torch.stack(
        [t_video[:, first_video.to(t_video.device)], t_audio[:, first_audio.to(t_audio.device)]], dim=1
    )  # [B, M, N]
    video_back, audio_back = expand_grid(timestep_grid, geometry)
    if not (torch.equal(video_back, t_video) and torch.equal(audio_back, t_audio)):
        raise ValueError(
            "latent frames of one segment must share one t (a cell of the grid has one noise "
            "level); build per-frame t with expand_grid(timestep_grid) instead"
        )
    return timestep_grid


class TokenLayout(NamedTuple):
    """Where each transformer token sits: modality row, segment column, centre time (Chapter 6)."""

    modality: Tensor  # [L] long, VIDEO or AUDIO
    segment: Tensor  # [L] long, column of the timestep grid
    seconds: Tensor  # [L] float, centre time of what the token covers


def token_layout(geometry: Geometry = Geometry(), video_patch: int = 2, audio_patch: int = 1) -> TokenLayout:
    """Layout of the tokens [video (frame, row, col) | audio (time)] that AVDiT sees (Chapter 6)."""
    height, width = geometry.video_latent_hw
    if video_patch < 1 or height % video_patch or width % video_patch:
        raise ValueError(
            f"video_patch={video_patch} must divide the video latent's {height}x{width} space; "
            f"try one of {[p for p in range(1, min(height, width) + 1) if height % p == 0 == width % p]}"
        )
    audio_segment = audio_segment_of_latent_frame(geometry)
    frames_per_segment = torch.bincount(audio_segment, minlength=geometry.segments).tolist()
    if audio_patch < 1 or any(count % audio_patch for count in frames_per_segment):
        raise ValueError(
            f"audio_patch={audio_patch} must divide the audio latent frames of every segment "
            f"{frames_per_segment}, so that no audio token straddles two segments"
        )
    tokens_per_frame = (height // video_patch) * (width // video_patch)
    video_segment = video_segment_of_latent_frame(geometry).repeat_interleave(tokens_per_frame)  # [L_v]
    video_seconds = video_latent_frame_times(geometry).repeat_interleave(tokens_per_frame)  # [L_v]
    audio_seconds = audio_latent_frame_times(geometry).view(-1, audio_patch).mean(dim=1)  # [L_a]
    audio_segment = audio_segment[::audio_patch]  # [L_a]
    modality = torch.cat([torch.full_like(video_segment, VIDEO), torch.full_like(audio_segment, AUDIO)])
    return TokenLayout(modality, torch.cat([video_segment, audio_segment]), torch.cat([video_seconds, audio_seconds]))


# ----------------------------------------------------------------------------------------------
# Encoding a dataset once, and scaling latents to unit variance (chapters 2-3)
# ----------------------------------------------------------------------------------------------
def spatial_frequency(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """f = max(|f_y|, |f_x|) of every bin of an [height, width] FFT, in cycles per latent cell (0 ... 0.5) (chapter 7)."""
    fy = torch.fft.fftfreq(height, device=device).abs()[:, None]
    fx = torch.fft.fftfreq(width, device=device).abs()[None, :]
    return torch.maximum(fy, fx)


class LatentScaler(torch.nn.Module):
    """Per-channel affine scaling of both latents to zero mean and unit variance (chapters 2-3).

    Diffusion assumes data of about unit variance (the noise has it); an autoencoder's latents
    have whatever scale training left them with. The statistics are buffers, so they are stored
    in the pipeline's checkpoint with the weights.

    ``high_frequency_gain`` (chapter 7, "Making the shape louder"; 1 = off) then multiplies the
    video latent's spatial frequencies by ``1 + (gain - 1) * (2 f)^2``, where f is the larger of a
    frequency's two components in cycles per latent cell (0 ... 0.5): the mean of a channel is
    kept, the finest pattern the 8 x 8 grid holds is multiplied by ``gain``. Against the latents'
    own variance there, a change of shape stands out most at those frequencies (so does a change
    of size or of place). The map is linear and exactly invertible, so ``unscale`` undoes it
    before the decoder sees the latent.
    """

    def __init__(self, video_channels: int = 8, audio_channels: int = 8):
        super().__init__()
        self.register_buffer("video_mean", torch.zeros(video_channels))
        self.register_buffer("video_std", torch.ones(video_channels))
        self.register_buffer("audio_mean", torch.zeros(audio_channels))
        self.register_buffer("audio_std", torch.ones(audio_channels))
        self.register_buffer("high_frequency_gain", torch.ones(()))
        self._gain = 1.0  # the buffer's value on the host: no device sync per scale / unscale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._gain = float(self.high_frequency_gain)

    @torch.no_grad()
    def fit(self, video_latents: Tensor, audio_latents: Tensor) -> "LatentScaler":
        """Measure per-channel mean and std on [N, Cv, 5, h, w] and [N, Ca, 34] latents."""
        video = video_latents.transpose(0, 1).flatten(1)  # [Cv, N*5*h*w]
        audio = audio_latents.transpose(0, 1).flatten(1)  # [Ca, N*34]
        self.video_mean.copy_(video.mean(1))
        self.video_std.copy_(video.std(1).clamp_min(1e-4))
        self.audio_mean.copy_(audio.mean(1))
        self.audio_std.copy_(audio.std(1).clamp_min(1e-4))
        return self

    def emphasise(self, gain: float) -> "LatentScaler":
        """Set the video latent's high-frequency gain (1 = off); see the class docstring."""
        if not gain > 0:
            raise ValueError(f"the high-frequency gain must be positive (1 = off), got {gain}")
        self.high_frequency_gain.fill_(float(gain))
        self._gain = float(gain)
        return self

    @staticmethod
    def _shape(stat: Tensor, x: Tensor) -> Tensor:
        return stat.reshape(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)

    def frequency_gains(self, height: int, width: int) -> Tensor:
        """The gain of each spatial frequency of an [height, width] latent frame, FloatTensor [height, width]."""
        f = spatial_frequency(height, width, self.high_frequency_gain.device)
        return 1 + (self.high_frequency_gain - 1) * (2 * f) ** 2

    def _filter(self, video_latent: Tensor, inverse: bool) -> Tensor:
        if self._gain == 1.0:
            return video_latent  # off: the latents are exactly those of the per-channel scaling
        gains = self.frequency_gains(*video_latent.shape[-2:]).to(video_latent.device)
        spectrum = torch.fft.fft2(video_latent.float()) * (1 / gains if inverse else gains)
        return torch.fft.ifft2(spectrum).real.to(video_latent.dtype)

    def emphasised(self, video_latent: Tensor) -> Tensor:
        """Unit-variance video latent -> with the high-frequency gain applied (identity when off)."""
        return self._filter(video_latent, inverse=False)

    def deemphasised(self, video_latent: Tensor) -> Tensor:
        """Inverse of :meth:`emphasised`: back to the per-channel unit-variance latent."""
        return self._filter(video_latent, inverse=True)

    def scale(self, video_latent: Tensor, audio_latent: Tensor) -> tuple[Tensor, Tensor]:
        """Autoencoder latents -> unit-variance latents for diffusion."""
        video = (video_latent - self._shape(self.video_mean, video_latent)) / self._shape(self.video_std, video_latent)
        return (self.emphasised(video),
                (audio_latent - self._shape(self.audio_mean, audio_latent)) / self._shape(self.audio_std, audio_latent))

    def unscale(self, video_latent: Tensor, audio_latent: Tensor) -> tuple[Tensor, Tensor]:
        """Unit-variance latents -> what the autoencoders' decoders expect."""
        video = self.deemphasised(video_latent)
        return (video * self._shape(self.video_std, video) + self._shape(self.video_mean, video),
                audio_latent * self._shape(self.audio_std, audio_latent) + self._shape(self.audio_mean, audio_latent))


@torch.no_grad()
def encode_dataset(video_ae, audio_ae, dataset, batch_size: int = 32, cache: str | None = None,
                   progress: bool = True, workers: int = 0) -> dict[str, Tensor]:
    """Encode every clip of ``dataset`` once: ``{"video": [N, Cv, 5, h, w], "audio": [N, Ca, 34]}``.

    With ``cache`` (a .safetensors path) the latents are read from it when it exists and written
    to it (atomically) otherwise. The cache name should say which autoencoders and clips made it.
    ``workers`` > 0 generates the clips in that many processes (the encoders then run on their
    own device, e.g. a GPU, while the CPUs make clips).
    """
    if cache is not None and Path(cache).exists():
        return load_file(cache)

    from .data import collate  # data imports nothing from here, but latents sits below data in the book's order

    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="encoding clips", leave=False)
    device = next(video_ae.parameters()).device
    videos, audios = [], []
    for batch in loader:  # (no gradients: the function is decorated with torch.no_grad)
        videos.append(video_ae.encode(batch["video"].to(device)).cpu())
        audios.append(audio_ae.encode(batch["audio"].to(device)).cpu())
    latents = {"video": torch.cat(videos), "audio": torch.cat(audios)}
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{cache}.tmp{os.getpid()}"
        save_file({k: v.contiguous() for k, v in latents.items()}, tmp)
        os.replace(tmp, cache)
    return latents
