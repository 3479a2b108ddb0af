"""Training loops and the command line: ``python -m avdit_mini.train SUBCOMMAND ...`` (chapters 2-3, 7).

    python -m avdit_mini.train autoencoder --modality video --profile cpu --steps 3000 \\
        --out data/checkpoints/video_ae --max-minutes 55 --threads 1

Every subcommand is one function (``run_autoencoder``); the pieces they share -- the clip
loader, the optimiser and its warm-up + cosine schedule, the checkpoint timer and the exact
resume -- are small helpers below. Clips are generated on the fly from the world's ``train``
split; metrics at the end use the disjoint ``val`` split.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from safetensors.torch import load_file
from tqdm.auto import tqdm

from . import checkpoints, probes
from .audio_ae import AudioAEConfig, AudioAutoencoder, PostNetConfig, SpectrogramPostNet, postnet_loss
from .avdit import AVDiT, AVDiTConfig, num_parameters
from .config import Geometry, get_profile
from .data import SHAPES, SIZES, SPLIT_OFFSETS, CounterfactualDataset, World, WorldDataset, collate
from .diffusion import GridDiffusion, Latents, _clamped
from .latents import LatentScaler, encode_dataset
from .monl import STRATEGIES, conditional_grid, sample_timestep_grid
from .pipeline import CHECKPOINTS, AVPipeline, load_autoencoder, load_pipeline, load_pipeline_state, save_pipeline
from .schedules import NoiseSchedule
from .tasks import resolve_task
from .video_ae import (TINY_VIDEO_CONFIG, FrameCritic, ShapeReadout, VideoAEConfig, VideoAutoencoder, causal_time_pool,
                       hinge_critic_loss, object_cells, object_crops, psnr, reconstruction_loss, shape_alignment_error,
                       shape_code_targets)

TINY_AUDIO_CONFIG = AudioAEConfig(channels=(16, 16, 16), blocks=1, groups=4, griffin_lim_iters=4)
TRAIN_CLIPS = 10_000_000  # seeds of the train split drawn from: practically every clip is new


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
class StepSampler(Sampler[int]):
    """Clip indices in step order: batch ``s`` holds clips ``s * B .. s * B + B - 1`` (mod ``n``).

    The data a step sees depends on the step alone, so a resumed run sees the same clips.
    """

    def __init__(self, start_step: int, total_steps: int, batch_size: int, n_clips: int):
        self.start, self.stop, self.n = start_step * batch_size, total_steps * batch_size, n_clips

    def __iter__(self) -> Iterator[int]:
        return (i % self.n for i in range(self.start, self.stop))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


class SizeWeightedSampler(Sampler[int]):
    """Clip indices in step order, like ``StepSampler``, with the object sizes in chosen proportions.

    A hard-example knob for fine-tunes: ``weights = (3, 1, 1)`` gives the radius-4 objects three
    fifths of every batch instead of a third. Slot ``i`` of the run (step x batch + k) draws its size
    from a generator seeded by the run, then takes the next train seed whose object has that size, so
    a step's clips depend on the step alone (a resumed run sees the same ones) and no clip repeats.
    """

    def __init__(self, start_step: int, total_steps: int, batch_size: int, weights, seed: int = 0):
        w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
        if w.numel() != len(SIZES) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"size weights must be {len(SIZES)} non-negative numbers, one per radius {SIZES}, "
                             f"not all zero; got {list(weights)}")
        slots = total_steps * batch_size
        sizes = torch.multinomial(w, slots, replacement=True, generator=torch.Generator().manual_seed(seed)).tolist()
        need = [sizes.count(c) for c in range(len(SIZES))]
        pools: list[list[int]] = [[] for _ in SIZES]
        world, candidate, limit = World(), 0, SPLIT_OFFSETS["val"]
        while any(len(pool) < n for pool, n in zip(pools, need)):
            if candidate >= limit:
                raise ValueError(f"{slots:,} clips with size weights {list(weights)} need more than the train "
                                 f"split's {limit:,} seeds; use fewer steps or less extreme weights")
            size = world.sample_factors(candidate)["size"]
            if len(pools[size]) < need[size]:
                pools[size].append(candidate)
            candidate += 1
        taken = [0] * len(SIZES)
        order = []
        for size in sizes:
            order.append(pools[size][taken[size]])
            taken[size] += 1
        self.indices = order[start_step * batch_size:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def clip_loader(start_step: int, total_steps: int, batch_size: int, n_clips: int = TRAIN_CLIPS,
                split: str = "train", workers: int = 0, size_weights=None) -> DataLoader:
    """Batches of world clips generated on the fly, deterministic in the step.

    ``size_weights`` (train split only): the share of each object size, as ``SizeWeightedSampler``.
    """
    dataset = WorldDataset(n_clips, split)
    if size_weights is not None:
        if split != "train":
            raise ValueError("size_weights re-weights the training clips only")
        sampler = SizeWeightedSampler(start_step, total_steps, batch_size, size_weights)
    else:
        sampler = StepSampler(start_step, total_steps, batch_size, n_clips)
    # its own generator: starting the loader draws a seed, which must not come from the global random
    # state (a resumed run starts a loader mid-way, and the steps' own draws would shift by one)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(start_step))


def rng_neutral(function):
    """Run ``function`` without moving the global random states (evaluations between training steps)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        state = checkpoints.rng_state()
        try:
            return function(*args, **kwargs)
        finally:
            checkpoints.set_rng_state(state)
    return wrapper


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int,
                  final_fraction: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``final_fraction`` of the peak."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class CheckpointTimer:
    """True every ``seconds`` of wall-clock time (and never twice in one step)."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            return True
        return False


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as one could paste it (for the MANIFEST)."""
    argv = sys.argv[1:] if argv is None else argv
    return "python -m avdit_mini.train " + " ".join(shlex.quote(a) for a in argv)


def save_all(stem: Path, model: nn.Module, config: dict, optimizer: torch.optim.Optimizer,
             scheduler, step: int, loss_log: list, extra: dict | None = None) -> None:
    """Weights + json (with the loss log) + training state, each written atomically."""
    checkpoints.save_checkpoint(stem, model.state_dict(), config, {"step": step, "loss_log": loss_log, **(extra or {})})
    checkpoints.save_training_state(stem, optimizer, step, loss_log, scheduler)


def log(message: str) -> None:
    """A timestamped line that does not break the progress bar."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# Autoencoders (chapters 2-3)
# ----------------------------------------------------------------------------------------------
def build_autoencoder(modality: str, tiny: bool = False, **video_head) -> tuple[nn.Module, dict]:
    """The model and the config dict its checkpoint stores (what ``load_checkpoint`` compares).

    ``video_head``: ``refine_width`` / ``refine_depth`` / ``refine_hints`` of the video AE's
    sharpening head, its ``decoder_blocks`` and ``encoder_blocks``, where given (not None).
    """
    if modality == "video":
        model_config = TINY_VIDEO_CONFIG if tiny else VideoAEConfig()
        model_config = replace(model_config, **{k: v for k, v in video_head.items() if v is not None})
        model = VideoAutoencoder(model_config)
    elif modality == "audio":
        model_config = TINY_AUDIO_CONFIG if tiny else AudioAEConfig()
        model = AudioAutoencoder(model_config)
    else:
        raise ValueError(f"unknown modality {modality!r}; choose video or audio")
    config = {"kind": f"{modality}_ae", "model": model_config.to_dict(), "geometry": asdict(Geometry())}
    return model, config


def freeze_encoder_from(model: nn.Module, stem: Path, freeze: bool = True) -> set[str]:
    """Start from the weights of checkpoint ``stem`` and freeze the encoder: only the decoder trains.

    The latents stay exactly those of ``stem``, so an AVDiT trained on them stays valid
    (``freeze=False``, ``--finetune``: both sides train on, and the latents change). Layers the
    checkpoint lacks (a decoder head added since) start from their initialisation; a layer that
    grew (the decoder's read-out drawing hint channels besides the colours) keeps the stored rows
    in its first rows; a sharpening head of another shape starts afresh.
    """
    if not checkpoints.checkpoint_paths(stem)["weights"].exists():
        raise FileNotFoundError(f"{'--finetune-decoder' if freeze else '--finetune'} {stem}: no {stem}.safetensors to start from")
    stored = load_file(str(checkpoints.checkpoint_paths(stem)["weights"]))
    own = model.state_dict()
    unexpected = [k for k in stored if k not in own]
    if unexpected or any(k.startswith("encoder.") and (k not in stored or stored[k].shape != v.shape) for k, v in own.items()):
        raise ValueError(f"{stem} does not fit this autoencoder's encoder (unexpected {unexpected}); "
                         "--finetune-decoder needs the same encoder")
    weights, fresh = {}, set()
    for key, value in own.items():
        old = stored.get(key)
        if old is not None and old.shape == value.shape:
            weights[key] = old
        elif old is not None and key.startswith("decoder.") and old.shape[1:] == value.shape[1:] and old.shape[0] < value.shape[0]:
            weights[key] = torch.cat([old, value[old.shape[0]:]])  # grown read-out: the colours' rows kept
            fresh.add(key.rsplit(".", 1)[0] + " (grown)")
        else:
            weights[key] = value
            fresh.add(key.rsplit(".", 1)[0])
    model.load_state_dict(weights)
    if freeze:
        if any(name.startswith("encoder_trunk.") for name in fresh):
            raise ValueError(f"--finetune-decoder keeps the encoder as it was: {stem} has no such --encoder-blocks to keep "
                             "(use --finetune to add them)")
        model.encoder.requires_grad_(False)
        model.encoder_trunk.requires_grad_(False)
    log(f"{'decoder' if freeze else 'whole-autoencoder'} fine-tune from {stem}: encoder {'frozen' if freeze else 'trained'}, "
        f"new layers {sorted(fresh)}")
    return fresh


def random_frames(video: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` distinct frame indices of ``video`` [B, C, T, H, W], in order, drawn from the global random state."""
    return torch.randperm(video.shape[2])[:k].sort().values.to(video.device)


def with_latent_noise(latent: torch.Tensor, scale: float) -> torch.Tensor:
    """``latent`` [B, C, ...] plus Gaussian noise of a standard deviation drawn per clip from U(0, ``scale``), in units of
    each channel's spread over the batch (``--latent-noise``)."""
    spread = latent.detach().std(dim=(0, 2, 3, 4), keepdim=True)  # per channel, over the batch
    sigma = scale * torch.rand(latent.shape[0], 1, 1, 1, 1, device=latent.device)
    return latent + sigma * spread * torch.randn_like(latent)


def autoencoder_loss(model: nn.Module, modality: str, batch: dict, edge: float = 0.0,
                     frames: int = 0, latent_noise: float = 0.0, pixel: str = "mse", boost: float = 2.0,
                     area: float = 0.0, halo: float = 0.0) -> dict[str, torch.Tensor]:
    """Video: object-weighted ``pixel`` error (MSE or L1, + ``edge`` x the image-gradient L1). Audio: L1 + MSE on normalised log-mel.

    ``frames`` > 0 (video): the loss on that many random frames of the 17 (the same for the whole batch).
    ``latent_noise`` > 0 (video): the decoder sees its latent plus Gaussian noise of a standard deviation
    drawn per clip from U(0, ``latent_noise``), in units of each channel's spread -- so that it learns to
    draw the true clip from a latent that is a little off, as a diffusion model's samples are (chapter 3).
    """
    if modality == "video":
        video, weighting = batch["video"], {"edge": edge, "pixel": pixel, "boost": boost, "area": area,
                                           "halo": halo}
        if not frames and not latent_noise:
            return reconstruction_loss(model(video), video, **weighting)
        latent = model.encode(video)
        if latent_noise:
            latent = with_latent_noise(latent, latent_noise)
        if not frames:
            return reconstruction_loss(model.decode_raw(latent), video, **weighting)
        chosen = random_frames(video, frames)
        return reconstruction_loss(model.decode_raw(latent, chosen), video[:, :, chosen], **weighting)
    target = model.log_mel(batch["audio"])  # [B, 64, 136]
    error = model.decode(model.encode_mel(target)) - target
    l1, mse = error.abs().mean(), error.square().mean()
    return {"loss": l1 + mse, "l1": l1.detach(), "mse": mse.detach()}


def decoded_losses(model: nn.Module, args: argparse.Namespace, latent: torch.Tensor, video: torch.Tensor):
    """``latent`` decoded on ``--loss-frames`` random frames of ``video`` (all: 0): the decoded and the real frames and
    the reconstruction losses, weighed as the command line says."""
    chosen = random_frames(video, args.loss_frames or video.shape[2])
    decoded, real = model.decode_raw(latent, chosen), video[:, :, chosen]
    losses = reconstruction_loss(decoded, real, edge=args.edge_weight, pixel=args.pixel_loss, boost=args.object_boost,
                                 area=args.boost_area, halo=args.halo_weight)
    return decoded, real, losses


def reconstruction_step(model: nn.Module, args: argparse.Namespace, video: torch.Tensor):
    """The latent, the decoded and the real frames (``--loss-frames`` of them) and the reconstruction losses."""
    latent = model.encode(video)
    return (latent, *decoded_losses(model, args, latent, video))


def shape_labels(batch: dict, flag: str) -> torch.Tensor:
    """Each clip's shape index [B] from the batch's factors (``flag`` names the option that needs them)."""
    if "factors" not in batch:
        raise ValueError(f"{flag} needs each clip's factors (the world's clips have them)")
    return torch.tensor([SHAPES.index(f["shape"]) for f in batch["factors"]], device=batch["video"].device)


def share_of_cells_right(logits: torch.Tensor, shapes: torch.Tensor, cells: torch.Tensor) -> float:
    """The share of the object's cells (weighed by ``cells``, its coverage) whose logits name the clip's shape."""
    right = (logits.argmax(dim=1) == shapes.reshape(-1, 1, 1, 1)).float()
    return float((right * cells).sum() / cells.sum().clamp(min=1e-6))


class Companion:
    """A small network trained beside the video autoencoder with its own optimiser (the critic, the shape read-out).

    Subclasses set ``net``, ``optimizer``, ``key`` (the state's name and the file's suffix), ``flag``
    (the option that made it), ``what`` (its name in messages) and ``stats``, and say what to log in :meth:`report`. The state is
    saved beside each checkpoint (``<stem>.<key>.pt``), so a resume is exact.
    """

    key, flag, what = "", "", ""  # what: the companion's name in messages
    net: nn.Module
    optimizer: torch.optim.Optimizer

    def path(self, stem: Path) -> Path:
        return Path(f"{stem}.{self.key}.pt")

    def report(self) -> str:
        raise NotImplementedError

    def save(self, stem: Path) -> None:
        state = {self.key: self.net.state_dict(), "optimizer": self.optimizer.state_dict()}
        checkpoints._atomic_write(self.path(stem), lambda tmp: torch.save(state, tmp))
        if self.stats:
            log(self.report())

    def load(self, stem: Path) -> None:
        if not self.path(stem).exists():
            raise FileNotFoundError(f"--resume with {self.flag}: {self.path(stem)} is missing (the {self.what}'s state)")
        state = torch.load(self.path(stem), map_location=next(self.net.parameters()).device, weights_only=True)
        self.net.load_state_dict(state[self.key])
        self.optimizer.load_state_dict(state["optimizer"])

    def reconstruction(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        return reconstruction_step(self.model, self.args, video)


class Adversary(Companion):
    """The video decoder's critic (``--adversarial W``, chapter 3): a :class:`FrameCritic`, its optimiser, its loss.

    Each step, ``loss(batch, step)`` first trains the critic one step on real frames against the
    decoder's (detached), both cut to a window around the object (:func:`object_crops`), then
    returns the decoder's loss: the reconstruction loss plus ``weight x lambda x`` the adversarial
    term ``-critic(decoded)``. ``lambda`` balances the two
    by their gradients at the decoder's last layer (Esser et al., 2021, VQGAN): the critic may pull
    as hard as the reconstruction does, no harder. For the first ``start`` steps only the critic
    learns. Its state is saved beside the checkpoint (``<stem>.critic.pt``), so a resume is exact.
    """

    key, flag, what = "critic", "--adversarial", "critic"

    def __init__(self, model: nn.Module, args: argparse.Namespace, device: torch.device):
        self.model, self.args, self.weight, self.start = model, args, args.adversarial, args.adversarial_start
        self.critic = self.net = FrameCritic().to(device)
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=args.critic_lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.last_layer = next(iter(model.refine.net[-1].parameters() if model.refine is not None else model.decoder[-1].parameters()))
        self.stats: list[tuple[float, float, float]] = []
        self.head_loss: ShapeHeadLoss | None = None  # set by run_autoencoder with --shape-head

    def report(self) -> str:
        critic, adversarial, balance = np.mean(self.stats[-50:], axis=0)
        head = f"; {self.head_loss.report()}" if self.head_loss is not None else ""
        return f"critic: hinge loss {critic:.3f}, decoder's adversarial term {adversarial:.3f}, lambda {balance:.2e}{head}"

    def loss(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        args = self.args
        latent, decoded, real, losses = self.reconstruction(batch["video"])
        if self.head_loss is not None:  # --shape-head too: the decoder's shape reader learns beside the critic
            losses = self.head_loss.add_to(losses, latent, batch)
        real_crops, decoded_crops = object_crops([real, decoded.clamp(0, 1)], real, args.critic_crop)
        if args.critic_zoom > 1:  # each pixel drawn as a zoom x zoom block: a 1-pixel corner spans the critic's stride
            real_crops, decoded_crops = (F.interpolate(c, scale_factor=args.critic_zoom, mode="nearest")
                                         for c in (real_crops, decoded_crops))
        # 1. the critic: one step on real frames against the decoder's, detached
        self.critic.requires_grad_(True)
        critic_loss = hinge_critic_loss(self.critic(real_crops), self.critic(decoded_crops.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.optimizer.step()
        # 2. the decoder: reconstruction + the balanced adversarial term
        self.critic.requires_grad_(False)
        adversarial = -self.critic(decoded_crops).mean()
        balance = torch.zeros(())
        if step >= self.start:
            rec_grad = torch.autograd.grad(losses["loss"], self.last_layer, retain_graph=True)[0]
            adv_grad = torch.autograd.grad(adversarial, self.last_layer, retain_graph=True)[0]
            balance = (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, 1e4).detach()
            losses["loss"] = losses["loss"] + self.weight * balance * adversarial
        self.stats.append((float(critic_loss.detach()), float(adversarial.detach()), float(balance)))
        return {**losses, "critic": critic_loss.detach(), "adversarial": adversarial.detach()}


class ShapeAligner(Companion):
    """``--shape-alignment W`` (chapter 3, "Teaching the latent its shape"): the latent must say the shape in every cell.

    Like aligning a latent with a pretrained network's features (Yao et al., 2025, VA-VAE), but the
    target is the world's own label: a linear :class:`ShapeReadout` must tell the clip's shape from
    each latent cell the object covers. Each step the read-out first learns one step on the
    detached latent; then the autoencoder's loss is its reconstruction loss plus ``W`` x the
    read-out's cross-entropy through the (frozen) read-out, so the encoder moves the shape into
    the read-out's directions and the decoder learns to draw from them. The read-out's state is
    saved beside the checkpoint (``<stem>.readout.pt``), so a resume is exact.
    """

    key, flag, what = "readout", "--shape-alignment", "shape read-out"

    def __init__(self, model: nn.Module, args: argparse.Namespace, device: torch.device):
        self.model, self.args, self.weight = model, args, args.shape_alignment
        self.readout = self.net = ShapeReadout(model.config.latent_channels, len(SHAPES), args.alignment_scale).to(device)
        self.optimizer = torch.optim.AdamW(self.readout.parameters(), lr=1e-3, weight_decay=0.0)
        self.stats: list[tuple[float, float]] = []

    def report(self) -> str:
        error, accuracy = np.mean(self.stats[-50:], axis=0)
        return f"shape read-out: cross-entropy {error:.3f}, right in {100 * accuracy:.1f}% of the object's cells"

    def loss(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        video = batch["video"]
        shapes = shape_labels(batch, self.flag)
        latent, _, _, losses = self.reconstruction(video)
        cells, spread = object_cells(video), latent.detach().std(dim=(0, 2, 3, 4))
        # 1. the read-out: one step on the detached latent
        self.readout.requires_grad_(True)
        fit = shape_alignment_error(self.readout(latent.detach(), spread), shapes, cells)
        self.optimizer.zero_grad(set_to_none=True)
        fit.backward()
        self.optimizer.step()
        # 2. the autoencoder: reconstruction + W x the frozen read-out's cross-entropy
        self.readout.requires_grad_(False)
        logits = self.readout(latent, spread)
        alignment = shape_alignment_error(logits, shapes, cells)
        losses["loss"] = losses["loss"] + self.weight * alignment
        self.stats.append((float(alignment.detach()), share_of_cells_right(logits, shapes, cells)))
        return {**losses, "alignment": alignment.detach()}


class ShapeHeadLoss:
    """``--shape-head W`` (chapter 3, "A decoder that reads the shape"): the decoder's :class:`ShapeHead` learns the shape.

    The loss of a batch is the reconstruction loss (``--loss-frames`` of each clip, as every video
    loss) plus ``W`` x the head's cross-entropy in each latent cell the object covers, weighed by its
    share of the cell (:func:`shape_alignment_error`). The head is part of the decoder, so its state
    is in the checkpoint and a resume is exact; the encoder is untouched (``--finetune-decoder``).
    """

    def __init__(self, model: nn.Module, args: argparse.Namespace):
        self.model, self.args, self.weight = model, args, args.shape_head
        self.stats: list[tuple[float, float]] = []

    def __call__(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        latent, _, _, losses = reconstruction_step(self.model, self.args, batch["video"])
        return self.add_to(losses, latent, batch)

    def add_to(self, losses: dict[str, torch.Tensor], latent: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """``losses`` with W x the head's cross-entropy on ``latent`` (the batch's clips) added to its total."""
        shapes = shape_labels(batch, "--shape-head")
        logits, cells = self.model.shape_logits(latent), object_cells(batch["video"])
        error = shape_alignment_error(logits, shapes, cells)
        self.stats.append((float(error.detach()), share_of_cells_right(logits, shapes, cells)))
        losses["loss"] = losses["loss"] + self.weight * error
        return {**losses, "shape_head": error.detach()}

    def report(self) -> str:
        error, accuracy = np.mean(self.stats[-50:], axis=0) if self.stats else (float("nan"), float("nan"))
        return f"shape head: cross-entropy {error:.3f}, right in {100 * accuracy:.1f}% of the object's cells"


def finest_removed(latent: torch.Tensor) -> torch.Tensor:
    """A video latent [B, C, F, H, W] with each frame's finest spatial pattern removed: a [1, 2, 1] / 4 filter along
    each grid axis (edges replicated), which passes a channel's mean and has no response at 0.5 cycles per cell."""
    b, c, f, h, w = latent.shape
    x = F.pad(latent.reshape(b * c * f, 1, h, w), (1, 1, 1, 1), mode="replicate")
    kernel = torch.tensor([1.0, 2.0, 1.0], device=latent.device, dtype=latent.dtype) / 4
    x = F.conv2d(x, (kernel[:, None] * kernel[None, :])[None, None])
    return x.reshape(b, c, f, h, w)


def unsure_of_shape(model: nn.Module, appearance: torch.Tensor, batch: dict, share: float) -> torch.Tensor:
    """``appearance`` (the encoder's latents of ``batch``), where for a random ``share`` of the clips the latent is
    replaced by the mean of the latents of that clip drawn with each shape (``World.redraw``: the same path, size,
    colour and background): a latent that says exactly where the object is and what colour, and nothing of its
    shape -- what a diffusion model unsure of the shape makes (chapter 8, "The guess as a mixture of shapes")."""
    chosen = [i for i in range(appearance.shape[0]) if float(torch.rand(())) < share]
    if not chosen:
        return appearance
    appearance = appearance.clone()
    appearance[chosen] = unsure_latents(model, [batch["factors"][i] for i in chosen]).to(appearance.device)
    return appearance


@torch.no_grad()
def unsure_latents(model: nn.Module, factors: list[dict]) -> torch.Tensor:
    """For each clip of ``factors``, the mean of ``model``'s own (encoder) latents of the clip drawn with each shape
    (``World.redraw``): [N, latent_channels, 5, 8, 8] -- where the object is and its colour, not which shape."""
    world, device = World(), next(model.parameters()).device
    drawings = torch.stack([world.redraw(f, s) for f in factors for s in SHAPES]).to(device)
    latents = model.encode_appearance(drawings)
    return latents.reshape(len(factors), len(SHAPES), *latents.shape[1:]).mean(dim=1)


class ShapeCodeLoss:
    """``--shape-code W`` (chapter 7, "A code that names the shape"): the encoder's :class:`ShapeCoder` and a decoder that reads it.

    The loss of a batch is the reconstruction loss from the latent -- the frozen encoder's channels,
    with ``--latent-noise`` (which makes their quiet pattern an unreliable witness of the shape, so
    that the decoder learns to take the shape from the code), and the code, detached, plus noise
    up to ``--code-noise``; ``--unsure-shape P``: for a share P of the clips the encoder's channels are the mean of
    the clip's latents drawn with each shape (:func:`unsure_of_shape`); ``--latent-blur P``: for a share P of the clips the encoder's channels lose their finest
    spatial pattern first (:func:`finest_removed`), the quiet pattern a diffusion model's samples lack -- plus ``W`` x the coder's binary cross-entropy against each frame's true
    per-cell, per-shape coverage (:func:`shape_code_targets`), the object's cells weighed 10 times the
    empty ones. The code is detached from the reconstruction so that it means only what it is trained
    to mean: a diffusion model will have to draw it.
    """

    def __init__(self, model: nn.Module, args: argparse.Namespace):
        self.model, self.args, self.weight = model, args, args.shape_code
        self.stats: list[tuple[float, float]] = []

    def __call__(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        video, model = batch["video"], self.model
        shapes = shape_labels(batch, "--shape-code")
        logits = model.shape_coder.frame_logits(video)  # [B, K, 17, 8, 8]
        targets = shape_code_targets(video, shapes, logits.shape[1])
        weights = 1.0 + 9.0 * (targets.amax(dim=1, keepdim=True) > 0).float()
        error = F.binary_cross_entropy_with_logits(logits, targets, weight=weights.expand_as(logits), reduction="sum")
        error = error / weights.expand_as(logits).sum()
        code = model.shape_coder.pool(logits).detach()
        appearance = model.encode_appearance(video)
        b = video.shape[0]
        if self.args.unsure_shape:  # a share of the clips: the mean of the latents of the clip drawn as every shape
            appearance = unsure_of_shape(model, appearance, batch, self.args.unsure_shape)
        if self.args.latent_blur:  # the finest pattern, where the shape was, gone from a share of the clips
            chosen_clips = (torch.rand(b, 1, 1, 1, 1, device=video.device) < self.args.latent_blur).float()
            appearance = chosen_clips * finest_removed(appearance) + (1 - chosen_clips) * appearance
        if self.args.latent_noise:
            appearance = with_latent_noise(appearance, self.args.latent_noise)
        if self.args.code_noise:
            code = code + self.args.code_noise * torch.rand(b, 1, 1, 1, 1, device=video.device) * torch.randn_like(code)
        _, _, losses = decoded_losses(model, self.args, torch.cat([appearance, code], dim=1), video)
        losses["loss"] = losses["loss"] + self.weight * error
        with torch.no_grad():  # the code's vote in the object's cells: its largest channel against the true shape
            pooled = causal_time_pool(targets, model.time)
            cells = pooled.sum(dim=1) > 0.1
            right = (code.argmax(dim=1) == shapes[:, None, None, None]) & cells
            share = float(right.sum() / cells.sum().clamp(min=1))
        self.stats.append((float(error.detach()), share))
        return {**losses, "shape_code": error.detach()}

    def report(self) -> str:
        error, accuracy = np.mean(self.stats[-50:], axis=0) if self.stats else (float("nan"), float("nan"))
        return f"shape code: cross-entropy {error:.4f}, right in {100 * accuracy:.1f}% of the object's cells"


class GuessLoss:
    """``--decode-guesses NAME`` (chapter 8, "A decoder for the model's guesses"): draw the true clip from a guess.

    A diffusion model's samples are not true latents: chapter 8 finds its guesses of the clean latent
    close to the right drawing but blurred, and this decoder draws a blurred object round. Noise on the
    true latents (``--latent-noise``) teaches the average, a blob, because Gaussian noise wipes out what
    tells the shapes apart; the model's own guesses keep most of it. So here each clip, with probability
    ``--guess-share``, is decoded not from its latent but from the diffusion model ``NAME``'s one-step
    guess of it: the clip's latents (video and sound) noised on one of MoNL's grids (which draw no clean
    cell, so every video cell is guessed), its steps squeezed into 1..``--guess-max-step`` (as ``train
    avdit --max-step`` squeezes them), and predicted once. The target is the true clip, the loss the
    usual reconstruction loss. Grids, noise and the
    choice of clips come from a generator seeded by the step, so a resume is exact. The diffusion model
    is frozen and must have been trained on this encoder's latents (``--finetune-decoder`` of the
    pipeline's video autoencoder).
    """

    def __init__(self, model: nn.Module, args: argparse.Namespace, device: torch.device):
        pipeline = load_pipeline(args.decode_guesses, args.guess_folder, device)
        mine, theirs = model.state_dict(), pipeline.video_ae.state_dict()
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
        if not frozen or any(name not in theirs or not torch.equal(mine[name], theirs[name].to(mine[name].device))
                             for name in frozen):
            raise ValueError(f"--decode-guesses {args.decode_guesses}: its diffusion model was trained on the latents of "
                             f"{args.guess_folder}/video_ae; fine-tune that decoder (--finetune-decoder "
                             f"{args.guess_folder}/video_ae) so that the encoder, and so the latents, are the same")
        if not 1 <= args.guess_max_step <= pipeline.avdit.config.T:
            raise ValueError(f"--guess-max-step must be in 1..{pipeline.avdit.config.T}, got {args.guess_max_step}")
        if not 0 < args.guess_share <= 1:
            raise ValueError(f"--guess-share is the share of clips decoded from a guess: in (0, 1], got {args.guess_share}")
        self.model, self.args, self.device = model, args, device
        self.avdit, self.scaler, self.audio_ae = pipeline.avdit, pipeline.scaler, pipeline.audio_ae
        self.diffusion, self.T = pipeline.diffusion, pipeline.avdit.config.T
        self.stats: list[float] = []  # the guesses' mean squared distance from the unit-variance latent, all clips

    @torch.no_grad()
    def guessed_latents(self, video: torch.Tensor, audio: torch.Tensor, step: int) -> torch.Tensor:
        """The video latent to decode for each clip: the model's one-step guess, with probability ``--guess-share``."""
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + step * 1009 + 7)
        latent = self.model.encode(video)
        clean = Latents(*self.scaler.scale(latent, self.audio_ae.encode(audio)))
        grid, _ = timestep_grids("monl", video.shape[0], generator, self.T)
        grid = squeeze_steps(grid, self.args.guess_max_step, self.T).to(self.device)
        noise = Latents(*(torch.randn(x.shape, generator=generator).to(self.device) for x in (clean.video, clean.audio)))
        guess_video = _clamped(self.diffusion.predict(self.avdit, self.diffusion.q_sample(clean, grid, noise), grid)[1]).video
        self.stats.append(float((guess_video - clean.video).square().mean()))
        guessed = self.scaler.unscale(guess_video, clean.audio)[0]
        chosen = (torch.rand(video.shape[0], generator=generator) < self.args.guess_share).to(self.device)
        return torch.where(chosen.reshape(-1, 1, 1, 1, 1), guessed, latent)

    def __call__(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        video = batch["video"]
        latent = self.guessed_latents(video, batch["audio"], step)
        return decoded_losses(self.model, self.args, latent, video)[2]

    def report(self) -> str:
        return (f"guesses: {np.mean(self.stats[-50:]) if self.stats else float('nan'):.3f} mean squared distance from the "
                "unit-variance latent")


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch with its tensors on ``device`` (the factors stay as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def val_batches(n_clips: int, batch_size: int, device: torch.device | str = "cpu", split: str = "val") -> Iterator[dict]:
    """Held-out clips from the ``val`` split (or another ``split``), in batches, on ``device``."""
    dataset = WorldDataset(n_clips, split)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    for batch in loader:
        yield to_device(batch, torch.device(device))


@rng_neutral
@torch.no_grad()
def quick_eval(model: nn.Module, modality: str, n_clips: int = 8) -> dict:
    """A cheap number for the log at each checkpoint: val PSNR (video) or log-mel L1 (audio)."""
    model.eval()
    batch = next(val_batches(n_clips, n_clips, next(model.parameters()).device))
    if modality == "video":
        result = {"val_psnr": float(psnr(model.decode(model.encode(batch["video"])), batch["video"]).mean())}
    else:
        target = model.log_mel(batch["audio"])
        result = {"val_log_mel_l1": float((model(batch["audio"]) - target).abs().mean())}
    model.train()
    return result


@rng_neutral
@torch.no_grad()
def evaluate_autoencoder(model: nn.Module, modality: str, n_clips: int, batch_size: int = 8) -> dict:
    """Reconstruction metrics on ``n_clips`` val clips, and the probes on reconstructions.

    The probes' accuracy is measured twice -- on the originals and on clips whose video (or
    audio) is replaced by its reconstruction -- so the drop is what the autoencoder costs.
    """
    model.eval()
    device = next(model.parameters()).device
    originals, reconstructed, scores = [], [], []
    for batch in val_batches(n_clips, batch_size, device):
        if modality == "video":
            recon = model.decode(model.encode(batch["video"]))
            scores += psnr(recon, batch["video"]).tolist()
        else:
            target = model.log_mel(batch["audio"])
            log_mel = model(batch["audio"])
            scores += (log_mel - target).abs().flatten(1).mean(dim=1).tolist()
            recon = model.mel_to_audio(log_mel)
        batch, recon = to_device(batch, torch.device("cpu")), recon.cpu()  # the probes read on the CPU
        for i, factors in enumerate(batch["factors"]):
            original = {"video": batch["video"][i], "audio": batch["audio"][i], "factors": factors}
            originals.append(original)
            reconstructed.append({**original, modality: recon[i]})
    model.train()
    metric = "psnr_db" if modality == "video" else "log_mel_l1"
    prefix = "video_" if modality == "video" else ("audio_", "onset_")
    keep = lambda result: {k: v for k, v in result.items() if k.startswith(prefix)}  # noqa: E731
    return {
        "val_clips": n_clips,
        metric: float(np.mean(scores)),
        "probes_original": keep(probes.benchmark(originals)),
        "probes_reconstructed": keep(probes.benchmark(reconstructed)),
    }


def run_autoencoder(args: argparse.Namespace) -> dict:
    """``python -m avdit_mini.train autoencoder``: train (or resume) one autoencoder; returns its metrics."""
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    steps = args.steps or profile.ae_steps
    batch_size = args.batch_size or profile.batch_size
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model, config = build_autoencoder(args.modality, args.tiny, refine_width=args.refine_width,
                                      refine_depth=args.refine_depth, refine_hints=args.refine_hints,
                                      decoder_blocks=args.decoder_blocks, encoder_blocks=args.encoder_blocks,
                                      shape_head=len(SHAPES) if args.shape_head else None,
                                      shape_code=len(SHAPES) if getattr(args, "shape_code", 0) else None)
    if args.finetune_decoder and args.finetune:
        raise ValueError("--finetune-decoder (encoder frozen) and --finetune (both sides) exclude each other: pass one")
    fresh_layers: set[str] = set()
    if args.finetune_decoder or args.finetune:
        fresh_layers = freeze_encoder_from(model, Path(args.finetune_decoder or args.finetune), freeze=bool(args.finetune_decoder))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    companion = None
    if args.adversarial:  # built before the resume restores the random state (the critic's init draws from it)
        if args.modality != "video":
            raise ValueError("--adversarial is for the video decoder (--modality video)")
        if args.latent_noise:
            raise ValueError("--adversarial does not combine with --latent-noise: train them one at a time")
        if args.critic_zoom < 1:
            raise ValueError(f"--critic-zoom must be a whole number >= 1 (1: no zoom), got {args.critic_zoom}")
        companion = Adversary(model, args, device)
    if args.shape_alignment:
        if args.modality != "video":
            raise ValueError("--shape-alignment is for the video autoencoder (--modality video)")
        if args.finetune_decoder:
            raise ValueError("--shape-alignment moves the encoder's latents; it cannot act with --finetune-decoder's "
                             "frozen encoder (use --finetune STEM)")
        if args.adversarial or args.latent_noise:
            raise ValueError("--shape-alignment does not combine with --adversarial or --latent-noise: one at a time")
        companion = ShapeAligner(model, args, device)  # the same hooks as the critic: its own loss, its own state
    head_loss = None
    if args.shape_head:
        if args.modality != "video":
            raise ValueError("--shape-head is for the video decoder (--modality video)")
        if args.shape_alignment or args.latent_noise or args.shape_code:
            raise ValueError("--shape-head does not combine with --shape-alignment or --latent-noise: one at a time")
        if companion:  # the critic's loss adds the head's term (--adversarial with --shape-head)
            companion.head_loss = ShapeHeadLoss(model, args)
        else:
            head_loss = ShapeHeadLoss(model, args)
    if (args.latent_blur or args.unsure_shape) and not args.shape_code:
        raise ValueError("--latent-blur and --unsure-shape take the shape from the latent so that the decoder reads the "
                         "shape code: they need --shape-code")
    if args.shape_code:
        if args.modality != "video" or not args.finetune_decoder:
            raise ValueError("--shape-code adds a code beside a trained encoder's latent: pass --modality video and "
                             "--finetune-decoder STEM")
        if companion or head_loss:
            raise ValueError("--shape-code does not combine with --adversarial, --shape-alignment or --shape-head: "
                             "one at a time")
        if not any(name.startswith("shape_coder.") for name in fresh_layers) and not args.train_coder:
            model.shape_coder.requires_grad_(False)  # its code is part of the latents: keep them (--train-coder: not)
            log(f"the shape coder of {args.finetune_decoder} is kept as it is (frozen): the latents do not change")
        head_loss = ShapeCodeLoss(model, args)
    guesses = None
    if args.decode_guesses:
        if args.modality != "video" or not args.finetune_decoder:
            raise ValueError("--decode-guesses teaches the video decoder: pass --modality video and --finetune-decoder "
                             "STEM (the diffusion model's autoencoder)")
        if companion or head_loss or args.latent_noise:
            raise ValueError("--decode-guesses does not combine with --adversarial, --shape-alignment, --shape-head or "
                             "--latent-noise: one at a time")
        guesses = GuessLoss(model, args, device)
    optimizer, scheduler, step, loss_log = optimiser_and_resume(model, args, config, steps)
    stem = Path(args.out)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"{args.modality} autoencoder: {parameters:,} parameters, {steps} steps of {batch_size} clips, "
        f"{args.threads} threads, {args.workers} data workers, device {device}, profile {profile.name}")
    if companion and args.resume:
        companion.load(stem)
    quick = None
    if companion:
        quick = lambda: quick_eval(model, "video")  # noqa: E731  (the companion logs its own numbers as it saves)
    elif head_loss or guesses:
        quick = lambda: f"{quick_eval(model, 'video')} {(head_loss or guesses).report()}"  # noqa: E731
    step, loss_log = train_loop(model, args, optimizer, scheduler, stem, config, step, steps, batch_size, loss_log,
                                loss_fn=companion.loss if companion else (head_loss or guesses), quick=quick,
                                on_save=companion.save if companion else None)
    metrics = evaluate_autoencoder(model, args.modality, args.eval_clips) if args.eval_clips else {}
    log(f"metrics: {metrics}")
    save_final(stem, model, config, optimizer, scheduler, step, loss_log, metrics, args, parameters, batch_size)
    if companion:
        companion.save(stem)
    return metrics


def optimiser_and_resume(model: nn.Module, args: argparse.Namespace, config: dict, steps: int):
    """AdamW over the trainable weights with warm-up + cosine; with ``--resume``, everything back from ``--out``."""
    fresh = [m for m in (getattr(model, name, None) for name in ("shape_head", "shape_coder", "code_inject")) if m is not None]
    head_ids = {id(p) for m in fresh for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": trainable}]
    if fresh:  # a fresh reader (and the code's way in) among trained layers: its own rate (--shape-head-lr)
        groups.append({"params": [p for m in fresh for p in m.parameters()], "lr": args.shape_head_lr or 10 * args.lr})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    scheduler = warmup_cosine(optimizer, steps, args.warmup)
    step, loss_log = 0, []
    if args.resume:
        stem = Path(args.out)
        weights, _ = checkpoints.load_checkpoint(stem, config, train_hint=command_line(args.argv).replace(" --resume", ""))
        model.load_state_dict(weights)
        state = checkpoints.load_training_state(stem, optimizer, scheduler)
        step, loss_log = state["step"], state["loss_log"]
        log(f"resumed {stem} at step {step}")
    return optimizer, scheduler, step, loss_log


def save_final(stem: Path, model: nn.Module, config: dict, optimizer, scheduler, step: int, loss_log: list,
               metrics: dict, args: argparse.Namespace, parameters: int, batch_size: int) -> None:
    """The last checkpoint, with its metrics and the command that made it, and its MANIFEST entry."""
    extra = {"metrics": metrics, "command": command_line(args.argv), "parameters": parameters, "batch_size": batch_size}
    save_all(stem, model, config, optimizer, scheduler, step, loss_log, extra)
    if not args.no_manifest:
        files = [checkpoints.checkpoint_paths(stem)[k] for k in ("weights", "meta")]
        checkpoints.update_manifest(stem.parent, stem.name, files, command_line(args.argv), metrics, config)


def train_loop(model: nn.Module, args: argparse.Namespace, optimizer, scheduler, stem: Path, config: dict,
               step: int, steps: int, batch_size: int, loss_log: list, loss_fn=None, quick=None,
               desc: str | None = None, on_save=None) -> tuple[int, list]:
    """The optimisation loop with the checkpoint timer and the wall-clock budget.

    ``loss_fn(batch, step)`` gives the losses of a batch (default: the autoencoder's of ``args.modality``);
    ``quick()`` a cheap number for the log at each checkpoint (default: ``quick_eval``); ``on_save(stem)``
    saves whatever else a resume needs (the critic of ``--adversarial``) with each checkpoint.
    """
    if loss_fn is None:
        loss_fn = lambda batch, _: autoencoder_loss(model, args.modality, batch, args.edge_weight, args.loss_frames,  # noqa: E731
                                                    args.latent_noise, args.pixel_loss, args.object_boost, args.boost_area,
                                                    args.halo_weight)
        quick = lambda: quick_eval(model, args.modality)  # noqa: E731
    timer, started, first_step = CheckpointTimer(args.save_every_seconds), time.monotonic(), step
    deadline = started + 60 * args.max_minutes if args.max_minutes else math.inf
    model.train()
    bar = tqdm(clip_loader(step, steps, batch_size, workers=args.workers, size_weights=getattr(args, "size_weights", None)),
               total=steps, initial=step,
               desc=desc or f"{args.modality} AE", mininterval=5.0, file=sys.stdout)
    device = next(model.parameters()).device
    for batch in bar:
        batch = to_device(batch, device)
        losses = loss_fn(batch, step)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        loss_log.append(round(float(losses["loss"].detach()), 6))
        bar.set_postfix(loss=f"{np.mean(loss_log[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}", refresh=False)
        out_of_time = time.monotonic() >= deadline
        if timer.due() or out_of_time or (args.stop_after and step >= args.stop_after):
            save_all(stem, model, config, optimizer, scheduler, step, loss_log, {"command": command_line(args.argv)})
            if on_save:
                on_save(stem)
            log(f"step {step}: loss {np.mean(loss_log[-50:]):.5f} {quick() if quick else ''} "
                f"({(step - first_step) / max(time.monotonic() - started, 1e-9):.2f} steps/s this run) -> {stem}")
        if out_of_time:
            log(f"--max-minutes {args.max_minutes} reached at step {step}/{steps}: stopping")
            break
        if args.stop_after and step >= args.stop_after:
            break
    bar.close()
    return step, loss_log


# ----------------------------------------------------------------------------------------------
# The vocoder's post-net: log-mel -> linear spectrogram, before Griffin-Lim (chapter 2)
# ----------------------------------------------------------------------------------------------
def build_postnet(tiny: bool = False) -> tuple[SpectrogramPostNet, dict]:
    """The post-net and the config dict its checkpoint stores."""
    model_config = PostNetConfig(channels=16, blocks=1, groups=4) if tiny else PostNetConfig()
    return SpectrogramPostNet(model_config), {"kind": "vocoder", "model": model_config.to_dict(),
                                              "geometry": asdict(Geometry())}


def postnet_inputs(audio_ae: nn.Module, audio: torch.Tensor, step: int) -> torch.Tensor:
    """The log-mels the post-net learns from: the true ones on even steps, the autoencoder's on odd ones.

    The pipeline hands it *decoded* log-mels -- a little smoother than true ones -- so it sees both.
    """
    with torch.no_grad():
        log_mel = audio_ae.log_mel(audio)
        return log_mel if step % 2 == 0 else audio_ae(audio)


@rng_neutral
@torch.no_grad()
def evaluate_postnet(postnet: nn.Module, audio_ae: nn.Module, n_clips: int, batch_size: int = 16) -> dict:
    """The audio probes on val clips inverted by plain Griffin-Lim and by Griffin-Lim after the post-net.

    ``through_autoencoder``: the log-mel is the audio autoencoder's reconstruction (what the
    pipeline decodes); ``of_true_log_mel``: the clip's own log-mel (the post-net alone).
    """
    postnet.eval()
    keep = lambda result: {k: v for k, v in result.items() if k.startswith(("audio_", "onset_"))}  # noqa: E731
    rows: dict[str, list] = {"original": [], "griffin_lim_through_autoencoder": [], "postnet_through_autoencoder": [],
                             "postnet_of_true_log_mel": []}
    inverter, attached = audio_ae.inverter, audio_ae.inverter.postnet
    for batch in val_batches(n_clips, batch_size):
        true_log_mel, decoded = audio_ae.log_mel(batch["audio"]), audio_ae(batch["audio"])
        inverter.postnet = None
        made = {"griffin_lim_through_autoencoder": inverter(decoded)}
        inverter.postnet = postnet
        made.update(postnet_through_autoencoder=inverter(decoded), postnet_of_true_log_mel=inverter(true_log_mel))
        inverter.postnet = attached
        for i, factors in enumerate(batch["factors"]):
            original = {"video": batch["video"][i], "audio": batch["audio"][i], "factors": factors}
            rows["original"].append(original)
            for key, audio in made.items():
                rows[key].append({**original, "audio": audio[i]})
    postnet.train()
    return {"val_clips": n_clips, **{key: keep(probes.benchmark(clips)) for key, clips in rows.items()}}


def run_vocoder(args: argparse.Namespace) -> dict:
    """``python -m avdit_mini.train vocoder``: train (or resume) the mel -> linear post-net; returns its metrics."""
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    steps, batch_size = args.steps or profile.ae_steps, args.batch_size or 16
    torch.manual_seed(args.seed)
    stem = Path(args.autoencoder)
    if not args.tiny and not checkpoints.checkpoint_paths(stem)["weights"].exists():
        raise ValueError(f"--autoencoder {stem}: no {stem}.safetensors; give the stem of a trained audio autoencoder "
                         "(the shipped one is data/checkpoints/audio_ae; `train autoencoder --modality audio --out` makes one)")
    audio_ae = load_autoencoder("audio", stem.parent, vocoder="griffin-lim", name=stem.name) if not args.tiny \
        else AudioAutoencoder(TINY_AUDIO_CONFIG).eval()
    postnet, config = build_postnet(args.tiny)
    config["autoencoder"] = None if args.tiny else checkpoints.sha256(Path(f"{args.autoencoder}.safetensors"))[:12]
    weights = {"linear_weight": args.linear_weight, "log_weight": args.log_weight}
    if weights != {"linear_weight": 10.0, "log_weight": 1.0}:
        config["loss"] = weights  # the shipped post-net used the defaults
    optimizer, scheduler, step, loss_log = optimiser_and_resume(postnet, args, config, steps)
    stem, parameters = Path(args.out), sum(p.numel() for p in postnet.parameters())
    log(f"post-net: {parameters:,} parameters, {steps} steps of {batch_size} clips, {args.threads} threads")

    def loss_fn(batch: dict, step: int) -> dict[str, torch.Tensor]:
        return postnet_loss(postnet(postnet_inputs(audio_ae, batch["audio"], step)),
                            audio_ae.log_mel.magnitude_spectrogram(batch["audio"]), **weights)

    step, loss_log = train_loop(postnet, args, optimizer, scheduler, stem, config, step, steps, batch_size, loss_log,
                                loss_fn=loss_fn, desc="post-net")
    metrics = evaluate_postnet(postnet, audio_ae, args.eval_clips) if args.eval_clips else {}
    log(f"metrics: {metrics}")
    save_final(stem, postnet, config, optimizer, scheduler, step, loss_log, metrics, args, parameters, batch_size)
    return metrics


# ----------------------------------------------------------------------------------------------
# AVDiT with MoNL (chapter 7)
# ----------------------------------------------------------------------------------------------
DECODING_SIDE = ("decoder.", "refine.", "inverter.", "code_inject.")  # weights that do not change the latents


def latent_cache_name(n_clips: int, folder: Path, kind: str = "train") -> Path:
    """Where the encoded training latents live: named by the autoencoders' *encoders* and the size.

    Only the encoding side (front end and encoder) makes latents, so a decoder fine-tune
    (``--finetune-decoder``) keeps the cache. ``kind`` "counterfactual": the train clips' twins.
    """
    digest = hashlib.sha256()
    for name in ("video_ae", "audio_ae"):
        weights = load_file(str(folder / f"{name}.safetensors"))
        for key in sorted(k for k in weights if not k.startswith(DECODING_SIDE)):
            digest.update(key.encode())
            digest.update(weights[key].float().numpy().tobytes())
    return folder.resolve().parent / "latents" / f"{kind}_{n_clips}_{digest.hexdigest()[:12]}.safetensors"


def training_latents(n_clips: int, folder: Path, batch_size: int = 32, workers: int = 0,
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Encode ``n_clips`` train clips with the shipped autoencoders, once (cached on disk).

    ``workers`` processes generate the clips; the encoders run on ``device``.
    """
    video_ae, audio_ae = (load_autoencoder(m, folder).to(device) for m in ("video", "audio"))
    return encode_dataset(video_ae, audio_ae, WorldDataset(n_clips, "train"), batch_size,
                          cache=str(latent_cache_name(n_clips, folder)), workers=workers)


def counterfactual_latents(n_clips: int, folder: Path, batch_size: int = 32, workers: int = 0,
                           device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The latents of the first ``n_clips`` train clips' counterfactual twins (``data.CounterfactualDataset``:
    each clip with the next shape, in picture and sound), encoded once and cached beside the training latents.
    Twin i is the twin of training latent i."""
    video_ae, audio_ae = (load_autoencoder(m, folder).to(device) for m in ("video", "audio"))
    return encode_dataset(video_ae, audio_ae, CounterfactualDataset(n_clips, "train"), batch_size,
                          cache=str(latent_cache_name(n_clips, folder, "counterfactual")), workers=workers)


def train_shape_labels(n_clips: int) -> torch.Tensor:
    """The shape of each of the first ``n_clips`` train clips, as indices into data.SHAPES: [n_clips].

    Latents are cached in the train split's order (``training_latents``), so latent i is clip i; only
    the world's factors are drawn, nothing is rendered.
    """
    dataset = WorldDataset(n_clips, "train")
    return torch.tensor([SHAPES.index(dataset.world.sample_factors(dataset.seed(i))["shape"]) for i in range(n_clips)])


def timestep_grids(strategy: str, batch_size: int, generator: torch.Generator, T: int,
                   weights: list[float] | None = None, clean_probability: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The grids of one batch and the strategy index of each example (-1 for a conditional task).

    ``strategy`` is a MoNL strategy (``monl``, ``vanilla``, ...) or ``conditional:<task>``: the
    task-specific baseline, with the task's condition cells at t = 0 and one shared t elsewhere.
    ``clean_probability`` > 0: MoNL's strategies also draw clean cells (``monl.sample_timestep_grid``).
    """
    if strategy.startswith("conditional:"):
        if clean_probability:
            raise ValueError("--clean-probability is for MoNL strategies; a conditional baseline's conditions are always clean")
        mask = resolve_task(strategy.split(":", 1)[1])
        return conditional_grid(batch_size, mask, T, generator), torch.full((batch_size,), -1)
    if strategy == "monl":
        return sample_timestep_grid(batch_size, "monl", T=T, weights=weights, generator=generator, return_strategy=True,
                                    clean_probability=clean_probability)
    grid = sample_timestep_grid(batch_size, strategy, T=T, generator=generator, clean_probability=clean_probability)
    return grid, torch.full((batch_size,), STRATEGIES.index(strategy))


class EMA:
    """Exponential moving average of a model's weights (the weights we ship and sample with)."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages forget faster
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


def squeeze_steps(grid: torch.Tensor, max_step: int, T: int) -> torch.Tensor:
    """A grid's steps t > 0 squeezed into 1..``max_step`` as ceil(t max_step / T): T / max_step steps of t to each
    (2 or 3 at 400); t = 0 stays. A low-noise expert's grids (``train avdit --max-step``) and ``--decode-guesses``'."""
    return torch.where(grid > 0, (grid * max_step + T - 1) // T, grid)


def avdit_step_batch(latents: dict[str, torch.Tensor], args, step: int, rank: int, world: int):
    """The batch of ``step`` on ``rank``: indices, grids and a noise generator, all from the step.

    Everything random is drawn from a generator seeded by (seed, step, rank), so a resumed run
    sees exactly the batches, grids and noise of an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
    per_rank = args.batch_size // world
    index = torch.randint(0, latents["video"].shape[0], (per_rank,), generator=generator)
    grid, strategy = timestep_grids(args.strategy, per_rank, generator, args.T, args.weights, args.clean_probability)
    if getattr(args, "max_step", 0):  # a low-noise expert: the same grids, their steps squeezed into 1..max_step
        grid = squeeze_steps(grid, args.max_step, args.T)
    if getattr(args, "counterfactual", 0.0):  # the first --twins clips come from those with a twin (drawn last:
        twins = args.twins // world           # a run without twins draws exactly what it drew before)
        index[:twins] = torch.randint(0, args.counterfactual_clips, (twins,), generator=generator)
    return index, grid, strategy, generator


def widen_video_channels(state: dict, model: AVDiT, old_channels: int) -> dict:
    """A pipeline state for ``old_channels`` video latent channels, fitted to ``model``'s wider latents.

    A video patch is flattened channel first (``(c p1 p2)``), so the new channels' values are the
    last columns of the video embedding and the last rows of the video head: the embedding's new
    columns and the head's new rows start at zero (the network begins as the one it came from and
    predicts zero for the new channels); the scaler's statistics get placeholders (refit them).
    """
    state, own = dict(state), model.state_dict()
    for key in ("video_embed.weight", "final.video_head.weight", "final.video_head.bias", "video_self_embed.weight"):
        name = f"avdit.{key}"
        if name not in state:
            continue
        old, grown = state[name], torch.zeros_like(own[key])
        if key.endswith("embed.weight"):
            grown[:, :old.shape[1]] = old
        else:
            grown[:old.shape[0]] = old
        state[name] = grown
    channels = model.config.video_channels
    state["scaler.video_mean"] = torch.cat([state["scaler.video_mean"], torch.zeros(channels - old_channels)])
    state["scaler.video_std"] = torch.cat([state["scaler.video_std"], torch.ones(channels - old_channels)])
    return state


def warm_start(model: AVDiT, scaler: LatentScaler, stem: Path, config: AVDiTConfig, refit: bool = False) -> None:
    """``--init STEM``: start from a saved pipeline's (EMA) weights and keep its latent scaling.

    The optimiser and the learning-rate schedule start afresh: a second run with a new warm-up and
    cosine, on as many clips as this run is given. The network must be the same (preset, prediction),
    except that ``--self-condition`` may add its two zero-initialised layers to a plain model, and
    that video latents with more channels (an autoencoder with a shape code; ``refit``, i.e.
    ``--refit-scaling``, required) widen its video embedding and head (:func:`widen_video_channels`).
    """
    state, meta = checkpoints.load_checkpoint(stem, train_hint="python -m avdit_mini.train avdit --out " + str(stem))
    stored = meta["config"].get("avdit", {})
    differing = checkpoints.config_differences(stored, config.to_dict())
    adding_self_condition = config.self_condition and not stored.get("self_condition", False)
    if adding_self_condition:
        differing.remove("self_condition")
        state = dict(state)  # the new layers keep their zero start: the network begins as the one it came from
        state.update({f"avdit.{k}": v for k, v in model.state_dict().items() if "_self_embed." in k})
    old_channels = stored.get("video_channels", config.video_channels)
    widening = "video_channels" in differing and old_channels < config.video_channels
    if widening:  # the latent gained channels (a shape code): the network reads and writes them from zero
        if not refit:
            raise ValueError(f"--init {stem} was trained on {old_channels}-channel video latents, these have "
                             f"{config.video_channels}: pass --refit-scaling (the new channels need their own scaling)")
        differing.remove("video_channels")
        state = widen_video_channels(state, model, old_channels)
    if differing:
        raise ValueError(f"--init {stem}: its network differs from this run's in {differing}; "
                         "pass the --preset and --prediction it was trained with"
                         + (" (and --self-condition: it reads its own estimates)" if "self_condition" in differing else ""))
    load_pipeline_state(state, model, scaler)
    log(f"warm start from {stem} (step {meta.get('step', '?')} of its run): its weights and latent scaling"
        + (", with self-conditioning's layers added at zero" if adding_self_condition else "")
        + (f", its video latents widened from {old_channels} to {config.video_channels} channels" if widening else ""))


# what a training state saved before these flags existed was trained with (other settings: not checked for it)
SETTINGS_BEFORE_FLAGS = {"counterfactual": 0.0, "counterfactual_gamma": 1.0, "counterfactual_hide": 0}


def run_avdit(args: argparse.Namespace) -> dict:
    """``python -m avdit_mini.train avdit``: train an AVDiT on cached latents with a MoNL strategy."""
    import os

    import torch.distributed as dist


    profile = get_profile(args.profile)
    args.steps = args.steps or profile.avdit_steps
    args.batch_size = args.batch_size or profile.batch_size
    args.preset = args.preset or profile.avdit_preset
    args.clips = args.clips or profile.train_clips
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    if args.max_step and not 1 < args.max_step <= args.T:
        raise ValueError(f"--max-step must be in 2..{args.T} (--T), got {args.max_step}")
    folder = Path(args.autoencoders)
    if args.latents:

        raw = load_file(args.latents)
    else:
        raw = training_latents(args.clips, folder, batch_size=64 if device.type == "cuda" else 32,
                               workers=args.workers, device=device)
    config = AVDiTConfig.preset(args.preset, video_channels=raw["video"].shape[1], audio_channels=raw["audio"].shape[1],
                                prediction=args.prediction, self_condition=args.self_condition)
    scaler = LatentScaler(raw["video"].shape[1], raw["audio"].shape[1])
    torch.manual_seed(args.seed)
    model = AVDiT(config).to(device)
    if args.refit_scaling and not args.init:
        raise ValueError("--refit-scaling is for a warm start (--init STEM); without one the scaling is fitted anyway")
    if args.init:
        warm_start(model, scaler, Path(args.init), config, refit=args.refit_scaling)  # its weights and latent scaling
    if args.refit_scaling and scaler.high_frequency_gain.item() != 1.0:
        raise ValueError(f"--refit-scaling: {args.init} emphasises its latents' fine frequencies; refit from a plain model")
    if not args.init or args.refit_scaling:
        scaler.fit(raw["video"], raw["audio"])
    if args.high_frequency_gain and (args.object_boost or args.perceptual_weight or args.repa):
        raise ValueError("--high-frequency-gain changes the latents that --object-boost's threshold and the latent "
                         "reader (--perceptual-weight, --repa) were made for (unit-variance, plain latents); "
                         "train with one or the other")
    if args.high_frequency_gain:  # 0: keep the init's (or none)
        scaler.emphasise(args.high_frequency_gain)
        log(f"video latent's finest spatial frequencies x {args.high_frequency_gain:g} (LatentScaler.emphasise)")
    latents = dict(zip(("video", "audio"), scaler.scale(raw["video"], raw["audio"])))
    twin_latents = None
    if args.counterfactual:  # each pair: a training clip and its twin with the next shape (chapter 8)
        if args.latents:
            raise ValueError("--counterfactual pairs the train split's first clips with their twins; a --latents file's "
                             "clips need not be those: let the run encode and cache the train split (--clips N)")
        if not 0 < args.twins <= args.batch_size // 2 or args.twins % world:
            raise ValueError(f"--twins must be in 1..{args.batch_size // 2} (half of --batch-size) and divisible by "
                             f"the {world} processes, got {args.twins}")
        args.counterfactual_clips = min(args.counterfactual_clips, latents["video"].shape[0])
        twin_raw = counterfactual_latents(args.counterfactual_clips, folder, batch_size=64 if device.type == "cuda" else 32,
                                          workers=args.workers, device=device)
        twin_latents = dict(zip(("video", "audio"), scaler.scale(twin_raw["video"], twin_raw["audio"])))
    if device.type == "cuda":  # a few hundred MB at most: keep the training set on the GPU
        latents = {k: v.to(device) for k, v in latents.items()}
        twin_latents = {k: v.to(device) for k, v in twin_latents.items()} if twin_latents else None
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    diffusion = GridDiffusion(NoiseSchedule(args.schedule, config.T), config.geometry, config.prediction)
    ema = EMA(model, args.ema)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    run_config = {"kind": "avdit", "strategy": args.strategy, "preset": args.preset, "schedule": args.schedule,
                  "prediction": args.prediction, "clips": args.clips, "batch_size": args.batch_size, "lr": args.lr,
                  "steps": args.steps, "seed": args.seed, "weights": args.weights, "init": args.init}
    if args.refit_scaling:
        run_config["refit_scaling"] = True
    # left out at 0, so the configs of runs made before these flags still match
    run_config.update({k: v for k, v in (("clean_probability", args.clean_probability),
                                         ("object_boost", args.object_boost), ("impact_boost", args.impact_boost),
                                         ("perceptual_weight", args.perceptual_weight),
                                         ("high_frequency_gain", args.high_frequency_gain),
                                         ("self_condition", args.self_condition), ("max_step", args.max_step)) if v})
    if args.counterfactual:
        run_config.update(counterfactual=args.counterfactual, twins=args.twins, counterfactual_clips=args.counterfactual_clips)
        if args.counterfactual_gamma != 1.0:  # left out at its default, so the first pilot's config still matches
            run_config["counterfactual_gamma"] = args.counterfactual_gamma
        if args.counterfactual_hide:
            run_config["counterfactual_hide"] = args.counterfactual_hide
    reader = alignment = None
    if args.perceptual_weight or args.repa:
        from .perceptual import load_reader

        reader = load_reader(args.perceptual_reader).to(device)
        run_config["perceptual_reader"] = args.perceptual_reader
    if args.repa:  # built after the EMA copy, so that only the trained model carries its hook
        from .perceptual import RepresentationAlignment

        if distributed:
            raise ValueError("--repa's projector is not shared between torchrun's processes yet; train it in one process")
        args.repa_block = len(model.blocks) // 3 if args.repa_block is None else args.repa_block
        alignment = RepresentationAlignment(reader, model, args.repa_block).to(device)
        run_config.update(repa=args.repa, repa_block=args.repa_block)
    supervision = shape_labels = None
    if args.shape_supervision:  # the world's shape label teaches one block's tokens (chapter 7)
        from .perceptual import ShapeSupervision

        if distributed:
            raise ValueError("--shape-supervision's head is not shared between torchrun's processes yet; train it in one process")
        args.shape_block = len(model.blocks) // 2 if args.shape_block is None else args.shape_block
        supervision = ShapeSupervision(model, args.shape_block).to(device)
        if args.latents and "shape" not in raw:  # a file's clips need not be the train split's first ones
            raise ValueError(f"--shape-supervision needs each clip's shape: {args.latents} has no 'shape' tensor (class "
                             "indices into data.SHAPES); add one, or let the run encode and cache the train split (--clips N)")
        clips = latents["video"].shape[0]
        shape_labels = raw["shape"].long() if "shape" in raw else train_shape_labels(clips)
        if shape_labels.shape != (clips,) or not 0 <= int(shape_labels.min()) <= int(shape_labels.max()) < len(SHAPES):
            raise ValueError(f"--shape-supervision: {args.latents}'s 'shape' must hold one class index in 0..{len(SHAPES) - 1} "
                             f"(data.SHAPES) per clip, [{clips}]; got {list(shape_labels.shape)} with values "
                             f"{int(shape_labels.min())}..{int(shape_labels.max())}")
        shape_labels = shape_labels.to(device)
        run_config.update(shape_supervision=args.shape_supervision, shape_block=args.shape_block)
    # trained with the model, not part of it: kept in the training state only, to resume
    companions = {}
    if alignment is not None:
        companions["repa_projector"] = alignment.projector
    if supervision is not None:
        companions["shape_head"] = supervision.head
    trained_parameters = list(model.parameters()) + [p for module in companions.values() for p in module.parameters()]
    resume_settings = {"max_step": args.max_step, "counterfactual": args.counterfactual,
                       "counterfactual_gamma": args.counterfactual_gamma, "counterfactual_hide": args.counterfactual_hide,
                       "twins": args.twins if args.counterfactual else None,
                       "counterfactual_clips": args.counterfactual_clips if args.counterfactual else None,
                       "repa_block": args.repa_block if alignment is not None else None,
                       "shape_block": args.shape_block if supervision is not None else None}
    optimizer = torch.optim.AdamW(trained_parameters, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    scheduler = warmup_cosine(optimizer, args.steps, args.warmup)
    start, loss_log = 0, []
    state_path = checkpoints.checkpoint_paths(stem)["state"]
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        for name, flag in (("repa_projector", "--repa"), ("shape_head", "--shape-supervision")):
            if (name in state) != (name in companions):
                raise ValueError(f"{state_path} was trained {'with' if name in state else 'without'} {flag}; "
                                 "resume it with the same flags (or start a new run with another --out)")
        for key, value in resume_settings.items():  # saved since these flags exist: older states have none
            stored = state.get("settings", {}).get(key, SETTINGS_BEFORE_FLAGS.get(key, value))
            if stored != value:
                raise ValueError(f"{state_path} was trained with --{key.replace('_', '-')} {stored}, "
                                 f"not {value}; resume it with the same flags (or start a new run with another --out)")
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, loss_log = state["step"], state["loss_log"]
        for name, module in companions.items():
            module.load_state_dict(state[name])
        if rank == 0:
            log(f"resumed from step {start}")
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    if args.compile:
        trained = torch.compile(trained)
    timer = CheckpointTimer(args.save_every_seconds)
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=f"AVDiT {args.strategy}",
               disable=rank != 0 or args.quiet)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if rank == 0:
        log(f"AVDiT {args.preset}: {num_parameters(model):,} parameters, {latents['video'].shape[0]} clips, "
            f"{world} process(es), device {device}")

    autoencoders = (load_autoencoder("video", folder), load_autoencoder("audio", folder)) if rank == 0 else None

    def save(step: int, final: bool = False) -> None:
        if rank != 0:
            return
        pipeline = AVPipeline(*autoencoders, ema.model, scaler, args.schedule)
        save_pipeline(pipeline, stem, {"step": step, "loss_log": loss_log, "run": run_config,
                                        "command": command_line(args.argv), "final": final})
        tmp = state_path.with_name(state_path.name + ".tmp")
        training_state = {"model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "step": step, "loss_log": loss_log}
        training_state.update({name: module.state_dict() for name, module in companions.items()})
        training_state["settings"] = resume_settings
        torch.save(training_state, tmp)
        os.replace(tmp, state_path)

    pending = []  # (step, strategies, [loss, grad norm, per-strategy losses..., (shape CE)] still on the device)
    sync_every = args.sync_every or (50 if device.type == "cuda" else 1)

    def flush() -> None:
        """Bring the pending steps' numbers to the host in one transfer and append them to the log.

        On a GPU, reading a number every step would make the CPU wait for the GPU every step.
        """
        if not pending:
            return
        values = torch.cat([v for _, _, v in pending]).float().cpu().split([len(v) for _, _, v in pending])
        for (record_step, strategies, _), row in zip(pending, (v.tolist() for v in values)):
            loss_log.append({"step": record_step, "loss": round(row[0], 5), "grad_norm": round(row[1], 4),
                             "per_strategy": {k: round(v, 5) for k, v in zip(strategies, row[2:])}})
            extra = iter(row[2 + len(strategies):])  # the added terms, logged on their own (the loss includes them, weighed)
            if supervision is not None:
                loss_log[-1]["shape_cross_entropy"] = round(next(extra), 5)
            if twin_latents is not None:
                loss_log[-1]["counterfactual"] = round(next(extra), 5)
        pending.clear()
        bar.set_postfix(loss=f"{loss_log[-1]['loss']:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")

    step = start
    for step in bar:
        index, grid, strategy, generator = avdit_step_batch(latents, args, step, rank, world)
        index = index.to(device)
        clean = Latents(latents["video"][index].to(device), latents["audio"][index].to(device))
        twins, extras = 0, {}
        if twin_latents is not None:  # the twins of the first --twins clips, appended with the same grids
            twins = args.twins // world
            clean = Latents(torch.cat([clean.video, twin_latents["video"][index[:twins]]]),
                            torch.cat([clean.audio, twin_latents["audio"][index[:twins]]]))
            grid, strategy = torch.cat([grid, grid[:twins]]), torch.cat([strategy, strategy[:twins]])
        with autocast:
            loss, per_cell = diffusion.loss(trained, clean, grid.to(device), generator=None if device.type == "cuda" else generator,
                                            object_boost=args.object_boost, impact_boost=args.impact_boost,
                                            reader=reader, perceptual_weight=args.perceptual_weight,
                                            twins=twins, counterfactual=args.counterfactual,
                                            counterfactual_gamma=args.counterfactual_gamma,
                                            counterfactual_hide=args.counterfactual_hide, extras=extras)
            if alignment is not None:
                loss = loss + args.repa * alignment(clean.video)
            if supervision is not None:
                shape_cross_entropy = supervision(shape_labels[index])
                loss = loss + args.shape_supervision * shape_cross_entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained_parameters, args.clip)
        optimizer.step()
        scheduler.step()
        ema.update(model, step)
        strategies = strategy.unique().tolist()
        on_device = strategy.to(device)
        per_strategy = [per_cell[on_device == s].nanmean() for s in strategies]
        logged = [loss.detach().float(), grad_norm.float(), *per_strategy]
        if supervision is not None:
            logged.append(shape_cross_entropy.detach().float())
        if twins:
            logged.append(extras["counterfactual"].float())
        pending.append((step, strategies, torch.stack(logged)))
        if len(pending) >= sync_every:
            flush()
        if timer.due():
            flush()
            save(step + 1)
            if rank == 0:
                recent = np.mean([r["loss"] for r in loss_log[-200:]])
                log(f"step {step + 1}: mean loss of the last 200 steps {recent:.4f} -> {stem}")
        if args.stop_after is not None and step + 1 >= args.stop_after:
            break
        if deadline and time.monotonic() > deadline:
            if rank == 0:
                log(f"--max-minutes {args.max_minutes} reached at step {step + 1}")
            break
    flush()
    final_step = step + 1 if args.steps > start else start
    save(final_step, final=final_step >= args.steps)
    if rank == 0 and not args.no_manifest:
        paths = checkpoints.checkpoint_paths(stem)
        checkpoints.update_manifest(stem.parent, stem.name, [paths["weights"], paths["meta"]], command_line(args.argv),
                                    {"step": final_step, "final_loss_200": float(np.mean([r["loss"] for r in loss_log[-200:]]))
                                     if loss_log else None}, run_config)
    if distributed:
        dist.destroy_process_group()
    return {"step": final_step, "loss_log": loss_log}


def add_avdit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", default="monl",
                        help="monl | vanilla | per_modality | per_time | per_time_modality | conditional:<task>")
    parser.add_argument("--weights", type=float, nargs=4, default=None,
                        help="MoNL mixture weights of vanilla, per_modality, per_time, per_time_modality")
    parser.add_argument("--clean-probability", type=float, default=0.0,
                        help="MoNL: each drawn t is 0 (a clean cell, out of the loss) with this probability, "
                             "so that training sees clean conditions as inference does (chapter 7)")
    parser.add_argument("--object-boost", type=float, default=0.0,
                        help="weigh the video latent's object positions 1 + B times the background's in the loss "
                             "(diffusion.latent_object_weights; 0: the plain mean)")
    parser.add_argument("--impact-boost", type=float, default=0.0,
                        help="weigh the audio latent's impact frames 1 + B times the rest in the loss "
                             "(diffusion.latent_impact_weights; 0: the plain mean)")
    parser.add_argument("--perceptual-weight", type=float, default=0.0,
                        help="add W x the latent reader's feature difference of the estimated and true clean video "
                             "latent to the loss (perceptual.perceptual_error; 0: off)")
    parser.add_argument("--high-frequency-gain", type=float, default=0.0,
                        help="multiply the video latent's finest spatial frequencies by G (its mean kept; "
                             "LatentScaler.emphasise, chapter 7 'Making the shape louder'); stored with the model. "
                             "0: keep the --init model's (off for a new one)")
    parser.add_argument("--perceptual-reader", default="data/checkpoints/latent_reader",
                        help="the frozen reader the perceptual loss and --repa use (benchmarks/train_latent_reader.py makes it)")
    parser.add_argument("--repa", type=float, default=0.0,
                        help="representation alignment (REPA, Yu et al. 2025): add W x (1 - cosine) between a projection of "
                             "one block's video tokens and the reader's features of the clean latent (0: off)")
    parser.add_argument("--repa-block", type=int, default=None,
                        help="the block whose output --repa aligns, counted from 0 (default: depth // 3 -- block 2 of the "
                             "small model's 6, whose output is halfway up)")
    parser.add_argument("--max-step", type=int, default=0,
                        help="train a low-noise expert (eDiff-I): every grid's step t > 0 squeezed to ceil(t MAX_STEP / T) "
                             "(0: the full range); sample with it below a threshold (benchmarks/bench_switch.py --one-way)")
    parser.add_argument("--counterfactual", type=float, default=0.0,
                        help="weight of a term that holds the network's guesses of a clip and of its counterfactual twin "
                             "(the same clip with the next shape, picture and sound; same grid, same noise) to differ as "
                             "the two clips do, relative to how much they do (GridDiffusion.counterfactual_error; 0: off)")
    parser.add_argument("--counterfactual-gamma", type=float, default=1.0,
                        help="--counterfactual: weigh each noised frame's error by min(1, SNR(t) / GAMMA); 0: by 1 at "
                             "every t, so the noisiest frames, whose difference must come from the condition, count fully")
    parser.add_argument("--counterfactual-hide", type=int, default=0,
                        help="--counterfactual: in latent frames at step H or above the twin is given its original's noisy "
                             "input, so their guesses' difference there must come from the other frames (0: off)")
    parser.add_argument("--twins", type=int, default=16,
                        help="--counterfactual: twins appended to each batch, paired with its first TWINS clips")
    parser.add_argument("--counterfactual-clips", type=int, default=2048,
                        help="--counterfactual: the first N train clips get a twin (encoded once, cached in data/latents)")
    parser.add_argument("--shape-supervision", type=float, default=0.0,
                        help="weight of a cross-entropy that asks one block's tokens, cell by cell of the grid, for the "
                             "clip's shape (the world's label; a linear head trained with the model and thrown away)")
    parser.add_argument("--shape-block", type=int, default=None,
                        help="the block whose output --shape-supervision reads, counted from 0 (default: depth // 2)")
    parser.add_argument("--self-condition", action="store_true",
                        help="self-conditioning (Chen et al. 2023): the network also reads its own last estimate of the "
                             "clean latents, given for half of each batch in training and at every sampling step "
                             "(AVDiTConfig.self_condition, chapter 7); with --init it adds the layers at zero")
    parser.add_argument("--preset", default=None, help="tiny | small | base (default: the profile's)")
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--prediction", default="epsilon", choices=["epsilon", "v"])
    parser.add_argument("--clips", type=int, default=None, help="training clips to encode (default: the profile's)")
    parser.add_argument("--latents", default=None, help="a .safetensors of latents to train on instead of encoding clips")
    parser.add_argument("--autoencoders", default="data/checkpoints", help="folder with video_ae / audio_ae")
    parser.add_argument("--init", default=None, metavar="STEM",
                        help="start from this saved AVDiT (e.g. data/checkpoints/avdit_monl) with a fresh optimiser and schedule")
    parser.add_argument("--refit-scaling", action="store_true",
                        help="with --init: fit the latent scaling to this run's latents (autoencoders whose encoder changed)")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient clipping norm")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--sync-every", type=int, default=None,
                        help="read the loss log back from the device every N steps (default: 50 on a GPU, 1 on a CPU)")
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--quiet", action="store_true")
    add_common_arguments(parser)


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every training subcommand shares."""
    parser.add_argument("--profile", default=None, help="smoke | cpu | gpu (default: AVDIT_PROFILE, else by device)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the profile's)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (default: the profile's)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps before the cosine decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="checkpoint stem, e.g. data/checkpoints/video_ae")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.state.pt exactly")
    parser.add_argument("--save-every-seconds", type=float, default=180.0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this much training")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this step (the schedule still spans --steps)")
    parser.add_argument("--eval-clips", type=int, default=64, help="val clips for the final metrics (0: skip)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="data-loader processes generating clips (0: in the main process)")
    parser.add_argument("--no-manifest", action="store_true", help="do not touch <out folder>/MANIFEST.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avdit_mini.train", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    autoencoder = commands.add_parser("autoencoder", help="train the video or audio autoencoder (chapters 2-3)")
    autoencoder.add_argument("--modality", choices=("video", "audio"), required=True)
    autoencoder.add_argument("--tiny", action="store_true", help="a tiny model (tests)")
    autoencoder.add_argument("--finetune-decoder", default=None, metavar="STEM",
                             help="start from checkpoint STEM and train the decoder only (the latents do not change)")
    autoencoder.add_argument("--finetune", default=None, metavar="STEM",
                             help="start from checkpoint STEM and train both sides (the latents change: an AVDiT "
                                  "needs training on them)")
    for name, what in (("width", "features"), ("depth", "3 x 3 convolutions"), ("hints", "hint channels the decoder draws for it")):
        autoencoder.add_argument(f"--refine-{name}", type=int, default=None,
                                 help=f"video: the sharpening head's {what} (default: VideoAEConfig's)")
    autoencoder.add_argument("--decoder-blocks", type=int, default=None,
                             help="video: residual blocks on the latent grid before the decoder draws (a block "
                                  "added to a --finetune-decoder checkpoint starts as the identity)")
    autoencoder.add_argument("--encoder-blocks", type=int, default=None,
                             help="video: residual bottleneck blocks on the encoder's 8 x 8 grid (EncoderBlock; "
                                  "added to a trained encoder with --finetune, they start as the identity)")
    autoencoder.add_argument("--loss-frames", type=int, default=0,
                             help="video: train on this many random frames of each clip's 17 (0: all); the "
                                  "sharpening head is then run on those only, which makes a wide head affordable")
    autoencoder.add_argument("--edge-weight", type=float, default=0.0,
                             help="video: weight of the L1 loss on image gradients (sharp edges, flat colour)")
    autoencoder.add_argument("--pixel-loss", choices=("mse", "l1"), default="mse",
                             help="video: the per-pixel error; mse draws the mean of what a pixel could be, l1 "
                                  "the median (sharper edges where the decoder is unsure)")
    autoencoder.add_argument("--object-boost", type=float, default=2.0,
                             help="video: the object's pixels (and its edge) weigh 1 + this in the pixel loss")
    autoencoder.add_argument("--boost-area", type=float, default=0.0, metavar="PIXELS",
                             help="video: scale each frame's boost by PIXELS / the object's pixels, so that a small "
                                  "object weighs as much as a large one (0: off; 300 is a radius-8 object's)")
    autoencoder.add_argument("--halo-weight", type=float, default=0.0, metavar="H",
                             help="video: add H x the absolute error on the 2-pixel ring of background around the "
                                  "object (a faint halo widens a small object's box; 0: off)")
    autoencoder.add_argument("--size-weights", type=float, nargs=3, default=None, metavar=("W4", "W6", "W8"),
                             help="share of the batches given to objects of radius 4, 6 and 8 px (default: the "
                                  "world's own, a third each); 3 1 1 shows the smallest three times as often as "
                                  "each other size")
    autoencoder.add_argument("--adversarial", type=float, default=0.0, metavar="W",
                             help="video: train the decoder against a patch critic too, its pull W x the "
                                  "reconstruction's (by their gradients at the last layer; 0: off)")
    autoencoder.add_argument("--adversarial-start", type=int, default=0, metavar="STEP",
                             help="video: before this step only the critic learns")
    autoencoder.add_argument("--critic-crop", type=int, default=24,
                             help="video: the critic judges a window this wide around the object in each frame")
    autoencoder.add_argument("--critic-lr", type=float, default=2e-4, help="video: the critic's learning rate")
    autoencoder.add_argument("--critic-zoom", type=int, default=1,
                             help="video: enlarge the critic's windows this many times (nearest pixel) before it "
                                  "judges them, so that its strided first layers see one-pixel corners")
    autoencoder.add_argument("--latent-noise", type=float, default=0.0,
                             help="video: decode latents plus noise of up to this many channel spreads (with "
                                  "--finetune-decoder: a decoder that draws sharp shapes from a diffusion model's "
                                  "slightly-off latents)")
    autoencoder.add_argument("--decode-guesses", default=None, metavar="NAME",
                             help="video, with --finetune-decoder: decode a share of the clips from diffusion model "
                                  "avdit_NAME's one-step guess of their latent (chapter 8: a decoder for the model's guesses)")
    autoencoder.add_argument("--guess-folder", default=str(CHECKPOINTS), help="where avdit_NAME of --decode-guesses is")
    autoencoder.add_argument("--guess-max-step", type=int, default=300,
                             help="--decode-guesses: MoNL's grids squeezed into steps 1..this (how noisy the guesses are)")
    autoencoder.add_argument("--guess-share", type=float, default=0.5,
                             help="--decode-guesses: each clip's chance of being decoded from a guess (else: its true latent)")
    autoencoder.add_argument("--shape-alignment", type=float, default=0.0, metavar="W",
                             help="video: + W x the cross-entropy of a linear read-out of the shape from each latent "
                                  "cell the object covers (ShapeAligner; chapter 3)")
    autoencoder.add_argument("--shape-head", type=float, default=0.0, metavar="W",
                             help="video: give the decoder its own shape reader (ShapeHead), trained with + W x its "
                                  "cross-entropy in each latent cell the object covers; its guess is the decoder's "
                                  "hint (with --finetune-decoder it starts as the identity; chapter 3)")
    autoencoder.add_argument("--shape-head-lr", type=float, default=None, metavar="LR",
                             help="video: the shape head's (or shape coder's) learning rate (default: 10 x --lr; it "
                                  "starts afresh)")
    autoencoder.add_argument("--alignment-scale", type=float, default=4.0,
                             help="video: the read-out's logit scale over the standardised latent (ShapeReadout)")
    autoencoder.add_argument("--shape-code", type=float, default=0.0, metavar="W",
                             help="video, with --finetune-decoder: add the encoder's shape code (ShapeCoder: per cell, "
                                  "how much of it each shape covers) to the latent, trained with + W x its error against "
                                  "the world's drawing; the decoder learns to draw from it (chapter 7)")
    autoencoder.add_argument("--unsure-shape", type=float, default=0.0, metavar="P",
                             help="--shape-code: the share of clips whose latent channels are replaced by the mean of "
                                  "the clip's latents drawn with each shape (where it is, not what shape): the decoder "
                                  "must take the shape from the code")
    autoencoder.add_argument("--latent-blur", type=float, default=0.0, metavar="P",
                             help="--shape-code: the share of clips whose latent channels (not the code) lose their "
                                  "finest spatial pattern before the decoder sees them (where the shape was)")
    autoencoder.add_argument("--train-coder", action="store_true",
                             help="--shape-code from a checkpoint that has a shape coder: keep training it (by default "
                                  "it is frozen, so that the latents, and a model trained on them, stay valid)")
    autoencoder.add_argument("--code-noise", type=float, default=0.1,
                             help="--shape-code: the decoder sees the code plus Gaussian noise of a standard deviation "
                                  "drawn per clip from U(0, this) (a diffusion model's code is a little off too)")
    add_common_arguments(autoencoder)
    autoencoder.set_defaults(run=run_autoencoder)
    vocoder = commands.add_parser("vocoder", help="train the mel -> linear spectrogram post-net before Griffin-Lim (chapter 2)")
    vocoder.add_argument("--autoencoder", default="data/checkpoints/audio_ae",
                         help="the audio autoencoder whose decoded log-mels it also learns from (stem)")
    vocoder.add_argument("--tiny", action="store_true", help="a tiny post-net and an untrained tiny autoencoder (tests)")
    vocoder.add_argument("--linear-weight", type=float, default=10.0, help="weight of the L1 of magnitudes (the loud bins)")
    vocoder.add_argument("--log-weight", type=float, default=1.0, help="weight of the L1 of log magnitudes (every bin)")
    add_common_arguments(vocoder)
    vocoder.set_defaults(run=run_vocoder)
    avdit = commands.add_parser("avdit", help="train an AVDiT on cached latents with a MoNL strategy (chapter 7)")
    add_avdit_arguments(avdit)
    avdit.set_defaults(run=run_avdit)
    return parser


def main(argv: list[str] | None = None) -> object:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
