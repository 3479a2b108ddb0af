"""Tests for the time-segment layout of the latents (avdit_mini.latents)."""

import pytest
import torch

from avdit_mini.config import Geometry
from avdit_mini.latents import (
    AUDIO,
    MODALITIES,
    VIDEO,
    audio_latent_frame_times,
    audio_segment_of_latent_frame,
    expand_grid,
    grid_from_frames,
    segment_bounds,
    token_layout,
    video_latent_frame_times,
    video_segment_of_latent_frame,
)


def test_modalities_are_rows():
    assert MODALITIES[VIDEO] == "video" and MODALITIES[AUDIO] == "audio"


def test_segments_of_latent_frames():
    assert video_segment_of_latent_frame().tolist() == [0, 1, 2, 3, 4]
    audio = audio_segment_of_latent_frame()
    assert audio.dtype == torch.long and audio.shape == (34,)
    assert audio.tolist() == [0, 0] + [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8


def test_frame_times_are_centres_in_seconds():
    assert torch.allclose(video_latent_frame_times(), torch.tensor([0.0625, 0.375, 0.875, 1.375, 1.875]))
    audio = audio_latent_frame_times()
    assert audio.shape == (34,)
    assert torch.allclose(audio, (torch.arange(34) + 0.5) * 0.0625)


def test_segment_bounds_tile_the_clip():
    bounds = segment_bounds()
    assert torch.allclose(bounds[:, 0], torch.tensor([0.0, 0.125, 0.625, 1.125, 1.625]))
    assert torch.equal(bounds[1:, 0], bounds[:-1, 1]) and bounds[-1, 1] == Geometry().duration


def test_every_frame_centre_lies_in_its_segment():
    bounds = segment_bounds()
    for times, segments in [
        (video_latent_frame_times(), video_segment_of_latent_frame()),
        (audio_latent_frame_times(), audio_segment_of_latent_frame()),
    ]:
        assert ((bounds[segments, 0] <= times) & (times < bounds[segments, 1])).all()


def test_expand_grid_and_back():
    timestep_grid = torch.arange(2 * 2 * 5).view(2, 2, 5)  # [B, M, N], all cells distinct
    t_video, t_audio = expand_grid(timestep_grid)
    assert t_video.shape == (2, 5) and t_audio.shape == (2, 34)
    assert torch.equal(t_video, timestep_grid[:, VIDEO])
    assert t_audio[0, :2].tolist() == [5, 5] and t_audio[0, 2:10].unique().tolist() == [6]
    assert torch.equal(grid_from_frames(t_video, t_audio), timestep_grid)


def test_grid_from_frames_rejects_mixed_segment():
    t_video, t_audio = expand_grid(torch.zeros(1, 2, 5, dtype=torch.long))
    t_audio[0, 3] = 7  # one audio frame of segment 1 disagrees with its neighbours
    with pytest.raises(ValueError, match="share one t"):
        grid_from_frames(t_video, t_audio)


@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 5), (2, 2, 4)])
def test_expand_grid_rejects_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"\[B, 2, 5\]"):
        expand_grid(torch.zeros(shape, dtype=torch.long))


def test_grid_from_frames_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[B, 34\]"):
        grid_from_frames(torch.zeros(1, 5), torch.zeros(1, 33))


def test_token_layout():
    layout = token_layout(Geometry(), video_patch=2, audio_patch=2)
    video = layout.modality == VIDEO
    assert video.sum() == 5 * 4 * 4 and (~video).sum() == 17
    assert layout.segment[~video].tolist() == [0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert torch.allclose(layout.seconds[~video][:2], torch.tensor([0.0625, 0.1875]))


@pytest.mark.parametrize("video_patch, audio_patch", [(3, 1), (2, 4)])
def test_token_layout_rejects_patches_that_straddle(video_patch, audio_patch):
    with pytest.raises(ValueError, match="must divide"):
        token_layout(Geometry(), video_patch, audio_patch)


def test_geometry_whose_audio_straddles_segments_is_rejected():
    geometry = Geometry(hop_length=500, audio_time_down=3)  # 93.75 ms audio latents
    with pytest.raises(ValueError, match="straddles"):
        audio_segment_of_latent_frame(geometry)


def test_the_high_frequency_gain_keeps_the_mean_multiplies_the_finest_pattern_and_is_undone():
    from avdit_mini.latents import LatentScaler

    scaler = LatentScaler()
    g = torch.Generator().manual_seed(0)
    video, audio = 2 + 3 * torch.randn(4, 8, 5, 8, 8, generator=g), torch.randn(4, 8, 34, generator=g)
    scaler.fit(video, audio)
    plain_video, plain_audio = scaler.scale(video, audio)
    assert torch.equal(scaler.emphasised(plain_video), plain_video)  # off by default: exactly the per-channel scaling
    scaler.emphasise(3)
    loud_video, loud_audio = scaler.scale(video, audio)
    assert torch.equal(loud_audio, plain_audio)  # only the video latent
    assert torch.allclose(loud_video.mean((-2, -1)), plain_video.mean((-2, -1)), atol=1e-5)  # each frame's mean kept
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1  # the finest pattern: x 3
    assert torch.allclose(scaler.emphasised(checker.expand(1, 8, 5, 8, 8)), 3 * checker, atol=1e-5)
    stripes = torch.cos(torch.pi / 2 * torch.arange(8.0))[None, :].expand(8, 8)  # a quarter cycle per cell: x 1.5
    assert torch.allclose(scaler.emphasised(stripes.expand(1, 8, 5, 8, 8)), 1.5 * stripes, atol=1e-5)
    back_video, back_audio = scaler.unscale(loud_video, loud_audio)
    assert torch.allclose(back_video, video, atol=1e-4) and torch.allclose(back_audio, audio, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        scaler.emphasise(0)
