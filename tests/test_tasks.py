import pytest
import torch

from avdit_mini.audio_ae import AudioAutoencoder
from avdit_mini.avdit import AVDiT, AVDiTConfig
from avdit_mini.checkpoints import save_checkpoint
from avdit_mini.config import Geometry
from avdit_mini.data import World
from avdit_mini.latents import LatentScaler
from avdit_mini.pipeline import AVPipeline, load_pipeline, save_pipeline
from avdit_mini.tasks import TASKS, continue_clip, describe, generate, pattern, resolve_task
from avdit_mini.train import TINY_AUDIO_CONFIG
from avdit_mini.video_ae import TINY_VIDEO_CONFIG, VideoAutoencoder
from dataclasses import asdict


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    model = AVDiT(AVDiTConfig.preset("tiny"))
    return AVPipeline(VideoAutoencoder(TINY_VIDEO_CONFIG).eval(), AudioAutoencoder(TINY_AUDIO_CONFIG).eval(),
                      model.eval(), LatentScaler()).eval()


@pytest.fixture(scope="module")
def clip():
    return World().clip(3)


def test_registry_matches_the_design():
    assert describe(TASKS["a2v"]) == "V GGGGG | A CCCCC"
    assert describe(TASKS["continue_2"]) == "V CCGGG | A CCGGG"
    assert describe(TASKS["interpolate"]) == "V CGGGC | A CGGGC"
    assert describe(TASKS["a2v_continue"]) == "V CGGGG | A CCCCC"
    assert set(TASKS) == {"joint", "a2v", "v2a", "continue_1", "continue_2", "interpolate", "a2v_continue"}


def test_generate_returns_world_layout(pipeline, clip):
    out = generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=2, seed=0)
    assert out.video.shape == (3, 17, 64, 64) and out.audio.shape == (34000,)
    assert 0 <= out.video.min() and out.video.max() <= 1
    batched = generate(pipeline, "joint", steps=2, batch_size=2)
    assert batched.video.shape == (2, 3, 17, 64, 64)


def test_condition_latents_are_kept_exactly(pipeline, clip):
    out = generate(pipeline, "v2a", condition={"video": clip.video}, steps=2)
    assert torch.equal(out.latents.video, pipeline.encode(clip.video[None], clip.audio[None]).video)


def test_custom_patterns_and_errors(pipeline, clip):
    custom = pattern("CGCGC", "GGGGG")
    out = generate(pipeline, custom, condition={"video": clip.video}, steps=2)
    assert out.pattern.tolist() == custom.tolist()
    with pytest.raises(ValueError, match="unknown task 'audio2video'"):
        generate(pipeline, "audio2video", condition={"audio": clip.audio})
    with pytest.raises(ValueError, match=r"must be \[2, 5\]"):
        resolve_task(torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="lacks \\['audio'\\]"):
        generate(pipeline, "a2v", condition={"video": clip.video})
    with pytest.raises(ValueError, match="only hold C"):
        pattern("CGX", "GGG")
    with pytest.raises(ValueError, match="condition video must be"):
        generate(pipeline, "v2a", condition={"video": clip.video[:, :9]})
    with pytest.raises(ValueError, match="must hold both 'video' and 'audio'"):  # SDEdit starts from the clip's own audio
        generate(pipeline, "v2a", condition={"video": clip.video}, start_step=500)
    both = {"video": clip.video, "audio": clip.audio}
    own = pipeline.encode(clip.video[None], clip.audio[None])
    started = generate(pipeline, "v2a", condition=both, steps=4, start_step=20)
    fresh = generate(pipeline, "v2a", condition=both, steps=4)
    assert torch.equal(started.latents.video, own.video)
    # from step 20 the generated soundtrack stays near the clip's own; from pure noise it does not
    assert (started.latents.audio - own.audio).abs().mean() < 0.5 * (fresh.latents.audio - own.audio).abs().mean()


def test_rolling_continuation_extends_the_clip(pipeline, clip):
    video, audio = continue_clip(pipeline, clip.video, clip.audio, windows=2, steps=2)
    assert video.shape == (3, 17 + 24, 64, 64) and audio.shape == (34000 + 48000,)
    assert torch.equal(video[:, :17], clip.video)


def test_pipeline_save_and_load_round_trip(tmp_path, pipeline, clip):
    geometry = asdict(Geometry())
    for name, model, cfg in (("video_ae", pipeline.video_ae, TINY_VIDEO_CONFIG), ("audio_ae", pipeline.audio_ae, TINY_AUDIO_CONFIG)):
        save_checkpoint(tmp_path / name, model.state_dict(), {"kind": name, "model": asdict(cfg), "geometry": geometry})
    save_pipeline(pipeline, tmp_path / "avdit_test", half=False)
    loaded = load_pipeline("test", folder=tmp_path)
    a = generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=2, seed=1)
    b = generate(loaded, "a2v", condition={"audio": clip.audio}, steps=2, seed=1)
    assert torch.allclose(a.latents.video, b.latents.video, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="train it with"):
        load_pipeline("missing", folder=tmp_path)


def test_evaluate_task_passes_its_sampler_on(pipeline, monkeypatch):
    """bench_tasks.py --sampler / --eta reach the sampler: with the same seed, DDPM's fresh noise changes the clips."""
    import avdit_mini.metrics as metrics

    seen, videos = [], []
    real = metrics.generate

    def spy(*args, **kwargs):
        seen.append((kwargs["sampler"], kwargs["eta"]))
        out = real(*args, **kwargs)
        videos.append(out.video)
        return out

    monkeypatch.setattr(metrics, "generate", spy)
    metrics.evaluate_task(pipeline, "continue_2", 2, steps=2, batch_size=2, progress=False)
    metrics.evaluate_task(pipeline, "continue_2", 2, steps=2, batch_size=2, progress=False)
    ddpm = metrics.evaluate_task(pipeline, "continue_2", 2, steps=2, batch_size=2, progress=False, sampler="ddpm", eta=1.0)
    assert seen == [("ddim", 0.0), ("ddim", 0.0), ("ddpm", 1.0)]
    assert torch.equal(videos[0], videos[1])            # DDIM with eta 0 is deterministic
    assert not torch.equal(videos[0], videos[2])        # DDPM's fresh noise gives other clips from the same seed
    assert ddpm["sampler"] == "ddpm" and ddpm["eta"] == 1.0
    with pytest.raises(ValueError, match="unknown sampler"):
        metrics.evaluate_task(pipeline, "continue_2", 1, steps=2, progress=False, sampler="euler")


def test_autoguidance_extrapolates_from_a_weaker_model_of_the_same_latents(pipeline, clip):
    """guide=: eps_weak + w (eps - eps_weak). Guided by itself the sample is the unguided one; a different weak
    model changes it; a guide that scales its latents otherwise is a clear error."""
    import copy

    plain = generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=3, seed=1)
    itself = generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=3, seed=1, guidance=3.0, guide=pipeline)
    assert torch.allclose(itself.latents.video, plain.latents.video, atol=1e-4)
    weak = copy.deepcopy(pipeline)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in weak.avdit.parameters():
            p.add_(0.05 * torch.randn_like(p))          # another network (the tiny one outputs 0 at initialisation)
    guided = generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=3, seed=1, guidance=2.0, guide=weak)
    assert not torch.allclose(guided.latents.video, plain.latents.video, atol=1e-3)
    assert torch.equal(guided.latents.audio, plain.latents.audio)   # the condition is kept exactly
    unit = generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=3, seed=1, guidance=1.0, guide=weak)
    assert torch.equal(unit.latents.video, plain.latents.video)   # w = 1: the model alone
    other = copy.deepcopy(weak)
    other.scaler.video_std.mul_(2)
    with pytest.raises(ValueError, match="scales its latents differently"):
        generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=2, guidance=2.0, guide=other)
    with pytest.raises(ValueError, match="pass one or the other"):   # MoNL's drop pattern means nothing to a weaker model
        generate(pipeline, "a2v", condition={"audio": clip.audio}, steps=2, guidance=2.0, guide=weak,
                 guidance_drop=torch.ones(2, 5, dtype=torch.bool))
