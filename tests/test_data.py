import math

import numpy as np
import pytest
import torch

from avdit_mini.data import (BACKGROUNDS, COLOURS, SHAPES, TIMBRES, CounterfactualDataset, World, WorldConfig, WorldDataset,
                             collate, next_shape)


@pytest.fixture(scope="module")
def world():
    return World()


def test_clip_shapes_and_ranges(world):
    clip = world.clip(0)
    assert clip.video.shape == (3, 17, 64, 64) and clip.video.dtype == torch.float32
    assert clip.audio.shape == (34000,) and clip.audio.dtype == torch.float32
    assert 0.0 <= clip.video.min() and clip.video.max() <= 1.0
    assert clip.audio.abs().max() <= 1.0
    f = clip.factors
    assert f["shape"] in SHAPES and f["colour"] in COLOURS and f["background"] in BACKGROUNDS
    assert f["trajectory"].shape == (17, 2)
    assert len(f["impact_times"]) == len(f["impact_speeds"]) == len(f["impact_surfaces"]) >= 1
    assert all(0 <= t < 2.125 for t in f["impact_times"])


def test_same_seed_same_clip_other_seed_other_clip(world):
    a, b, c = world.clip(123), World().clip(123), world.clip(124)
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert a.factors["impact_times"] == b.factors["impact_times"]
    assert not torch.equal(a.video, c.video)


def test_the_object_stays_inside_the_frame_and_touches_the_floor_at_impacts(world):
    for seed in range(20):
        clip = world.clip(seed)
        x, y = clip.factors["trajectory"].T
        r = clip.factors["radius"]
        assert (x > 0).all() and (x < 64).all() and (y > 0).all() and (y < 64).all()
        # the frame nearest a floor impact shows the object low in the frame
        for t, surface in zip(clip.factors["impact_times"], clip.factors["impact_surfaces"]):
            if surface == "floor" and round(t * 8) < 17:
                assert y[round(t * 8)] > 64 - 3 * r - 15


def test_impacts_are_audible_at_their_times(world):
    clip = world.clip(5)
    audio = clip.audio.numpy()
    times = clip.factors["impact_times"]
    # impacts with no other impact in the 0.3 s before them (tails of earlier impacts overlap)
    lone = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.3]
    assert lone
    for t in lone:
        start = int(t * 16000)
        before = np.abs(audio[max(start - 400, 0):start - 40]).max()
        after = np.abs(audio[start:start + 400]).max()
        assert after > 2 * before


def test_colour_is_silent_everything_else_is_heard():
    # two clips that differ only in colour have identical audio
    world = World()
    factors = world.sample_factors(9)
    other = dict(factors, colour=next(c for c in COLOURS if c != factors["colour"]))
    trajectory, impacts = world.simulate(factors)
    assert np.array_equal(world.synthesize(factors, impacts), world.synthesize(other, impacts))
    assert not np.array_equal(world.render(factors, trajectory), world.render(other, trajectory))


def test_gravity_changes_the_physics():
    slow = World(WorldConfig(gravity=150.0)).clip(3).factors["impact_times"]
    fast = World(WorldConfig(gravity=600.0)).clip(3).factors["impact_times"]
    assert len(fast) >= len(slow)


def test_dataset_splits_are_disjoint_and_deterministic():
    train, test = WorldDataset(4, "train"), WorldDataset(4, "test")
    assert {train.seed(i) for i in range(4)}.isdisjoint({test.seed(i) for i in range(4)})
    assert torch.equal(train[1]["video"], WorldDataset(4, "train")[1]["video"])
    batch = collate([train[0], train[1]])
    assert batch["video"].shape == (2, 3, 17, 64, 64) and batch["audio"].shape == (2, 34000)
    assert len(batch["factors"]) == 2


def test_bad_inputs_are_clear_errors(world):
    with pytest.raises(ValueError, match="non-negative integer"):
        world.clip(-1)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        WorldDataset(4, "dev")
    with pytest.raises(IndexError, match="out of range"):
        WorldDataset(4)[4]
    with pytest.raises(ValueError, match="n_clips"):
        WorldDataset(0)


def test_the_first_floor_impact_solves_the_ballistic_equation(world):
    f = world.clip(11).factors
    x0, y0, vx, vy = f["initial_state"]
    bottom = {"circle": 1.0, "square": 0.9, "triangle": 0.6}[f["shape"]] * f["radius"]
    t = (-vy + math.sqrt(vy * vy + 2 * 300.0 * (64 - bottom - y0))) / 300.0
    first_floor = next(t for t, s in zip(f["impact_times"], f["impact_surfaces"]) if s == "floor")
    assert abs(t - first_floor) < 1e-9


def test_redraw_changes_the_shape_and_nothing_else(world):
    clip = world.clip(7)
    own = clip.factors["shape"]
    assert torch.equal(world.redraw(clip.factors, own), clip.video)      # its own shape: the clip itself
    from avdit_mini import probes
    for other in SHAPES:
        if other == own:
            continue
        video = world.redraw(clip.factors, other)
        seen = probes.measure_video(video)
        assert seen["shape"] == other
        assert seen["colour"] == clip.factors["colour"] and seen["background"] == clip.factors["background"]
        path = seen["trajectory"].numpy()
        assert np.nanmax(np.abs(path - clip.factors["trajectory"].numpy())) < 1.0   # the same path
    with pytest.raises(ValueError, match="unknown shape"):
        world.redraw(clip.factors, "hexagon")
    with pytest.raises(ValueError, match="trajectory"):
        world.redraw(world.sample_factors(7), "circle")


def test_a_counterfactual_twin_differs_in_the_shape_alone(world):
    """CounterfactualDataset: clip i with the next shape, in picture (World.redraw) and in sound (World.resound):
    the same colour, size, background, path and impact times; the drone, before the first impact, the same."""
    assert [next_shape(s) for s in SHAPES] == ["square", "triangle", "circle"]
    data, twins = WorldDataset(3, "train"), CounterfactualDataset(3, "train")
    assert len(twins) == 3
    for i in range(3):
        clip, twin = data[i], twins[i]
        f, g = clip["factors"], twin["factors"]
        assert g["shape"] == next_shape(f["shape"]) and g["twin_of"] == f["shape"]
        assert g["timbre"] == TIMBRES[SHAPES.index(g["shape"])] != f["timbre"]
        assert all(f[k] == g[k] for k in ("colour", "size", "background", "drone", "impact_times", "seed"))
        assert torch.equal(twin["video"], world.redraw(f, g["shape"])) and not torch.equal(twin["video"], clip["video"])
        assert torch.equal(world.resound(f, f["shape"]), clip["audio"])   # its own shape: the clip's own sound
        first = int(round(f["impact_times"][0] * world.geometry.sample_rate))
        changed = (twin["audio"] - clip["audio"]).abs()
        assert changed[:first].max() == 0 and changed[first:].max() > 0.05  # the impacts sound otherwise, nothing else
    with pytest.raises(ValueError, match="unknown shape"):
        world.resound(f, "hexagon")
    with pytest.raises(ValueError, match="impacts"):
        world.resound(world.sample_factors(7), "circle")
