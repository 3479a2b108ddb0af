"""Checkpoints: atomic save/load, config checks, MANIFEST, exact resume (chapters 2-3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import numpy as np
import torch

from avdit_mini import checkpoints
from avdit_mini.train import main


def _state() -> dict[str, torch.Tensor]:
    return {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(3)}


def test_save_load_round_trip(tmp_path):
    stem = tmp_path / "model"
    config = {"width": 4, "channels": (1, 2)}
    checkpoints.save_checkpoint(stem, _state(), config, {"metrics": {"psnr": 30.0}})
    state, meta = checkpoints.load_checkpoint(stem, {"width": 4, "channels": [1, 2]})  # tuples == lists
    assert torch.equal(state["weight"], _state()["weight"])
    assert meta["metrics"]["psnr"] == 30.0
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]  # no temp files left


def test_missing_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m avdit_mini.train autoencoder"):
        checkpoints.load_checkpoint(tmp_path / "nothing")


def test_config_mismatch_names_the_keys(tmp_path):
    checkpoints.save_checkpoint(tmp_path / "m", _state(), {"width": 4, "depth": 2})
    with pytest.raises(ValueError, match="width") as error:
        checkpoints.load_checkpoint(tmp_path / "m", {"width": 8, "depth": 2})
    assert "depth" not in str(error.value)


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    stem = tmp_path / "m"
    checkpoints.save_checkpoint(stem, _state(), {"v": 1})

    def crash(tensors, path):
        open(path, "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(RuntimeError):
        checkpoints.save_checkpoint(stem, {"weight": torch.zeros(1)}, {"v": 2})
    state, meta = checkpoints.load_checkpoint(stem, {"v": 1})
    assert torch.equal(state["bias"], torch.ones(3))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_manifest_records_sha256(tmp_path):
    paths = checkpoints.save_checkpoint(tmp_path / "m", _state(), {"v": 1})
    checkpoints.update_manifest(tmp_path, "m", list(paths.values()), "python -m x", {"psnr": 1.0}, {"v": 1})
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert set(manifest["m"]["files"]) == {"m.safetensors", "m.json"}
    assert manifest["m"]["files"]["m.json"]["sha256"] == checkpoints.sha256(paths["meta"])
    assert all(checkpoints.verify_manifest(tmp_path).values())


def test_manifest_keeps_the_chain_of_commands(tmp_path):
    """A resumed run and a warm start (--init) record every command that made their weights."""
    paths = list(checkpoints.save_checkpoint(tmp_path / "a", _state(), {"v": 1}).values())
    checkpoints.update_manifest(tmp_path, "a", paths, "train --out a")
    checkpoints.update_manifest(tmp_path, "a", paths, "train --out a --resume")
    checkpoints.update_manifest(tmp_path, "b", paths, f"train --init {tmp_path / 'a'} --out b")
    checkpoints.update_manifest(tmp_path, "c", paths, "train --out c")
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["a"]["commands"] == ["train --out a", "train --out a --resume"]
    assert manifest["b"]["commands"] == manifest["a"]["commands"] + [f"train --init {tmp_path / 'a'} --out b"]
    assert manifest["c"]["commands"] == ["train --out c"]


def test_same_latents_knows_the_decoders_a_fine_tune_replaced(tmp_path):
    """A decoder fine-tune keeps the latents: results measured through the decoder it replaced still describe them."""
    paths = checkpoints.save_checkpoint(tmp_path / "video_ae", _state(), {"v": 1})
    checkpoints.update_manifest(tmp_path, "video_ae", list(paths.values()), "train --out video_ae")
    now = checkpoints.sha256(paths["weights"])[:12]
    assert checkpoints.same_latents(tmp_path, "video_ae") == {now}
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    manifest["video_ae"]["earlier_decoders"] = [{"files": {"video_ae.safetensors": {"sha256": "ab" * 32, "bytes": 1}}}]
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    assert checkpoints.same_latents(tmp_path, "video_ae") == {now, "ab" * 6}
    with pytest.raises(FileNotFoundError, match="audio_ae"):
        checkpoints.same_latents(tmp_path, "audio_ae")
    # the shipped video decoder replaced the first GPU decoder, whose sha256 the MANIFEST keeps
    shipped = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
    assert "481c531617b8" in checkpoints.same_latents(shipped, "video_ae")
    assert checkpoints.sha256(shipped / "video_ae.safetensors")[:12] in checkpoints.same_latents(shipped, "video_ae")


def _train(stem, *extra: str) -> None:
    main(["autoencoder", "--modality", "audio", "--tiny", "--steps", "4", "--batch-size", "2", "--warmup", "2",
          "--out", str(stem), "--eval-clips", "0", "--no-manifest", "--threads", "1", *extra])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    _train(tmp_path / "full")
    _train(tmp_path / "split", "--stop-after", "2")
    _train(tmp_path / "split", "--resume")
    full = json.loads((tmp_path / "full.json").read_text())
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["step"] == full["step"] == 4
    assert split["loss_log"] == pytest.approx(full["loss_log"], rel=1e-5)
    a, _ = checkpoints.load_checkpoint(tmp_path / "full")
    b, _ = checkpoints.load_checkpoint(tmp_path / "split")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _train(tmp_path / "none", "--resume")


def test_finetune_decoder_keeps_the_encoder(tmp_path):
    """--finetune-decoder trains the decoder only: the latents (and an AVDiT trained on them) stay valid."""
    common = ["autoencoder", "--modality", "video", "--tiny", "--steps", "2", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--out", str(tmp_path / "base")])
    main(common + ["--out", str(tmp_path / "tuned"), "--finetune-decoder", str(tmp_path / "base")])
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    tuned, _ = checkpoints.load_checkpoint(tmp_path / "tuned")
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("encoder."))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("decoder."))
    with pytest.raises(FileNotFoundError, match="no .* to start from"):
        main(common + ["--out", str(tmp_path / "x"), "--finetune-decoder", str(tmp_path / "missing")])


def test_finetune_decoder_into_a_wider_head_starts_where_the_old_decoder_was(tmp_path):
    """A head with hint channels: the read-out keeps its colour rows, the new head starts as the identity,
    so the fine-tune begins with the stored decoder's pictures (minus the old head's correction)."""
    from avdit_mini.train import build_autoencoder, freeze_encoder_from

    common = ["autoencoder", "--modality", "video", "--tiny", "--steps", "2", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--out", str(tmp_path / "base"), "--refine-width", "0"])
    base, _ = build_autoencoder("video", tiny=True, refine_width=0)
    base.load_state_dict(checkpoints.load_checkpoint(tmp_path / "base")[0])
    wide, _ = build_autoencoder("video", tiny=True, refine_width=8, refine_depth=4, refine_hints=2)
    freeze_encoder_from(wide, tmp_path / "base")
    assert not any(p.requires_grad for p in wide.encoder.parameters())
    video = torch.rand(1, 3, 17, 64, 64)
    with torch.no_grad():
        assert torch.equal(base.encode(video), wide.encode(video))
        assert torch.allclose(base.decode(base.encode(video)), wide.decode(wide.encode(video)), atol=1e-6)
    main(common + ["--out", str(tmp_path / "wide"), "--finetune-decoder", str(tmp_path / "base"),
                   "--refine-width", "8", "--refine-depth", "4", "--refine-hints", "2", "--loss-frames", "3"])
    assert checkpoints.load_checkpoint(tmp_path / "wide")[1]["config"]["model"]["refine_hints"] == 2


def test_latent_noise_perturbs_only_what_the_decoder_sees(tmp_path):
    """--latent-noise: the decoder learns from latents plus noise scaled by each channel's spread; the
    encoder, and so the latents an AVDiT is trained on, stay exactly the stored ones."""
    from avdit_mini.train import autoencoder_loss, build_autoencoder

    model, _ = build_autoencoder("video", tiny=True)
    batch = {"video": torch.rand(4, 3, 17, 64, 64)}
    seen = []
    decode_raw = model.decode_raw
    model.decode_raw = lambda latent, frames=None: seen.append(latent.detach()) or decode_raw(latent, frames)
    with torch.no_grad():
        latent = model.encode(batch["video"])
    autoencoder_loss(model, "video", batch, latent_noise=0.0)
    assert torch.equal(seen[-1], latent)                                       # 0: the decoder sees the latent
    torch.manual_seed(0)
    assert torch.isfinite(autoencoder_loss(model, "video", batch, frames=3, latent_noise=1.0)["loss"])
    offset = seen[-1] - latent
    spread = latent.std(dim=(0, 2, 3, 4))
    per_channel = offset.std(dim=(0, 2, 3, 4)) / spread                        # noise in units of each channel's spread
    assert offset.abs().max() > 0 and (per_channel < 1.0).all() and per_channel.mean() > 0.1
    common = ["autoencoder", "--modality", "video", "--tiny", "--steps", "2", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--out", str(tmp_path / "base")])
    main(common + ["--out", str(tmp_path / "robust"), "--finetune-decoder", str(tmp_path / "base"), "--latent-noise", "0.5"])
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    robust, meta = checkpoints.load_checkpoint(tmp_path / "robust")
    assert all(torch.equal(base[k], robust[k]) for k in base if k.startswith("encoder."))
    assert any(not torch.equal(base[k], robust[k]) for k in base if k.startswith("decoder."))
    assert "--latent-noise 0.5" in meta["command"]


def _run_split_and_whole(tmp_path, args: list[str], key: str | None) -> dict:
    """Train ``args`` in one go (``full``) and interrupted after 2 of 4 steps then resumed (``split``): the same losses,
    weights and companion state (``<stem>.<key>.pt``, saved with each checkpoint; ``key=None``: no companion).
    Returns the full run's weights."""
    main(args + ["--out", str(tmp_path / "full")])
    main(args + ["--out", str(tmp_path / "split"), "--stop-after", "2"])
    assert key is None or (tmp_path / f"split.{key}.pt").exists()
    main(args + ["--out", str(tmp_path / "split"), "--resume"])
    full = json.loads((tmp_path / "full.json").read_text())
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["loss_log"] == pytest.approx(full["loss_log"], rel=1e-5) and len(full["loss_log"]) == 4
    a, _ = checkpoints.load_checkpoint(tmp_path / "full")
    b, _ = checkpoints.load_checkpoint(tmp_path / "split")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    if key is None:
        return a
    states = [torch.load(tmp_path / f"{n}.{key}.pt", weights_only=True)[key] for n in ("full", "split")]
    assert all(torch.allclose(states[0][k], states[1][k], atol=1e-6) for k in states[0])
    return a


def test_adversarial_finetune_trains_a_critic_and_resumes_exactly(tmp_path):
    """--adversarial: a patch critic learns beside the decoder, its state is saved with each checkpoint,
    an interrupted run resumes to the same losses and weights, and the encoder is never touched."""
    from avdit_mini.video_ae import FrameCritic, hinge_critic_loss, object_crops

    critic = FrameCritic()
    assert critic(torch.rand(2, 3, 5, 64, 64)).shape == (10, 1, 16, 16)     # a logit per ~26-px patch, per frame
    with pytest.raises(ValueError, match="FrameCritic takes"):
        critic(torch.rand(3, 64, 64))
    video = torch.full((1, 3, 2, 64, 64), 0.2)
    video[0, :, 0, 50:58, 3:11] = 0.9                                           # an object near the corner...
    video[0, :, 1, 20:26, 30:36] = 0.9                                          # ...then in the middle
    real, shifted = object_crops([video, video + 1], video, 24)
    assert real.shape == (2, 3, 24, 24) and torch.equal(shifted, real + 1)   # the same window cut from every video
    assert (real[0] > 0.5).sum() == 3 * 8 * 8                                  # the whole object, the window kept inside the frame
    assert torch.equal(real[1, :, 9:15, 9:15], video[0, :, 1, 20:26, 30:36])  # centred on it
    with pytest.raises(ValueError, match="object_crops"):
        object_crops([video[:, :, :1]], video)
    logits = torch.tensor([2.0, -2.0])
    assert hinge_critic_loss(logits[:1], logits[1:]) == 0                    # both sides past the margin: no loss
    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--steps", "2", "--out", str(tmp_path / "base")])
    adversarial = common + ["--steps", "4", "--finetune-decoder", str(tmp_path / "base"), "--adversarial", "0.5",
                            "--adversarial-start", "1", "--loss-frames", "3", "--edge-weight", "0.1", "--pixel-loss", "l1"]
    a = _run_split_and_whole(tmp_path, adversarial, "critic")
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    assert all(torch.equal(base[k], a[k]) for k in base if k.startswith("encoder."))
    assert any(not torch.equal(base[k], a[k]) for k in base if k.startswith("decoder."))
    (tmp_path / "split.critic.pt").unlink()
    with pytest.raises(FileNotFoundError, match="critic"):
        main(adversarial + ["--out", str(tmp_path / "split"), "--resume"])
    with pytest.raises(ValueError, match="latent-noise"):
        main(adversarial + ["--out", str(tmp_path / "noisy"), "--latent-noise", "0.5"])
    with pytest.raises(ValueError, match="video decoder"):
        main(["autoencoder", "--modality", "audio", "--tiny", "--steps", "1", "--adversarial", "1", "--no-manifest",
              "--eval-clips", "0", "--out", str(tmp_path / "audio")])


def test_decoder_blocks_and_critic_zoom_in_a_finetune(tmp_path):
    """--decoder-blocks adds a trunk to a trained decoder (the encoder untouched, the trunk trained); --critic-zoom
    shows the critic enlarged windows, so the same seed trains a different critic; --boost-area reweighs the loss."""
    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--steps", "2", "--out", str(tmp_path / "base")])
    tune = common + ["--steps", "2", "--finetune-decoder", str(tmp_path / "base"), "--decoder-blocks", "1",
                     "--adversarial", "1", "--loss-frames", "2"]
    main(tune + ["--out", str(tmp_path / "plain")])
    main(tune + ["--out", str(tmp_path / "zoom"), "--critic-zoom", "2"])
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    tuned, meta = checkpoints.load_checkpoint(tmp_path / "zoom")
    assert meta["config"]["model"]["decoder_blocks"] == 1
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("encoder."))
    assert tuned["trunk.0.conv2.conv.weight"].abs().sum() > 0      # started at zero, trained
    critics = [torch.load(tmp_path / f"{n}.critic.pt", weights_only=True)["critic"] for n in ("plain", "zoom")]
    assert not torch.allclose(critics[0]["net.0.weight"], critics[1]["net.0.weight"])
    with pytest.raises(ValueError, match="critic-zoom"):
        main(tune + ["--out", str(tmp_path / "bad"), "--critic-zoom", "0"])
    # --object-boost / --boost-area reach the loss: the same seed and batch, a different first loss
    weighting = common + ["--steps", "1", "--finetune-decoder", str(tmp_path / "base")]
    main(weighting + ["--out", str(tmp_path / "even")])
    main(weighting + ["--out", str(tmp_path / "area"), "--object-boost", "8", "--boost-area", "300"])
    main(weighting + ["--out", str(tmp_path / "halo"), "--halo-weight", "1"])              # and --halo-weight
    logs = [checkpoints.load_checkpoint(tmp_path / n)[1]["loss_log"] for n in ("even", "area", "halo")]
    assert len(logs[0]) == len(logs[1]) == 1 and logs[0][0] != logs[1][0]
    assert logs[2][0] > logs[0][0]                                                  # the ring's error is added


def test_l1_pixel_loss_draws_the_median():
    """Where a pixel is the object's in 3 of 4 cases, the squared error's best guess is 0.75, the absolute error's 1."""
    from avdit_mini.video_ae import reconstruction_loss

    targets = torch.zeros(4, 3, 1, 8, 8)
    targets[:3, :, :, 4, 4] = 1.0                                               # one pixel, object in 3 clips of 4
    guesses = torch.linspace(0, 1, 101)
    def best(pixel):
        losses = []
        for g in guesses:
            drawn = targets.clone()
            drawn[:, :, :, 4, 4] = g
            losses.append(float(reconstruction_loss(drawn, targets, boost=0.0, pixel=pixel)["loss"]))
        return float(guesses[int(np.argmin(losses))])
    assert best("mse") == pytest.approx(0.75, abs=0.011) and best("l1") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown pixel loss"):
        reconstruction_loss(targets, targets, pixel="huber")


def test_latent_cache_is_named_by_the_encoders_only(tmp_path):
    """A decoder fine-tune keeps the cached training latents; a new encoder does not."""
    from avdit_mini.train import latent_cache_name

    for name, config in (("video_ae", {"encoder.w": torch.ones(2), "decoder.w": torch.ones(2)}),
                         ("audio_ae", {"log_mel.fb": torch.ones(2), "encoder.w": torch.ones(2), "inverter.w": torch.ones(2)})):
        checkpoints.save_checkpoint(tmp_path / name, config, {"kind": name})
    first = latent_cache_name(64, tmp_path)
    checkpoints.save_checkpoint(tmp_path / "video_ae", {"encoder.w": torch.ones(2), "decoder.w": torch.zeros(2)}, {"kind": "v"})
    assert latent_cache_name(64, tmp_path) == first
    checkpoints.save_checkpoint(tmp_path / "audio_ae", {"log_mel.fb": torch.zeros(2), "encoder.w": torch.ones(2)}, {"kind": "a"})
    assert latent_cache_name(64, tmp_path) != first
    assert latent_cache_name(128, tmp_path) != latent_cache_name(64, tmp_path)


def test_size_weights_show_the_small_objects_more_often_and_resume_exactly(tmp_path):
    """--size-weights draws the batches' object sizes in chosen shares; a step's clips depend on the step alone."""
    from avdit_mini.data import World
    from avdit_mini.train import SizeWeightedSampler
    world = World()
    full = list(SizeWeightedSampler(0, 30, 8, (3, 1, 1)))
    assert len(full) == 240 and len(set(full)) == 240                      # no clip twice
    sizes = [world.sample_factors(i)["size"] for i in full]
    assert 0.45 < sizes.count(0) / 240 < 0.75                             # 3/5 expected, the world's 1/3
    assert list(SizeWeightedSampler(12, 30, 8, (3, 1, 1))) == full[12 * 8:]   # a resumed run sees the same clips
    only_small = list(SizeWeightedSampler(0, 4, 8, (1, 0, 0)))
    assert {world.sample_factors(i)["size"] for i in only_small} == {0}
    with pytest.raises(ValueError, match="one per radius"):
        SizeWeightedSampler(0, 4, 8, (1, 1))
    with pytest.raises(ValueError, match="not all zero"):
        SizeWeightedSampler(0, 4, 8, (0, 0, 0))
    # the flag reaches the loader: the same seed, other clips, another first loss
    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1", "--steps", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--out", str(tmp_path / "world")])
    main(common + ["--out", str(tmp_path / "small"), "--size-weights", "1", "0", "0"])
    logs = [checkpoints.load_checkpoint(tmp_path / n)[1]["loss_log"] for n in ("world", "small")]
    assert logs[0][0] != logs[1][0]


def test_a_loss_log_is_written_one_row_per_line(tmp_path):
    log = [{"step": s, "loss": 0.5 - s / 100, "per_strategy": {"0": 0.25, "1": 0.125}} for s in range(3)]
    checkpoints.save_checkpoint(tmp_path / "m", _state(), {"v": 1}, {"loss_log": log, "metrics": {"a": 1}})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text)["loss_log"] == log and json.loads(text)["metrics"] == {"a": 1}
    rows = [line for line in text.splitlines() if '"step"' in line]
    assert len(rows) == 3 and all(line.strip().startswith("{") for line in rows)
    checkpoints.save_checkpoint(tmp_path / "e", _state(), {"v": 1}, {"loss_log": []})
    assert json.loads((tmp_path / "e.json").read_text())["loss_log"] == []


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
# The shipped folder must leave room in the working tree that a lent GPU receives (64 MiB in all, of
# which the rest of the repository takes about 4).
SHIPPED_BUDGET_BYTES = 60 * 2**20


def test_the_shipped_checkpoints_match_their_manifest_and_budget():
    """Every shipped file has its MANIFEST's sha256, its JSON is in the form save_checkpoint writes, and
    the folder stays inside its budget."""
    assert all(checkpoints.verify_manifest(SHIPPED).values())
    for meta in sorted(SHIPPED.glob("*.json")):
        text = meta.read_text()
        assert text == checkpoints._json_text(json.loads(text)) + "\n", f"{meta.name} was not written by save_checkpoint"
    total = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert total <= SHIPPED_BUDGET_BYTES, f"data/checkpoints holds {total / 2**20:.1f} MiB"


def test_shape_alignment_finetunes_both_sides_and_resumes_exactly(tmp_path):
    """--finetune STEM --shape-alignment W: encoder and decoder both train, a shape read-out learns beside them
    (saved with each checkpoint), and an interrupted run resumes to the same losses and weights."""
    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--steps", "2", "--out", str(tmp_path / "base")])
    aligned = common + ["--steps", "4", "--finetune", str(tmp_path / "base"), "--shape-alignment", "0.1",
                        "--loss-frames", "3", "--edge-weight", "0.1"]
    a = _run_split_and_whole(tmp_path, aligned, "readout")
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    assert any(not torch.equal(base[k], a[k]) for k in base if k.startswith("encoder."))  # the latents moved
    plain = common + ["--steps", "1", "--finetune", str(tmp_path / "base"), "--out", str(tmp_path / "plain")]
    main(plain)                                           # --finetune alone: no read-out, the loss as ever
    assert not (tmp_path / "plain.readout.pt").exists()
    (tmp_path / "split.readout.pt").unlink()
    with pytest.raises(FileNotFoundError, match="read-out"):
        main(aligned + ["--out", str(tmp_path / "split"), "--resume"])
    with pytest.raises(ValueError, match="frozen encoder"):
        main(common + ["--steps", "1", "--finetune-decoder", str(tmp_path / "base"), "--shape-alignment", "1",
                       "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="exclude each other"):
        main(plain + ["--finetune-decoder", str(tmp_path / "base")])
    with pytest.raises(ValueError, match="video autoencoder"):
        main(["autoencoder", "--modality", "audio", "--tiny", "--steps", "1", "--shape-alignment", "1", "--no-manifest",
              "--eval-clips", "0", "--out", str(tmp_path / "audio")])
    # encoder blocks: added by --finetune (both sides train), kept frozen by a later --finetune-decoder
    main(common + ["--steps", "2", "--finetune", str(tmp_path / "base"), "--encoder-blocks", "1", "--shape-alignment", "0.1",
                   "--out", str(tmp_path / "deep")])
    deep, _ = checkpoints.load_checkpoint(tmp_path / "deep")
    assert any(k.startswith("encoder_trunk.") for k in deep)
    main(common + ["--steps", "2", "--finetune-decoder", str(tmp_path / "deep"), "--encoder-blocks", "1", "--latent-noise", "0.3",
                   "--out", str(tmp_path / "deep_decoder")])
    redrawn, _ = checkpoints.load_checkpoint(tmp_path / "deep_decoder")
    assert all(torch.equal(deep[k], redrawn[k]) for k in deep if k.startswith("encoder"))       # encoder and its blocks kept
    assert any(not torch.equal(deep[k], redrawn[k]) for k in deep if k.startswith("decoder."))
    with pytest.raises(ValueError, match="no such --encoder-blocks"):
        main(common + ["--steps", "1", "--finetune-decoder", str(tmp_path / "base"), "--encoder-blocks", "1",
                       "--out", str(tmp_path / "y")])


def test_shape_head_finetunes_the_decoder_only_and_resumes_exactly(tmp_path):
    """--finetune-decoder STEM --shape-head W: the decoder gains its own shape reader, trained with the world's labels;
    the encoder (so the latents) stays bit for bit; an interrupted run resumes to the same losses and weights."""
    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--steps", "2", "--out", str(tmp_path / "base")])
    headed = common + ["--steps", "4", "--finetune-decoder", str(tmp_path / "base"), "--shape-head", "0.1",
                       "--loss-frames", "3", "--edge-weight", "0.1"]
    a = _run_split_and_whole(tmp_path, headed, None)                                     # the head is in the checkpoint
    assert json.loads((tmp_path / "full.json").read_text())["config"]["model"]["shape_head"] == 3
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    assert all(torch.equal(base[k], a[k]) for k in base if k.startswith("encoder."))      # the latents stay
    assert any(k.startswith("shape_head.") for k in a) and not any(k.startswith("shape_head.") for k in base)
    assert not torch.equal(a["shape_head.inject.conv.weight"], torch.zeros_like(a["shape_head.inject.conv.weight"]))
    from avdit_mini.pipeline import load_autoencoder
    decoder = load_autoencoder("video", tmp_path, name="full")                            # loads with its head
    assert decoder.shape_head is not None and decoder.decode(torch.zeros(1, 8, 5, 8, 8)).shape == (1, 3, 17, 64, 64)
    with pytest.raises(ValueError, match="one at a time"):
        main(headed + ["--out", str(tmp_path / "x"), "--latent-noise", "0.3"])
    # with a critic: the head keeps learning from its labels while the critic judges the drawings
    main(common + ["--steps", "2", "--finetune-decoder", str(tmp_path / "full"), "--shape-head", "0.1", "--adversarial", "0.5",
                   "--out", str(tmp_path / "critic")])
    judged, _ = checkpoints.load_checkpoint(tmp_path / "critic")
    assert (tmp_path / "critic.critic.pt").exists()
    assert not torch.equal(judged["shape_head.read.0.conv.weight"], a["shape_head.read.0.conv.weight"])
    assert all(torch.equal(a[k], judged[k]) for k in a if k.startswith("encoder."))
    with pytest.raises(ValueError, match="video decoder"):
        main(["autoencoder", "--modality", "audio", "--tiny", "--steps", "1", "--shape-head", "1", "--no-manifest",
              "--eval-clips", "0", "--out", str(tmp_path / "audio")])


def test_shape_code_trains_the_coder_and_decoder_and_resumes_exactly(tmp_path):
    """--finetune-decoder STEM --shape-code W: the encoder gains its shape code (trained with the world's drawing), the
    decoder learns to read it; the encoder's own weights stay bit for bit; a resume is exact; the latents it encodes
    have 8 + 3 channels; it is refused for audio, without --finetune-decoder, and beside a shape head."""
    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--steps", "2", "--out", str(tmp_path / "base")])
    coded = common + ["--steps", "4", "--finetune-decoder", str(tmp_path / "base"), "--shape-code", "1",
                      "--latent-noise", "0.5", "--latent-blur", "0.5", "--unsure-shape", "0.5",
                      "--loss-frames", "3"]
    a = _run_split_and_whole(tmp_path, coded, None)
    assert json.loads((tmp_path / "full.json").read_text())["config"]["model"]["shape_code"] == 3
    base, _ = checkpoints.load_checkpoint(tmp_path / "base")
    assert all(torch.equal(base[k], a[k]) for k in base if k.startswith("encoder."))
    assert not torch.equal(a["code_inject.conv.weight"], torch.zeros_like(a["code_inject.conv.weight"]))
    from avdit_mini.pipeline import load_autoencoder
    model = load_autoencoder("video", tmp_path, name="full")
    with torch.no_grad():
        latent = model.encode(torch.rand(1, 3, 17, 64, 64))
    assert latent.shape == (1, 11, 5, 8, 8) and model.decode(latent).shape == (1, 3, 17, 64, 64)
    # a second fine-tune keeps the coder (its code is part of the latents) unless told to train it
    main(common + ["--steps", "2", "--finetune-decoder", str(tmp_path / "full"), "--shape-code", "1", "--unsure-shape", "0.5",
                   "--out", str(tmp_path / "again")])
    again, _ = checkpoints.load_checkpoint(tmp_path / "again")
    assert all(torch.equal(a[k], again[k]) for k in a if k.startswith(("encoder.", "shape_coder.")))
    assert any(not torch.equal(a[k], again[k]) for k in a if k.startswith("decoder."))
    main(common + ["--steps", "2", "--finetune-decoder", str(tmp_path / "full"), "--shape-code", "1", "--train-coder",
                   "--out", str(tmp_path / "retrained")])
    retrained, _ = checkpoints.load_checkpoint(tmp_path / "retrained")
    assert any(not torch.equal(a[k], retrained[k]) for k in a if k.startswith("shape_coder."))
    with pytest.raises(ValueError, match="--finetune-decoder"):
        main(common + ["--steps", "1", "--shape-code", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="one at a time"):
        main(coded + ["--shape-head", "0.1", "--out", str(tmp_path / "y")])
    with pytest.raises(ValueError, match="need --shape-code"):
        main(common + ["--steps", "1", "--finetune-decoder", str(tmp_path / "base"), "--latent-blur", "0.5",
                       "--out", str(tmp_path / "z")])
    # a latent unsure of its shape: the mean of the clip's latents drawn with each shape, for the chosen clips only
    from avdit_mini.data import SHAPES, World, WorldDataset, collate
    from avdit_mini.train import unsure_of_shape
    batch = collate([WorldDataset(2, "train")[i] for i in range(2)])
    with torch.no_grad():
        own = model.encode_appearance(batch["video"])
        torch.manual_seed(0)
        unsure = unsure_of_shape(model, own, batch, 1.0)
        drawn = torch.stack([model.encode_appearance(World().redraw(batch["factors"][0], s)[None])[0] for s in SHAPES])
    assert torch.allclose(unsure[0], drawn.mean(dim=0), atol=1e-5) and not torch.allclose(unsure[0], own[0])
    assert torch.equal(unsure_of_shape(model, own, batch, 0.0), own)
    # the blur: a channel's mean passes, the finest pattern (a checkerboard over the 8 x 8 grid) does not
    from avdit_mini.train import finest_removed
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    latent = 3.0 + torch.zeros(1, 2, 5, 8, 8) + checker
    blurred = finest_removed(latent)
    assert torch.allclose(blurred[..., 1:-1, 1:-1], torch.full_like(blurred[..., 1:-1, 1:-1], 3.0), atol=1e-6)
    assert torch.allclose(finest_removed(torch.full((1, 1, 1, 8, 8), 2.0)), torch.full((1, 1, 1, 8, 8), 2.0))


def test_decode_guesses_teaches_the_decoder_a_diffusion_models_guesses(tmp_path):
    """--decode-guesses NAME: a share of each batch is decoded from avdit_NAME's one-step guess of its latent (its steps
    squeezed into 1..--guess-max-step), the rest from the true latent; the encoder stays bit for bit; a resume is exact;
    a decoder whose encoder is not the one the diffusion model was trained on is refused."""
    import argparse
    from dataclasses import asdict
    from safetensors.torch import save_file
    from avdit_mini.audio_ae import AudioAutoencoder
    from avdit_mini.config import Geometry
    from avdit_mini.data import WorldDataset, collate
    from avdit_mini.pipeline import load_autoencoder
    from avdit_mini.train import TINY_AUDIO_CONFIG, GuessLoss

    common = ["autoencoder", "--modality", "video", "--tiny", "--batch-size", "2", "--warmup", "1",
              "--eval-clips", "0", "--no-manifest", "--threads", "1"]
    main(common + ["--steps", "2", "--out", str(tmp_path / "video_ae")])
    checkpoints.save_checkpoint(tmp_path / "audio_ae", AudioAutoencoder(TINY_AUDIO_CONFIG).state_dict(),
                                {"kind": "audio_ae", "model": asdict(TINY_AUDIO_CONFIG), "geometry": asdict(Geometry())})
    g = torch.Generator().manual_seed(0)
    save_file({"video": torch.randn(8, 8, 5, 8, 8, generator=g), "audio": torch.randn(8, 8, 34, generator=g)},
              str(tmp_path / "latents.safetensors"))
    main(["avdit", "--preset", "tiny", "--latents", str(tmp_path / "latents.safetensors"), "--autoencoders", str(tmp_path),
          "--out", str(tmp_path / "avdit_tiny"), "--batch-size", "4", "--steps", "2", "--warmup", "1", "--threads", "1",
          "--quiet", "--no-manifest"])
    guessed = common + ["--steps", "4", "--finetune-decoder", str(tmp_path / "video_ae"), "--decode-guesses", "tiny",
                        "--guess-folder", str(tmp_path), "--loss-frames", "3"]
    runs = tmp_path / "runs"
    runs.mkdir()
    tuned = _run_split_and_whole(runs, guessed, None)
    base, _ = checkpoints.load_checkpoint(tmp_path / "video_ae")
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("encoder."))      # the latents stay
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("decoder."))

    # what the decoder is shown: the true latent, or (with probability --guess-share) the model's guess of it
    model = load_autoencoder("video", tmp_path)
    model.encoder.requires_grad_(False), model.encoder_trunk.requires_grad_(False)
    batch = collate([WorldDataset(4, "val")[i] for i in range(4)])
    latent = model.encode(batch["video"])
    settings = dict(decode_guesses="tiny", guess_folder=str(tmp_path), guess_max_step=300, seed=0)
    everything = GuessLoss(model, argparse.Namespace(**settings, guess_share=1.0), torch.device("cpu"))
    shown = everything.guessed_latents(batch["video"], batch["audio"], step=3)
    assert shown.shape == latent.shape and not torch.allclose(shown, latent)
    assert torch.equal(shown, everything.guessed_latents(batch["video"], batch["audio"], step=3))  # seeded by the step
    almost_none = GuessLoss(model, argparse.Namespace(**settings, guess_share=1e-9), torch.device("cpu"))
    assert torch.equal(almost_none.guessed_latents(batch["video"], batch["audio"], step=3), latent)
    gentle = GuessLoss(model, argparse.Namespace(**{**settings, "guess_max_step": 1}, guess_share=1.0), torch.device("cpu"))
    near = gentle.guessed_latents(batch["video"], batch["audio"], step=3)      # at t = 1 the guess is nearly the latent
    assert (near - latent).abs().mean() < 0.2 * (shown - latent).abs().mean()
    assert everything.stats and gentle.stats[-1] < everything.stats[-1]

    # refused: a decoder of other latents, both sides trained, a guess share or step out of range
    main(common + ["--steps", "1", "--seed", "5", "--out", str(tmp_path / "other")])
    with pytest.raises(ValueError, match="trained on the latents of"):
        main(common + ["--steps", "1", "--finetune-decoder", str(tmp_path / "other"), "--decode-guesses", "tiny",
                       "--guess-folder", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--finetune-decoder"):
        main(common + ["--steps", "1", "--finetune", str(tmp_path / "video_ae"), "--decode-guesses", "tiny",
                       "--guess-folder", str(tmp_path), "--out", str(tmp_path / "x")])
    for flag, value in (("--guess-share", "0"), ("--guess-max-step", "0")):
        with pytest.raises(ValueError, match=flag):
            main(guessed + [flag, value, "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="one at a time"):
        main(guessed + ["--latent-noise", "0.3", "--out", str(tmp_path / "x")])
