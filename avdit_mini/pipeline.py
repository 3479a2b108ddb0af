"""The audiovisual pipeline: two autoencoders + latent scaling + an AVDiT + its diffusion (chapter 8).

``load_pipeline("monl")`` loads the shipped model from ``data/checkpoints``. A pipeline turns
clips into unit-variance latents (``encode``), latents back into clips (``decode``) and holds the
:class:`~avdit_mini.diffusion.GridDiffusion` that samples over a timestep grid.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from .audio_ae import AudioAEConfig, AudioAutoencoder, PostNetConfig, SpectrogramPostNet
from .avdit import AVDiT, AVDiTConfig
from .checkpoints import load_checkpoint, save_checkpoint
from .config import Geometry
from .diffusion import GridDiffusion, Latents
from .latents import LatentScaler
from .schedules import NoiseSchedule
from .video_ae import VideoAEConfig, VideoAutoencoder

CHECKPOINTS = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
VOCODERS = ("auto", "postnet", "griffin-lim")


def _dataclass_from_dict(cls, values: dict):
    """Rebuild a (frozen) config dataclass from its JSON form: lists back to tuples."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def load_postnet(folder: str | Path = CHECKPOINTS) -> SpectrogramPostNet:
    """The trained mel -> linear spectrogram post-net ``<folder>/vocoder`` (chapter 2)."""
    stem = Path(folder) / "vocoder"
    state, meta = load_checkpoint(stem, train_hint="python -m avdit_mini.train vocoder --out data/checkpoints/vocoder")
    postnet = SpectrogramPostNet(_dataclass_from_dict(PostNetConfig, meta["config"]["model"]),
                                 _dataclass_from_dict(Geometry, meta["config"]["geometry"]))
    postnet.load_state_dict({k: v.float() for k, v in state.items()})
    return postnet.eval().requires_grad_(False)


def load_autoencoder(modality: str, folder: str | Path = CHECKPOINTS, vocoder: str = "auto",
                     name: str | None = None) -> nn.Module:
    """The shipped (or your own) video or audio autoencoder, in eval mode (chapters 2-3).

    ``name``: the checkpoint's stem inside ``folder`` (default ``<modality>_ae``). ``vocoder``
    (audio): ``"postnet"`` attaches the trained mel -> linear post-net of ``folder`` before
    Griffin-Lim, ``"griffin-lim"`` inverts the mel scale by least squares, ``"auto"`` uses the
    post-net where ``folder`` has one.
    """
    if vocoder not in VOCODERS:
        raise ValueError(f"vocoder must be one of {VOCODERS}, got {vocoder!r}")
    if modality not in ("video", "audio"):
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    stem = Path(folder) / (name or f"{modality}_ae")
    state, meta = load_checkpoint(stem, train_hint=f"python -m avdit_mini.train autoencoder --modality {modality}")
    config = meta["config"]
    geometry = _dataclass_from_dict(Geometry, config["geometry"])
    if modality == "video":
        model = VideoAutoencoder(_dataclass_from_dict(VideoAEConfig, config["model"]), geometry)
    else:
        model = AudioAutoencoder(_dataclass_from_dict(AudioAEConfig, config["model"]), geometry)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as error:
        raise ValueError(
            f"{stem}.safetensors does not fit the {modality} autoencoder of this code (the architecture changed "
            f"since it was trained); retrain it with `python -m avdit_mini.train autoencoder --modality {modality} "
            f"--out {stem}` or check out the code that made it\n{error}") from error
    if modality == "audio" and (vocoder == "postnet" or (vocoder == "auto" and (Path(folder) / "vocoder.safetensors").exists())):
        model.inverter.postnet = load_postnet(folder)
    return model.eval().requires_grad_(False)


def vocoder_name(audio_ae: nn.Module) -> str:
    """Which mel -> waveform path an audio autoencoder uses: ``"postnet"`` or ``"griffin-lim"``."""
    return "postnet" if audio_ae.inverter.postnet is not None else "griffin-lim"


class AVPipeline(nn.Module):
    """Autoencoders + latent scaler + AVDiT + grid diffusion: clips in, clips out (chapter 8)."""

    def __init__(self, video_ae: nn.Module, audio_ae: nn.Module, avdit: AVDiT, scaler: LatentScaler,
                 schedule: str = "cosine"):
        super().__init__()
        self.video_ae, self.audio_ae, self.avdit, self.scaler = video_ae, audio_ae, avdit, scaler
        self.geometry: Geometry = avdit.config.geometry
        # what the network outputs (epsilon or v) is part of its config: one source for training and sampling
        self.diffusion = GridDiffusion(NoiseSchedule(schedule, avdit.config.T), self.geometry, avdit.config.prediction)
        self.schedule_kind = schedule

    @property
    def device(self) -> torch.device:
        return next(self.avdit.parameters()).device

    @torch.no_grad()
    def encode(self, video: torch.Tensor, audio: torch.Tensor) -> Latents:
        """Clips [B, 3, 17, 64, 64] and [B, 34000] -> unit-variance latents."""
        video_latent = self.video_ae.encode(video.to(self.device))
        audio_latent = self.audio_ae.encode(audio.to(self.device))
        return Latents(*self.scaler.scale(video_latent, audio_latent))

    @torch.no_grad()
    def decode(self, latents: Latents, audio: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit-variance latents -> video [B, 3, 17, 64, 64] in [0, 1] and audio [B, 34000]."""
        video_latent, audio_latent = self.scaler.unscale(latents.video, latents.audio)
        video = self.video_ae.decode(video_latent).clamp(0, 1)
        if not audio:
            return video, None
        log_mel = self.audio_ae.decode(audio_latent)
        return video, self.audio_ae.mel_to_audio(log_mel).clamp(-1, 1)

    def config_dict(self) -> dict:
        return {"avdit": self.avdit.config.to_dict(), "schedule": self.schedule_kind,
                "prediction": self.diffusion.prediction}


def save_pipeline(pipeline: AVPipeline, stem: str | Path, extra: dict | None = None,
                  half: bool = True) -> dict[str, Path]:
    """Save the AVDiT and the latent scaler (the autoencoders are saved on their own).

    ``half`` stores weights as float16 (they load back as float32), halving the shipped size.
    """
    state = {f"avdit.{k}": v for k, v in pipeline.avdit.state_dict().items()}
    state.update({f"scaler.{k}": v for k, v in pipeline.scaler.state_dict().items()})
    if half:
        state = {k: (v.half() if v.is_floating_point() and k.startswith("avdit.") else v) for k, v in state.items()}
    return save_checkpoint(stem, state, pipeline.config_dict(), extra)


def _avdit_config(values: dict) -> AVDiTConfig:
    values = dict(values)
    values["geometry"] = _dataclass_from_dict(Geometry, values["geometry"])
    return _dataclass_from_dict(AVDiTConfig, values)


def load_pipeline_state(state: dict, avdit: AVDiT, scaler: LatentScaler) -> None:
    """Fill ``avdit`` and ``scaler`` from a saved pipeline's tensors (``avdit.*`` and ``scaler.*``)."""
    for prefix, module in (("avdit.", avdit), ("scaler.", scaler)):
        values = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
        if module is scaler:  # saved before the high-frequency gain existed: it was off
            values.setdefault("high_frequency_gain", torch.ones(()))
        module.load_state_dict(values)


def load_pipeline(name: str = "monl", folder: str | Path = CHECKPOINTS, device: str | torch.device = "cpu",
                  vocoder: str = "auto") -> AVPipeline:
    """The pipeline ``<folder>/avdit_<name>`` with the autoencoders of ``folder`` (chapter 8).

    ``vocoder``: how decoded log-mels become waveforms (see :func:`load_autoencoder`)."""
    stem = Path(folder) / f"avdit_{name}"
    state, meta = load_checkpoint(stem, train_hint=f"python -m avdit_mini.train avdit --strategy {name}")
    config = meta["config"]
    avdit = AVDiT(_avdit_config(config["avdit"]))
    scaler = LatentScaler(avdit.config.video_channels, avdit.config.audio_channels)
    load_pipeline_state(state, avdit, scaler)
    pipeline = AVPipeline(load_autoencoder("video", folder), load_autoencoder("audio", folder, vocoder), avdit.eval(),
                          scaler, config.get("schedule", "cosine"))
    pipeline.meta = meta
    return pipeline.to(device).eval()


def provenance(pipeline: AVPipeline) -> dict:
    """What made a loaded pipeline, for a result file: its steps, its run's settings (``--init``, ``--max-step``, ...)
    and its training loss over the first 100 and the last 200 steps of its last run (the mean per step); with
    ``training_terms``, the same of each added term the run logged on its own (``counterfactual``,
    ``shape_cross_entropy``), unweighted."""
    meta = getattr(pipeline, "meta", {})
    log = meta.get("loss_log", [])

    def summary(values: list[float]) -> dict | None:
        return {"first_100": round(sum(values[:100]) / len(values[:100]), 5),
                "last_200": round(sum(values[-200:]) / len(values[-200:]), 5)} if len(values) >= 300 else None

    made = {"trained_steps": meta.get("step"), "run": meta.get("run", {}),
            "training_loss": summary([r["loss"] if isinstance(r, dict) else r for r in log])}
    terms = {key: summary([r[key] for r in log if key in r]) for key in ("counterfactual", "shape_cross_entropy")
             if log and isinstance(log[0], dict) and key in log[0]}
    if terms:
        made["training_terms"] = terms
    return made
