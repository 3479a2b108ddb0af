"""The latent reader and the perceptual loss it gives (avdit_mini.perceptual)."""

import json

import pytest
import torch

from avdit_mini.diffusion import GridDiffusion
from avdit_mini.monl import sample_timestep_grid
from avdit_mini.perceptual import LatentReader, fit_reader, load_reader, perceptual_error, reader_accuracy, save_reader

from test_diffusion import clean_latents, random_model
from test_train_avdit import train, workspace  # noqa: F401  (the fixture)


def toy_latents(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Latents whose 'shape' is a sign pattern at one position and whose 'colour' is a channel offset."""
    g = torch.Generator().manual_seed(seed)
    video = 0.3 * torch.randn(n, 8, 5, 8, 8, generator=g)
    shape, colour = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        y, x = torch.randint(1, 7, (2,), generator=g).tolist()
        video[i, shape[i], :, y, x] += 3.0
        video[i, 3 + colour[i]] += 1.0
    return video, {"shape": shape, "colour": colour}


def test_a_reader_learns_the_factors_and_round_trips(tmp_path):
    video, labels = toy_latents()
    reader = fit_reader(video, labels, steps=150)
    assert reader_accuracy(reader, video, labels) == {"shape": 1.0, "colour": 1.0}
    assert not any(p.requires_grad for p in reader.parameters())            # frozen
    features = reader.features(video[:4])
    assert features.shape == (4, 64, 5, 8, 8)
    spread = reader.features(video).transpose(0, 1).flatten(1).std(dim=1)
    assert torch.allclose(spread, torch.ones(64), atol=1e-3)                  # unit spread on what it was fitted to
    save_reader(reader, tmp_path / "reader", {"val_accuracy": {"shape": 1.0}})
    again = load_reader(tmp_path / "reader")
    assert torch.equal(again.features(video[:4]), features)
    assert json.loads((tmp_path / "reader.json").read_text())["config"]["classes"] == {"shape": 3, "colour": 2}


def test_reader_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="video latent"):
        LatentReader().features(torch.zeros(2, 8, 8, 8))
    with pytest.raises(FileNotFoundError, match="train_latent_reader"):
        load_reader(tmp_path / "missing")


def test_perceptual_error_is_zero_for_the_truth_and_weighed_by_alpha_bar():
    video, labels = toy_latents(16)
    reader = fit_reader(video, labels, steps=20)
    alpha_bar = torch.rand(16, 5)
    assert torch.equal(perceptual_error(reader, video, video, alpha_bar), torch.zeros(16, 5))
    blurred = video.mean(dim=(3, 4), keepdim=True).expand_as(video)
    error = perceptual_error(reader, blurred, video, alpha_bar)
    assert (error > 0).all()
    assert torch.allclose(perceptual_error(reader, blurred, video, 2 * alpha_bar), 2 * error)


def test_the_perceptual_loss_adds_to_the_video_loss_and_its_gradient_reaches_the_model():
    diffusion, model, clean = GridDiffusion(), random_model(), clean_latents()
    video, labels = toy_latents(16)
    reader = fit_reader(video, labels, steps=20)
    grid = sample_timestep_grid(2, "monl", generator=torch.Generator().manual_seed(3))
    loss = lambda **kw: diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    plain, with_reader = loss(), loss(reader=reader, perceptual_weight=5.0)
    assert torch.equal(plain[0], loss(reader=reader, perceptual_weight=0.0)[0])   # weight 0: the plain loss, bit for bit
    assert with_reader[0] > plain[0]
    assert torch.equal(plain[1].nan_to_num(), with_reader[1].nan_to_num())      # the per-cell log stays the MSE's
    model.zero_grad()
    (with_reader[0] - plain[0]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_perceptual_weight_trains_and_is_recorded(workspace, tmp_path):  # noqa: F811
    folder, latents = workspace
    video, labels = toy_latents(16)
    save_reader(fit_reader(video, labels, steps=10), tmp_path / "reader")
    log = train(folder, latents, folder / "avdit_perceptual", "--steps", "2", "--perceptual-weight", "3",
                "--perceptual-reader", str(tmp_path / "reader"))["loss_log"]
    plain = train(folder, latents, folder / "avdit_plain_p", "--steps", "2")["loss_log"]
    assert log[0]["loss"] != plain[0]["loss"]
    run = json.loads((folder / "avdit_perceptual.json").read_text())["run"]
    assert run["perceptual_weight"] == 3.0 and run["perceptual_reader"] == str(tmp_path / "reader")
    assert "perceptual_weight" not in json.loads((folder / "avdit_plain_p.json").read_text())["run"]
