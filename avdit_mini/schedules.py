"""Noise schedules: alpha_bar, SNR and the forward process q(x_t | x_0) (chapter 4).

Discrete time t in {0, 1, ..., T}; t = 0 is the clean latent, t = T is (almost) pure noise.
Every tensor here has T + 1 entries so it can be indexed by t directly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULE_KINDS = ("cosine", "linear", "sigmoid")
ALPHA_BAR_MIN = 1e-5  # alpha_bar[T] for curves that reach 0, so that log SNR stays finite


def _cosine_curve(u: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: f(u) / f(0), f(u) = cos^2(pi/2 (u + s) / (1 + s)) (Chapter 4)."""
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def _sigmoid_curve(u: Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Chen (2023) Alg. 1 / Jabri et al. (2023): a sigmoid ramp from 1 down to 0 (Chapter 4)."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=u.dtype))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=u.dtype))
    return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)


def _linear_alpha_bar(T: int) -> Tensor:
    """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02, rescaled by 1000 / T (Chapter 4)."""
    scale = 1000 / T
    betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)  # [T], for t = 1..T
    betas = betas.clamp(max=0.999)  # a short schedule (T < 20) would otherwise ask for beta >= 1
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)])  # [T+1]


def make_alpha_bar(kind: str = "cosine", T: int = 1000) -> Tensor:
    """alpha_bar[t] for t = 0..T: exactly 1 at t = 0, strictly decreasing, > 0 at T (Chapter 4)."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}")
    if T < 1:
        raise ValueError(f"T must be a positive number of diffusion steps, got {T}")
    if kind == "linear":
        return _linear_alpha_bar(T).float()
    u = torch.arange(T + 1, dtype=torch.float64) / T  # [T+1], time in [0, 1]
    curve = _cosine_curve(u) if kind == "cosine" else _sigmoid_curve(u)
    # Both curves reach 0 at u = 1 (log SNR = -inf); lift them so that alpha_bar[T] = ALPHA_BAR_MIN.
    return (ALPHA_BAR_MIN + (1 - ALPHA_BAR_MIN) * curve).float()


def broadcast_t(values: Tensor, x: Tensor, time_dim: int | None = None) -> Tensor:
    """Reshape per-example [B] or per-frame [B, F] values so they broadcast against x (Chapter 4).

    With ``time_dim=None`` trailing singleton dims are added (values [B] or [B, L] against
    x [B, L, D]). With ``time_dim`` set, values [B, F] are placed on that axis of x, e.g. t [B, 5]
    against a video latent [B, C, 5, h, w] with ``time_dim=2``.
    """
    if time_dim is None:
        if values.dim() > x.dim() or any(v not in (1, s) for v, s in zip(values.shape, x.shape)):
            raise ValueError(
                f"t of shape {list(values.shape)} does not match the leading dims of x "
                f"{list(x.shape)}; pass time_dim= to place a per-frame t [B, F] on x's frame axis"
            )
        return values.reshape(*values.shape, *([1] * (x.dim() - values.dim())))
    time_dim = time_dim % x.dim()
    if values.dim() != 2 or values.shape[0] != x.shape[0] or values.shape[1] != x.shape[time_dim]:
        raise ValueError(
            f"with time_dim={time_dim}, t must be [B, F] = [{x.shape[0]}, {x.shape[time_dim]}] "
            f"for x of shape {list(x.shape)}, got {list(values.shape)}"
        )
    shape = [values.shape[0]] + [1] * (x.dim() - 1)
    shape[time_dim] = values.shape[1]
    return values.reshape(shape)  # [B, 1, .., F, .., 1]


class NoiseSchedule:
    """A discrete noise schedule with T steps and the forward process it defines (Chapter 4)."""

    def __init__(self, kind: str = "cosine", T: int = 1000) -> None:
        self.kind = kind
        self.T = T
        self.alpha_bar = make_alpha_bar(kind, T)  # [T+1], alpha_bar[0] = 1
        self.alphas = torch.cat([torch.ones(1), self.alpha_bar[1:] / self.alpha_bar[:-1]])  # [T+1]
        self.betas = 1 - self.alphas  # [T+1], betas[0] = 0: step 0 adds no noise

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, T={self.T})"

    def _at(self, values: Tensor, t: Tensor) -> Tensor:
        """values[t] on t's device, for integer t of any shape (Chapter 4)."""
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"t must be an integer (Long) tensor of steps in 0..{self.T}, got {t.dtype}")
        return values.to(t.device)[t]

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar); inf at t = 0 (Chapter 4)."""
        alpha_bar = self._at(self.alpha_bar, t)
        return alpha_bar / (1 - alpha_bar)

    def log_snr(self, t: Tensor) -> Tensor:
        """log SNR = log alpha_bar - log(1 - alpha_bar); +inf at t = 0 (Chapter 4)."""
        alpha_bar = self._at(self.alpha_bar, t)
        return torch.log(alpha_bar) - torch.log1p(-alpha_bar)

    def _coefficients(self, t: Tensor, x: Tensor, time_dim: int | None) -> tuple[Tensor, Tensor]:
        """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), shaped to broadcast against x (Chapter 4)."""
        alpha_bar = broadcast_t(self._at(self.alpha_bar, t), x, time_dim).to(x.dtype)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None, time_dim: int | None = None) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (DDPM eq. 4) (Chapter 4)."""
        noise = torch.randn_like(x0) if noise is None else noise
        signal, sigma = self._coefficients(t, x0, time_dim)
        return signal * x0 + sigma * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor, time_dim: int | None = None) -> Tensor:
        """Invert q_sample for x0 given the noise: (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (Chapter 4)."""
        signal, sigma = self._coefficients(t, x_t, time_dim)
        return (x_t - sigma * eps) / signal
