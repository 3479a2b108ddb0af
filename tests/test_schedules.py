"""Tests for noise schedules and the forward process (avdit_mini.schedules)."""

import pytest
import torch

from avdit_mini.schedules import SCHEDULE_KINDS, NoiseSchedule, broadcast_t


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_alpha_bar_shape_ends_and_monotone(kind):
    schedule = NoiseSchedule(kind, T=1000)
    alpha_bar = schedule.alpha_bar
    assert alpha_bar.shape == (1001,)
    assert alpha_bar[0] == 1.0
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert 0 < alpha_bar[-1] < 1e-3
    assert torch.allclose(torch.cumprod(schedule.alphas, 0), alpha_bar, rtol=1e-4)
    assert schedule.betas[0] == 0 and ((schedule.betas[1:] > 0) & (schedule.betas[1:] < 1)).all()


@pytest.mark.parametrize("T", [10, 50])
@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_short_schedules_are_valid(kind, T):
    alpha_bar = NoiseSchedule(kind, T=T).alpha_bar
    assert alpha_bar[0] == 1 and (alpha_bar[1:] < alpha_bar[:-1]).all() and alpha_bar[-1] > 0


def test_linear_is_ddpm():
    betas = NoiseSchedule("linear").betas
    assert torch.allclose(betas[[1, -1]], torch.tensor([1e-4, 0.02]), atol=1e-6)


def test_unknown_kind():
    with pytest.raises(ValueError, match="cosine"):
        NoiseSchedule("quadratic")


def test_snr():
    schedule = NoiseSchedule("cosine")
    t = torch.tensor([0, 1, 500, 1000])
    snr = schedule.snr(t)
    assert snr[0] == float("inf") and (snr[1:].diff() < 0).all()
    assert torch.allclose(schedule.log_snr(t[1:]), snr[1:].log(), rtol=1e-4)
    assert torch.isfinite(schedule.log_snr(t[1:])).all()


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_q_sample_marginal(kind):
    schedule = NoiseSchedule(kind)
    torch.manual_seed(0)
    t = torch.tensor([1, 250, 500, 999])
    x0 = torch.tensor([2.0, -1.0, 0.5, 3.0])[:, None].expand(4, 40_000)  # [B, samples]
    x_t = schedule.q_sample(x0, t)
    alpha_bar = schedule.alpha_bar[t]
    assert torch.allclose(x_t.mean(1), alpha_bar.sqrt() * x0[:, 0], atol=0.02)
    assert torch.allclose(x_t.var(1), 1 - alpha_bar, atol=0.02)


def test_q_sample_at_zero_is_clean_and_predict_x0_inverts():
    schedule = NoiseSchedule()
    x0, noise = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    assert torch.equal(schedule.q_sample(x0, torch.zeros(3, dtype=torch.long), noise), x0)
    t = torch.tensor([1, 300, 900])
    x_t = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.predict_x0(x_t, t, noise), x0, atol=1e-4)


def test_per_frame_t():
    schedule = NoiseSchedule()
    x0, noise = torch.randn(2, 3, 5, 4, 4), torch.randn(2, 3, 5, 4, 4)  # [B, C, F, H, W]
    t = torch.tensor([[0, 10, 20, 30, 40], [500, 0, 0, 0, 1000]])  # [B, F]
    x_t = schedule.q_sample(x0, t, noise, time_dim=2)
    for b in range(2):
        for f in range(5):
            expected = schedule.q_sample(x0[b : b + 1, :, f], t[b, f : f + 1], noise[b : b + 1, :, f])
            assert torch.allclose(x_t[b : b + 1, :, f], expected)
    assert torch.equal(x_t[0, :, 0], x0[0, :, 0])
    assert torch.allclose(schedule.predict_x0(x_t, t, noise, time_dim=2), x0, atol=1e-3)


def test_per_token_t_without_time_dim():
    schedule = NoiseSchedule()
    x0 = torch.randn(2, 7, 16)  # [B, L, D]
    t = torch.randint(0, 1001, (2, 7))  # [B, L]
    noise = torch.randn_like(x0)
    alpha_bar = schedule.alpha_bar[t][..., None]
    assert torch.allclose(schedule.q_sample(x0, t, noise), alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)


def test_broadcast_t_errors():
    x = torch.zeros(2, 3, 5, 4, 4)
    assert broadcast_t(torch.zeros(2, 5), x, time_dim=2).shape == (2, 1, 5, 1, 1)
    with pytest.raises(ValueError, match="time_dim"):
        broadcast_t(torch.zeros(2, 5), x)
    with pytest.raises(ValueError, match=r"\[B, F\] = \[2, 5\]"):
        broadcast_t(torch.zeros(2, 4), x, time_dim=2)
    with pytest.raises(ValueError, match="integer"):
        NoiseSchedule().q_sample(x, torch.zeros(2))
