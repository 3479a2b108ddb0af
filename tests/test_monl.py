"""Tests for timestep-grid strategies and the MoNL mixture (avdit_mini.monl)."""

import pytest
import torch

from avdit_mini.monl import STRATEGIES, conditional_grid, sample_timestep_grid, strategy_weights


def grid(strategy, batch_size=64, **kwargs):
    return sample_timestep_grid(batch_size, strategy, generator=torch.Generator().manual_seed(0), **kwargs)


def test_shape_dtype_and_range():
    for strategy in (*STRATEGIES, "monl"):
        timestep_grid = grid(strategy, T=50)
        assert timestep_grid.shape == (64, 2, 5) and timestep_grid.dtype == torch.long
        assert timestep_grid.min() >= 1 and timestep_grid.max() <= 50


def test_vanilla_one_value():
    timestep_grid = grid("vanilla")
    assert (timestep_grid == timestep_grid[:, :1, :1]).all()
    assert timestep_grid[:, 0, 0].unique().numel() > 1  # examples differ


def test_per_modality_rows_constant():
    timestep_grid = grid("per_modality")
    assert (timestep_grid == timestep_grid[:, :, :1]).all()
    assert (timestep_grid[:, 0, 0] != timestep_grid[:, 1, 0]).any()


def test_per_time_columns_constant():
    timestep_grid = grid("per_time")
    assert (timestep_grid == timestep_grid[:, :1, :]).all()
    assert (timestep_grid[:, 0, :] != timestep_grid[:, 0, :1]).any()


def test_per_time_modality_cells_independent():
    timestep_grid = grid("per_time_modality", num_modalities=3, num_segments=7)
    assert timestep_grid.shape == (64, 3, 7)
    distinct = torch.tensor([g.unique().numel() for g in timestep_grid])
    assert distinct.float().mean() > 19  # 21 cells drawn from 1000 values: nearly all distinct


def test_uniform_distribution():
    values = grid("per_time_modality", batch_size=2000, T=10).flatten()
    counts = torch.bincount(values, minlength=11)[1:].float()
    assert torch.bincount(values, minlength=11)[0] == 0
    assert (counts / counts.sum() - 0.1).abs().max() < 0.01


def test_monl_frequencies_match_weights():
    weights = {"vanilla": 1, "per_modality": 2, "per_time": 3, "per_time_modality": 4}
    timestep_grid, chosen = grid("monl", batch_size=20_000, weights=weights, return_strategy=True)
    frequencies = torch.bincount(chosen, minlength=4).float() / 20_000
    assert torch.allclose(frequencies, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015)
    vanilla = timestep_grid[chosen == 0]
    assert (vanilla == vanilla[:, :1, :1]).all()
    per_time = timestep_grid[chosen == 2]
    assert (per_time == per_time[:, :1, :]).all()


def test_monl_default_uniform_and_reproducible():
    first, chosen = grid("monl", batch_size=8000, return_strategy=True)
    frequencies = torch.bincount(chosen, minlength=4).float() / 8000
    assert (frequencies - 0.25).abs().max() < 0.02
    assert torch.equal(first, grid("monl", batch_size=8000))


def test_single_strategy_reports_its_index():
    _, chosen = grid("per_time", batch_size=4, return_strategy=True)
    assert chosen.tolist() == [STRATEGIES.index("per_time")] * 4


def test_weights_by_sequence_and_zero_weight():
    _, chosen = grid("monl", batch_size=500, weights=[0, 1, 0, 1], return_strategy=True)
    assert set(chosen.tolist()) == {1, 3}
    assert torch.allclose(strategy_weights({"per_time": 2}), torch.tensor([0.0, 0.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"vanila": 1}, "unknown strategies"),
        ([1, 1, 1], "one value per strategy"),
        ([1, -1, 1, 1], "non-negative"),
        ([0, 0, 0, 0], "not all zero"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        sample_timestep_grid(4, "monl", weights=weights)


def test_bad_strategy_and_sizes():
    with pytest.raises(ValueError, match="per_time_modality"):
        sample_timestep_grid(4, "per_cell")
    with pytest.raises(ValueError, match="only apply"):
        sample_timestep_grid(4, "vanilla", weights=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="batch_size"):
        sample_timestep_grid(0)


def test_conditional_grid():
    condition_mask = torch.zeros(2, 5, dtype=torch.bool)
    condition_mask[1] = True  # audio -> video
    timestep_grid = conditional_grid(300, condition_mask, T=20, generator=torch.Generator().manual_seed(0))
    assert timestep_grid.shape == (300, 2, 5)
    assert (timestep_grid[:, 1] == 0).all()
    video = timestep_grid[:, 0]
    assert (video == video[:, :1]).all() and video.min() >= 1 and video.max() <= 20
    assert video[:, 0].unique().numel() == 20


def test_conditional_grid_errors():
    with pytest.raises(ValueError, match="bool tensor"):
        conditional_grid(2, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least one cell"):
        conditional_grid(2, torch.ones(2, 5, dtype=torch.bool))


def test_clean_probability_zero_draws_the_same_grids():
    """p = 0 draws no extra random numbers: runs made before the option keep their grids."""
    for strategy in (*STRATEGIES, "monl"):
        assert torch.equal(grid(strategy), grid(strategy, clean_probability=0.0))


def test_clean_cells_keep_each_strategy_structure():
    timestep_grid, chosen = grid("monl", batch_size=4000, clean_probability=0.25, return_strategy=True)
    clean = timestep_grid == 0
    assert not clean.flatten(1).all(dim=1).any()  # every example keeps something to learn
    assert not clean[chosen == STRATEGIES.index("vanilla")].any()  # a clean vanilla grid would be empty
    per_modality = timestep_grid[chosen == STRATEGIES.index("per_modality")]
    assert (per_modality == per_modality[:, :, :1]).all()  # still one t per row: a clean row is a2v / v2a
    assert (per_modality[:, :, 0] == 0).any(dim=1).float().mean().item() == pytest.approx(0.375, abs=0.05)
    per_time = timestep_grid[chosen == STRATEGIES.index("per_time")]
    assert (per_time == per_time[:, :1, :]).all()  # one t per column: clean columns are continuation
    cells = timestep_grid[chosen == STRATEGIES.index("per_time_modality")]
    assert (cells == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert timestep_grid[~clean].min() >= 1


def test_clean_probability_out_of_range():
    with pytest.raises(ValueError, match="clean_probability"):
        grid("monl", clean_probability=1.0)
