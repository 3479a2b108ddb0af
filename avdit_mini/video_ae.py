"""A causal 3-D convolutional video autoencoder in the MAGVIT-v2 style (chapter 3).

Video [B, 3, 17, 64, 64] in [0, 1] <-> latent [B, C_v=8, 5, 8, 8].

*Causal* means that every convolution looks only at the present and the past in time: the time
axis is padded on the past side only, with copies of the first frame. Frame 0 is therefore
encoded on its own and the 16 frames after it in groups of 4 (17 = 1 + 4 * 4 -> 5 latent frames),
so an image is a one-frame video and a latent frame never depends on a later frame.

To stay trainable on a CPU the first layer folds each ``patch x patch`` block of pixels into
channels (space-to-depth) and the last unfolds it (depth-to-space); the convolutions then work
at 32 x 32 and below. Normalisation is per pixel over channels (:class:`ChannelNorm`), which keeps a flat frame's colour.
The flat backgrounds of the world make plain MSE under-weight the small
object, so :func:`reconstruction_loss` also weights the pixels that differ from the background.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Geometry


@dataclass(frozen=True)
class VideoAEConfig:
    """Video autoencoder shape (stored in the checkpoint's json)."""

    latent_channels: int = 8  # C_v
    patch: int = 2  # space-to-depth factor at the input (64 -> 32)
    channels: tuple[int, ...] = (32, 64, 96)  # per stage: 32 x 32 x 17, 16 x 16 x 9, 8 x 8 x 5
    blocks: tuple[int, ...] = (1, 1, 2)  # residual blocks per stage (the decoder mirrors them)
    space_down: tuple[bool, ...] = (True, True)  # between stages: halve H and W?
    time_down: tuple[bool, ...] = (True, True)  # between stages: causal halving of time?
    time_kernels: tuple[int, ...] = (1, 1, 3)  # temporal kernel per stage (1: per frame; the time-down convs see 3)
    norm: str = "channel"  # "channel" (LayerNorm over channels per pixel) or "group" (per-frame GroupNorm)
    groups: int = 16  # for norm="group" (and the decoder's width rounding)
    decoder_width: float = 1.0  # decoder channels = encoder channels * this
    shortcut: bool = True  # the linear colour path of :class:`ColourShortcut`

    def to_dict(self) -> dict:
        return asdict(self)


TINY_VIDEO_CONFIG = VideoAEConfig(channels=(16, 16, 16), blocks=(1, 1, 1), groups=4)


# ----------------------------------------------------------------------------------------------
# Causal building blocks
# ----------------------------------------------------------------------------------------------
def causal_time_pad(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Pad ``frames`` copies of the first frame on the past side: [B, C, T, H, W] -> [B, C, T + frames, H, W]."""
    if frames == 0:
        return x
    first = x[:, :, :1].expand(-1, -1, frames, -1, -1)
    return torch.cat([first, x], dim=2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of each frame (as in ConvNeXt). Chapter 3.

    Causal by construction, and -- unlike GroupNorm -- it keeps a flat frame's colour: GroupNorm
    subtracts each group's mean over space, which for the world's flat backgrounds *is* the
    background colour, so an autoencoder normalised by it drifts colours.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)  # [B, 1, T, H, W]
        var = (x - mean).square().mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None, None] + self.bias[:, None, None, None]


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """``channel`` (default, keeps colour) or ``group`` (per-frame GroupNorm, for comparison in the chapter)."""
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "group":
        return FrameGroupNorm(min(groups, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose 'channel', 'group' or 'none'")


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame on its own: statistics over time would leak the future into the past."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # [B, C, T, H, W] -> [B T, C, H, W]
        frames = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return frames.reshape(b, t, c, h, w).transpose(1, 2)  # -> [B, C, T, H, W]


class CausalConv3d(nn.Module):
    """A 3-D convolution that never looks into the future (MAGVIT-v2's causal padding).

    With time kernel k and time stride 2, output frame 0 sees input frame 0 only and output
    frame j sees input frames 2j - 2 .. 2j: length 1 + (T - 1) / 2.
    """

    def __init__(self, in_ch: int, out_ch: int, time_kernel: int = 3, space_kernel: int = 3,
                 time_stride: int = 1, space_stride: int = 1):
        super().__init__()
        self.time_pad = time_kernel - 1
        self.conv = nn.Conv3d(in_ch, out_ch, (time_kernel, space_kernel, space_kernel),
                              stride=(time_stride, space_stride, space_stride),
                              padding=(0, space_kernel // 2, space_kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(causal_time_pad(x, self.time_pad))


class ResBlock3d(nn.Module):
    """GroupNorm -> SiLU -> causal conv, twice, plus a skip (1x1x1 conv if the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, time_kernel: int, groups: int, norm: str = "channel"):
        super().__init__()
        self.norm1 = make_norm(norm, in_ch, groups)
        self.conv1 = CausalConv3d(in_ch, out_ch, time_kernel)
        self.norm2 = make_norm(norm, out_ch, groups)
        self.conv2 = CausalConv3d(out_ch, out_ch, time_kernel)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class CausalUpsample(nn.Module):
    """Nearest upsampling, causal in time (frame 0 stays one frame), then a causal conv.

    Time: [T] -> [2T - 1]: latent frame 0 gives output frame 0, latent frame j gives frames
    2j - 1 and 2j -- the mirror of the encoder's causal stride-2 convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, space: bool, time: bool, time_kernel: int):
        super().__init__()
        self.space, self.time = space, time
        self.conv = CausalConv3d(in_ch, out_ch, time_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]  # [B, C, T, H, W] -> [B, C, 2T - 1, H, W]
        if self.space:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # H, W -> 2H, 2W
        return self.conv(x)


def space_to_depth(video: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C * p * p, T, H / p, W / p]."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t, h // patch, patch, w // patch, patch)  # [B, C, T, H/p, p, W/p, p]
    x = x.permute(0, 1, 4, 6, 2, 3, 5)  # [B, C, p, p, T, H/p, W/p]
    return x.reshape(b, c * patch * patch, t, h // patch, w // patch)


def depth_to_space(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C * p * p, T, H, W] -> [B, C, T, H * p, W * p] (inverse of :func:`space_to_depth`)."""
    b, cpp, t, h, w = x.shape
    c = cpp // (patch * patch)
    x = x.reshape(b, c, patch, patch, t, h, w)  # [B, C, p, p, T, H, W]
    x = x.permute(0, 1, 4, 5, 2, 6, 3)  # [B, C, T, H, p, W, p]
    return x.reshape(b, c, t, h * patch, w * patch)


def causal_time_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over causal time groups: frame 0 alone, then groups of ``factor``. [B, C, 1 + f n, H, W] -> [B, C, 1 + n, H, W]."""
    b, c, t, h, w = x.shape
    rest = x[:, :, 1:].reshape(b, c, (t - 1) // factor, factor, h, w).mean(dim=3)  # [B, C, n, H, W]
    return torch.cat([x[:, :, :1], rest], dim=2)


def causal_time_repeat(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`causal_time_pool` by repetition: [B, C, 1 + n, H, W] -> [B, C, 1 + f n, H, W]."""
    return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(factor, dim=2)], dim=2)


class ColourShortcut(nn.Module):
    """A linear low-pass path around the deep network (after DC-AE's residual autoencoding).

    Encoder side: the input averaged over each latent cell (causal time groups x 8 x 8 pixels),
    mapped to the latent channels and *added* to the latent. Decoder side: the latent mapped back
    to RGB and repeated over the cell, added to the output. The flat background colour then flows
    through a linear path from the first step, and the deep network learns only the residual
    (without it the autoencoder sits for hundreds of steps on the mean background colour).
    """

    def __init__(self, latent_channels: int, time_down: int, space_down: int):
        super().__init__()
        self.time_down, self.space_down = time_down, space_down
        self.to_latent = nn.Conv3d(3, latent_channels, 1)
        self.to_rgb = nn.Conv3d(latent_channels, 3, 1)
        with torch.no_grad():  # start as the identity on RGB: latent channels 0-2 hold each cell's mean colour
            for conv in (self.to_latent, self.to_rgb):
                conv.weight.zero_()
                conv.bias.zero_()
                conv.weight[:3, :3].copy_(torch.eye(3)[..., None, None, None])

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        pooled = causal_time_pool(video, self.time_down)  # [B, 3, 5, 64, 64]
        pooled = F.avg_pool3d(pooled, (1, self.space_down, self.space_down))  # [B, 3, 5, 8, 8]
        return self.to_latent(pooled)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        rgb = causal_time_repeat(self.to_rgb(latent), self.time_down)  # [B, 3, 17, 8, 8]
        return rgb.repeat_interleave(self.space_down, dim=3).repeat_interleave(self.space_down, dim=4)  # [B, 3, 17, 64, 64]


# ----------------------------------------------------------------------------------------------
# The autoencoder
# ----------------------------------------------------------------------------------------------
class VideoAutoencoder(nn.Module):
    """Video [B, 3, 17, 64, 64] <-> latent [B, C_v, 5, 8, 8] with causal 3-D convs. Chapter 3."""

    def __init__(self, config: VideoAEConfig | None = None, geometry: Geometry | None = None):
        super().__init__()
        self.config = c = config or VideoAEConfig()
        self.geometry = g = geometry or Geometry()
        self._check_config(c, g)
        self.encoder = self._build_encoder(c)
        self.decoder = self._build_decoder(c)
        self.shortcut = ColourShortcut(c.latent_channels, g.video_time_down, g.video_space_down) if c.shortcut else None

    @staticmethod
    def _check_config(c: VideoAEConfig, g: Geometry) -> None:
        stages = len(c.channels)
        if not (len(c.blocks) == len(c.time_kernels) == stages and len(c.space_down) == len(c.time_down) == stages - 1):
            raise ValueError("blocks and time_kernels need one entry per stage, space_down and time_down one per "
                             f"transition; got {stages} stages")
        if c.patch * 2 ** sum(c.space_down) != g.video_space_down:
            raise ValueError(f"patch {c.patch} x 2^{sum(c.space_down)} space downsamplings != {g.video_space_down}")
        if 2 ** sum(c.time_down) != g.video_time_down:
            raise ValueError(f"2^{sum(c.time_down)} time downsamplings != video_time_down {g.video_time_down}")

    @staticmethod
    def _build_encoder(c: VideoAEConfig) -> nn.Sequential:
        layers: list[nn.Module] = [CausalConv3d(3 * c.patch**2, c.channels[0], c.time_kernels[0])]
        for i, ch in enumerate(c.channels):
            layers += [ResBlock3d(ch, ch, c.time_kernels[i], c.groups, c.norm) for _ in range(c.blocks[i])]
            if i < len(c.channels) - 1:
                layers.append(CausalConv3d(ch, c.channels[i + 1], max(c.time_kernels[i + 1], 3 if c.time_down[i] else 1),
                                           time_stride=2 if c.time_down[i] else 1,
                                           space_stride=2 if c.space_down[i] else 1))
        last = c.channels[-1]
        layers += [make_norm(c.norm, last, c.groups), nn.SiLU(), CausalConv3d(last, c.latent_channels, 1, 1)]
        return nn.Sequential(*layers)

    @staticmethod
    def _build_decoder(c: VideoAEConfig) -> nn.Sequential:
        widths = [max(c.groups, int(round(ch * c.decoder_width / c.groups)) * c.groups) for ch in c.channels][::-1]
        kernels, blocks = c.time_kernels[::-1], c.blocks[::-1]
        space_up, time_up = c.space_down[::-1], c.time_down[::-1]
        layers: list[nn.Module] = [CausalConv3d(c.latent_channels, widths[0], kernels[0])]
        for i, ch in enumerate(widths):
            layers += [ResBlock3d(ch, ch, kernels[i], c.groups, c.norm) for _ in range(blocks[i] + 1)]  # decoders work harder
            if i < len(widths) - 1:
                layers.append(CausalUpsample(ch, widths[i + 1], space_up[i], time_up[i], max(kernels[i + 1], 3 if time_up[i] else 1)))
        last = widths[-1]
        head = CausalConv3d(last, 3 * c.patch**2, kernels[-1])
        if c.shortcut:  # zero-init: training starts from the shortcut's blocky colours and learns the residual
            nn.init.zeros_(head.conv.weight)
            nn.init.zeros_(head.conv.bias)
        layers += [make_norm(c.norm, last, c.groups), nn.SiLU(), head]
        return nn.Sequential(*layers)

    def _check_video(self, video: torch.Tensor) -> None:
        g = self.geometry
        expected = (3, g.frames, g.height, g.width)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected video [B, 3, {g.frames}, {g.height}, {g.width}] in [0, 1], got "
                             f"{list(video.shape)}; a single clip needs a batch axis: video[None]")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 17, 64, 64] in [0, 1] -> latent [B, C_v, 5, 8, 8]."""
        self._check_video(video)
        video = video * 2.0 - 1.0
        latent = self.encoder(space_to_depth(video, self.config.patch))  # via [B, 3 p^2, 17, 64/p, 64/p]
        return latent if self.shortcut is None else latent + self.shortcut.encode(video)

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent -> video, unclamped (what the training loss sees)."""
        g, c = self.geometry, self.config
        expected = (c.latent_channels, g.video_latent_frames, *g.video_latent_hw)
        if latent.ndim != 5 or tuple(latent.shape[1:]) != expected:
            raise ValueError(f"expected a video latent [B, {', '.join(map(str, expected))}], got {list(latent.shape)}")
        x = depth_to_space(self.decoder(latent), c.patch)  # [B, 3, 17, 64, 64]
        if self.shortcut is not None:
            x = x + self.shortcut.decode(latent)
        return x * 0.5 + 0.5

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, C_v, 5, 8, 8] -> video [B, 3, 17, 64, 64] clamped to [0, 1]."""
        return self.decode_raw(latent).clamp(0.0, 1.0)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Video -> unclamped reconstruction."""
        return self.decode_raw(self.encode(video))


def object_weights(video: torch.Tensor, boost: float = 10.0, threshold: float = 0.05) -> torch.Tensor:
    """Per-pixel weights [B, 1, T, H, W]: 1 + ``boost`` where a pixel differs from its frame's median colour.

    The object covers ~1-5 % of a frame; without this the loss barely notices it (and drifts its colour).
    """
    b, c, t, h, w = video.shape
    median = video.reshape(b, c, t, h * w).median(dim=-1).values[..., None, None]  # [B, 3, T, 1, 1]
    differs = (video - median).abs().amax(dim=1, keepdim=True) > threshold  # [B, 1, T, H, W]
    differs = F.max_pool3d(differs.float(), (1, 3, 3), stride=1, padding=(0, 1, 1))  # and its edges
    return 1.0 + boost * differs


def reconstruction_loss(reconstruction: torch.Tensor, video: torch.Tensor, boost: float = 10.0) -> dict[str, torch.Tensor]:
    """Object-weighted MSE + L1 (chapter 3): ``{"loss", "mse", "l1"}``."""
    weights = object_weights(video, boost)
    error = reconstruction - video
    mse = (weights * error.square()).sum() / (weights.sum() * video.shape[1])
    l1 = (weights * error.abs()).sum() / (weights.sum() * video.shape[1])
    return {"loss": mse + 0.1 * l1, "mse": error.square().mean().detach(), "l1": error.abs().mean().detach()}


def psnr(reconstruction: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per clip [B] (peak 1)."""
    mse = (reconstruction.clamp(0, 1) - video).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


__all__ = ["VideoAEConfig", "TINY_VIDEO_CONFIG", "VideoAutoencoder", "CausalConv3d", "ResBlock3d", "CausalUpsample",
           "causal_time_pad", "causal_time_pool", "causal_time_repeat", "ColourShortcut", "FrameGroupNorm", "ChannelNorm", "make_norm", "space_to_depth", "depth_to_space", "object_weights", "reconstruction_loss", "psnr"]
