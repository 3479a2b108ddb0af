"""A perceptual loss in latent space: a small reader of the object, frozen, that the diffusion loss listens to (chapter 7).

The plain loss is a mean squared error over every latent number. In a video latent the object's
shape is a quiet part of it: over the 3 x 3 latent cells around the object, the three shapes'
means account for 2-4.5% of the variance, against 11-16% for the colours and 7-13% for the sizes
(measured on 1,500 training clips, chapter 7), so a model can get the loss nearly right while
drawing every object round.

An image generator meets the same problem in pixels, and the usual answer is a *perceptual* loss:
compare the features of a network trained to recognise what is in the picture (VGG, trained on
ImageNet's labels) instead of the pixels alone. Here that network is chapter 3's latent reader, a
two-layer convolution per latent frame trained on true latents to name the object's shape, size
and colour. Frozen, it turns the model's estimate of the clean latent and the true one into
features, and the loss adds their squared difference, weighed by how much of the clean latent the
noisy input still holds (alpha_bar), so that it speaks where the detail can be seen.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoints

class LatentReader(nn.Module):
    """Chapter 3's reader, with one head per factor: [B, C, F, h, w] unit-variance video latents -> features and logits."""

    def __init__(self, channels: int = 8, width: int = 64, classes: dict[str, int] | None = None):
        super().__init__()
        self.classes = dict(classes or {"shape": 3, "size": 3, "colour": 6})
        self.trunk = nn.Sequential(nn.Conv3d(channels, width, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
                                   nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(width, n) for k, n in self.classes.items()})
        # the features' spread on true latents: the loss divides by it, so every feature channel counts alike
        self.register_buffer("feature_scale", torch.ones(width))

    def features(self, video: Tensor) -> Tensor:
        """[B, C, F, h, w] -> [B, width, F, h, w], scaled to unit spread on true latents."""
        if video.dim() != 5:
            raise ValueError(f"expected a video latent [B, C, F, h, w], got shape {tuple(video.shape)}")
        return self.trunk(video) / self.feature_scale[:, None, None, None]

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        pooled = self.trunk(video).amax(dim=(2, 3, 4))  # the strongest response anywhere in the clip
        return {k: head(pooled) for k, head in self.heads.items()}


def factor_labels(factors: list[dict], classes: dict[str, list]) -> dict[str, Tensor]:
    """Each factor's class index per clip, {factor: [N]}, from the world's factor dicts and each factor's values."""
    return {k: torch.tensor([values.index(f[k]) for f in factors]) for k, values in classes.items()}


def fit_reader(video: Tensor, labels: dict[str, Tensor], steps: int = 2000, batch_size: int = 64, seed: int = 0,
               progress: bool = False) -> LatentReader:
    """Train a :class:`LatentReader` on true latents [N, C, F, h, w] and their labels {factor: [N]}."""
    torch.manual_seed(seed)
    reader = LatentReader(video.shape[1], classes={k: int(v.max()) + 1 for k, v in labels.items()})
    optimiser = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    generator = torch.Generator().manual_seed(seed)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="latent reader")
    for _ in iterator:
        pick = torch.randint(0, len(video), (batch_size,), generator=generator)
        logits = reader(video[pick])
        loss = sum(F.cross_entropy(logits[k], labels[k][pick]) for k in labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        spread = torch.cat([reader.trunk(video[i:i + 256]) for i in range(0, len(video), 256)])
        reader.feature_scale.copy_(spread.transpose(0, 1).flatten(1).std(dim=1).clamp_min(1e-3))
    return reader.eval().requires_grad_(False)


@torch.no_grad()
def reader_accuracy(reader: LatentReader, video: Tensor, labels: dict[str, Tensor]) -> dict[str, float]:
    logits = {k: torch.cat([reader(video[i:i + 256])[k] for i in range(0, len(video), 256)]) for k in labels}
    return {k: (logits[k].argmax(1) == labels[k]).float().mean().item() for k in labels}


def save_reader(reader: LatentReader, path_stem: str | Path, extra: dict | None = None) -> None:
    config = {"kind": "latent_reader", "channels": reader.trunk[0].in_channels, "width": reader.trunk[0].out_channels,
              "classes": reader.classes}
    checkpoints.save_checkpoint(path_stem, reader.state_dict(), config, extra)


def load_reader(path_stem: str | Path) -> LatentReader:
    """A frozen reader from ``<stem>.safetensors`` / ``<stem>.json``."""
    state, meta = checkpoints.load_checkpoint(path_stem, train_hint="python benchmarks/train_latent_reader.py")
    config = meta["config"]
    if config.get("kind") != "latent_reader":
        raise ValueError(f"{path_stem} is not a latent reader (kind {config.get('kind')!r})")
    reader = LatentReader(config["channels"], config["width"], config["classes"])
    reader.load_state_dict(state)
    return reader.eval().requires_grad_(False)


class BlockTap(nn.Module):
    """Keeps the tokens one AVDiT block puts out in the model's last call with gradients (a forward hook).

    The diffusion loss calls the model; a loss on the model's *middle* (REPA, shape supervision,
    chapter 7) then reads what this tap kept, once. Calls without gradients (the sampler, the
    self-conditioning estimate) are not kept.
    """

    def __init__(self, model: nn.Module, block: int, flag: str):
        super().__init__()
        depth = len(model.blocks)
        if not 0 <= block < depth:
            raise ValueError(f"{flag} must be in 0..{depth - 1} for a model of depth {depth}, got {block}")
        self._hidden: list[Tensor] = []
        self._hook = model.blocks[block].register_forward_hook(self._keep)

    def remove(self) -> None:
        """Take the hook off the model (and drop what it kept): the model is as it was before."""
        self._hook.remove()
        self._hidden.clear()

    def _keep(self, module: nn.Module, inputs, output: Tensor) -> None:
        if torch.is_grad_enabled():
            self._hidden[:] = [output]

    def _take(self) -> Tensor:
        if not self._hidden:
            raise RuntimeError(f"{type(self).__name__}: the model has not been called with gradients since the last "
                               "loss; call it (gradients enabled) on the noisy latents first")
        return self._hidden.pop()


class RepresentationAlignment(BlockTap):
    """REPA (Yu et al. 2025) with chapter 3's reader as the teacher (chapter 7).

    A hook keeps the video tokens an AVDiT block puts out ([B, L_v, D], from a noisy input); a small
    projector (trained with the model, thrown away after) maps them to the reader's features of the
    *clean* latent, pooled over each token's p x p patch; the loss is one minus their cosine
    similarity, averaged over tokens. The model is pushed to hold, already in its middle, what the
    reader sees -- the shape among it -- rather than to find it out only in its last layers.
    """

    def __init__(self, reader: LatentReader, model: nn.Module, block: int, hidden: int = 256):
        super().__init__(model, block, "--repa-block")
        self.reader, self.patch, self.video_tokens = reader, model.config.video_patch, model.video_tokens
        width = reader.trunk[0].out_channels
        self.projector = nn.Sequential(nn.Linear(model.config.dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                       nn.SiLU(), nn.Linear(hidden, width))

    def targets(self, clean_video: Tensor) -> Tensor:
        """The reader's features of the clean latent, one per video token: [B, L_v, width]."""
        with torch.no_grad():
            features = self.reader.features(clean_video.float())  # [B, K, F, h, w]
            pooled = F.avg_pool3d(features, (1, self.patch, self.patch))  # [B, K, F, h/p, w/p]
        return pooled.flatten(2).transpose(1, 2)  # tokens ordered (frame, row, col), as the AVDiT's

    def last_tokens(self) -> Tensor:
        """The video tokens [B, L_v, D] the block put out in the model's last call with gradients (taken: once)."""
        return self._take()[:, : self.video_tokens]

    def forward(self, clean_video: Tensor) -> Tensor:
        """1 - cos(projected hidden video tokens, reader's features), averaged: call after the model's forward."""
        projected = self.projector(self.last_tokens().float())
        return 1 - F.cosine_similarity(projected, self.targets(clean_video), dim=-1).mean()


class ShapeSupervision(BlockTap):
    """The world's shape label as a teacher of the model's middle (chapter 7).

    A hook keeps the tokens one AVDiT block puts out, [B, L, D]; they are averaged cell by cell of
    the M x N grid (the video tokens of each latent segment, the audio tokens of each), and a head
    (a LayerNorm and a linear layer, trained with the model, thrown away after) names the clip's shape from each cell's
    average. The loss is the cross-entropy over all 2 N cells, the noisy ones included: a cell
    at t = 900 beside a clean one must learn the shape from its neighbour, which is what v2a (audio
    from a clean video) and continuation ask of the model. Where nothing clean is left the best
    answer is the prior, and the loss costs log 3.
    """

    def __init__(self, model: nn.Module, block: int, classes: int = 3):
        super().__init__(model, block, "--shape-block")
        geometry = model.config.geometry
        one_hot = F.one_hot(model.token_cell, geometry.modalities * geometry.segments).float()  # [L, M*N]
        self.register_buffer("pool", one_hot / one_hot.sum(0).clamp_min(1), persistent=False)  # each cell's mean token
        self.head = nn.Sequential(nn.LayerNorm(model.config.dim), nn.Linear(model.config.dim, classes))

    def cell_logits(self, tokens: Tensor) -> Tensor:
        """Tokens [B, L, D] -> the head's shape logits for each cell of the grid, [B, M*N, classes]."""
        return self.head(torch.einsum("bld,lc->bcd", tokens.float(), self.pool))

    def forward(self, labels: Tensor) -> Tensor:
        """Cross-entropy of every cell's guess of the shape, labels [B] (class indices): call after the model's forward."""
        logits = self.cell_logits(self._take())  # [B, M*N, classes]
        target = labels.to(logits.device)[:, None].expand(-1, logits.shape[1])
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def perceptual_error(reader: LatentReader, estimate: Tensor, clean: Tensor, alpha_bar: Tensor) -> Tensor:
    """Per latent frame [B, F]: the squared feature difference of the estimate x0_hat and the clean latent,
    weighed by alpha_bar [B, F] (how much of the clean latent the noisy input holds)."""
    error = (reader.features(estimate) - reader.features(clean).detach()) ** 2  # [B, K, F, h, w]
    return error.mean(dim=(1, 3, 4)) * alpha_bar
