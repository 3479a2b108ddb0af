"""The AVDiT training loop: exact resume, every strategy, and DDP with 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from avdit_mini.audio_ae import AudioAutoencoder
from avdit_mini.checkpoints import save_checkpoint
from avdit_mini.config import Geometry
from avdit_mini.pipeline import load_pipeline, provenance
from avdit_mini.train import TINY_AUDIO_CONFIG, main
from avdit_mini.video_ae import TINY_VIDEO_CONFIG, VideoAutoencoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("avdit")
    geometry = asdict(Geometry())
    for name, model, cfg in (("video_ae", VideoAutoencoder(TINY_VIDEO_CONFIG), TINY_VIDEO_CONFIG),
                             ("audio_ae", AudioAutoencoder(TINY_AUDIO_CONFIG), TINY_AUDIO_CONFIG)):
        save_checkpoint(folder / name, model.state_dict(), {"kind": name, "model": asdict(cfg), "geometry": geometry})
    g = torch.Generator().manual_seed(0)
    latents = folder / "latents.safetensors"
    save_file({"video": torch.randn(16, 8, 5, 8, 8, generator=g), "audio": torch.randn(16, 8, 34, generator=g)}, str(latents))
    return folder, latents


def train(folder, latents, out, *extra):
    args = ["avdit", "--preset", "tiny", "--latents", str(latents), "--autoencoders", str(folder), "--out", str(out),
            "--batch-size", "4", "--steps", "6", "--warmup", "2", "--threads", "1", "--quiet", "--no-manifest", *extra]
    return main(args)


def test_resume_gives_the_same_loss_curve(workspace):
    folder, latents = workspace
    straight = train(folder, latents, folder / "avdit_straight")["loss_log"]
    train(folder, latents, folder / "avdit_resumed", "--stop-after", "3")
    resumed = train(folder, latents, folder / "avdit_resumed", "--resume")["loss_log"]
    assert len(straight) == len(resumed) == 6
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    pipeline = load_pipeline("resumed", folder)  # the saved checkpoint is a working pipeline
    assert pipeline.avdit.config.dim == 64
    made = provenance(pipeline)                   # what a result file records of the pipeline it measured
    assert made["trained_steps"] == 6 and made["run"]["steps"] == 6 and made["run"]["kind"] == "avdit"
    assert made["training_loss"] is None          # too short a run to average 100 and 200 steps
    pipeline.meta["loss_log"] = [{"loss": 1.0}] * 100 + [{"loss": 0.5}] * 200
    assert provenance(pipeline)["training_loss"] == {"first_100": 1.0, "last_200": 0.5}


def test_reading_the_log_every_few_steps_changes_nothing(workspace):
    """--sync-every (what a GPU run does, 50 steps at a time) gives the per-step log of a CPU run, resume included."""
    folder, latents = workspace
    every_step = train(folder, latents, folder / "avdit_sync1")["loss_log"]
    train(folder, latents, folder / "avdit_sync4", "--sync-every", "4", "--stop-after", "5")
    batched = train(folder, latents, folder / "avdit_sync4", "--sync-every", "4", "--resume")["loss_log"]
    assert batched == every_step and [r["step"] for r in batched] == list(range(6))
    assert all(set(r) == {"step", "loss", "grad_norm", "per_strategy"} and r["per_strategy"] for r in batched)


def test_latents_encoded_by_worker_processes_are_the_same(workspace):
    """Clips made by DataLoader workers (a GPU session's encoding) give the latents of the main process."""
    from avdit_mini.data import WorldDataset
    from avdit_mini.latents import encode_dataset
    from avdit_mini.pipeline import load_autoencoder

    folder, _ = workspace
    video_ae, audio_ae = load_autoencoder("video", folder), load_autoencoder("audio", folder)
    alone = encode_dataset(video_ae, audio_ae, WorldDataset(6, "train"), batch_size=4, progress=False)
    workers = encode_dataset(video_ae, audio_ae, WorldDataset(6, "train"), batch_size=4, progress=False, workers=2)
    assert alone["video"].shape == (6, 8, 5, 8, 8) and all(torch.equal(alone[k], workers[k]) for k in alone)


@pytest.mark.parametrize("strategy", ["vanilla", "per_modality", "per_time", "per_time_modality", "conditional:a2v"])
def test_every_strategy_trains(workspace, strategy):
    folder, latents = workspace
    log = train(folder, latents, folder / f"avdit_{strategy.replace(':', '_')}", "--steps", "2")["loss_log"]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_v_prediction_is_recorded_and_loaded(workspace):
    folder, latents = workspace
    train(folder, latents, folder / "avdit_vpred", "--steps", "2", "--prediction", "v")
    pipeline = load_pipeline("vpred", folder)
    assert pipeline.diffusion.prediction == "v" and pipeline.avdit.config.prediction == "v"
    train(folder, latents, folder / "avdit_epspred", "--steps", "2")
    assert load_pipeline("epspred", folder).diffusion.prediction == "epsilon"  # the CLI's default, the paper's


def test_ddp_with_two_cpu_processes(workspace):
    folder, latents = workspace
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "avdit_mini.train", "avdit", "--preset", "tiny", "--latents", str(latents), "--autoencoders",
               str(folder), "--out", str(folder / "avdit_ddp"), "--batch-size", "4", "--steps", "3", "--warmup", "1",
               "--threads", "1", "--quiet", "--no-manifest"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((folder / "avdit_ddp.json").read_text())
    assert meta["step"] == 3 and len(meta["loss_log"]) == 3


def test_init_warm_starts_from_a_saved_pipeline(workspace):
    """--init: the new run starts from the saved (EMA) weights and keeps their latent scaling."""
    folder, latents = workspace
    train(folder, latents, folder / "avdit_first", "--steps", "3")
    first = load_pipeline("first", folder)
    other = folder / "latents_other.safetensors"  # other clips, other statistics: the scaling must not be refitted
    g = torch.Generator().manual_seed(1)
    save_file({"video": 3 * torch.randn(16, 8, 5, 8, 8, generator=g), "audio": torch.randn(16, 8, 34, generator=g) + 1}, str(other))
    result = train(folder, other, folder / "avdit_second", "--steps", "2", "--init", str(folder / "avdit_first"))
    second = load_pipeline("second", folder)
    assert json.loads((folder / "avdit_second.json").read_text())["run"]["init"] == str(folder / "avdit_first")
    assert all(torch.equal(a, b) for a, b in zip(first.scaler.state_dict().values(), second.scaler.state_dict().values()))
    cold = train(folder, other, folder / "avdit_cold", "--steps", "2")
    assert result["loss_log"][0]["loss"] != cold["loss_log"][0]["loss"]  # it did not start from a fresh network
    with pytest.raises(ValueError, match="network differs"):
        train(folder, latents, folder / "avdit_x", "--steps", "1", "--init", str(folder / "avdit_first"), "--prediction", "v")


def test_clean_probability_trains_and_is_recorded(workspace):
    """--clean-probability: clean cells in the grids, out of the loss; recorded in the run's config."""
    folder, latents = workspace
    log = train(folder, latents, folder / "avdit_clean", "--steps", "3", "--clean-probability", "0.5")["loss_log"]
    assert len(log) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    meta = json.loads((folder / "avdit_clean.json").read_text())
    assert meta["run"]["clean_probability"] == 0.5
    with pytest.raises(ValueError, match="conditional baseline"):
        train(folder, latents, folder / "avdit_clean_conditional", "--steps", "1", "--strategy", "conditional:a2v",
              "--clean-probability", "0.5")


def test_object_boost_trains_and_is_recorded(workspace):
    folder, latents = workspace
    log = train(folder, latents, folder / "avdit_object", "--steps", "2", "--object-boost", "4", "--impact-boost", "2")["loss_log"]
    plain = train(folder, latents, folder / "avdit_plain", "--steps", "2")["loss_log"]
    assert log[0]["loss"] != plain[0]["loss"]  # the flag reaches the loss
    run = json.loads((folder / "avdit_object.json").read_text())["run"]
    assert (run["object_boost"], run["impact_boost"]) == (4.0, 2.0)
    assert "object_boost" not in json.loads((folder / "avdit_plain.json").read_text())["run"]


def test_high_frequency_gain_is_stored_with_the_model_and_kept_by_a_warm_start(workspace):
    """--high-frequency-gain: the scaler of the saved pipeline carries it; --init keeps it; older checkpoints load as off."""
    folder, latents = workspace
    log = train(folder, latents, folder / "avdit_loud", "--steps", "2", "--prediction", "v", "--high-frequency-gain", "3")["loss_log"]
    plain = train(folder, latents, folder / "avdit_quiet", "--steps", "2", "--prediction", "v")["loss_log"]
    assert log[0]["loss"] > plain[0]["loss"]  # the v target holds the louder latents (the zero-initialised network outputs 0)
    loud = load_pipeline("loud", folder)
    assert float(loud.scaler.high_frequency_gain) == 3.0
    assert json.loads((folder / "avdit_loud.json").read_text())["run"]["high_frequency_gain"] == 3.0
    train(folder, latents, folder / "avdit_loud2", "--steps", "1", "--prediction", "v", "--init", str(folder / "avdit_loud"))
    assert float(load_pipeline("loud2", folder).scaler.high_frequency_gain) == 3.0
    with pytest.raises(ValueError, match="one or the other"):   # the object threshold was made for plain latents
        train(folder, latents, folder / "avdit_loud3", "--steps", "1", "--high-frequency-gain", "3", "--object-boost", "4")
    # a checkpoint saved before the gain existed has no such tensor: it loads with the gain off
    from safetensors.torch import load_file
    state = load_file(str(folder / "avdit_quiet.safetensors"))
    assert "scaler.high_frequency_gain" in state
    save_file({k: v for k, v in state.items() if k != "scaler.high_frequency_gain"}, str(folder / "avdit_quiet.safetensors"))
    assert float(load_pipeline("quiet", folder).scaler.high_frequency_gain) == 1.0


def test_refit_scaling_warm_starts_the_network_on_other_latents(workspace):
    """--init STEM --refit-scaling: the saved network, with the scaling fitted afresh to this run's latents
    (an encoder fine-tuned to say its shape makes other latents)."""
    folder, latents = workspace
    train(folder, latents, folder / "avdit_base", "--steps", "3")
    other = folder / "latents_shifted.safetensors"
    g = torch.Generator().manual_seed(2)
    save_file({"video": 2 * torch.randn(16, 8, 5, 8, 8, generator=g) + 1, "audio": torch.randn(16, 8, 34, generator=g)}, str(other))
    result = train(folder, other, folder / "avdit_refit", "--steps", "2", "--init", str(folder / "avdit_base"),
                   "--refit-scaling")
    refit = load_pipeline("refit", folder)
    assert refit.scaler.video_mean.mean() == pytest.approx(1.0, abs=0.1)   # this run's latents, not the init's
    assert refit.scaler.video_std.mean() == pytest.approx(2.0, abs=0.1)
    assert json.loads((folder / "avdit_refit.json").read_text())["run"]["refit_scaling"] is True
    cold = train(folder, other, folder / "avdit_refit_cold", "--steps", "2")
    assert result["loss_log"][0]["loss"] != cold["loss_log"][0]["loss"]    # the network was warm-started
    with pytest.raises(ValueError, match="warm start"):
        train(folder, other, folder / "avdit_y", "--steps", "1", "--refit-scaling")


def test_a_warm_start_widens_to_latents_with_a_shape_code(workspace):
    """--init STEM on video latents with more channels (an autoencoder with a shape code): the network starts as the
    one it came from on the old channels, predicts zero for the new ones, and needs --refit-scaling."""
    from avdit_mini.avdit import AVDiT
    from avdit_mini.latents import LatentScaler
    from avdit_mini.train import widen_video_channels

    folder, latents = workspace
    train(folder, latents, folder / "avdit_narrow", "--steps", "2")
    wider = folder / "latents_coded.safetensors"
    g = torch.Generator().manual_seed(3)
    save_file({"video": torch.randn(16, 11, 5, 8, 8, generator=g), "audio": torch.randn(16, 8, 34, generator=g)}, str(wider))
    with pytest.raises(ValueError, match="--refit-scaling"):
        train(folder, wider, folder / "avdit_w", "--steps", "1", "--init", str(folder / "avdit_narrow"))
    train(folder, wider, folder / "avdit_wide", "--steps", "2", "--init", str(folder / "avdit_narrow"), "--refit-scaling")
    stored = json.loads((folder / "avdit_wide.json").read_text())["config"]["avdit"]
    assert stored["video_channels"] == 11
    narrow = load_pipeline("narrow", folder)
    from avdit_mini.checkpoints import load_checkpoint
    state, _ = load_checkpoint(folder / "avdit_narrow")
    wide = AVDiT(narrow.avdit.config.__class__(**{**narrow.avdit.config.__dict__, "video_channels": 11})).eval()
    scaler = LatentScaler(11, 8)
    grown = widen_video_channels(state, wide, 8)
    wide.load_state_dict({k[len("avdit."):]: v for k, v in grown.items() if k.startswith("avdit.")})
    scaler.load_state_dict({k[len("scaler."):]: v for k, v in grown.items() if k.startswith("scaler.")}, strict=False)
    video, audio = torch.randn(2, 11, 5, 8, 8), torch.randn(2, 8, 34)
    t = torch.randint(0, 1000, (2, 2, 5))
    with torch.no_grad():
        old_v, old_a = narrow.avdit(video[:, :8], audio, t)
        new_v, new_a = wide(video, audio, t)
    assert torch.allclose(new_v[:, :8], old_v, atol=1e-5) and torch.allclose(new_a, old_a, atol=1e-5)
    assert torch.equal(new_v[:, 8:], torch.zeros_like(new_v[:, 8:]))
    assert scaler.video_std.tolist()[8:] == [1.0, 1.0, 1.0]


def test_self_condition_warm_starts_a_plain_model_and_resumes_exactly(workspace):
    """--self-condition with --init: the plain network's weights, the new layers at zero (so the first step's loss
    is the plain warm start's), an exact resume, the flag in the stored configs; the model loads self-conditioned."""
    from avdit_mini.diffusion import reads_its_estimate

    folder, latents = workspace
    train(folder, latents, folder / "avdit_plain_v", "--steps", "3", "--prediction", "v")
    args = ("--steps", "4", "--prediction", "v", "--init", str(folder / "avdit_plain_v"))
    straight = train(folder, latents, folder / "avdit_reads", *args, "--self-condition")["loss_log"]
    train(folder, latents, folder / "avdit_reads_resumed", *args, "--self-condition", "--stop-after", "2")
    resumed = train(folder, latents, folder / "avdit_reads_resumed", *args, "--self-condition", "--resume")["loss_log"]
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    plain = train(folder, latents, folder / "avdit_plain_v2", *args)["loss_log"]
    assert straight[0]["loss"] == plain[0]["loss"]
    meta = json.loads((folder / "avdit_reads.json").read_text())
    assert meta["run"]["self_condition"] is True and meta["config"]["avdit"]["self_condition"] is True
    assert "self_condition" not in json.loads((folder / "avdit_plain_v2.json").read_text())["config"]["avdit"]
    reads = load_pipeline("reads", folder)
    assert reads_its_estimate(reads.avdit) and reads.avdit.video_self_embed.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="self-condition"):  # a self-conditioned network cannot start a plain run
        train(folder, latents, folder / "avdit_z", "--steps", "1", "--prediction", "v", "--init", str(folder / "avdit_reads"))


def test_repa_aligns_a_block_with_the_reader_and_resumes_exactly(workspace, tmp_path):
    """--repa W: the loss adds W x (1 - cosine) of a projection of one block's video tokens and the frozen reader's
    features of the clean latent; the projector trains with the model, is saved only in the state, and resumes exactly;
    the saved pipeline has no trace of it."""
    from avdit_mini.avdit import AVDiT, AVDiTConfig
    from avdit_mini.perceptual import LatentReader, RepresentationAlignment, save_reader

    folder, latents = workspace
    torch.manual_seed(0)
    save_reader(LatentReader(), tmp_path / "reader")
    args = ("--steps", "4", "--repa", "0.5", "--perceptual-reader", str(tmp_path / "reader"))
    straight = train(folder, latents, folder / "avdit_repa", *args)["loss_log"]
    train(folder, latents, folder / "avdit_repa_resumed", *args, "--stop-after", "2")
    resumed = train(folder, latents, folder / "avdit_repa_resumed", *args, "--resume")["loss_log"]
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    plain = train(folder, latents, folder / "avdit_repa_plain", "--steps", "4")["loss_log"]
    # the untrained projector's output is nearly orthogonal to the features: the first loss is about W more
    assert straight[0]["loss"] - plain[0]["loss"] == pytest.approx(0.5, abs=0.15)
    run = json.loads((folder / "avdit_repa.json").read_text())["run"]
    assert (run["repa"], run["repa_block"]) == (0.5, 0)  # tiny has 2 blocks: depth // 3 = block 0, whose output is halfway up
    with pytest.raises(ValueError, match="with --repa"):  # resuming without the flag it was trained with
        train(folder, latents, folder / "avdit_repa_resumed", "--steps", "5", "--resume")
    state = torch.load(folder / "avdit_repa.state.pt", weights_only=False)
    assert "repa_projector" in state and not any("projector" in k for k in state["model"])
    assert not any("projector" in k for k in load_pipeline("repa", folder).avdit.state_dict())
    # the alignment itself: cos = 1 when the projection is the features, and a clear error before any call
    model = AVDiT(AVDiTConfig.preset("tiny"))
    alignment = RepresentationAlignment(LatentReader(), model, block=1)
    with pytest.raises(RuntimeError, match="not been called"):
        alignment(torch.randn(2, 8, 5, 8, 8))
    with pytest.raises(ValueError, match="repa-block"):
        RepresentationAlignment(LatentReader(), model, block=2)
    video = torch.randn(2, 8, 5, 8, 8)
    model(video, torch.randn(2, 8, 34), torch.randint(0, 1000, (2, 2, 5)))
    assert alignment.last_tokens().shape == (2, model.video_tokens, 64)  # the video tokens only, taken once
    with pytest.raises(RuntimeError, match="not been called"):
        alignment.last_tokens()
    target = alignment.targets(video)
    assert target.shape == (2, model.video_tokens, 64)
    alignment.projector = torch.nn.Identity()  # a stand-in projection that returns the features: no loss
    alignment._keep(None, None, torch.cat([target, torch.zeros(2, 34, 64)], dim=1))  # as if the block had put them out
    assert alignment(video).item() == pytest.approx(0.0, abs=1e-5)
    alignment.remove()  # the hook comes off: the model keeps nothing any more
    model(video, torch.randn(2, 8, 34), torch.randint(0, 1000, (2, 2, 5)))
    with pytest.raises(RuntimeError, match="not been called"):
        alignment.last_tokens()


def test_shape_supervision_teaches_a_block_the_label_and_resumes_exactly(workspace):
    """--shape-supervision W: the loss adds W x the cross-entropy of a linear head naming the clip's shape (the world's
    label of train clip i for latent i) from each grid cell's mean token of one block; the term is logged on its own,
    the head trains with the model, lives only in the resume state, resumes exactly, and leaves no trace in the pipeline."""
    from avdit_mini.avdit import AVDiT, AVDiTConfig
    from avdit_mini.data import SHAPES, WorldDataset
    from avdit_mini.perceptual import ShapeSupervision
    from avdit_mini.train import train_shape_labels

    folder, plain_latents = workspace
    labels = train_shape_labels(16)
    dataset = WorldDataset(16, "train")
    assert [SHAPES[int(labels[i])] for i in (0, 5, 15)] == [dataset[i]["factors"]["shape"] for i in (0, 5, 15)]
    with pytest.raises(ValueError, match="no 'shape' tensor"):   # a latents file must say its clips' shapes
        train(folder, plain_latents, folder / "avdit_shape_x", "--steps", "1", "--shape-supervision", "0.5")
    from safetensors.torch import load_file
    latents = folder / "latents_with_shapes.safetensors"
    save_file({**load_file(str(plain_latents)), "shape": labels[:8]}, str(latents))
    with pytest.raises(ValueError, match="one class index"):      # a label per clip, or a clear error
        train(folder, latents, folder / "avdit_shape_x", "--steps", "1", "--shape-supervision", "0.5")
    save_file({**load_file(str(plain_latents)), "shape": labels}, str(latents))
    args = ("--steps", "4", "--shape-supervision", "0.5")
    straight = train(folder, latents, folder / "avdit_shape", *args)["loss_log"]
    train(folder, latents, folder / "avdit_shape_resumed", *args, "--stop-after", "2")
    resumed = train(folder, latents, folder / "avdit_shape_resumed", *args, "--resume")["loss_log"]
    assert straight == resumed
    plain = train(folder, plain_latents, folder / "avdit_shape_plain", "--steps", "4")["loss_log"]
    first = straight[0]
    assert first["loss"] - plain[0]["loss"] == pytest.approx(0.5 * first["shape_cross_entropy"], abs=1e-4)
    assert abs(first["shape_cross_entropy"] - torch.log(torch.tensor(3.0)).item()) < 0.6  # an untrained head: about log 3
    assert "shape_cross_entropy" not in plain[0]
    run = json.loads((folder / "avdit_shape.json").read_text())["run"]
    assert (run["shape_supervision"], run["shape_block"]) == (0.5, 1)  # tiny has 2 blocks: depth // 2 = block 1
    with pytest.raises(ValueError, match="with --shape-supervision"):
        train(folder, latents, folder / "avdit_shape_resumed", "--steps", "5", "--resume")
    with pytest.raises(ValueError, match="--shape-block 1"):          # the head read another block
        train(folder, latents, folder / "avdit_shape_resumed", *args, "--shape-block", "0", "--resume")
    state = torch.load(folder / "avdit_shape.state.pt", weights_only=False)
    assert "shape_head" in state and not any(k.startswith("head") for k in state["model"])
    assert set(load_pipeline("shape", folder).avdit.state_dict()) == set(load_pipeline("shape_plain", folder).avdit.state_dict())
    # the head itself: each of the 2 x N cells averaged on its own, one guess per cell; a clear error before any call
    model = AVDiT(AVDiTConfig.preset("tiny"))
    supervision = ShapeSupervision(model, block=0)
    with pytest.raises(RuntimeError, match="not been called"):
        supervision(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape-block"):
        ShapeSupervision(model, block=2)
    tokens = torch.zeros(1, len(model.token_cell), 64)
    tokens[0, model.token_cell == 7] = 1.0  # only the audio tokens of segment 2 (cell M = 1, N = 2) differ
    pooled = torch.einsum("bld,lc->bcd", tokens, supervision.pool)
    assert pooled[0, 7].eq(1).all() and pooled[0, torch.arange(10) != 7].eq(0).all()
    assert supervision.cell_logits(tokens).shape == (1, 10, 3)
    model(torch.randn(2, 8, 5, 8, 8), torch.randn(2, 8, 34), torch.randint(0, 1000, (2, 2, 5)))
    loss = supervision(torch.tensor([0, 2]))
    loss.backward()
    assert supervision.head[1].weight.grad.abs().sum() > 0 and model.video_embed.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="not been called"):  # taken once
        supervision(torch.tensor([0, 2]))


def test_a_low_noise_expert_squeezes_every_grid_into_its_range(workspace, monkeypatch):
    """--max-step S: the same batches and grids as a full run, each step t > 0 mapped to ceil(t S / T): clean cells stay
    clean, T becomes S, each step gets as many t, the order of the cells' noise levels is kept; recorded in the run's
    config and checked on resume."""
    from types import SimpleNamespace

    from avdit_mini.train import avdit_step_batch

    latents = {"video": torch.zeros(16, 8, 5, 8, 8)}
    args = SimpleNamespace(seed=0, batch_size=64, strategy="monl", T=1000, weights=None, clean_probability=0.25, max_step=0)
    index, full, _, _ = avdit_step_batch(latents, args, step=3, rank=0, world=1)
    args.max_step = 300
    index_e, squeezed, _, _ = avdit_step_batch(latents, args, step=3, rank=0, world=1)
    assert torch.equal(index, index_e) and (full == 1000).any() and (full == 0).any()
    assert torch.equal(squeezed == 0, full == 0) and squeezed.max() <= 300 and squeezed[full > 0].min() >= 1
    assert torch.equal(squeezed[full == 1000], torch.full_like(squeezed[full == 1000], 300))
    order = full.flatten().argsort(stable=True)
    assert (squeezed.flatten()[order].diff() >= 0).all()            # monotone: a noisier cell stays at least as noisy
    folder, latents_file = workspace
    import avdit_mini.train as train_module   # every t from 1 to 1000 once, through the loop's own mapping
    monkeypatch.setattr(train_module, "timestep_grids",
                        lambda *a, **k: (torch.arange(1, 1001).reshape(100, 2, 5), torch.zeros(100, dtype=torch.long)))
    _, every_t, _, _ = avdit_step_batch(latents, SimpleNamespace(**{**vars(args), "max_step": 250, "batch_size": 100}), 0, 0, 1)
    assert torch.equal(torch.bincount(every_t.flatten())[1:], torch.full((250,), 4))  # four t's to each of 1..250
    monkeypatch.undo()
    train(folder, latents_file, folder / "avdit_expert", "--steps", "2", "--max-step", "300")
    assert json.loads((folder / "avdit_expert.json").read_text())["run"]["max_step"] == 300
    with pytest.raises(ValueError, match="--max-step 300"):   # resuming an expert as another one
        train(folder, latents_file, folder / "avdit_expert", "--steps", "3", "--max-step", "200", "--resume")
    with pytest.raises(ValueError, match="max-step"):
        train(folder, latents_file, folder / "avdit_expert2", "--steps", "1", "--max-step", "1")


def test_counterfactual_twins_train_log_their_term_and_resume_exactly(workspace):
    """--counterfactual: the first --twins clips of each batch come from those with a twin (the rest, the grids and
    the noise are a plain run's), the twins are encoded once and cached, the term is logged at every step, recorded
    in the run's config, and a run resumes exactly (and only with the same weight)."""
    from types import SimpleNamespace

    from avdit_mini.train import avdit_step_batch, latent_cache_name

    plain_args = SimpleNamespace(seed=0, batch_size=32, strategy="monl", T=1000, weights=None, clean_probability=0.0,
                                 max_step=0, counterfactual=0.0)
    latents = {"video": torch.zeros(100, 8, 5, 8, 8)}
    index, grid, _, _ = avdit_step_batch(latents, plain_args, step=5, rank=0, world=1)
    paired_args = SimpleNamespace(**{**vars(plain_args), "counterfactual": 1.0, "twins": 8, "counterfactual_clips": 10})
    index_c, grid_c, _, _ = avdit_step_batch(latents, paired_args, step=5, rank=0, world=1)
    assert torch.equal(grid, grid_c) and torch.equal(index[8:], index_c[8:]) and index_c[:8].max() < 10

    folder, latents_file = workspace

    def run(out, *extra):
        return main(["avdit", "--preset", "tiny", "--prediction", "v", "--clips", "8", "--autoencoders", str(folder),
                     "--out", str(folder / out), "--batch-size", "4", "--steps", "5", "--warmup", "2", "--threads", "1",
                     "--quiet", "--no-manifest", "--counterfactual", "1", "--twins", "2", "--counterfactual-clips", "6",
                     *extra])

    straight = run("avdit_cf")["loss_log"]
    assert len(straight) == 5 and all(r["counterfactual"] > 0 for r in straight)
    run("avdit_cf_resumed", "--stop-after", "2")
    assert run("avdit_cf_resumed", "--resume")["loss_log"] == straight
    config = json.loads((folder / "avdit_cf.json").read_text())["run"]
    assert (config["counterfactual"], config["twins"], config["counterfactual_clips"]) == (1.0, 2, 6)
    from safetensors.torch import load_file
    twins = load_file(str(latent_cache_name(6, folder, "counterfactual")))
    clips = load_file(str(latent_cache_name(8, folder)))
    assert twins["video"].shape == (6, *clips["video"].shape[1:])
    assert not torch.equal(twins["video"], clips["video"][:6]) and not torch.equal(twins["audio"], clips["audio"][:6])
    with pytest.raises(ValueError, match="--counterfactual 1.0, not 2.0"):
        run("avdit_cf", "--counterfactual", "2", "--resume")
    with pytest.raises(ValueError, match="--twins 2, not 4"):
        run("avdit_cf", "--twins", "4", "--batch-size", "8", "--resume")
    with pytest.raises(ValueError, match="--counterfactual-gamma 1.0, not 0.0"):
        run("avdit_cf", "--counterfactual-gamma", "0", "--resume")
    flat = run("avdit_cf_flat", "--counterfactual-gamma", "0", "--counterfactual-hide", "400", "--steps", "2")["loss_log"]
    flat_run = json.loads((folder / "avdit_cf_flat.json").read_text())["run"]
    assert (flat_run["counterfactual_gamma"], flat_run["counterfactual_hide"]) == (0.0, 400)
    assert flat[0]["counterfactual"] > straight[0]["counterfactual"]   # the noisiest frames count fully
    pipeline = load_pipeline("cf", folder)                 # a result file records the term's course
    pipeline.meta["loss_log"] = [{"loss": 1.0, "counterfactual": 0.5}] * 100 + [{"loss": 0.5, "counterfactual": 0.25}] * 200
    assert provenance(pipeline)["training_terms"] == {"counterfactual": {"first_100": 0.5, "last_200": 0.25}}
    pipeline.meta["loss_log"] = [{"loss": 1.0}] * 300                    # a plain run: no terms
    assert "training_terms" not in provenance(pipeline)
    with pytest.raises(ValueError, match="--latents"):
        train(folder, latents_file, folder / "avdit_cf_file", "--counterfactual", "1", "--twins", "2")
    with pytest.raises(ValueError, match="--twins"):
        run("avdit_cf_many", "--twins", "3")
