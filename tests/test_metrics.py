"""Scoring generated clips (chapter 8): what is measured, and on which segments."""

import pytest
import torch

from avdit_mini import probes
from avdit_mini.data import World
from avdit_mini.metrics import generated_spans, score_clip, summarise
from avdit_mini.tasks import TASKS, pattern


def _item(clip) -> dict:
    return {"video": clip.video, "audio": clip.audio, "factors": clip.factors}


def _two_clips_of_different_shapes(span):
    """A clip with an impact inside ``span`` and a clip of another shape, colour, size and scene."""
    world = World()
    first = next(world.clip(s) for s in range(200) if any(span[0] <= t < span[1] for t in world.clip(s).factors["impact_times"]))
    f = first.factors
    other = next(world.clip(s) for s in range(200, 400)
                 if all(world.clip(s).factors[k] != f[k] for k in ("shape", "colour", "size", "background")))
    return first, other


def test_generated_spans_of_the_tasks():
    assert generated_spans(TASKS["continue_2"][0]) == [(0.625, 2.125)]
    assert generated_spans(TASKS["interpolate"][1]) == [(0.125, 1.625)]
    assert generated_spans(TASKS["joint"][0]) == [(0.0, 2.125)]
    assert generated_spans(TASKS["v2a"][0]) == []
    assert generated_spans(pattern("GCGCG", "CCCCC")[0]) == [(0.0, 0.125), (0.625, 1.125), (1.625, 2.125)]


def test_a_designed_pattern_with_two_generated_stretches_is_scored_on_both():
    clip, other = _two_clips_of_different_shapes((0.125, 0.625))
    keyframes = pattern("CGCGC", "CGCGC")  # segments 1 and 3 generated: video frames 1-4 and 9-12
    video = clip.video.clone()
    video[:, 1:5], video[:, 9:13] = other.video[:, 1:5], other.video[:, 9:13]
    assert score_clip(keyframes, video, clip.audio, _item(clip))["video_shape"] is False
    assert score_clip(keyframes, clip.video, clip.audio, _item(clip))["video_shape"] is True


def test_a_real_clip_scores_perfectly_on_every_task():
    clip, _ = _two_clips_of_different_shapes((0.625, 2.125))
    for task in ("continue_2", "a2v", "v2a"):
        scores = score_clip(TASKS[task], clip.video, clip.audio, _item(clip))
        assert all(v is True for k, v in scores.items() if k.startswith(("video_", "audio_"))), (task, scores)


def test_given_segments_do_not_vote_for_the_identity():
    # continue_2 hands the model 0.625 s of the clip; if it then draws *another* object, the
    # identity must be scored wrong, although the given frames and sound are the true ones
    span = generated_spans(TASKS["continue_2"][0])[0]
    clip, other = _two_clips_of_different_shapes(span)
    cut_video, cut_audio = 5, int(span[0] * 16000)  # video frames 0-4 and 0.625 s of sound are given
    video = torch.cat([clip.video[:, :cut_video], other.video[:, cut_video:]], dim=1)
    audio = torch.cat([clip.audio[:cut_audio], other.audio[cut_audio:]])
    # the first 5 frames alone are the true object: a vote over all 17 would still be wrong here,
    # so check the measurement itself -- the probe on the generated frames sees the other clip
    scores = score_clip(TASKS["continue_2"], video, audio, _item(clip))
    for key in ("video_shape", "video_colour", "video_size", "video_background", "audio_background"):
        assert scores[key] is False, key
    if any(span[0] <= t < span[1] for t in other.factors["impact_times"]):
        assert scores["audio_shape"] is False


def test_the_given_frames_alone_would_have_fooled_a_whole_clip_vote():
    # 9 true frames (0-8) against 8 others: a vote over the whole clip names the true shape,
    # the generated frames (5-16) name the other one
    span = generated_spans(TASKS["continue_2"][0])[0]
    clip, other = _two_clips_of_different_shapes(span)
    video = torch.cat([clip.video[:, :9], other.video[:, 9:]], dim=1)
    assert probes.measure_video(video)["shape"] == clip.factors["shape"]
    assert score_clip(TASKS["continue_2"], video, clip.audio, _item(clip))["video_shape"] is False


def test_audio_identity_is_not_scored_without_an_impact_in_the_generated_span():
    world, last = World(), pattern("CCCCG", "CCCCG")  # generate the last half-second only
    quiet = next(world.clip(s) for s in range(400) if not any(t >= 1.625 for t in world.clip(s).factors["impact_times"]))
    scores = score_clip(last, quiet.video, quiet.audio, _item(quiet))
    assert scores["audio_shape"] is None and scores["audio_size"] is None and scores["audio_background"] is True
    assert "audio_shape" not in summarise([scores]) or summarise([scores])["audio_shape"] is None


def test_audio_span_restricts_the_vote():
    clip, _ = _two_clips_of_different_shapes((0.625, 2.125))
    heard = probes.measure_audio(clip.audio, span=(0.625, 2.125))
    assert heard["shape"] == clip.factors["shape"] and heard["impact_times"] == probes.measure_audio(clip.audio)["impact_times"]
    with pytest.raises(ValueError, match="span"):
        probes.measure_audio(clip.audio, span=(1.0, 0.5))


def test_the_summary_counts_the_shapes_drawn_for_each_true_shape():
    """shape_counts: what the probe saw in the generated frames, by the condition clip's shape."""
    clip, other = _two_clips_of_different_shapes((0.625, 2.125))
    video = torch.cat([clip.video[:, :5], other.video[:, 5:]], dim=1)  # continue_2 drawing the other clip's object
    rows = [score_clip(TASKS["continue_2"], clip.video, clip.audio, _item(clip)),
            score_clip(TASKS["continue_2"], video, clip.audio, _item(clip))]
    counts = summarise(rows)["shape_counts"]
    true, drawn_instead = clip.factors["shape"], other.factors["shape"]
    assert counts[true][true] == 1 and counts[true][drawn_instead] == 1
    assert sum(n for row in counts.values() for n in row.values()) == 2
    assert "shape_counts" not in summarise([score_clip(TASKS["v2a"], clip.video, clip.audio, _item(clip))])  # no video made


def test_the_summary_counts_the_timbres_heard_for_each_true_shape():
    """timbre_counts: the timbre heard at the generated impacts, by the condition clip's shape (v2a's confusion)."""
    clip, other = _two_clips_of_different_shapes((0.0, 2.125))
    rows = [score_clip(TASKS["v2a"], clip.video, clip.audio, _item(clip)),
            score_clip(TASKS["v2a"], clip.video, other.audio, _item(clip))]  # the other object's sound
    summary = summarise(rows)
    counts = summary["timbre_counts"]
    true, heard_instead = clip.factors["shape"], other.factors["shape"]
    assert counts[true][true] == 1 and counts[true][heard_instead] == 1
    assert sum(n for row in counts.values() for n in row.values()) == 2
    assert summary["audio_shape"] == 0.5 and "heard_shape" not in summary
    assert "timbre_counts" not in summarise([score_clip(TASKS["a2v"], clip.video, clip.audio, _item(clip))])  # no audio made


def test_code_votes_read_the_generated_shape_code():
    """With a shape code in the video latent (train autoencoder --shape-code), each generated clip's code names a shape:
    its channels summed over the generated latent frames only; a plain autoencoder has no vote."""
    from dataclasses import replace
    from types import SimpleNamespace

    from avdit_mini.latents import LatentScaler
    from avdit_mini.metrics import code_votes
    from avdit_mini.tasks import Latents
    from avdit_mini.video_ae import TINY_VIDEO_CONFIG, VideoAutoencoder

    coded = VideoAutoencoder(replace(TINY_VIDEO_CONFIG, shape_code=3))
    scaler = LatentScaler(11, 8)
    video = torch.zeros(2, 11, 5, 8, 8)
    video[0, 8 + 1, 2:] = 0.5   # clip 0: a square in the generated frames
    video[0, 8 + 2, :2] = 9.0   # ... and a triangle in the given ones, which must not vote
    video[1, 8 + 2, 3, 4, 4] = 0.3
    pattern = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    pipeline = SimpleNamespace(video_ae=coded, scaler=scaler)
    assert code_votes(pipeline, Latents(video, torch.zeros(2, 8, 34)), pattern) == ["square", "triangle"]
    assert code_votes(pipeline, Latents(video, torch.zeros(2, 8, 34)), torch.ones(2, 5, dtype=torch.long)) == []
    plain = SimpleNamespace(video_ae=VideoAutoencoder(TINY_VIDEO_CONFIG), scaler=LatentScaler())
    assert code_votes(plain, Latents(video[:, :8], torch.zeros(2, 8, 34)), pattern) == []
