"""Configs and execution profiles (chapter 0 / every chapter's parameters cell).

Two kinds of settings live here:

* :class:`Geometry` -- the shapes every module agrees on (DESIGN.md section 4). It is the same
  in every profile so that shipped weights load everywhere.
* :class:`Profile` -- how much work a chapter does: ``smoke`` (CI, minutes for the whole book),
  ``cpu`` (a laptop, minutes per chapter) and ``gpu`` (full quality from scratch).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import torch


@dataclass(frozen=True)
class Geometry:
    """Clip and latent geometry (DESIGN.md section 4)."""

    frames: int = 17  # video frames per clip
    fps: int = 8  # video frame rate
    height: int = 64
    width: int = 64
    sample_rate: int = 16_000  # audio, mono
    audio_samples: int = 34_000  # = frames / fps * sample_rate
    n_mels: int = 64
    hop_length: int = 250  # 64 mel frames per second, 8 per video frame
    n_fft: int = 1024
    video_time_down: int = 4  # causal: frame 0 alone, then groups of 4
    video_space_down: int = 8
    audio_time_down: int = 4
    segments: int = 5  # N, time segments of the M x N grid
    modalities: int = 2  # M, row 0 video, row 1 audio

    def __post_init__(self) -> None:
        if abs(self.frames / self.fps * self.sample_rate - self.audio_samples) > 0.5:
            raise ValueError(
                f"audio_samples={self.audio_samples} does not cover the video's "
                f"{self.frames}/{self.fps} s at {self.sample_rate} Hz"
            )
        if (self.frames - 1) % self.video_time_down:
            raise ValueError("frames - 1 must be a multiple of video_time_down (causal grouping)")
        if self.audio_samples % self.hop_length:
            raise ValueError("audio_samples must be a multiple of hop_length")

    @property
    def duration(self) -> float:
        """Clip length in seconds (2.125 s by default)."""
        return self.frames / self.fps

    @property
    def mel_frames(self) -> int:
        return self.audio_samples // self.hop_length  # 136

    @property
    def video_latent_frames(self) -> int:
        return 1 + (self.frames - 1) // self.video_time_down  # 5

    @property
    def video_latent_hw(self) -> tuple[int, int]:
        return self.height // self.video_space_down, self.width // self.video_space_down

    @property
    def audio_latent_frames(self) -> int:
        return self.mel_frames // self.audio_time_down  # 34


@dataclass(frozen=True)
class Profile:
    """How much work the chapters do. Every field is a knob a chapter may read."""

    name: str
    description: str
    train_clips: int  # clips in the training set (latents are cached)
    eval_clips: int  # held-out clips for metrics in the chapters
    benchmark_clips: int  # clips for probe / metric benchmarks
    ae_steps: int  # autoencoder training steps when no checkpoint matches
    avdit_steps: int  # AVDiT training steps when no checkpoint matches
    batch_size: int
    avdit_preset: str  # "tiny" | "small" | "base"
    sample_steps: int  # DDIM steps in the chapters
    clips_per_task: int  # generated clips per task when measuring
    widgets: bool = True  # build ipywidgets (a static figure is always drawn too)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CI and nbval: the whole book in minutes on 2 cores; shipped weights",
        train_clips=64,
        eval_clips=16,
        benchmark_clips=48,
        ae_steps=20,
        avdit_steps=20,
        batch_size=8,
        avdit_preset="tiny",
        sample_steps=10,
        clips_per_task=4,
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop or Colab CPU: each chapter in minutes; heavy models from data/checkpoints",
        train_clips=2048,
        eval_clips=64,
        benchmark_clips=500,
        ae_steps=1500,
        avdit_steps=3000,
        batch_size=16,
        avdit_preset="small",
        sample_steps=50,
        clips_per_task=16,
    ),
    "gpu": Profile(
        name="gpu",
        description="Colab GPU or a workstation: trains everything from scratch to full quality",
        train_clips=20_000,
        eval_clips=256,
        benchmark_clips=2000,
        ae_steps=20_000,
        avdit_steps=100_000,
        batch_size=64,
        avdit_preset="base",
        sample_steps=50,
        clips_per_task=200,
    ),
}


def get_profile(profile: str | Profile | None = None) -> Profile:
    """Resolve the execution profile (DESIGN.md section 8).

    An explicit ``profile`` wins, then the ``AVDIT_PROFILE`` environment variable, then ``gpu``
    if CUDA is available, else ``cpu``.
    """
    if isinstance(profile, Profile):
        return profile
    name = profile or os.environ.get("AVDIT_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    name = str(name).strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {sorted(PROFILES)} "
            "(pass profile=... or set the AVDIT_PROFILE environment variable)"
        )
    return PROFILES[name]


def default_device() -> torch.device:
    """The device chapters use: CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["Geometry", "Profile", "PROFILES", "get_profile", "default_device", "replace", "field"]
