"""Audio (chapter 2) and video (chapter 3) autoencoders: shapes, causality, input checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from avdit_mini.audio_ae import AudioAEConfig, AudioAutoencoder, LogMel
from avdit_mini.video_ae import (TINY_VIDEO_CONFIG, VideoAEConfig, VideoAutoencoder, cell_means, edge_error,
                                 object_weights, reconstruction_loss, tubelets, untubelets)

TINY_AUDIO = AudioAEConfig(channels=(16, 16, 16), blocks=1, groups=4, griffin_lim_iters=2)


@pytest.fixture(scope="module")
def video_ae() -> VideoAutoencoder:
    torch.manual_seed(0)
    return VideoAutoencoder(TINY_VIDEO_CONFIG).eval()


def test_log_mel_has_136_frames():
    log_mel = LogMel()(torch.zeros(2, 34_000))
    assert log_mel.shape == (2, 64, 136)
    assert torch.isfinite(log_mel).all()


def test_audio_shapes():
    model = AudioAutoencoder(TINY_AUDIO)
    audio = 0.1 * torch.randn(2, 34_000)
    latent = model.encode(audio)
    assert latent.shape == (2, 8, 34)
    assert model.decode(latent).shape == (2, 64, 136)
    assert model.mel_to_audio(model.decode(latent)).shape == (2, 34_000)


def test_griffin_lim_is_deterministic():
    model = AudioAutoencoder(TINY_AUDIO)
    log_mel = model.log_mel(0.1 * torch.randn(1, 34_000))
    assert torch.equal(model.mel_to_audio(log_mel), model.mel_to_audio(log_mel))


@pytest.mark.parametrize("shape", [(34_000,), (2, 16_000), (2, 1, 34_000)])
def test_audio_wrong_input(shape):
    with pytest.raises(ValueError, match=r"expected mono audio \[B, 34000\] at 16 kHz"):
        AudioAutoencoder(TINY_AUDIO).encode(torch.zeros(shape))


def test_tubelets_round_trip_and_layout():
    video = torch.randn(2, 3, 17, 64, 64)
    folded = tubelets(video, 4, 4)
    assert folded.shape == (2, 192, 5, 16, 16)
    assert torch.equal(untubelets(folded, 4, 4), video)
    # tubelet 0 holds frame 0 alone (4 copies); tubelet 1 holds frames 1-4, in order
    first = folded[0, :, 0, 0, 0].reshape(3, 4, 4, 4)  # [C, time, p, p]
    assert all(torch.equal(first[:, k], video[0, :, 0, :4, :4]) for k in range(4))
    second = folded[0, :, 1, 0, 0].reshape(3, 4, 4, 4)
    assert all(torch.equal(second[:, k], video[0, :, 1 + k, :4, :4]) for k in range(4))
    with pytest.raises(ValueError, match="1 \+ 4 n frames"):
        tubelets(torch.zeros(1, 3, 16, 64, 64), 4, 4)


def test_cell_means_is_exact_on_flat_cells():
    video = torch.rand(1, 3, 1, 1, 1).expand(1, 3, 17, 64, 64).contiguous()
    assert torch.allclose(cell_means(video), video, atol=1e-6)
    moving = torch.rand(1, 3, 17, 64, 64)
    assert cell_means(moving).shape == moving.shape


def test_video_shapes(video_ae):
    video = torch.rand(2, 3, 17, 64, 64)
    latent = video_ae.encode(video)
    assert latent.shape == (2, 8, 5, 8, 8)
    out = video_ae.decode(latent)
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("frame", [1, 4, 5, 9, 16])
def test_video_encoder_is_causal(video_ae, frame):
    """Changing frame k changes no latent frame before k's group (frame 0 alone, then groups of 4)."""
    video = torch.rand(1, 3, 17, 64, 64)
    changed = video.clone()
    changed[:, :, frame] = torch.rand(3, 64, 64)
    with torch.no_grad():
        delta = (video_ae.encode(video) - video_ae.encode(changed)).abs().amax(dim=(0, 1, 3, 4))  # [5]
    group = (frame + 3) // 4  # latent frame that first sees frame k
    assert torch.all(delta[:group] == 0)
    assert delta[group] > 0


def test_video_decoder_is_causal(video_ae):
    latent = torch.randn(1, 8, 5, 8, 8)
    changed = latent.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        delta = (video_ae.decode(latent) - video_ae.decode(changed)).abs().amax(dim=(0, 1, 3, 4))  # [17]
    assert torch.all(delta[:5] == 0) and delta[5:9].max() > 0 and delta[9:13].max() > 0  # its group and the next
    assert torch.all(delta[13:] == 0)  # the decoder's time kernel is 2: two groups later it is forgotten


def test_default_video_config_size():
    parameters = sum(p.numel() for p in VideoAutoencoder(VideoAEConfig()).parameters())
    assert 1_000_000 <= parameters <= 2_000_000


@pytest.mark.parametrize("shape", [(3, 17, 64, 64), (1, 3, 16, 64, 64), (1, 3, 17, 32, 32)])
def test_video_wrong_input(video_ae, shape):
    with pytest.raises(ValueError, match=r"expected video \[B, 3, 17, 64, 64\]"):
        video_ae.encode(torch.rand(shape))


def test_video_loss_weights_the_object():
    video = torch.full((1, 3, 17, 64, 64), 0.1)
    video[..., 30:34, 30:34] = 0.9  # a small object
    off_object = video.clone()
    off_object[..., 0:4, 0:4] += 0.2
    on_object = video.clone()
    on_object[..., 30:34, 30:34] += 0.2
    assert reconstruction_loss(on_object, video)["loss"] > 2.5 * reconstruction_loss(off_object, video)["loss"]


def test_boost_area_weighs_small_and_large_objects_alike():
    """--boost-area: each frame's object gets the same total extra weight whatever its size; without it, its area's."""
    video = torch.full((2, 3, 1, 64, 64), 0.1)
    video[0, :, :, 30:34, 30:34] = 0.9                                            # a 4 x 4 object (6 x 6 with its edge)
    video[1, :, :, 20:36, 20:36] = 0.9                                            # a 16 x 16 one (18 x 18)
    plain = (object_weights(video) - 1).sum(dim=(1, 2, 3, 4))
    assert plain.tolist() == [2.0 * 36, 2.0 * 324]
    even = (object_weights(video, boost=2.0, area=300.0) - 1).sum(dim=(1, 2, 3, 4))
    assert torch.allclose(even, torch.tensor([600.0, 600.0]))
    # a frame without an object (nothing differs from the median) gets no boost, and no division by zero
    assert torch.equal(object_weights(torch.full((1, 3, 1, 8, 8), 0.5), area=300.0), torch.ones(1, 1, 1, 8, 8))
    # the loss on the small object's pixels rises with the area weighting; on the background it falls
    blurred = video.clone()
    blurred[0, :, :, 30:34, 30:34] = 0.5
    assert reconstruction_loss(blurred, video, area=300.0)["loss"] > 3 * reconstruction_loss(blurred, video)["loss"]


def test_halo_error_charges_a_faint_ring_around_the_object_only():
    """--halo-weight: the absolute error on the 2-pixel ring of background around the object, per frame."""
    from avdit_mini.video_ae import halo_error
    video = torch.full((2, 3, 1, 64, 64), 0.1)
    video[0, :, :, 30:34, 30:34] = 0.9                                            # a small object
    video[1, :, :, 20:36, 20:36] = 0.9                                            # a large one
    assert halo_error(video, video) == 0
    haloed = video.clone()
    haloed[0, :, :, 29, 29:35] += 0.15                                            # a faint row just above the small one
    haloed[1, :, :, 19, 19:37] += 0.15                                            # and above the large one
    ring = [(8 ** 2 - 4 ** 2), (20 ** 2 - 16 ** 2)]                               # ring pixels of each frame
    expected = 0.5 * (0.15 * 6 / ring[0] + 0.15 * 18 / ring[1])
    assert torch.isclose(halo_error(haloed, video), torch.tensor(expected), rtol=1e-4)
    far = video.clone()
    far[:, :, :, 0:2, 0:2] += 0.15                                                # an error far from the object: not halo
    assert halo_error(far, video) == 0
    with_halo = reconstruction_loss(haloed, video, halo=1.0)
    assert torch.isclose(with_halo["loss"] - reconstruction_loss(haloed, video)["loss"], with_halo["halo"])


def test_refine_head_starts_as_the_identity():
    """The sharpening head's last layer starts at zero: a fresh head leaves the decoder's output unchanged."""
    torch.manual_seed(0)
    with_head = VideoAutoencoder(TINY_VIDEO_CONFIG).eval()
    without = VideoAutoencoder(VideoAEConfig(widths=(32, 64), refine_width=0)).eval()
    without.load_state_dict({k: v for k, v in with_head.state_dict().items() if not k.startswith("refine.")})
    latent = torch.randn(1, 8, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(with_head.decode(latent), without.decode(latent))


def test_edge_error_punishes_blur_more_than_mse_does():
    """A blurred object costs little squared error but a lot of image-gradient error."""
    video = torch.full((1, 3, 17, 64, 64), 0.1)
    video[..., 28:36, 28:36] = 0.9
    blurred = torch.nn.functional.avg_pool3d(video, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    assert edge_error(video, video) == 0
    plain = reconstruction_loss(blurred, video)
    with_edges = reconstruction_loss(blurred, video, edge=0.1)
    assert plain["edge"] > 0 and torch.isclose(with_edges["loss"], plain["loss"] + 0.1 * plain["edge"])


def test_decoding_chosen_frames_equals_decoding_all_then_choosing():
    """The head works frame by frame, so the cheap training path (a few frames) is exactly the full one."""
    torch.manual_seed(0)
    model = VideoAutoencoder(VideoAEConfig(widths=(32, 64), refine_width=8, refine_depth=4, refine_hints=2)).eval()
    torch.nn.init.normal_(model.refine.net[-1].weight, std=0.1)  # a head that does something
    latent, frames = torch.randn(2, 8, 5, 8, 8), torch.tensor([0, 3, 16])
    with torch.no_grad():
        assert torch.allclose(model.decode_raw(latent, frames), model.decode_raw(latent)[:, :, frames], atol=1e-6)
    with pytest.raises(ValueError, match="need a sharpening head"):
        VideoAutoencoder(VideoAEConfig(refine_width=0, refine_hints=2))


def test_decoder_trunk_starts_as_the_identity_and_stays_causal():
    """Blocks added on the latent grid (``decoder_blocks``) leave a trained decoder unchanged until they learn,
    and never let a latent frame change what was decoded before it."""
    torch.manual_seed(0)
    deep = VideoAutoencoder(replace(TINY_VIDEO_CONFIG, decoder_blocks=2)).eval()
    plain = VideoAutoencoder(TINY_VIDEO_CONFIG).eval()
    plain.load_state_dict({k: v for k, v in deep.state_dict().items() if not k.startswith("trunk.")})
    latent = torch.randn(1, 8, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(deep.decode(latent), plain.decode(latent))
        for block in deep.trunk:
            torch.nn.init.normal_(block.conv2.conv.weight, std=0.05)  # blocks that do something
        assert not torch.equal(deep.decode(latent), plain.decode(latent))
        changed = latent.clone()
        changed[:, :, 2] += 1.0
        delta = (deep.decode(latent) - deep.decode(changed)).abs().amax(dim=(0, 1, 3, 4))  # [17]
    assert torch.all(delta[:5] == 0) and delta[5:9].max() > 0
    assert delta[13:].max() > 0  # each block looks one latent frame further back: a longer memory, still causal


def test_object_cells_is_the_objects_share_of_each_latent_cell():
    from avdit_mini.video_ae import object_cells

    video = torch.full((1, 3, 17, 64, 64), 0.2)
    video[0, :, :, 8:16, 16:20] = 0.9                      # half of latent cell (1, 2) in every frame
    cells = object_cells(video)
    assert cells.shape == (1, 5, 8, 8)
    assert torch.allclose(cells[0, :, 1, 2], torch.full((5,), 0.5))
    assert cells.sum() == pytest.approx(5 * 0.5)           # nowhere else
    video[0, :, 1:5] = 0.2                                 # gone from the second time group (frames 1-4)
    assert object_cells(video)[0, 1].sum() == 0 and object_cells(video)[0, 0, 1, 2] == 0.5


def test_shape_readout_cannot_grow_its_way_to_confidence():
    """ShapeReadout: unit-length rows over the latent in its own spread -- scaling the latent changes no logit,
    so only a code that stands apart from the latent's spread lowers the cross-entropy."""
    from avdit_mini.video_ae import ShapeReadout, shape_alignment_error

    torch.manual_seed(0)
    readout = ShapeReadout(8, 3, scale=4.0)
    latent = torch.randn(4, 8, 5, 8, 8)
    spread = latent.std(dim=(0, 2, 3, 4))
    with torch.no_grad():
        logits = readout(latent, spread)
    assert logits.shape == (4, 3, 5, 8, 8)
    assert torch.allclose(readout(10 * latent, 10 * spread), logits, atol=1e-5)
    readout.direction.data *= 100                          # longer rows: the same logits
    assert torch.allclose(readout(latent, spread), logits, atol=1e-5)
    shapes = torch.tensor([0, 1, 2, 0])
    cells = torch.zeros(4, 5, 8, 8)
    cells[:, :, 3, 3] = 1.0                                # the object in one cell per frame
    error = shape_alignment_error(logits, shapes, cells)
    picked = torch.nn.functional.cross_entropy(logits[:, :, :, 3, 3], shapes[:, None].expand(4, 5))
    assert error.item() == pytest.approx(picked.item(), rel=1e-5)  # cells the object does not touch weigh nothing
    code = torch.zeros(4, 8, 5, 8, 8)                      # a loud code in the read-out's own directions
    rows = torch.nn.functional.normalize(readout.direction.data, dim=1)
    code[:, :, :, 3, 3] = 6 * rows[shapes][:, :, None]
    assert shape_alignment_error(readout(code, torch.ones(8)), shapes, cells) < error


@pytest.mark.parametrize("frame", [1, 5, 16])
def test_encoder_blocks_start_as_the_identity_and_stay_causal(frame):
    """Blocks on the encoder's 8 x 8 grid (``encoder_blocks``) leave a trained encoder's latents unchanged until
    they learn; once they do, they let a cell see its neighbours, never a later frame."""
    torch.manual_seed(0)
    deep = VideoAutoencoder(replace(TINY_VIDEO_CONFIG, encoder_blocks=2)).eval()
    plain = VideoAutoencoder(TINY_VIDEO_CONFIG).eval()
    plain.load_state_dict({k: v for k, v in deep.state_dict().items() if not k.startswith("encoder_trunk.")})
    assert "encoder_blocks" not in plain.config.to_dict()            # configs stored before the field still match
    video = torch.rand(1, 3, 17, 64, 64)
    with torch.no_grad():
        assert torch.equal(deep.encode(video), plain.encode(video))
        for block in deep.encoder_trunk:
            torch.nn.init.normal_(block.expand.conv.weight, std=0.05)
        assert not torch.equal(deep.encode(video), plain.encode(video))
        changed = video.clone()
        changed[:, :, frame] = torch.rand(3, 64, 64)
        delta = (deep.encode(video) - deep.encode(changed)).abs().amax(dim=(0, 1, 3, 4))  # [5]
        spot = video.clone()
        spot[:, :, :, 28:36, 28:36] = 1.0                              # one latent cell's pixels, (3, 3)
        reach = (deep.encode(video) - deep.encode(spot)).abs().amax(dim=(0, 1, 2))
        near = (plain.encode(video) - plain.encode(spot)).abs().amax(dim=(0, 1, 2))
    group = (frame + 3) // 4
    assert torch.all(delta[:group] == 0) and delta[group] > 0
    assert near[3, 6] == 0 and near[6, 3] == 0 and reach[3, 6] > 0   # two blocks see two cells further than before


def test_shape_head_starts_as_the_identity_stays_causal_and_learns_the_shape():
    """The decoder's own shape reader (``shape_head``): added to a trained decoder it changes nothing until it
    learns; its logits for latent frame k see frames k and k - 1 only; a decoder without one says so when asked."""
    from avdit_mini.video_ae import shape_alignment_error

    torch.manual_seed(0)
    headed = VideoAutoencoder(replace(TINY_VIDEO_CONFIG, shape_head=3)).eval()
    plain = VideoAutoencoder(TINY_VIDEO_CONFIG).eval()
    plain.load_state_dict({k: v for k, v in headed.state_dict().items() if not k.startswith("shape_head.")})
    assert "shape_head" not in plain.config.to_dict() and headed.config.to_dict()["shape_head"] == 3
    latent = torch.randn(2, 8, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(headed.decode(latent), plain.decode(latent))
        assert headed.shape_logits(latent).shape == (2, 3, 5, 8, 8)
        torch.nn.init.normal_(headed.shape_head.inject.conv.weight, std=0.05)   # a head the decoder listens to
        assert not torch.equal(headed.decode(latent), plain.decode(latent))
        changed = latent.clone()
        changed[:, :, 2] += 1.0
        logit_delta = (headed.shape_logits(latent) - headed.shape_logits(changed)).abs().amax(dim=(0, 1, 3, 4))
        delta = (headed.decode(latent) - headed.decode(changed)).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(logit_delta[:2] == 0) and logit_delta[2] > 0 and logit_delta[3] > 0 and logit_delta[4] == 0
    assert torch.all(delta[:5] == 0) and delta[5:9].max() > 0
    with pytest.raises(ValueError, match="no shape head"):
        plain.shape_logits(latent)
    # the head alone learns a shape written in the latent (a code in the object's cell), the decoder untouched
    shapes = torch.tensor([0, 1])
    code = torch.zeros(2, 8, 5, 8, 8)
    code[0, 0, :, 3, 3], code[1, 1, :, 3, 3] = 3.0, 3.0
    cells = torch.zeros(2, 5, 8, 8)
    cells[:, :, 3, 3] = 1.0
    optimizer = torch.optim.Adam(headed.shape_head.read.parameters(), lr=1e-2)
    first = shape_alignment_error(headed.shape_logits(code), shapes, cells).item()
    for _ in range(30):
        error = shape_alignment_error(headed.shape_logits(code), shapes, cells)
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
    assert error.item() < 0.1 * first


def test_shape_code_is_causal_says_the_shape_and_starts_as_the_identity():
    """The encoder's shape code (``shape_code``): appended to the latent as its last channels; the code of latent
    frame k sees frame k's causal group only; added to a trained decoder it changes nothing until the decoder learns
    to read it; its training target puts each frame's per-cell coverage into the shape's channel."""
    from avdit_mini.data import SHAPES, WorldDataset
    from avdit_mini.video_ae import shape_code_targets

    torch.manual_seed(0)
    coded = VideoAutoencoder(replace(TINY_VIDEO_CONFIG, shape_code=3)).eval()
    plain = VideoAutoencoder(TINY_VIDEO_CONFIG).eval()
    own = {k: v for k, v in coded.state_dict().items() if not k.startswith(("shape_coder.", "code_inject."))}
    plain.load_state_dict(own)
    assert "shape_code" not in plain.config.to_dict() and coded.config.to_dict()["shape_code"] == 3
    assert coded.config.channels == 11 and plain.config.channels == 8
    video = torch.rand(1, 3, 17, 64, 64)
    with torch.no_grad():
        latent = coded.encode(video)
        assert latent.shape == (1, 11, 5, 8, 8)
        assert torch.equal(latent[:, :8], plain.encode(video))                 # the encoder's own channels untouched
        assert latent[:, 8:].min() >= 0 and latent[:, 8:].max() <= 1             # shares of a cell
        assert torch.equal(coded.decode(latent), plain.decode(latent[:, :8]))    # the code's way in starts at zero
        changed = video.clone()
        changed[:, :, 5] = torch.rand(3, 64, 64)
        delta = (coded.encode(video) - coded.encode(changed))[:, 8:].abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(delta[:2] == 0) and delta[2] > 0 and torch.all(delta[3:] == 0)  # frame 5 is in latent frame 2
    with pytest.raises(ValueError, match=r"\[B, 11, 5, 8, 8\]"):
        coded.decode(torch.zeros(1, 8, 5, 8, 8))
    # the target: the object's coverage of each cell, in its shape's channel, zero in the others
    clip = WorldDataset(1, "val")[0]
    shape = torch.tensor([SHAPES.index(clip["factors"]["shape"])])
    target = shape_code_targets(clip["video"][None], shape)
    assert target.shape == (1, 3, 17, 8, 8)
    others = [k for k in range(3) if k != int(shape)]
    assert target[0, others].max() == 0 and 0 < target[0, int(shape)].max() <= 1
    assert target[0, int(shape)].sum(dim=(-2, -1)).min() > 0                   # the object is in every frame
