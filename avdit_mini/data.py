"""The synthetic audiovisual world and the datasets (chapter 1).

A scene is a flat background with one object that falls under gravity and bounces off the floor
and the walls. Every impact makes a sound whose *timbre* is set by the object's shape, whose
*pitch* is set by its size and whose *loudness* is set by the impact speed. A soft drone whose
pitch is set by the background colour makes the scene audible. The object's colour is the one
factor that cannot be heard: audio -> video has to make it up.

Everything is deterministic from a seed, and every clip carries its ground-truth factors.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import Geometry

SHAPES = ("circle", "square", "triangle")
TIMBRES = ("ping", "clack", "tick")  # one per shape: sine ping, square-wave clack, noise tick
SIZES = (4.0, 6.0, 8.0)  # object "radius" in pixels at 64 x 64
PITCHES = (1320.0, 880.0, 587.0)  # impact pitch in Hz, by size (small objects ring higher)
COLOURS = {  # bright object colours (never audible)
    "red": (0.95, 0.22, 0.20),
    "green": (0.25, 0.88, 0.30),
    "blue": (0.25, 0.45, 1.00),
    "yellow": (0.96, 0.88, 0.20),
    "magenta": (0.90, 0.30, 0.90),
    "cyan": (0.22, 0.90, 0.95),
}
BACKGROUNDS = {  # dark backgrounds, each with its drone pitch in Hz
    "navy": ((0.08, 0.10, 0.28), 110.0),
    "forest": ((0.07, 0.24, 0.11), 147.0),
    "maroon": ((0.30, 0.08, 0.10), 196.0),
    "charcoal": ((0.17, 0.17, 0.17), 262.0),
}
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


@dataclass(frozen=True)
class WorldConfig:
    """The world's physics and sound. Every number is a knob a reader may turn."""

    geometry: Geometry = field(default_factory=Geometry)
    gravity: float = 300.0  # pixels / s^2
    floor_restitution: tuple[float, float] = (0.78, 0.9)
    wall_restitution: float = 0.95
    rest_speed: float = 45.0  # below this impact speed (px/s) the object stops bouncing
    supersample: int = 4  # anti-aliasing factor of the renderer
    drone_amplitude: float = 0.06
    impact_amplitude: tuple[float, float] = (0.3, 0.8)  # loudness at slow / fast impacts
    impact_decay: dict = field(default_factory=lambda: {"ping": 0.09, "clack": 0.06, "tick": 0.035})


def _half_extents(shape: str, radius: float) -> dict[str, float]:
    """How far the drawn shape reaches from its centre (for contacts with floor and walls)."""
    if shape == "circle":
        return {"left": radius, "right": radius, "top": radius, "bottom": radius}
    if shape == "square":
        h = 0.9 * radius
        return {"left": h, "right": h, "top": h, "bottom": h}
    circumradius = 1.2 * radius  # upright equilateral triangle, centred on its centroid
    half_side = circumradius * math.sqrt(3) / 2
    return {"left": half_side, "right": half_side, "top": circumradius, "bottom": circumradius / 2}


@dataclass
class Clip:
    """One audiovisual clip: video [3, T, H, W] in [0, 1], audio [S] in [-1, 1], its factors."""

    video: torch.Tensor
    audio: torch.Tensor
    factors: dict

    def as_dict(self) -> dict:
        return {"video": self.video, "audio": self.audio, "factors": self.factors}


def _shape_factors(shape: str) -> dict:
    """The factors a shape fixes: itself and its impact timbre (one per shape)."""
    return {"shape": shape, "timbre": TIMBRES[SHAPES.index(shape)]}


class World:
    """The procedural audiovisual world (chapter 1): ``World().clip(seed)``."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self.geometry = self.config.geometry

    # -- sampling the factors ------------------------------------------------------------------
    def sample_factors(self, seed: int) -> dict:
        """Draw the scene's factors and its initial state from ``seed``."""
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        g = self.geometry
        shape_index = int(rng.integers(len(SHAPES)))
        size_index = int(rng.integers(len(SIZES)))
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        shape, radius = SHAPES[shape_index], SIZES[size_index]
        ext = _half_extents(shape, radius)
        x0 = rng.uniform(ext["left"] + 1, g.width - ext["right"] - 1)
        y0 = rng.uniform(ext["top"] + 1, 0.45 * g.height)
        speed_x = rng.uniform(15.0, 45.0) * rng.choice([-1.0, 1.0])
        speed_y = rng.uniform(-50.0, 30.0)
        restitution = rng.uniform(*self.config.floor_restitution)
        return {
            "seed": int(seed),
            "shape": shape,
            "timbre": TIMBRES[shape_index],
            "size": size_index,
            "radius": radius,
            "pitch": PITCHES[size_index],
            "colour": colour,
            "background": background,
            "drone": BACKGROUNDS[background][1],
            "initial_state": (float(x0), float(y0), float(speed_x), float(speed_y)),
            "restitution": float(restitution),
            "phase_seed": int(rng.integers(2**31)),
        }

    # -- physics -------------------------------------------------------------------------------
    def simulate(self, factors: dict) -> tuple[np.ndarray, list[dict]]:
        """Exact event-driven ballistic motion: the trajectory at frame times and the impacts."""
        g, cfg = self.geometry, self.config
        ext = _half_extents(factors["shape"], factors["radius"])
        floor_y = g.height - ext["bottom"]  # image y grows downwards
        left_x, right_x = ext["left"], g.width - ext["right"]
        x, y, vx, vy = factors["initial_state"]
        t, resting = 0.0, False
        segments = [(0.0, x, y, vx, vy, resting)]  # state at the start of each ballistic piece
        impacts: list[dict] = []
        while t < g.duration:
            dt_floor = math.inf
            if not resting:
                # y(t) = y + vy t + g t^2 / 2 reaches floor_y: the positive root
                disc = vy * vy + 2 * cfg.gravity * (floor_y - y)
                dt_floor = (-vy + math.sqrt(max(disc, 0.0))) / cfg.gravity
            dt_wall = math.inf
            if vx > 0:
                dt_wall = (right_x - x) / vx
            elif vx < 0:
                dt_wall = (left_x - x) / vx
            dt = min(dt_floor, dt_wall)
            if t + dt >= g.duration:
                break
            dt = max(dt, 0.0)
            x += vx * dt
            if not resting:
                y += vy * dt + 0.5 * cfg.gravity * dt * dt
                vy += cfg.gravity * dt
            t += dt
            if dt_floor <= dt_wall:
                speed = abs(vy)
                impacts.append({"time": t, "speed": speed, "surface": "floor"})
                y = floor_y
                vy = -factors["restitution"] * speed
                if speed * factors["restitution"] < cfg.rest_speed:
                    vy, resting = 0.0, True
            else:
                speed = abs(vx)
                impacts.append({"time": t, "speed": speed, "surface": "wall"})
                x = min(max(x, left_x), right_x)
                vx = -cfg.wall_restitution * vx
            segments.append((t, x, y, vx, vy, resting))
        frame_times = np.arange(g.frames) / g.fps
        trajectory = np.stack([self._position_at(segments, ft) for ft in frame_times])
        return trajectory, impacts

    def _position_at(self, segments: list[tuple], time: float) -> np.ndarray:
        start = [s for s in segments if s[0] <= time][-1]
        t0, x, y, vx, vy, resting = start
        dt = time - t0
        y_t = y if resting else y + vy * dt + 0.5 * self.config.gravity * dt * dt
        return np.array([x + vx * dt, y_t])

    # -- rendering -----------------------------------------------------------------------------
    def render(self, factors: dict, trajectory: np.ndarray) -> np.ndarray:
        """Anti-aliased frames [T, H, W, 3] in [0, 1] (supersampled, then box-filtered)."""
        g, s = self.geometry, self.config.supersample
        background = np.array(BACKGROUNDS[factors["background"]][0], dtype=np.float32)
        colour = np.array(COLOURS[factors["colour"]], dtype=np.float32)
        # pixel-centre coordinates of the supersampled grid, in output pixels
        ys = (np.arange(g.height * s) + 0.5) / s
        xs = (np.arange(g.width * s) + 0.5) / s
        frames = np.empty((g.frames, g.height, g.width, 3), dtype=np.float32)
        for i, (cx, cy) in enumerate(trajectory):
            mask = _shape_mask(factors["shape"], factors["radius"], cx, cy, xs, ys)  # [Hs, Ws]
            coverage = mask.reshape(g.height, s, g.width, s).mean(axis=(1, 3))  # [H, W]
            frames[i] = background + coverage[..., None] * (colour - background)
        return frames

    # -- sound ---------------------------------------------------------------------------------
    def synthesize(self, factors: dict, impacts: list[dict]) -> np.ndarray:
        """The soundtrack [S]: a background drone plus one decaying sound per impact."""
        g, cfg = self.geometry, self.config
        time = np.arange(g.audio_samples) / g.sample_rate
        rng = np.random.default_rng(factors["phase_seed"])
        drone_hz = factors["drone"]
        phase = rng.uniform(0, 2 * np.pi)
        # a pure tone: its pitch names the scene, and it stays below the impacts' band (>= 587 Hz)
        audio = cfg.drone_amplitude * np.sin(2 * np.pi * drone_hz * time + phase)
        low, high = cfg.impact_amplitude
        for impact in impacts:
            loudness = low + (high - low) * min(impact["speed"] / 200.0, 1.0)
            start = int(round(impact["time"] * g.sample_rate))
            sound = impact_sound(factors["timbre"], factors["pitch"], g.sample_rate, cfg.impact_decay, rng)
            end = min(start + len(sound), g.audio_samples)
            audio[start:end] += loudness * sound[: end - start]
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def redraw(self, factors: dict, shape: str) -> torch.Tensor:
        """The clip of ``factors`` drawn with another ``shape`` on its own path: video [3, T, H, W] (chapter 3).

        Same trajectory, size, colour and background; only the shape changes (the path was
        simulated for the clip's own shape, so a redrawn object may graze a wall a little differently).
        """
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        if "trajectory" not in factors:
            raise ValueError("factors need the clip's 'trajectory': pass World().clip(seed).factors")
        frames = self.render({**factors, "shape": shape}, factors["trajectory"].numpy())
        return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()

    def resound(self, factors: dict, shape: str) -> torch.Tensor:
        """The clip's soundtrack with another ``shape``'s impact timbre: audio [S] (chapter 8).

        The same impacts (times, speeds), drone and phases; only the sound of each impact changes,
        to the timbre the world gives ``shape`` (a square clacks, a triangle ticks).
        """
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        if "impact_times" not in factors:
            raise ValueError("factors need the clip's impacts: pass World().clip(seed).factors")
        impacts = [{"time": t, "speed": v, "surface": u} for t, v, u in
                   zip(factors["impact_times"], factors["impact_speeds"], factors["impact_surfaces"])]
        return torch.from_numpy(self.synthesize({**factors, **_shape_factors(shape)}, impacts)).float()

    # -- the public entry point ----------------------------------------------------------------
    def clip(self, seed: int) -> Clip:
        """The clip of ``seed``: video [3, 17, 64, 64] in [0, 1], audio [34000] in [-1, 1], factors."""
        factors = self.sample_factors(seed)
        trajectory, impacts = self.simulate(factors)
        frames = self.render(factors, trajectory)  # [T, H, W, 3]
        audio = self.synthesize(factors, impacts)
        g = self.geometry
        factors = dict(factors)
        factors["trajectory"] = torch.from_numpy(trajectory.astype(np.float32))  # [T, 2] (x, y) px
        factors["impact_times"] = [i["time"] for i in impacts]
        factors["impact_speeds"] = [i["speed"] for i in impacts]
        factors["impact_surfaces"] = [i["surface"] for i in impacts]
        factors["bounce_frames"] = sorted(
            {int(round(i["time"] * g.fps)) for i in impacts if i["surface"] == "floor"} & set(range(g.frames))
        )
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()  # [T, H, W, 3] -> [3, T, H, W]
        return Clip(video=video, audio=torch.from_numpy(audio), factors=factors)


def _shape_mask(shape: str, radius: float, cx: float, cy: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask [len(ys), len(xs)] of the shape centred at (cx, cy)."""
    dx = xs[None, :] - cx
    dy = ys[:, None] - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        h = 0.9 * radius
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        circumradius = 1.2 * radius
        top, bottom = -circumradius, circumradius / 2  # apex up (image y grows downwards)
        half_width_at = (dy - top) / (bottom - top) * circumradius * math.sqrt(3) / 2
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width_at)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def impact_sound(timbre: str, pitch: float, sample_rate: int, decay: dict, rng: np.random.Generator) -> np.ndarray:
    """One impact: a sine ``ping``, a band-limited square ``clack`` or a resonant noise ``tick``."""
    if timbre not in decay:
        raise ValueError(f"unknown timbre {timbre!r}; expected one of {TIMBRES}")
    tau = decay[timbre]
    n = int(6 * tau * sample_rate)
    time = np.arange(n) / sample_rate
    envelope = np.exp(-time / tau) * np.minimum(1.0, time / 0.002)  # 2 ms attack: no click
    if timbre == "ping":
        wave = np.sin(2 * np.pi * pitch * time)
    elif timbre == "clack":  # odd harmonics 1/k up to Nyquist: a square wave without aliasing
        harmonics = [k for k in range(1, 40, 2) if k * pitch < sample_rate / 2]
        wave = sum(np.sin(2 * np.pi * k * pitch * time) / k for k in harmonics) * (4 / np.pi) * 0.8
    else:  # white noise through a broad resonance centred on the pitch
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        width = 0.35 * pitch
        spectrum *= 1.0 / (1.0 + ((freqs - pitch) / width) ** 2)
        wave = np.fft.irfft(spectrum, n)
        wave /= np.abs(wave).max() + 1e-8
    return (envelope * wave).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------
class WorldDataset(Dataset):
    """``n_clips`` clips of the world from a split's seed range (train / val / test are disjoint)."""

    def __init__(self, n_clips: int, split: str = "train", config: WorldConfig | None = None, cache: bool = False):
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
        if n_clips <= 0:
            raise ValueError(f"n_clips must be positive, got {n_clips}")
        self.world = World(config)
        self.n_clips, self.split = int(n_clips), split
        self.cache = {} if cache else None

    def seed(self, index: int) -> int:
        """The world seed of item ``index``."""
        return SPLIT_OFFSETS[self.split] + index

    def __len__(self) -> int:
        return self.n_clips

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n_clips:
            raise IndexError(f"index {index} out of range for a dataset of {self.n_clips} clips")
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        item = self.world.clip(self.seed(index)).as_dict()
        if self.cache is not None:
            self.cache[index] = item
        return item


def next_shape(shape: str) -> str:
    """The shape after ``shape`` in data.SHAPES, round the circle: circle -> square -> triangle -> circle."""
    return SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]


class CounterfactualDataset(WorldDataset):
    """Each clip of a split drawn again with the next shape (chapter 8): a *counterfactual* twin.

    Item i is clip i of ``WorldDataset(n_clips, split)`` with its object redrawn as
    ``next_shape(shape)`` on the same path (``World.redraw``) and every impact sounded with that
    shape's timbre (``World.resound``); colour, size, background, drone and impact times stay.
    The pair differs in the shape alone, in picture and in sound: what ``train avdit
    --counterfactual`` holds the network's guesses to.
    """

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        factors = item["factors"]
        shape = next_shape(factors["shape"])
        twin = {**factors, **_shape_factors(shape), "twin_of": factors["shape"]}
        return {"video": self.world.redraw(factors, shape), "audio": self.world.resound(factors, shape), "factors": twin}


def collate(items: list[dict]) -> dict:
    """Stack videos and audios; keep factors as a list (they hold lists of different lengths)."""
    batch = {"video": torch.stack([i["video"] for i in items]), "audio": torch.stack([i["audio"] for i in items])}
    if all("factors" in i for i in items):
        batch["factors"] = [i["factors"] for i in items]
    return batch


class VideoFolderDataset(Dataset):
    """Real clips: every ``.mp4`` (with audio) in a folder, resampled to the book's geometry.

    Frames are resampled to ``geometry.fps`` and resized (centre crop, then area resize) to
    ``height x width``; audio is resampled to mono ``sample_rate``. Each file gives its first
    ``geometry.duration`` seconds. A file that is too short, has no audio or cannot be decoded
    raises an error naming it, or -- with ``skip_bad=True`` -- is skipped with a warning.
    """

    def __init__(self, folder: str | Path, geometry: Geometry | None = None, skip_bad: bool = False):
        from . import media

        self.folder = Path(folder)
        self.geometry = geometry or Geometry()
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"no folder {self.folder}: download clips (e.g. Landscape or AIST++) as .mp4 files with "
                "audio into it, or pass the folder that holds them"
            )
        paths = sorted(self.folder.glob("*.mp4"))
        if not paths:
            raise FileNotFoundError(f"{self.folder} holds no .mp4 files")
        self.paths: list[Path] = []
        for path in paths:
            try:
                media.probe_mp4(path, min_duration=self.geometry.duration)
            except (ValueError, OSError) as error:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping {path.name}: {error}", stacklevel=2)
                continue
            self.paths.append(path)
        if not self.paths:
            raise ValueError(f"no usable clip in {self.folder} (every file was skipped)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from . import media

        video, audio = media.read_clip(self.paths[index], self.geometry)
        return {"video": video, "audio": audio}
