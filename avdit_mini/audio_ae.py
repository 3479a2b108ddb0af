"""The audio autoencoder: log-mel front end, 1-D conv encoder/decoder, Griffin-Lim (chapter 2).

Audio [B, 34000] at 16 kHz -> log-mel [B, 64, 136] (hop 250: 8 mel frames per video frame)
-> latent [B, C_a=8, 34] (time / 4) -> log-mel -> waveform by Griffin-Lim phase recovery.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from .config import Geometry

# Fixed normalisation of log-mel (natural log of magnitude-mel, floored): measured on training
# clips of the world, so that normalised values are roughly zero-mean and unit-scale.
LOG_FLOOR = 1e-4
LOG_MEL_MEAN = -5.8
LOG_MEL_STD = 3.0


def _check_audio(audio: torch.Tensor, geometry: Geometry) -> None:
    if audio.ndim != 2 or audio.shape[1] != geometry.audio_samples:
        raise ValueError(
            f"expected mono audio [B, {geometry.audio_samples}] at {geometry.sample_rate // 1000} kHz "
            f"({geometry.duration} s), got shape {list(audio.shape)}; resample with torchaudio.functional.resample "
            "and trim or pad to the clip length (data.VideoFolderDataset does both)"
        )


class LogMel(nn.Module):
    """Audio [B, S] -> normalised log-mel [B, n_mels, S // hop]. Chapter 2.

    ``center=True`` gives S / hop + 1 frames; the last one (half past the end) is dropped so that
    34,000 samples give exactly 136 frames, 8 per video frame.
    """

    def __init__(self, geometry: Geometry | None = None):
        super().__init__()
        self.geometry = g = geometry or Geometry()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=g.sample_rate, n_fft=g.n_fft, hop_length=g.hop_length, n_mels=g.n_mels,
            center=True, power=1.0,  # magnitude: what Griffin-Lim inverts
        )

    def magnitude_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Linear (magnitude) mel [B, n_mels, frames]."""
        _check_audio(audio, self.geometry)
        return self.mel(audio.float())[..., : self.geometry.mel_frames]  # [B, 64, 137] -> [B, 64, 136]

    def magnitude_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude [B, n_fft / 2 + 1, frames]: what the mel filterbank summarises (chapter 2's post-net)."""
        _check_audio(audio, self.geometry)
        return self.mel.spectrogram(audio.float())[..., : self.geometry.mel_frames]  # [B, 513, 136]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        log_mel = torch.log(self.magnitude_mel(audio).clamp_min(LOG_FLOOR))
        return (log_mel - LOG_MEL_MEAN) / LOG_MEL_STD

    @staticmethod
    def denormalise(log_mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel -> linear magnitude mel."""
        return torch.exp(log_mel * LOG_MEL_STD + LOG_MEL_MEAN)


@dataclass(frozen=True)
class PostNetConfig:
    """The learned mel -> linear spectrogram step (stored in ``vocoder.json``)."""

    channels: int = 192
    blocks: int = 3
    groups: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


class SpectrogramPostNet(nn.Module):
    """Normalised log-mel [B, 64, 136] -> natural-log linear magnitude [B, 513, 136]. Chapter 2.

    64 mel bands summarise 513 frequency bins: above 1 kHz one band spans several harmonics'
    worth of bins, and a least-squares inverse spreads a harmonic over the whole band. The world's
    sounds are few and regular (a sine, a square wave's odd harmonics, noise), so a small network
    learns where inside each band the energy really sits -- Tacotron's post-net (Wang et al.,
    2017) did the same for speech before Griffin-Lim. A few 1-D residual blocks, 3 frames wide.
    """

    def __init__(self, config: PostNetConfig | None = None, geometry: Geometry | None = None):
        super().__init__()
        self.config = c = config or PostNetConfig()
        self.geometry = g = geometry or Geometry()
        self.net = nn.Sequential(nn.Conv1d(g.n_mels, c.channels, 3, padding=1),
                                 *_stage(c.channels, c.channels, c.blocks, c.groups),
                                 nn.GroupNorm(min(c.groups, c.channels), c.channels), nn.SiLU(),
                                 nn.Conv1d(c.channels, g.n_fft // 2 + 1, 1))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if log_mel.ndim != 3 or log_mel.shape[1] != g.n_mels:
            raise ValueError(f"expected a normalised log-mel [B, {g.n_mels}, frames], got {list(log_mel.shape)}")
        return self.net(log_mel)


def postnet_loss(predicted_log: torch.Tensor, magnitude: torch.Tensor, linear_weight: float = 10.0,
                 log_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """L1 of log magnitudes (every bin, quiet ones too) + 10 x L1 of magnitudes (the loud bins: harmonics)."""
    target_log = torch.log(magnitude.clamp_min(LOG_FLOOR))
    log_l1 = (predicted_log - target_log).abs().mean()
    linear_l1 = (predicted_log.exp() - magnitude).abs().mean()
    return {"loss": log_weight * log_l1 + linear_weight * linear_l1, "log_l1": log_l1.detach(), "linear_l1": linear_l1.detach()}


class MelInverter(nn.Module):
    """Normalised log-mel [B, 64, 136] -> audio [B, 34000]: mel -> linear spectrogram, then Griffin-Lim. Chapter 2.

    The linear spectrogram comes from ``InverseMelScale`` (least squares), or from a trained
    :class:`SpectrogramPostNet` once one is attached (``inverter.postnet = ...``).
    """

    def __init__(self, geometry: Geometry | None = None, n_iter: int = 32, momentum: float = 0.99):
        super().__init__()
        self.geometry = g = geometry or Geometry()
        n_stft = g.n_fft // 2 + 1
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=n_stft, n_mels=g.n_mels, sample_rate=g.sample_rate)
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=g.n_fft, hop_length=g.hop_length, power=1.0, n_iter=n_iter, momentum=momentum,
            length=g.audio_samples, rand_init=False)  # zero-phase start: deterministic
        self.postnet: SpectrogramPostNet | None = None

    @torch.no_grad()
    def spectrogram(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [B, 64, 136] -> linear magnitude [B, 513, 137] (center=True frames)."""
        if self.postnet is not None:
            magnitude = self.postnet(log_mel.float()).exp()
        else:
            magnitude = self.inverse_mel(LogMel.denormalise(log_mel.float())).clamp_min(0.0)
        return torch.cat([magnitude, magnitude[..., -1:]], dim=-1)  # 136 -> 137 frames

    @torch.no_grad()
    def forward(self, log_mel: torch.Tensor, seed: int = 0) -> torch.Tensor:
        audio = self.griffin_lim(self.spectrogram(log_mel))  # [B, 34000]
        return audio.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------
# The autoencoder
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioAEConfig:
    """Audio autoencoder shape (stored in the checkpoint's json)."""

    latent_channels: int = 8  # C_a
    channels: tuple[int, ...] = (128, 192, 256)  # per resolution: 136, 68, 34 frames
    blocks: int = 2  # residual blocks per resolution
    groups: int = 16
    griffin_lim_iters: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock1d(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a skip (1x1 conv if the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_ch), in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _stage(in_ch: int, out_ch: int, blocks: int, groups: int) -> list[nn.Module]:
    return [ResBlock1d(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)]


class AudioAutoencoder(nn.Module):
    """Audio [B, 34000] <-> latent [B, C_a, 34] through log-mel [B, 64, 136]. Chapter 2."""

    def __init__(self, config: AudioAEConfig | None = None, geometry: Geometry | None = None):
        super().__init__()
        self.config = c = config or AudioAEConfig()
        self.geometry = g = geometry or Geometry()
        if 2 ** (len(c.channels) - 1) != g.audio_time_down:
            raise ValueError(f"{len(c.channels)} resolutions give time / {2 ** (len(c.channels) - 1)}, "
                             f"but the geometry asks for / {g.audio_time_down}")
        self.log_mel = LogMel(g)
        self.inverter = MelInverter(g, n_iter=c.griffin_lim_iters)
        self.encoder = self._build_encoder(c, g.n_mels)
        self.decoder = self._build_decoder(c, g.n_mels)

    @staticmethod
    def _build_encoder(c: AudioAEConfig, n_mels: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv1d(n_mels, c.channels[0], 3, padding=1)]
        for i, ch in enumerate(c.channels):
            layers += _stage(ch, ch, c.blocks, c.groups)
            if i < len(c.channels) - 1:
                layers.append(nn.Conv1d(ch, c.channels[i + 1], 4, stride=2, padding=1))  # time / 2
        last = c.channels[-1]
        layers += [nn.GroupNorm(min(c.groups, last), last), nn.SiLU(), nn.Conv1d(last, c.latent_channels, 3, padding=1)]
        return nn.Sequential(*layers)

    @staticmethod
    def _build_decoder(c: AudioAEConfig, n_mels: int) -> nn.Sequential:
        widths = c.channels[::-1]
        layers: list[nn.Module] = [nn.Conv1d(c.latent_channels, widths[0], 3, padding=1)]
        for i, ch in enumerate(widths):
            layers += _stage(ch, ch, c.blocks, c.groups)
            if i < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),  # time x 2
                           nn.Conv1d(ch, widths[i + 1], 3, padding=1)]
        last = widths[-1]
        layers += [nn.GroupNorm(min(c.groups, last), last), nn.SiLU(), nn.Conv1d(last, n_mels, 3, padding=1)]
        return nn.Sequential(*layers)

    def encode_mel(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [B, 64, 136] -> latent [B, C_a, 34]."""
        g = self.geometry
        if log_mel.ndim != 3 or tuple(log_mel.shape[1:]) != (g.n_mels, g.mel_frames):
            raise ValueError(f"expected log-mel [B, {g.n_mels}, {g.mel_frames}], got {list(log_mel.shape)}")
        return self.encoder(log_mel)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio [B, 34000] at 16 kHz -> latent [B, C_a, 34]."""
        return self.encode_mel(self.log_mel(audio))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, C_a, 34] -> normalised log-mel [B, 64, 136]."""
        expected = (self.config.latent_channels, self.geometry.audio_latent_frames)
        if latent.ndim != 3 or tuple(latent.shape[1:]) != expected:
            raise ValueError(f"expected an audio latent [B, {expected[0]}, {expected[1]}], got {list(latent.shape)}")
        return self.decoder(latent)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio -> reconstructed normalised log-mel."""
        return self.decode(self.encode(audio))

    def mel_to_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [B, 64, 136] -> audio [B, 34000] by Griffin-Lim (deterministic)."""
        return self.inverter(log_mel)

    @torch.no_grad()
    def reconstruct(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio -> latent -> log-mel -> audio: the full round trip."""
        return self.mel_to_audio(self(audio))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["LogMel", "MelInverter", "SpectrogramPostNet", "PostNetConfig", "postnet_loss", "AudioAEConfig", "AudioAutoencoder", "count_parameters",
           "LOG_MEL_MEAN", "LOG_MEL_STD", "LOG_FLOOR"]
