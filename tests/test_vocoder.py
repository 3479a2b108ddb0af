"""The vocoder's post-net: log-mel -> linear spectrogram before Griffin-Lim (chapter 2)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from avdit_mini.audio_ae import LogMel, MelInverter, PostNetConfig, SpectrogramPostNet, postnet_loss
from avdit_mini.data import World
from avdit_mini.pipeline import CHECKPOINTS, load_autoencoder, vocoder_name
from avdit_mini.train import main


def test_postnet_maps_a_log_mel_to_a_linear_spectrogram():
    postnet = SpectrogramPostNet(PostNetConfig(channels=16, blocks=1, groups=4))
    assert postnet(torch.randn(2, 64, 136)).shape == (2, 513, 136)
    with pytest.raises(ValueError, match=r"\[B, 64, frames\]"):
        postnet(torch.randn(2, 80, 136))


def test_magnitude_spectrogram_has_the_log_mels_frames():
    audio = World().clip(0).audio[None]
    magnitude = LogMel().magnitude_spectrogram(audio)
    assert magnitude.shape == (1, 513, 136) and LogMel()(audio).shape[-1] == magnitude.shape[-1]
    # the mel scale is a fixed weighting of these bins: summing them back gives the log-mel's magnitudes
    mel = LogMel().mel.mel_scale(magnitude)
    assert torch.allclose(mel, LogMel().magnitude_mel(audio), rtol=1e-3, atol=1e-5)


def test_postnet_loss_is_zero_for_the_true_spectrogram():
    magnitude = LogMel().magnitude_spectrogram(World().clip(1).audio[None]).clamp_min(1e-4)
    losses = postnet_loss(magnitude.log(), magnitude)
    assert float(losses["loss"]) < 1e-5
    assert float(postnet_loss(magnitude.log() + 0.1, magnitude)["loss"]) > 0.1


def test_the_inverter_uses_an_attached_postnet():
    inverter, log_mel = MelInverter(n_iter=2), LogMel()(World().clip(2).audio[None])
    plain = inverter.spectrogram(log_mel)
    inverter.postnet = SpectrogramPostNet(PostNetConfig(channels=16, blocks=1, groups=4)).eval()
    with torch.no_grad():
        expected = inverter.postnet(log_mel).exp()
    assert torch.equal(inverter.spectrogram(log_mel)[..., :136], expected) and plain.shape == expected[..., :1].shape[:2] + (137,)
    assert inverter(log_mel).shape == (1, 34000)


def _train(folder, *extra):
    return main(["vocoder", "--tiny", "--profile", "smoke", "--steps", "6", "--batch-size", "2", "--eval-clips", "0",
                 "--threads", "1", "--warmup", "2", "--out", str(folder / "vocoder"), *extra])


def test_vocoder_training_resumes_exactly(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _train(tmp_path / "a")
    _train(tmp_path / "b", "--stop-after", "3")
    _train(tmp_path / "b", "--resume")
    logs = [json.loads((tmp_path / run / "vocoder.json").read_text())["loss_log"] for run in ("a", "b")]
    assert len(logs[0]) == 6 and logs[0] == logs[1]


def test_load_autoencoder_attaches_the_postnet_of_its_folder(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(CHECKPOINTS / f"audio_ae{suffix}", tmp_path / f"audio_ae{suffix}")
    assert vocoder_name(load_autoencoder("audio", tmp_path)) == "griffin-lim"  # none there yet
    with pytest.raises(FileNotFoundError, match="python -m avdit_mini.train vocoder"):
        load_autoencoder("audio", tmp_path, vocoder="postnet")
    _train(tmp_path)
    assert vocoder_name(load_autoencoder("audio", tmp_path)) == "postnet"
    assert vocoder_name(load_autoencoder("audio", tmp_path, vocoder="griffin-lim")) == "griffin-lim"
    with pytest.raises(ValueError, match="vocoder must be one of"):
        load_autoencoder("audio", tmp_path, vocoder="hifigan")


def test_vocoder_names_a_wrong_autoencoder_stem(tmp_path):
    with pytest.raises(ValueError, match="audio_ae"):
        main(["vocoder", "--steps", "1", "--autoencoder", str(tmp_path / "my_model"), "--out", str(tmp_path / "vocoder")])
