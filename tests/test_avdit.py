"""Tests for the AVDiT transformer (avdit_mini.avdit)."""

import pytest
import torch

from avdit_mini.avdit import PRESETS, AVDiT, AVDiTConfig, num_parameters, sinusoidal_embedding
from avdit_mini.latents import AUDIO, VIDEO
from avdit_mini.monl import sample_timestep_grid


def make_model(seed: int = 0, **overrides) -> AVDiT:
    torch.manual_seed(seed)
    return AVDiT(AVDiTConfig.preset("tiny", **overrides))


def make_inputs(batch_size: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    video_latent = torch.randn(batch_size, 8, 5, 8, 8, generator=generator)
    audio_latent = torch.randn(batch_size, 8, 34, generator=generator)
    return video_latent, audio_latent, sample_timestep_grid(batch_size, generator=generator)


def randomise_zero_init(model: AVDiT) -> None:
    """Give the adaLN-Zero and output layers small random weights, as after some training."""
    generator = torch.Generator().manual_seed(1)
    zero_layers = [block.modulation[-1] for block in model.blocks]
    zero_layers += [model.final.modulation[-1], model.final.video_head, model.final.audio_head]
    with torch.no_grad():
        for layer in zero_layers:
            for parameter in (layer.weight, layer.bias):
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_presets_and_config_errors():
    assert AVDiTConfig.preset("small").dim == 128 and AVDiTConfig.preset("base").depth == 12
    assert AVDiTConfig.preset("tiny", depth=3).depth == 3
    with pytest.raises(ValueError, match="tiny"):
        AVDiTConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown AVDiTConfig fields"):
        AVDiTConfig.preset("tiny", width=3)
    with pytest.raises(ValueError, match="must divide"):
        AVDiTConfig(audio_patch=4)
    with pytest.raises(ValueError, match="divisible by heads"):
        AVDiTConfig(dim=64, heads=5)
    assert sorted(PRESETS) == ["base", "small", "tiny"]


def test_output_shapes_and_zero_at_init():
    model = make_model()
    eps_video, eps_audio = model(*make_inputs())
    assert eps_video.shape == (2, 8, 5, 8, 8) and eps_audio.shape == (2, 8, 34)
    assert (eps_video == 0).all() and (eps_audio == 0).all()


def test_other_patch_sizes_round_trip():
    model = make_model(video_patch=4, audio_patch=2, video_channels=3, audio_channels=5)
    randomise_zero_init(model)
    video_latent, audio_latent = torch.randn(1, 3, 5, 8, 8), torch.randn(1, 5, 34)
    eps_video, eps_audio = model(video_latent, audio_latent, torch.ones(1, 2, 5, dtype=torch.long))
    assert eps_video.shape == video_latent.shape and eps_audio.shape == audio_latent.shape
    patches = torch.randn(1, 5 * 2 * 2, 3 * 16), torch.randn(1, 17, 10)
    video, audio = model.unpatchify(*patches)
    assert torch.equal(video[0, :, 0, :4, :4].flatten(), patches[0][0, 0])  # token 0 = frame 0, top-left patch
    assert torch.equal(audio[0, :, :2].flatten(), patches[1][0, 0])


def test_token_layout_matches_patchify():
    model = make_model()
    layout = model.token_layout()
    assert layout.modality.shape == (5 * 16 + 34,)
    assert (layout.modality[:80] == VIDEO).all() and (layout.modality[80:] == AUDIO).all()
    assert layout.segment[:80].tolist() == [s for s in range(5) for _ in range(16)]


def test_per_token_conditioning():
    model = make_model()
    layout = model.token_layout()
    timestep_grid = torch.full((1, 2, 5), 500)
    changed = timestep_grid.clone()
    changed[0, AUDIO, 2] = 0  # one clean audio cell
    difference = (model.token_conditioning(changed) - model.token_conditioning(timestep_grid)).abs().amax(-1)[0]
    in_cell = (layout.modality == AUDIO) & (layout.segment == 2)
    assert in_cell.sum() == 8
    assert (difference[in_cell] > 0).all() and (difference[~in_cell] == 0).all()


def test_clean_timestep_is_a_neighbour_of_one():
    features = sinusoidal_embedding(torch.tensor([0, 1, 2]), 256)
    assert torch.isclose((features[0] - features[1]).norm(), (features[1] - features[2]).norm())
    e0, e1, e2, e500 = make_model().timestep_embed(torch.tensor([0, 1, 2, 500]))
    assert (e0 - e1).norm() < 0.5 * (e0 - e500).norm() and (e0 - e1).norm() < (e0 - e2).norm()


def test_same_output_for_same_seed():
    first, second = make_model(seed=3), make_model(seed=3)
    for model in (first, second):
        randomise_zero_init(model)
    inputs = make_inputs()
    for p, q in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(p, q)
    assert all(torch.equal(a, b) for a, b in zip(first(*inputs), second(*inputs)))
    assert not torch.equal(make_model(seed=4).blocks[0].attn.qkv.weight, first.blocks[0].attn.qkv.weight)


def test_every_parameter_gets_a_gradient():
    model = make_model()
    randomise_zero_init(model)
    eps_video, eps_audio = model(*make_inputs())
    loss = eps_video.square().mean() + eps_audio.square().mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_one_sgd_step_from_zero_init_moves_the_output():
    model = make_model()
    video_latent, audio_latent, timestep_grid = make_inputs()
    target_video, target_audio = torch.randn_like(video_latent), torch.randn_like(audio_latent)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    eps_video, eps_audio = model(video_latent, audio_latent, timestep_grid)
    ((eps_video - target_video).square().mean() + (eps_audio - target_audio).square().mean()).backward()
    optimizer.step()
    eps_video, eps_audio = model(video_latent, audio_latent, timestep_grid)
    assert eps_video.abs().sum() > 0 and eps_audio.abs().sum() > 0


def test_bad_shapes():
    model = make_model()
    video_latent, audio_latent, timestep_grid = make_inputs()
    with pytest.raises(ValueError, match=r"video_latent must be \[B, 8, 5, 8, 8\]"):
        model(video_latent[:, :3], audio_latent, timestep_grid)
    with pytest.raises(ValueError, match=r"audio_latent must be \[B, 8, 34\]"):
        model(video_latent, audio_latent[..., :32], timestep_grid)
    with pytest.raises(ValueError, match=r"timestep_grid must be \[B, 2, 5\]"):
        model(video_latent, audio_latent, timestep_grid[:, :, :4])
    with pytest.raises(ValueError, match="batch size"):
        model(video_latent, audio_latent[:1], timestep_grid)
    with pytest.raises(ValueError, match=r"\[B, 2, 5\]"):
        model.token_conditioning(timestep_grid[0])


def test_attention_maps():
    model = make_model()
    inputs = make_inputs()
    for block in range(2):
        attention = model.attention_maps(*inputs, block=block)
        assert attention.shape == (2, 4, 114, 114)
        assert torch.allclose(attention.sum(-1), torch.ones(2, 4, 114), atol=1e-5)
    with pytest.raises(ValueError, match="block must be in 0..1"):
        model.attention_maps(*inputs, block=2)


def test_num_parameters():
    model = make_model()
    assert num_parameters(model) == sum(p.numel() for p in model.parameters())
    model.video_embed.requires_grad_(False)
    assert num_parameters(model) < num_parameters(model, trainable_only=False)


def test_self_conditioning_starts_as_the_plain_network_and_reads_its_estimate():
    """AVDiTConfig.self_condition adds two zero-initialised, bias-free layers: loaded with a plain network's
    weights it answers as that network whatever the estimate; zeros and no estimate are the same; once the
    layers are trained the estimate changes the answer; a plain network refuses one."""
    torch.manual_seed(0)
    plain = AVDiT(AVDiTConfig.preset("tiny")).eval()
    with torch.no_grad():  # leave adaLN-Zero's zero init so the network does something
        for p in plain.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    reading = AVDiT(AVDiTConfig.preset("tiny", self_condition=True)).eval()
    missing = reading.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["audio_self_embed.weight", "video_self_embed.weight"]
    assert reading.video_self_embed.bias is None and reading.video_self_embed.weight.abs().sum() == 0
    g = torch.Generator().manual_seed(1)
    video, audio = torch.randn(2, 8, 5, 8, 8, generator=g), torch.randn(2, 8, 34, generator=g)
    grid = torch.randint(1, 1000, (2, 2, 5), generator=g)
    estimate = (torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g))
    with torch.no_grad():
        for answer, plain_answer in zip(reading(video, audio, grid, estimate), plain(video, audio, grid)):
            assert torch.equal(answer, plain_answer)
        reading.video_self_embed.weight.normal_(0, 0.1)
        reading.audio_self_embed.weight.normal_(0, 0.1)
        read = reading(video, audio, grid, estimate)
        assert not torch.allclose(read[0], plain(video, audio, grid)[0], atol=1e-4)
        assert not torch.allclose(read[1], plain(video, audio, grid)[1], atol=1e-4)
        zeros = (torch.zeros_like(video), torch.zeros_like(audio))
        assert torch.equal(reading(video, audio, grid, zeros)[0], reading(video, audio, grid)[0])
    with pytest.raises(ValueError, match="self_condition"):
        plain(video, audio, grid, estimate)
    with pytest.raises(ValueError, match="shaped like the inputs"):
        reading(video, audio, grid, (estimate[0][:, :4], estimate[1]))
    assert "self_condition" not in AVDiTConfig.preset("tiny").to_dict()  # configs stored before it still match
    assert reading.config.to_dict()["self_condition"] is True
