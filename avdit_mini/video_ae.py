"""A causal *tubelet* video autoencoder (chapter 3).

Video [B, 3, 17, 64, 64] in [0, 1] <-> latent [B, C_v=8, 5, 8, 8].

*Causal* means that no latent frame depends on a later video frame, as in MAGVIT-v2: the time
axis is padded on the past side only, with copies of the first frame. Frame 0 is therefore
encoded on its own and the 16 frames after it in groups of 4 (17 = 1 + 4 * 4 -> 5 latent frames),
so an image is a one-frame video.

The encoder's first layer is a causal 3-D convolution whose kernel equals its stride,
4 frames x 4 x 4 pixels: it cuts the (past-padded) clip into non-overlapping *tubelets*
(ViViT's tubelet embedding) and maps each to a feature vector. We write it as a fold
(:func:`tubelets`) followed by a 1 x 1 convolution, which is the same operation. A strided 3 x 3
convolution then halves space again (16 -> 8) and a 1 x 1 convolution maps to the C_v latent
channels. The decoder mirrors it, and its first convolution is causal in time over 2 latent
frames, so each group of 4 frames is drawn from its own latent frame and the one before. A small
full-resolution sharpening head (:class:`Refine`, per frame) redraws the edges that cross tubelet
borders; the shipped decoder was fine-tuned with it and an image-gradient loss (:func:`edge_error`)
with the encoder frozen, so its latents are those of the first run.

The network is shallow and wide on purpose: on the world's flat backgrounds a deep, normalised
stack sits for thousands of steps on the background colour, while this one learns to draw the
object within minutes on a CPU (chapter 3 shows both).
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

    latent_channels: int = 8  # the encoder's own channels (C_v, unless a shape code adds its own)
    patch: int = 4  # tubelet size in space (the tubelet is time_down x patch x patch)
    widths: tuple[int, int] = (192, 384)  # features at 16 x 16 (tubelets) and at 8 x 8 (latent grid)
    decoder_time_kernel: int = 2  # latent frames the decoder's first convolution sees (1: none of the past)
    hidden_layers: int = 0  # extra 3 x 3 conv + SiLU layers at each resolution, each side
    refine_width: int = 16  # features of the full-resolution sharpening head (0: none)
    refine_depth: int = 3  # its 3 x 3 convolutions, dilated 1, 2, 4, ... then 1: a 9 x 9 view at depth 3, 17 x 17 at 4
    refine_hints: int = 0  # extra channels the decoder draws for the head only (what the colours alone do not say)
    decoder_blocks: int = 0  # residual 3 x 3 blocks on the 8 x 8 latent grid before the decoder draws (LatentBlock)
    encoder_blocks: int = 0  # residual bottleneck blocks on the 8 x 8 grid before the encoder's read-out (EncoderBlock)
    shape_head: int = 0  # classes of the decoder's own shape reader (ShapeHead; 0: none)
    shape_code: int = 0  # latent channels the encoder adds for "how much of this cell is each shape" (ShapeCoder; 0: none)

    @property
    def channels(self) -> int:
        """C_v: the latent's channels, the appearance's and the shape code's."""
        return self.latent_channels + self.shape_code

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("encoder_blocks", "shape_head", "shape_code"):  # left out at 0: the configs stored before they existed still match
            if not values[key]:
                del values[key]
        return values


TINY_VIDEO_CONFIG = VideoAEConfig(widths=(32, 64), refine_width=8)


# ----------------------------------------------------------------------------------------------
# Causal building blocks
# ----------------------------------------------------------------------------------------------
def causal_time_pad(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Pad ``frames`` copies of the first frame on the past side: [B, C, T, H, W] -> [B, C, T + frames, H, W]."""
    if frames == 0:
        return x
    first = x[:, :, :1].expand(-1, -1, frames, -1, -1)
    return torch.cat([first, x], dim=2)


class CausalConv3d(nn.Module):
    """A 3-D convolution that never looks into the future (MAGVIT-v2's causal padding).

    The time axis is padded with ``time_kernel - 1`` copies of frame 0 on the past side only, so
    output frame j sees input frames j - k + 1 .. j. Space is padded symmetrically ("same").
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


def tubelets(video: torch.Tensor, time: int, patch: int) -> torch.Tensor:
    """Causal tubelet fold: [B, C, 1 + time n, H, W] -> [B, C time patch^2, 1 + n, H / patch, W / patch].

    ``time - 1`` copies of frame 0 are padded in front, so tubelet 0 holds frame 0 alone and
    tubelet j >= 1 holds frames 4j - 3 .. 4j (for time = 4).
    """
    b, c, t, h, w = video.shape
    if (t - 1) % time or h % patch or w % patch:
        raise ValueError(f"need 1 + {time} n frames and sides divisible by {patch}; got {list(video.shape)}")
    x = causal_time_pad(video, time - 1)  # [B, C, time (1 + n), H, W]
    n = x.shape[2] // time
    x = x.reshape(b, c, n, time, h // patch, patch, w // patch, patch)  # [B, C, n', time, H', p, W', p]
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # [B, C, time, p, p, n', H', W']
    return x.reshape(b, c * time * patch * patch, n, h // patch, w // patch)


def untubelets(x: torch.Tensor, time: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`tubelets`: [B, C time p^2, n', H', W'] -> [B, C, 1 + time (n' - 1), H' p, W' p]."""
    b, d, n, h, w = x.shape
    c = d // (time * patch * patch)
    x = x.reshape(b, c, time, patch, patch, n, h, w)  # [B, C, time, p, p, n', H', W']
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, n', time, H', p, W', p]
    x = x.reshape(b, c, n * time, h * patch, w * patch)
    return x[:, :, time - 1:]  # drop the padded copies of frame 0


def causal_time_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over causal time groups: frame 0 alone, then groups of ``factor``. [B, C, 1 + f n, H, W] -> [B, C, 1 + n, H, W]."""
    b, c, t, h, w = x.shape
    rest = x[:, :, 1:].reshape(b, c, (t - 1) // factor, factor, h, w).mean(dim=3)  # [B, C, n, H, W]
    return torch.cat([x[:, :, :1], rest], dim=2)


def causal_time_repeat(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`causal_time_pool` by repetition: [B, C, 1 + n, H, W] -> [B, C, 1 + f n, H, W]."""
    return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(factor, dim=2)], dim=2)


def cell_means(video: torch.Tensor, time: int = 4, space: int = 8) -> torch.Tensor:
    """A baseline with nothing learnt: paint every latent cell (causal time group x space x space) its mean colour."""
    pooled = F.avg_pool3d(causal_time_pool(video, time), (1, space, space))  # [B, 3, 5, 8, 8]
    return causal_time_repeat(pooled, time).repeat_interleave(space, dim=3).repeat_interleave(space, dim=4)


class Refine(nn.Module):
    """A full-resolution sharpening head: a small residual CNN on each decoded frame.

    Every pixel of a tubelet is a linear read-out of one 16 x 16-grid feature vector, so edges
    that cut across tubelets come out soft and small squares and triangles look like discs.
    ``depth`` 3 x 3 convolutions over the frame (the middle ones dilated 2, 4, ...: a 9 x 9 view at
    depth 3, 17 x 17 at depth 4) redraw the edges. Besides the three colours the head may read
    ``hints`` extra channels that the decoder draws for it alone: the decoder knows more about
    the object (its latent says "triangle") than a blurred picture shows. The head acts on one frame
    at a time, so causality is untouched; its last layer starts at zero, so it starts as the identity.
    """

    def __init__(self, width: int, depth: int = 3, hints: int = 0):
        super().__init__()
        if depth < 2:
            raise ValueError(f"the sharpening head needs depth >= 2, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(3 + hints, width, 3, padding=1), nn.SiLU()]
        for i in range(depth - 2):
            dilation = 2 ** (i + 1)
            layers += [nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation), nn.SiLU()]
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3 + hints, T, H, W] -> a correction [B, 3, T, H, W] to add to the colours."""
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)  # every frame on its own: [B T, C, H, W]
        return self.net(frames).reshape(b, t, 3, h, w).transpose(1, 2)


class LatentBlock(nn.Module):
    """A residual block of the decoder's trunk on the 8 x 8 latent grid: x + conv(SiLU(conv(SiLU(x)))).

    The decoder's first layer sees 3 x 3 latent cells and the next one draws; an object that
    straddles cells leaves its shape spread over several of them, and a decoder unsure of it draws
    the average shape -- a blob. Blocks here give it room to gather the evidence and decide before
    it draws. The first convolution sees this latent frame and the one before (causal), the second
    starts at zero, so a block added to a trained decoder starts as the identity. (Measured in chapter 3,
    "The smallest objects": two blocks buy 0.3 dB of PSNR and no shape -- the decoder was not short of room.)
    """

    def __init__(self, width: int, time_kernel: int = 2):
        super().__init__()
        self.conv1 = CausalConv3d(width, width // 2, time_kernel, 3)
        self.conv2 = CausalConv3d(width // 2, width, 1, 3)
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class EncoderBlock(nn.Module):
    """A residual bottleneck block on the encoder's 8 x 8 grid: x + 1x1(SiLU(3x3(SiLU(1x1(SiLU(x)))))).

    The encoder is shallow: one hidden layer looks at a 12 x 12-pixel window per latent cell, which
    may see a piece of the object's edge and not its shape. Two blocks let each cell look at its
    neighbours (3 x 3 cells, this latent frame and the one before: causal) before the latent is
    read out, so every cell the object covers can say the object's shape. The last convolution
    starts at zero, so a block added to a trained encoder starts as the identity.
    """

    def __init__(self, width: int, inner: int = 96, time_kernel: int = 2):
        super().__init__()
        self.squeeze = CausalConv3d(width, inner, 1, 1)
        self.mix = CausalConv3d(inner, inner, time_kernel, 3)
        self.expand = CausalConv3d(inner, width, 1, 1)
        nn.init.zeros_(self.expand.conv.weight)
        nn.init.zeros_(self.expand.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.silu(self.mix(F.silu(self.squeeze(F.silu(x))))))


class ShapeHead(nn.Module):
    """The decoder's own shape reader: per-cell shape logits from the latent, handed to the decoder as a hint.

    The shape of a radius-4 object is in the latent -- chapter 3's small reader names it from the
    latent in 95% of held-out clips -- but the decoder draws half the small squares and over a third
    of the small triangles as discs: trained by a squared error alone, it never learnt to find the quiet pattern that says
    the shape, and unsure, it draws the average shape. This head is that reader inside the decoder:
    two 3 x 3 convolutions on the latent grid (this latent frame and the one before: causal) and a
    1 x 1 read-out to one logit per shape in every cell. Trained with the world's labels
    (``train autoencoder --shape-head W``: the cross-entropy of each cell the object covers), its
    probabilities enter the decoder's first features through a 3 x 3 convolution that starts at
    zero, so a head added to a trained decoder starts as the identity. At sampling time it needs no
    labels: it reads whatever latent it is given (chapter 3, "A decoder that reads the shape").
    """

    def __init__(self, channels: int, features: int, classes: int = 3, width: int = 64, time_kernel: int = 2):
        super().__init__()
        self.read = nn.Sequential(CausalConv3d(channels, width, time_kernel, 3), nn.SiLU(),
                                  CausalConv3d(width, width, 1, 3), nn.SiLU(), CausalConv3d(width, classes, 1, 1))
        self.inject = CausalConv3d(classes, features, 1, 3)
        nn.init.zeros_(self.inject.conv.weight)
        nn.init.zeros_(self.inject.conv.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, F, H, W] -> shape logits [B, classes, F, H, W]."""
        return self.read(latent)

    def hint(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> what to add to the decoder's first features [B, features, F, H, W]."""
        return self.inject(logits.softmax(dim=1))


class ShapeCoder(nn.Module):
    """The encoder's shape code: in each latent cell, how much of it each shape covers (chapter 7, "A code that names the shape").

    Every earlier attempt left the shape where the autoencoder put it: a quiet pattern at the latent
    grid's finest frequency, which a diffusion model does not learn to draw. This module writes it
    loudly instead. A small CNN looks at each frame alone (three strided 4 x 4 convolutions: 64 -> 8,
    then a 3 x 3 one; a 38-pixel view) and gives, for every cell of the 8 x 8 grid, one number per
    shape: the share of the cell that a circle, a square or a triangle covers (a sigmoid, trained
    against the world's drawing; :func:`shape_code_targets`). The frames' shares are averaged over
    each latent frame's causal group (frame 0 alone, then groups of 4), so the code is causal as the
    rest of the latent is. The result, ``classes`` channels of [5, 8, 8], is appended to the latent:
    zero where there is no object, and in the object's cells a value that says its shape -- a coarse,
    loud pattern, like the colour's. The labels are needed only to train it; at encoding time it reads pixels.
    """

    def __init__(self, classes: int = 3, width: int = 32, time: int = 4):
        super().__init__()
        self.time = time
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 4, stride=2, padding=1), nn.SiLU(),  # 64 -> 32
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1), nn.SiLU(),  # 32 -> 16
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU(),  # 16 -> 8
            nn.Conv2d(width, classes, 3, padding=1),
        )

    def frame_logits(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, 64, 64] in [0, 1] -> each frame's per-cell, per-shape coverage logits [B, K, T, 8, 8]."""
        b, c, t, h, w = video.shape
        frames = (video * 2.0 - 1.0).transpose(1, 2).reshape(b * t, c, h, w)
        logits = self.net(frames)
        return logits.reshape(b, t, *logits.shape[1:]).transpose(1, 2)

    def pool(self, frame_logits: torch.Tensor) -> torch.Tensor:
        """Frame logits -> the code [B, K, 5, 8, 8]: the frames' coverage shares averaged per causal time group."""
        return causal_time_pool(torch.sigmoid(frame_logits), self.time)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.pool(self.frame_logits(video))

    @staticmethod
    def vote(code: torch.Tensor) -> torch.Tensor:
        """A code [B, K, F, H, W] -> each clip's shape index [B]: the channel with the most coverage over its cells."""
        return code.sum(dim=(2, 3, 4)).argmax(dim=1)


def shape_code_targets(video: torch.Tensor, shapes: torch.Tensor, classes: int = 3, threshold: float = 0.05,
                       space: int = 8) -> torch.Tensor:
    """What :class:`ShapeCoder` learns: each frame's per-cell share covered by the object, in its shape's channel.

    ``video`` [B, 3, T, H, W], ``shapes`` [B] class indices -> [B, K, T, H / space, W / space].
    """
    covered = F.avg_pool3d(object_mask(video, threshold), (1, space, space))  # [B, 1, T, 8, 8]
    one_hot = F.one_hot(shapes, classes).to(covered.dtype)[:, :, None, None, None]  # [B, K, 1, 1, 1]
    return covered * one_hot


# ----------------------------------------------------------------------------------------------
# The autoencoder
# ----------------------------------------------------------------------------------------------
class VideoAutoencoder(nn.Module):
    """Video [B, 3, 17, 64, 64] <-> latent [B, C_v, 5, 8, 8], causal in time. Chapter 3."""

    def __init__(self, config: VideoAEConfig | None = None, geometry: Geometry | None = None):
        super().__init__()
        self.config = c = config or VideoAEConfig()
        self.geometry = g = geometry or Geometry()
        if c.patch * 2 != g.video_space_down:
            raise ValueError(f"tubelet patch {c.patch} x 2 (the strided conv) != video_space_down {g.video_space_down}")
        self.time = g.video_time_down
        tubelet = 3 * self.time * c.patch**2  # 192 numbers per tubelet
        if c.refine_hints and not c.refine_width:
            raise ValueError("refine_hints need a sharpening head (refine_width > 0)")
        drawn = (3 + c.refine_hints) * self.time * c.patch**2  # the colours, then the head's hint channels
        w1, w2 = c.widths
        hidden = lambda w, k=1: [m for _ in range(c.hidden_layers) for m in (nn.SiLU(), CausalConv3d(w, w, k))]  # noqa: E731
        self.encoder = nn.Sequential(
            CausalConv3d(tubelet, w1, 1, 1),  # with the fold: a 4 x 4 x 4 causal conv of stride 4
            *hidden(w1),
            CausalConv3d(w1, w2, 1, 3, space_stride=2),  # 16 x 16 -> 8 x 8
            *hidden(w2),
            nn.SiLU(),
            CausalConv3d(w2, c.latent_channels, 1, 1),
        )
        self.decoder = nn.Sequential(
            CausalConv3d(c.latent_channels, w2, c.decoder_time_kernel, 3),  # sees this latent frame and the one before
            *hidden(w2),
            nn.SiLU(),
            nn.Upsample(scale_factor=(1, 2, 2), mode="nearest"),  # 8 x 8 -> 16 x 16
            CausalConv3d(w2, w1, 1, 3),
            *hidden(w1),
            nn.SiLU(),
            CausalConv3d(w1, drawn, 1, 1),  # then unfold each vector into its 4 x 4 x 4 tubelet
        )
        self.refine = Refine(c.refine_width, c.refine_depth, c.refine_hints) if c.refine_width else None
        self.trunk = nn.Sequential(*[LatentBlock(w2, c.decoder_time_kernel) for _ in range(c.decoder_blocks)])
        # before the encoder's last SiLU and read-out (kept apart, so a trained encoder's weights keep their names)
        self.encoder_trunk = nn.Sequential(*[EncoderBlock(w2) for _ in range(c.encoder_blocks)])
        self.shape_head = ShapeHead(c.latent_channels, w2, c.shape_head, time_kernel=c.decoder_time_kernel) if c.shape_head else None
        self.shape_coder = ShapeCoder(c.shape_code, time=self.time) if c.shape_code else None
        self.code_inject = None
        if c.shape_code:  # the code enters the decoder's first features through a convolution that starts at zero
            self.code_inject = CausalConv3d(c.shape_code, w2, 1, 3)
            nn.init.zeros_(self.code_inject.conv.weight)
            nn.init.zeros_(self.code_inject.conv.bias)

    def _check_video(self, video: torch.Tensor) -> None:
        g = self.geometry
        expected = (3, g.frames, g.height, g.width)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected video [B, 3, {g.frames}, {g.height}, {g.width}] in [0, 1], got "
                             f"{list(video.shape)}; a single clip needs a batch axis: video[None]")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 17, 64, 64] in [0, 1] -> latent [B, C_v, 5, 8, 8] (with a shape code: its channels last)."""
        latent = self.encode_appearance(video)
        if self.shape_coder is None:
            return latent
        return torch.cat([latent, self.shape_coder(video)], dim=1)

    def encode_appearance(self, video: torch.Tensor) -> torch.Tensor:
        """The encoder's own latent, without a shape code: [B, latent_channels, 5, 8, 8]."""
        self._check_video(video)
        features = self.encoder[:-2](tubelets(video * 2.0 - 1.0, self.time, self.config.patch))  # [B, w2, 5, 8, 8]
        return self.encoder[-2:](self.encoder_trunk(features))  # the trunk is empty unless encoder_blocks

    def decode_raw(self, latent: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> video, unclamped (what the training loss sees).

        ``frames`` (indices into the 17): sharpen and return only these frames. The head works on
        each frame alone, so the loss on a few random frames per clip estimates the loss on all of
        them (up to the normalisation by those frames' object weights) at a fraction of the cost.
        """
        g, c = self.geometry, self.config
        expected = (c.channels, g.video_latent_frames, *g.video_latent_hw)
        if latent.ndim != 5 or tuple(latent.shape[1:]) != expected:
            raise ValueError(f"expected a video latent [B, {', '.join(map(str, expected))}], got {list(latent.shape)}")
        latent, code = self.split_code(latent)  # the shape code: its own channels, its own way in
        features = self.decoder[0](latent)  # [B, w2, 5, 8, 8]
        if code is not None:
            features = features + self.code_inject(code)
        if self.shape_head is not None:  # the decoder's own reader says the shape in every cell
            features = features + self.shape_head.hint(self.shape_head(latent))
        features = self.trunk(features)  # empty unless decoder_blocks
        drawn = untubelets(self.decoder[1:](features), self.time, c.patch)  # [B, 3 + hints, 17, 64, 64]
        if frames is not None:
            drawn = drawn[:, :, frames]
        video = drawn[:, :3]  # the colours, in about [-1, 1]
        if self.refine is not None:
            video = video + self.refine(drawn)
        return video * 0.5 + 0.5

    def split_code(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A latent -> the encoder's own channels and the shape code's (None without a shape code)."""
        if self.shape_coder is None:
            return latent, None
        return latent[:, :self.config.latent_channels], latent[:, self.config.latent_channels:]

    def shape_logits(self, latent: torch.Tensor) -> torch.Tensor:
        """The decoder's shape head on a latent: logits [B, classes, 5, 8, 8] (the model needs ``shape_head``)."""
        if self.shape_head is None:
            raise ValueError("this video autoencoder has no shape head (VideoAEConfig.shape_head = 0); "
                             "train one with `train autoencoder --shape-head W`")
        return self.shape_head(latent)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, C_v, 5, 8, 8] -> video [B, 3, 17, 64, 64] clamped to [0, 1]."""
        return self.decode_raw(latent).clamp(0.0, 1.0)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Video -> unclamped reconstruction."""
        return self.decode_raw(self.encode(video))


def object_mask(video: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """1 where a pixel differs from its frame's median colour (the object, anti-aliased edge included) [B, 1, T, H, W]."""
    b, c, t, h, w = video.shape
    median = video.reshape(b, c, t, h * w).median(dim=-1).values[..., None, None]  # [B, 3, T, 1, 1]
    return ((video - median).abs().amax(dim=1, keepdim=True) > threshold).float()


def object_weights(video: torch.Tensor, boost: float = 2.0, threshold: float = 0.05, area: float = 0.0) -> torch.Tensor:
    """Per-pixel weights [B, 1, T, H, W]: 1 + ``boost`` where a pixel differs from its frame's median colour.

    The object covers ~1-5 % of a frame; a mild boost keeps its colour and edges in the loss's view.
    ``area`` > 0: the boost is scaled per frame by ``area`` / (the object's pixels, with its edge), so
    that every object weighs as much as one of ``area`` pixels would -- a radius-4 object (~80 pixels)
    as much as a radius-8 one (~300): its one-pixel corners are otherwise a tiny share of the loss.
    """
    differs = F.max_pool3d(object_mask(video, threshold), (1, 3, 3), stride=1, padding=(0, 1, 1))  # and its edges
    if area > 0:
        pixels = differs.sum(dim=(-2, -1), keepdim=True).clamp(min=1.0)  # [B, 1, T, 1, 1]
        return 1.0 + boost * differs * (area / pixels)
    return 1.0 + boost * differs


def object_cells(video: torch.Tensor, threshold: float = 0.05, time: int = 4, space: int = 8) -> torch.Tensor:
    """The share of each latent cell's pixels (its causal time group x ``space`` x ``space``) the object covers: [B, 5, 8, 8]."""
    return F.avg_pool3d(causal_time_pool(object_mask(video, threshold), time), (1, space, space))[:, 0]


class ShapeReadout(nn.Module):
    """A linear read-out of the object's shape from each latent cell alone (chapter 3, "Teaching the latent its shape").

    The logits of a cell are ``scale`` x (unit-length rows) . (the cell's latent / each channel's
    spread) + a bias. The rows have unit length and the latent is measured in its own spread, so
    the read-out cannot grow its way to confidence: for the cross-entropy to fall, the shapes must
    lie apart by a good fraction of the latent's spread, in the same direction in every cell the
    object touches -- a loud code at the coarsest spatial frequency, where colour already lives,
    instead of a quiet pattern at the finest (chapter 7, "Making the shape louder").
    """

    def __init__(self, channels: int, classes: int = 3, scale: float = 4.0):
        super().__init__()
        self.direction = nn.Parameter(0.1 * torch.randn(classes, channels))
        self.bias = nn.Parameter(torch.zeros(classes))
        self.scale = float(scale)

    def forward(self, latent: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, F, H, W] and each channel's spread [C] -> logits [B, classes, F, H, W]."""
        rows = F.normalize(self.direction, dim=1)
        standard = latent / spread.reshape(1, -1, 1, 1, 1)
        return self.scale * torch.einsum("bcfhw,kc->bkfhw", standard, rows) + self.bias.reshape(1, -1, 1, 1, 1)


def shape_alignment_error(logits: torch.Tensor, shapes: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each cell's read-out against the clip's shape, weighed by the object's share of the cell.

    ``logits`` [B, K, F, H, W], ``shapes`` [B] class indices, ``cells`` [B, F, H, W] from :func:`object_cells`.
    """
    target = shapes.reshape(-1, 1, 1, 1).expand_as(cells)
    error = F.cross_entropy(logits, target, reduction="none")  # [B, F, H, W]
    return (error * cells).sum() / cells.sum().clamp(min=1e-6)


def edge_error(reconstruction: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the horizontal and vertical pixel differences (the image gradients).

    A mean squared error forgives a soft edge or a faint ripple: each costs a little on a few
    pixels. On the differences between neighbouring pixels both are plain errors, and an L1 loss
    on them pushes edges to be as sharp as the original's and flat colour to be flat.
    """
    return sum((reconstruction.diff(dim=d) - video.diff(dim=d)).abs().mean() for d in (-1, -2))


def halo_error(reconstruction: torch.Tensor, video: torch.Tensor, width: int = 2, threshold: float = 0.05) -> torch.Tensor:
    """Mean absolute error on the ring of background pixels around the object, per frame, then averaged.

    The ring is the ``width`` pixels just outside every pixel that differs from its frame's median
    colour (the object, anti-aliased edge included). A faint halo there costs little under a squared
    error -- 0.15 of the object's colour is 2% of the error of a wrong pixel -- yet it widens the box
    the probe measures a small object by (chapter 3). An absolute error makes it cost in proportion,
    and averaging per frame gives a small object's ring the same say as a large one's.
    """
    differs = object_mask(video, threshold)
    grown = F.max_pool3d(differs, (1, 2 * width + 1, 2 * width + 1), stride=1, padding=(0, width, width))
    ring = grown - differs
    error = (reconstruction - video).abs().mean(dim=1, keepdim=True)
    per_frame = (error * ring).sum(dim=(-2, -1)) / ring.sum(dim=(-2, -1)).clamp(min=1.0)
    return per_frame.mean()


def reconstruction_loss(reconstruction: torch.Tensor, video: torch.Tensor, boost: float = 2.0,
                        edge: float = 0.0, pixel: str = "mse", area: float = 0.0,
                        halo: float = 0.0) -> dict[str, torch.Tensor]:
    """Object-weighted pixel error, plus ``edge`` x :func:`edge_error` (chapter 3): ``{"loss", "mse", "l1", "edge"}``.

    ``halo`` > 0: plus ``halo`` x :func:`halo_error`, the absolute error on the ring around the object
    (``"halo"`` is then returned too).

    ``pixel="mse"``: the squared error, whose best guess for a pixel the decoder is unsure of is the
    *mean* of what it could be (a half-covered corner drawn half-grey). ``pixel="l1"``: the absolute
    error, whose best guess is the *median* (the corner drawn in the colour it more likely has).
    ``boost`` and ``area``: the object's extra weight, as in :func:`object_weights`.
    """
    if pixel not in ("mse", "l1"):
        raise ValueError(f"unknown pixel loss {pixel!r}; choose 'mse' or 'l1'")
    weights = object_weights(video, boost, area=area)
    error = reconstruction - video
    per_pixel = error.square() if pixel == "mse" else error.abs()
    loss = (weights * per_pixel).sum() / (weights.sum() * video.shape[1])
    edges = edge_error(reconstruction, video)
    if edge:
        loss = loss + edge * edges
    out = {"mse": error.square().mean().detach(), "l1": error.abs().mean().detach(), "edge": edges.detach()}
    if halo:
        ring = halo_error(reconstruction, video)
        loss = loss + halo * ring
        out["halo"] = ring.detach()
    return {"loss": loss, **out}


class FrameCritic(nn.Module):
    """A patch discriminator on single frames (chapter 3): is this ~20-pixel patch real or decoded?

    Four convolutions, two of them strided: a frame [N, 3, 64, 64] in [0, 1] gives a map of logits
    [N, 1, 16, 16], one per overlapping patch, as in pix2pix / VQGAN (a 24 x 24 crop around the object,
    :func:`object_crops`, gives [N, 1, 6, 6]). A patch that holds a corner
    is where a rounded corner gives a decoded frame away, so the decoder learns to draw it sharp:
    a squared error is content with the average of the shapes a pixel might belong to, the critic
    is not, since no real frame shows an average.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.GroupNorm(8, 4 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 3, padding=1),
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, H, W] (or frames [N, 3, H, W]) in [0, 1] -> patch logits [B T, 1, H/4, W/4]."""
        if video.ndim == 5:
            video = video.transpose(1, 2).flatten(0, 1)
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"FrameCritic takes video [B, 3, T, H, W] or frames [N, 3, H, W], got {list(video.shape)}")
        return self.net(video * 2.0 - 1.0)


def object_crops(videos: list[torch.Tensor], reference: torch.Tensor, size: int = 24) -> list[torch.Tensor]:
    """Cut the same ``size`` x ``size`` window around the object out of each frame of every video.

    ``reference`` [B, 3, T, H, W] (the originals) places the windows: centred on the pixels that differ
    from their frame's median colour, kept inside the frame; a frame without an object gives its centre.
    Returns, for each of ``videos`` (same shape as ``reference``), frames [B T, 3, size, size]. Most of a
    frame is plain background, the same in a real frame and a decoded one; the critic is shown the object.
    """
    b, c, t, h, w = reference.shape
    if any(v.shape != reference.shape for v in videos) or size > min(h, w):
        raise ValueError(f"object_crops: videos must match the reference {list(reference.shape)} and size <= {min(h, w)}")
    with torch.no_grad():
        frames = reference.transpose(1, 2).reshape(b * t, c, h, w)
        median = frames.flatten(2).median(dim=-1).values[..., None, None]
        mask = ((frames - median).abs().amax(dim=1) > 0.05).float()  # [B T, H, W]
        mass = mask.sum(dim=(1, 2)).clamp_min(1e-6)
        ys = (mask.sum(dim=2) * torch.arange(h, device=mask.device)).sum(dim=1) / mass
        xs = (mask.sum(dim=1) * torch.arange(w, device=mask.device)).sum(dim=1) / mass
        empty = mask.sum(dim=(1, 2)) == 0
        ys, xs = torch.where(empty, (h - 1) / 2, ys), torch.where(empty, (w - 1) / 2, xs)
        top = (ys - size / 2 + 0.5).round().long().clamp(0, h - size)
        left = (xs - size / 2 + 0.5).round().long().clamp(0, w - size)
    rows = top[:, None] + torch.arange(size, device=top.device)   # [B T, size]
    cols = left[:, None] + torch.arange(size, device=left.device)
    crops = []
    for video in videos:
        f = video.transpose(1, 2).reshape(b * t, c, h, w)
        f = f.gather(2, rows[:, None, :, None].expand(-1, c, -1, w))
        crops.append(f.gather(3, cols[:, None, None, :].expand(-1, c, size, -1)))
    return crops


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: real patches pushed above +1, decoded ones below -1."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def psnr(reconstruction: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per clip [B] (peak 1)."""
    mse = (reconstruction.clamp(0, 1) - video).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


__all__ = ["VideoAEConfig", "TINY_VIDEO_CONFIG", "VideoAutoencoder", "Refine", "CausalConv3d", "causal_time_pad", "tubelets",
           "untubelets", "causal_time_pool", "causal_time_repeat", "cell_means",
           "object_weights", "edge_error", "reconstruction_loss", "FrameCritic", "object_crops", "hinge_critic_loss", "psnr"]
