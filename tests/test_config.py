import pytest

from avdit_mini.config import PROFILES, Geometry, get_profile


def test_explicit_profile_wins_over_environment(monkeypatch):
    monkeypatch.setenv("AVDIT_PROFILE", "gpu")
    assert get_profile("smoke").name == "smoke"


def test_environment_is_used_when_no_profile_is_given(monkeypatch):
    monkeypatch.setenv("AVDIT_PROFILE", "cpu")
    assert get_profile(None).name == "cpu"


def test_default_is_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("AVDIT_PROFILE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert get_profile().name == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert get_profile().name == "gpu"


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown profile 'laptop'.*\['cpu', 'gpu', 'smoke'\]"):
        get_profile("laptop")


def test_every_profile_keeps_the_same_geometry():
    # profiles change how much work is done, never the shapes (shipped weights load everywhere)
    assert set(PROFILES) == {"smoke", "cpu", "gpu"}
    assert all(not hasattr(p, "geometry") for p in PROFILES.values())
    g = Geometry()
    assert (g.frames, g.fps, g.height, g.width, g.sample_rate, g.audio_samples) == (17, 8, 64, 64, 16000, 34000)
    assert (g.mel_frames, g.video_latent_frames, g.audio_latent_frames, g.video_latent_hw) == (136, 5, 34, (8, 8))
    assert g.duration == 2.125


def test_inconsistent_geometry_is_an_error():
    with pytest.raises(ValueError, match="audio_samples"):
        Geometry(audio_samples=30000)
