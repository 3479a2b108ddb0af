import numpy as np
import pytest
import torch

from avdit_mini import probes
from avdit_mini.data import World, WorldDataset


@pytest.fixture(scope="module")
def scores():
    dataset = WorldDataset(40, split="test")
    return probes.benchmark(dataset[i] for i in range(len(dataset)))


def test_probe_accuracy_on_held_out_clips(scores):
    for key in ("video_shape", "video_colour", "video_size", "video_background", "audio_timbre",
                "audio_size", "audio_background"):
        assert scores[key] >= 0.95, key
    assert scores["video_bounces_within_1_frame"] >= 0.9
    assert scores["onset_median_error_ms"] <= 20
    assert scores["onset_recall"] >= 0.85 and scores["onset_precision"] >= 0.95


def test_probes_do_not_look_at_the_truth():
    clip = World().clip(4)
    seen = probes.measure_video(clip.video)
    heard = probes.measure_audio(clip.audio)
    assert seen["shape"] == clip.factors["shape"] and heard["shape"] == clip.factors["shape"]
    assert torch.allclose(seen["trajectory"], clip.factors["trajectory"], atol=0.6)


def test_silence_and_empty_scenes_give_no_detections():
    heard = probes.measure_audio(torch.zeros(34000))
    assert heard["impact_times"] == [] and heard["timbre"] is None
    seen = probes.measure_video(torch.full((3, 17, 64, 64), 0.2))
    assert seen["shape"] is None and seen["bounce_frames"] == []


def test_onset_detector_finds_a_synthetic_click():
    audio = np.zeros(34000)
    audio[8000:8400] = np.sin(2 * np.pi * 1000 * np.arange(400) / 16000) * np.exp(-np.arange(400) / 80)
    assert probes.onset_times(audio) == pytest.approx([0.5], abs=0.003)


def test_match_times_is_one_to_one():
    matched = probes.match_times([0.1, 0.11, 0.5], [0.1, 0.9], tolerance=0.05)
    assert matched["missed"] == 1 and matched["extra"] == 2 and matched["errors"] == [0.0]


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        probes.measure_video(torch.zeros(17, 64, 64))
    with pytest.raises(ValueError, match="mono"):
        probes.measure_audio(torch.zeros(2, 34000))
