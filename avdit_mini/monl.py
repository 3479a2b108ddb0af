"""Timestep grids and the Mixture of Noise Levels (chapter 5).

A timestep grid t [B, M, N] gives every (modality, time-segment) cell of every example its own
noise level (paper Fig. 2b). Training draws t in {1..T}; t = 0 is reserved for clean condition
cells at inference -- unless ``clean_probability`` > 0, which also draws t = 0 (a clean cell, left
out of the loss), so that training sees the clean conditions that inference gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

STRATEGIES = ("vanilla", "per_modality", "per_time", "per_time_modality")


def _uniform_steps(shape: tuple[int, ...], T: int, generator: torch.Generator | None) -> Tensor:
    """Integer steps drawn uniformly from {1..T}, LongTensor of the given shape (Chapter 5)."""
    return torch.randint(1, T + 1, shape, generator=generator)


def _strategy_grid(strategy: str, batch_size: int, M: int, N: int, T: int, generator: torch.Generator | None,
                   clean_probability: float = 0.0) -> Tensor:
    """One grid [B, M, N] whose structure follows a single strategy (Chapter 5).

    With ``clean_probability`` p > 0 each value the strategy draws is 0 (clean) with probability p:
    a clean row is audio -> video or video -> audio, clean columns are continuation or
    interpolation. ``vanilla`` stays as it is (a clean grid would leave nothing to learn), and an
    example whose every cell came out clean keeps its drawn steps.
    """
    shapes = {
        "vanilla": (batch_size, 1, 1),  # one t for the whole grid
        "per_modality": (batch_size, M, 1),  # one t per row (UniDiffuser)
        "per_time": (batch_size, 1, N),  # one t per column (Diffusion-Forcing-like)
        "per_time_modality": (batch_size, M, N),  # every cell independent
    }
    steps = _uniform_steps(shapes[strategy], T, generator)
    if clean_probability > 0 and strategy != "vanilla":  # p = 0 draws nothing more: the same grids as ever
        clean = torch.rand(shapes[strategy], generator=generator) < clean_probability
        everything_clean = clean.flatten(1).all(dim=1).reshape(-1, 1, 1)
        steps = torch.where(clean & ~everything_clean, 0, steps)
    return steps.expand(batch_size, M, N).contiguous()  # [B, M, N]


def strategy_weights(weights: Mapping[str, float] | Sequence[float] | None = None) -> Tensor:
    """The MoNL mixture as probabilities over STRATEGIES, FloatTensor [4] (Chapter 5)."""
    if weights is None:
        values = [1.0] * len(STRATEGIES)
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown strategies {unknown} in weights; valid names are {STRATEGIES}")
        values = [float(weights.get(name, 0.0)) for name in STRATEGIES]
    else:
        values = [float(w) for w in weights]
        if len(values) != len(STRATEGIES):
            raise ValueError(f"weights needs one value per strategy {STRATEGIES}, got {len(values)} values")
    probabilities = torch.tensor(values, dtype=torch.float64)
    if not torch.isfinite(probabilities).all() or (probabilities < 0).any() or probabilities.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {dict(zip(STRATEGIES, values))}")
    return (probabilities / probabilities.sum()).float()


def _check_sizes(batch_size: int, num_modalities: int, num_segments: int, T: int) -> None:
    """Raise a readable error for a non-positive size (Chapter 5)."""
    sizes = {"batch_size": batch_size, "num_modalities": num_modalities, "num_segments": num_segments, "T": T}
    bad = {name: value for name, value in sizes.items() if value < 1}
    if bad:
        raise ValueError(f"{bad} must be positive integers")


def sample_timestep_grid(
    batch_size: int,
    strategy: str = "monl",
    num_modalities: int = 2,
    num_segments: int = 5,
    T: int = 1000,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    return_strategy: bool = False,
    device: torch.device | str | None = None,
    clean_probability: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Training timestep grids [B, M, N] with steps in {1..T} under a strategy or MoNL (Chapter 5).

    ``strategy="monl"`` lets each example pick one of STRATEGIES with probability given by
    ``weights`` (uniform by default). With ``return_strategy=True`` also returns the index into
    STRATEGIES that each example used, LongTensor [B]. ``clean_probability`` > 0 also draws clean
    cells (t = 0), as a task's conditions are at inference (see ``_strategy_grid``).
    """
    _check_sizes(batch_size, num_modalities, num_segments, T)
    if not 0.0 <= clean_probability < 1.0:
        raise ValueError(f"clean_probability must be in [0, 1), got {clean_probability}")
    if strategy != "monl" and strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose 'monl' or one of {STRATEGIES}")
    if strategy != "monl" and weights is not None:
        raise ValueError(f"weights only apply to strategy='monl', not to {strategy!r}; drop weights=")
    size = (batch_size, num_modalities, num_segments, T, generator, clean_probability)
    if strategy == "monl":
        chosen = torch.multinomial(strategy_weights(weights), batch_size, replacement=True, generator=generator)  # [B]
        candidates = torch.stack([_strategy_grid(name, *size) for name in STRATEGIES])  # [S, B, M, N]
        timestep_grid = candidates[chosen, torch.arange(batch_size)]  # [B, M, N]
    else:
        chosen = torch.full((batch_size,), STRATEGIES.index(strategy))  # [B]
        timestep_grid = _strategy_grid(strategy, *size)  # [B, M, N]
    timestep_grid = timestep_grid.to(device)
    return (timestep_grid, chosen.to(device)) if return_strategy else timestep_grid


def conditional_grid(
    batch_size: int,
    condition_mask: Tensor,
    T: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Grids [B, M, N] for a task-specific baseline: condition cells at 0, one shared t elsewhere (Chapter 5)."""
    if condition_mask.dtype != torch.bool or condition_mask.dim() != 2:
        raise ValueError(
            f"condition_mask must be a bool tensor [M, N] (True = clean condition cell), got "
            f"{condition_mask.dtype} of shape {list(condition_mask.shape)}"
        )
    if condition_mask.all():
        raise ValueError("condition_mask marks every cell as a condition; leave at least one cell to generate")
    num_modalities, num_segments = condition_mask.shape
    _check_sizes(batch_size, num_modalities, num_segments, T)
    shared_t = _uniform_steps((batch_size, 1, 1), T, generator)  # [B, 1, 1]
    timestep_grid = torch.where(condition_mask.cpu(), 0, shared_t)  # [B, M, N]
    return timestep_grid.to(device)
