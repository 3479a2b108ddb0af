"""AVDiT: a diffusion transformer over audio and video latents with per-token noise levels (chapter 6).

Follows DiT's ``models.py`` (Peebles & Xie 2023) and the paper's Fig. 4b: separate tokenizers
per modality, sinusoidal positions on time in seconds (shared by both modalities) and on video
space, joint self-attention over [video | audio] tokens, and adaLN-Zero blocks modulated *per
token* by the embedding of that token's cell of the timestep grid t [B, M, N].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from avdit_mini.config import Geometry
from avdit_mini.latents import VIDEO, TokenLayout, token_layout

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(dim=64, depth=2, heads=4),  # smoke profile
    "small": dict(dim=128, depth=6, heads=4),  # cpu profile: 4,000 steps of 32 clips in about half an hour on 2 CPU cores
    "base": dict(dim=384, depth=12, heads=6),  # gpu profile
}
PREDICTIONS = ("epsilon", "v")


@dataclass(frozen=True)
class AVDiTConfig:
    """Every shape and size of an AVDiT (Chapter 6)."""

    video_channels: int = 8
    audio_channels: int = 8
    geometry: Geometry = field(default_factory=Geometry)
    video_patch: int = 2  # tokens are 1 x p x p patches of a video latent frame
    audio_patch: int = 1  # tokens are p_a audio latent frames; must divide every segment's frames
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    T: int = 1000
    prediction: str = "epsilon"  # what the network outputs (epsilon or v); the pipeline's sampler reads it here
    self_condition: bool = False  # also read its own previous estimate of the clean latents (chapter 7)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if self.dim % 4:
            raise ValueError(f"dim={self.dim} must be a multiple of 4 for the 2-D sincos position encoding")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        token_layout(self.geometry, self.video_patch, self.audio_patch)  # validates both patch sizes

    def to_dict(self) -> dict:
        """The config as stored with a checkpoint; ``self_condition`` is left out when off, so the
        configs stored before it existed still match."""
        values = asdict(self)
        if not values["self_condition"]:
            del values["self_condition"]
        return values

    @classmethod
    def preset(cls, name: str, **overrides) -> AVDiTConfig:
        """A named size from PRESETS, with any field overridden (Chapter 6)."""
        if name not in PRESETS:
            raise ValueError(f"unknown AVDiT preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown AVDiTConfig fields {unknown}; valid ones are {[f.name for f in fields(cls)]}")
        return replace(cls(**PRESETS[name]), **overrides)


def num_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a model (Chapter 6)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer sinusoids [cos | sin] of real positions [...] -> [..., dim] (Chapter 6)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)  # [D/2]
    angles = positions.float()[..., None] * frequencies  # [..., D/2]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [..., D]


def sincos_2d(rows: int, cols: int, dim: int) -> Tensor:
    """DiT's 2-D sincos: half the channels encode the row, half the column -> [rows * cols, dim] (Chapter 6)."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")  # [rows, cols] each
    encoding = torch.cat([sinusoidal_embedding(row, dim // 2), sinusoidal_embedding(col, dim // 2)], dim=-1)
    return rearrange(encoding, "r c d -> (r c) d")  # [rows * cols, D]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with a shift and scale for every token (Chapter 6)."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t -> sinusoid -> MLP, as in DiT; smooth in t, so t = 0 (clean) neighbours t = 1 (Chapter 6)."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """Embed steps of any shape [...] -> [..., D] (Chapter 6)."""
        features = sinusoidal_embedding(t, self.frequency_dim)  # [..., frequency_dim], float32
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of both modalities (Chapter 6)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens [B, L, D] to queries, keys, values [B, H, L, D/H] each (Chapter 6)."""
        qkv = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)  # [3, B, H, L, D/H]
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor) -> Tensor:
        """Attend with the fused kernel: [B, L, D] -> [B, L, D] (Chapter 6)."""
        q, k, v = self._split_heads(x)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, D/H]
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))  # [B, L, D]

    def weights(self, x: Tensor) -> Tensor:
        """The attention map softmax(Q K^T / sqrt(d)) written out, [B, H, L, L] (Chapter 6)."""
        q, k, _ = self._split_heads(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # [B, H, L, L]


class AVDiTBlock(nn.Module):
    """Pre-norm attention + MLP, each with per-token adaLN-Zero shift, scale and gate (Chapter 6)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))  # zero-initialised

    def forward(self, x: Tensor, conditioning: Tensor) -> Tensor:
        """x [B, L, D], conditioning [B, L, D] -> [B, L, D] (Chapter 6)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(conditioning).chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def attention_weights(self, x: Tensor, conditioning: Tensor) -> Tensor:
        """The attention map this block would use on x, [B, H, L, L] (Chapter 6)."""
        shift_msa, scale_msa = self.modulation(conditioning).chunk(6, dim=-1)[:2]
        return self.attn.weights(modulate(self.norm1(x), shift_msa, scale_msa))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + one linear head per modality back to patch values (Chapter 6)."""

    def __init__(self, dim: int, video_out: int, audio_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))  # zero-initialised
        self.video_head = nn.Linear(dim, video_out)  # zero-initialised
        self.audio_head = nn.Linear(dim, audio_out)  # zero-initialised

    def forward(self, x: Tensor, conditioning: Tensor, video_tokens: int) -> tuple[Tensor, Tensor]:
        """Tokens [B, L, D] -> video patches [B, L_v, C_v p p], audio patches [B, L_a, C_a p_a] (Chapter 6)."""
        shift, scale = self.modulation(conditioning).chunk(2, dim=-1)
        x = modulate(self.norm(x), shift, scale)
        return self.video_head(x[:, :video_tokens]), self.audio_head(x[:, video_tokens:])


class AVDiT(nn.Module):
    """The audiovisual diffusion transformer: (z_video, z_audio, t [B, M, N]) -> (eps_video, eps_audio) (Chapter 6)."""

    def __init__(self, config: AVDiTConfig = AVDiTConfig()) -> None:
        super().__init__()
        self.config = config
        geometry, dim = config.geometry, config.dim
        self.layout = token_layout(geometry, config.video_patch, config.audio_patch)
        height, width = geometry.video_latent_hw
        self.patch_grid = (height // config.video_patch, width // config.video_patch)
        self.video_tokens = int((self.layout.modality == VIDEO).sum())
        video_patch_size = config.video_channels * config.video_patch**2
        audio_patch_size = config.audio_channels * config.audio_patch
        self.video_embed = nn.Linear(video_patch_size, dim)
        self.audio_embed = nn.Linear(audio_patch_size, dim)
        if config.self_condition:  # the previous estimate of the clean latents, patchified the same way
            # no bias: "no estimate yet" (zeros) then adds exactly nothing, the same as passing none
            self.video_self_embed = nn.Linear(video_patch_size, dim, bias=False)
            self.audio_self_embed = nn.Linear(audio_patch_size, dim, bias=False)
        self.modality_embed = nn.Parameter(torch.zeros(geometry.modalities, dim))
        self.register_buffer("position", self._fixed_positions(), persistent=False)  # [L, D]
        cell = self.layout.modality * geometry.segments + self.layout.segment  # [L], index into M * N
        self.register_buffer("token_cell", cell, persistent=False)
        self.register_buffer("token_modality", self.layout.modality.clone(), persistent=False)  # [L]
        self.timestep_embed = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(AVDiTBlock(dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(dim, video_patch_size, audio_patch_size)
        self._initialize_weights()

    def _fixed_positions(self) -> Tensor:
        """Sinusoid of time (shared by both modalities) + 2-D sincos of space for video, [L, D] (Chapter 6)."""
        geometry, dim = self.config.geometry, self.config.dim
        # Measure time in audio latent steps (62.5 ms) so neighbouring audio tokens sit 1 apart.
        step = geometry.hop_length * geometry.audio_time_down / geometry.sample_rate
        position = sinusoidal_embedding(self.layout.seconds / step, dim)  # [L, D]
        frames = geometry.video_latent_frames
        space = sincos_2d(*self.patch_grid, dim).repeat(frames, 1)  # [L_v, D], tokens ordered (frame, row, col)
        position[: self.video_tokens] += space
        return position

    def _initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, zero adaLN and heads so the untrained model outputs 0 (Chapter 6)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.modality_embed, std=0.02)
        for layer in (self.timestep_embed.mlp[0], self.timestep_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        zero_layers = [block.modulation[-1] for block in self.blocks]
        zero_layers += [self.final.modulation[-1], self.final.video_head, self.final.audio_head]
        if self.config.self_condition:  # zero: added to a trained network, they start by changing nothing
            zero_layers += [self.video_self_embed, self.audio_self_embed]
        for layer in zero_layers:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def token_layout(self) -> TokenLayout:
        """Modality, segment and centre time of each of the L tokens (Chapter 6)."""
        return self.layout

    def _check_inputs(self, video_latent: Tensor, audio_latent: Tensor, timestep_grid: Tensor) -> None:
        """Raise a ValueError that names the expected shapes (Chapter 6)."""
        config, geometry = self.config, self.config.geometry
        batch = list(video_latent.shape[:1])  # [B], or [] for a 0-d tensor, which then fails below
        video_shape = [config.video_channels, geometry.video_latent_frames, *geometry.video_latent_hw]
        expected = {
            "video_latent": (video_latent, video_shape),
            "audio_latent": (audio_latent, [config.audio_channels, geometry.audio_latent_frames]),
            "timestep_grid": (timestep_grid, [geometry.modalities, geometry.segments]),
        }
        for name, (tensor, shape) in expected.items():
            if list(tensor.shape) != batch + shape:
                raise ValueError(
                    f"{name} must be [B, {', '.join(map(str, shape))}] with B = {batch[0] if batch else '?'} "
                    f"(video_latent's batch size), got {list(tensor.shape)}"
                )

    def token_conditioning(self, timestep_grid: Tensor) -> Tensor:
        """Embed the M x N grid once, then give each token its cell's embedding: [B, M, N] -> [B, L, D] (Chapter 6)."""
        grid_shape = [self.config.geometry.modalities, self.config.geometry.segments]
        if timestep_grid.dim() != 3 or list(timestep_grid.shape[1:]) != grid_shape:
            raise ValueError(
                f"timestep_grid must be [B, {grid_shape[0]}, {grid_shape[1]}], got {list(timestep_grid.shape)}"
            )
        cell_embedding = self.timestep_embed(timestep_grid)  # [B, M, N, D]
        cell_embedding = rearrange(cell_embedding, "b m n d -> b (m n) d")  # [B, M*N, D]
        return cell_embedding[:, self.token_cell]  # [B, L, D]

    def patchify(self, video_latent: Tensor, audio_latent: Tensor) -> tuple[Tensor, Tensor]:
        """Latents to token-sized patches: [B, L_v, C_v p p] and [B, L_a, C_a p_a] (Chapter 6)."""
        p, p_a = self.config.video_patch, self.config.audio_patch
        # Tokens are ordered (frame, row, col), as latents.token_layout assumes.
        video_patches = rearrange(video_latent, "b c f (h p1) (w p2) -> b (f h w) (c p1 p2)", p1=p, p2=p)
        audio_patches = rearrange(audio_latent, "b c (n p) -> b n (c p)", p=p_a)
        return video_patches, audio_patches

    def embed_tokens(self, video_latent: Tensor, audio_latent: Tensor,
                     previous: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Patchify both latents, embed, add positions and modality: -> [B, L, D] (Chapter 6).

        ``previous`` (self-conditioning, chapter 7): the model's last estimate of the clean latents,
        embedded by its own bias-free linear layers and added to the tokens; None adds nothing, the same as
        zeros ("no estimate yet").
        """
        video_patches, audio_patches = self.patchify(video_latent, audio_latent)
        tokens = torch.cat([self.video_embed(video_patches), self.audio_embed(audio_patches)], dim=1)  # [B, L, D]
        if previous is not None:
            video_previous, audio_previous = self.patchify(*previous)
            tokens = tokens + torch.cat([self.video_self_embed(video_previous),
                                         self.audio_self_embed(audio_previous)], dim=1)
        return tokens + self.position + self.modality_embed[self.token_modality]

    def unpatchify(self, video_patches: Tensor, audio_patches: Tensor) -> tuple[Tensor, Tensor]:
        """Patch values back to latents: [B, C_v, 5, h, w] and [B, C_a, 34] (Chapter 6)."""
        p, p_a = self.config.video_patch, self.config.audio_patch
        rows, cols = self.patch_grid
        pattern = "b (f h w) (c p1 p2) -> b c f (h p1) (w p2)"
        video = rearrange(video_patches, pattern, h=rows, w=cols, p1=p, p2=p)  # [B, C_v, 5, h, w]
        audio = rearrange(audio_patches, "b n (c p) -> b c (n p)", p=p_a)  # [B, C_a, 34]
        return video, audio

    def forward(self, video_latent: Tensor, audio_latent: Tensor, timestep_grid: Tensor,
                previous: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Predict the noise (or v) of both latents given each cell's noise level (Chapter 6).

        ``previous`` is for a self-conditioned model only (``config.self_condition``, chapter 7): its
        last estimate of the clean (video, audio) latents, shaped like the inputs; None means none yet.
        """
        self._check_inputs(video_latent, audio_latent, timestep_grid)
        if previous is not None:
            if not self.config.self_condition:
                raise ValueError("this AVDiT was not built to read a previous estimate (AVDiTConfig.self_condition "
                                 "is False); call it without `previous`, or train one with --self-condition")
            if len(previous) != 2 or [list(p.shape) for p in previous] != [list(video_latent.shape), list(audio_latent.shape)]:
                raise ValueError("previous must be the (video, audio) estimates of the clean latents, shaped like the "
                                 f"inputs {list(video_latent.shape)} and {list(audio_latent.shape)}, got "
                                 f"{[list(getattr(p, 'shape', [])) for p in previous]}")
        x = self.embed_tokens(video_latent, audio_latent, previous)  # [B, L, D]
        conditioning = self.token_conditioning(timestep_grid)  # [B, L, D]
        for block in self.blocks:
            x = block(x, conditioning)
        video_patches, audio_patches = self.final(x, conditioning, self.video_tokens)
        return self.unpatchify(video_patches, audio_patches)

    @torch.no_grad()
    def attention_maps(
        self, video_latent: Tensor, audio_latent: Tensor, timestep_grid: Tensor, block: int = 0
    ) -> Tensor:
        """Attention weights of one block, computed explicitly for teaching: [B, heads, L, L] (Chapter 6)."""
        depth = len(self.blocks)
        if not 0 <= block < depth:
            raise ValueError(f"block must be in 0..{depth - 1} for a model of depth {depth}, got {block}")
        self._check_inputs(video_latent, audio_latent, timestep_grid)
        x = self.embed_tokens(video_latent, audio_latent)  # [B, L, D]
        conditioning = self.token_conditioning(timestep_grid)  # [B, L, D]
        for earlier in self.blocks[:block]:
            x = earlier(x, conditioning)
        return self.blocks[block].attention_weights(x, conditioning)
