"""Saving and loading weights, training state and the checkpoint MANIFEST (every chapter).

A checkpoint is a *stem* (``data/checkpoints/video_ae``) with up to three files:

* ``<stem>.safetensors`` -- the weights (a flat ``state_dict`` of tensors);
* ``<stem>.json`` -- the config the weights were trained with, metrics and anything else;
* ``<stem>.state.pt`` -- the training state for an exact resume (optimizer, step, RNG, loss log).

Every write goes to a temporary file in the same folder and is then renamed with
:func:`os.replace`, so a crash mid-save never leaves a half-written checkpoint behind.
This module imports no model: it sits at the bottom of the package (DESIGN.md section 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MANIFEST_NAME = "MANIFEST.json"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; shipped checkpoints are world-readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_text(payload: dict) -> str:
    """``payload`` as indented JSON, except that a ``loss_log`` list is written one compact row per line.

    A training run logs a row per step; indenting every key of every row tripled the size of the
    shipped checkpoints' JSON without making a row any easier to read.
    """
    if not isinstance(payload.get("loss_log"), list):
        return json.dumps(payload, indent=2, sort_keys=True, default=_json_default)
    marker = "__loss_log_rows__"
    text = json.dumps({**payload, "loss_log": marker}, indent=2, sort_keys=True, default=_json_default)
    rows = ",\n    ".join(json.dumps(row, sort_keys=True, separators=(",", ":"), default=_json_default)
                           for row in payload["loss_log"])
    return text.replace(json.dumps(marker), f"[\n    {rows}\n  ]" if rows else "[]", 1)


def _write_json(path: Path, payload: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(_json_text(payload) + "\n")

    _atomic_write(path, write)


def _json_default(value: Any) -> Any:
    """JSON for the few non-JSON values configs hold (tuples are lists already)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's json")


def _normalise(config: dict) -> dict:
    """The config as it reads back from JSON (tuples -> lists), so comparisons are fair."""
    return json.loads(json.dumps(config, default=_json_default))


def checkpoint_paths(path_stem: str | Path) -> dict[str, Path]:
    """The files of a checkpoint stem: ``weights``, ``meta`` and ``state``."""
    stem = Path(path_stem)
    return {
        "weights": stem.with_name(stem.name + ".safetensors"),
        "meta": stem.with_name(stem.name + ".json"),
        "state": stem.with_name(stem.name + ".state.pt"),
    }


def save_checkpoint(path_stem: str | Path, state_dict: dict[str, torch.Tensor], config: dict,
                    extra: dict | None = None) -> dict[str, Path]:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` atomically. All chapters.

    ``config`` is what :func:`load_checkpoint` compares against; ``extra`` (metrics, the command,
    the loss log, latent statistics ...) is stored beside it. Returns the paths written.
    """
    paths = checkpoint_paths(path_stem)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic_write(paths["weights"], lambda tmp: save_file(tensors, tmp))
    meta = {"config": _normalise(config), "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}
    _write_json(paths["meta"], meta)
    return {"weights": paths["weights"], "meta": paths["meta"]}


def config_differences(stored: dict, expected: dict) -> list[str]:
    """Keys whose values differ between two configs (missing on either side counts)."""
    stored, expected = _normalise(stored), _normalise(expected)
    keys = sorted(set(stored) | set(expected))
    return [k for k in keys if stored.get(k, "<missing>") != expected.get(k, "<missing>")]


def load_checkpoint(path_stem: str | Path, expected_config: dict | None = None,
                    train_hint: str = "python -m avdit_mini.train autoencoder ...") -> tuple[dict, dict]:
    """Read a checkpoint: ``(state_dict, meta)``. All chapters.

    Raises ``FileNotFoundError`` when a file is missing and ``ValueError`` naming the differing
    keys when ``expected_config`` is given and does not match the stored config.
    """
    paths = checkpoint_paths(path_stem)
    missing = [str(p) for p in (paths["weights"], paths["meta"]) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"no checkpoint at {path_stem} (missing {', '.join(missing)}); train it with `{train_hint}`"
        )
    meta = json.loads(paths["meta"].read_text())
    if expected_config is not None:
        differing = config_differences(meta.get("config", {}), expected_config)
        if differing:
            detail = ", ".join(
                f"{k}: stored {meta.get('config', {}).get(k, '<missing>')!r} vs expected "
                f"{_normalise(expected_config).get(k, '<missing>')!r}" for k in differing
            )
            raise ValueError(
                f"checkpoint {path_stem} was trained with a different config ({detail}); "
                f"use the matching config or retrain with `{train_hint}`"
            )
    return load_file(str(paths["weights"])), meta


# ----------------------------------------------------------------------------------------------
# Training state: exact resume
# ----------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path_stem: str | Path, optimizer: torch.optim.Optimizer, step: int,
                        loss_log: list, scheduler: Any = None, extra: dict | None = None) -> Path:
    """Write ``<stem>.state.pt`` atomically: optimizer, scheduler, step, RNG states, loss log."""
    path = checkpoint_paths(path_stem)["state"]
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "loss_log": list(loss_log),
        "extra": extra or {},
    }
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_training_state(path_stem: str | Path, optimizer: torch.optim.Optimizer,
                        scheduler: Any = None, restore_rng: bool = True) -> dict:
    """Restore ``<stem>.state.pt`` into ``optimizer`` (and ``scheduler``); returns the state dict."""
    path = checkpoint_paths(path_stem)["state"]
    if not path.exists():
        raise FileNotFoundError(f"no training state at {path}: nothing to resume; drop --resume to start afresh")
    state = torch.load(path, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


# ----------------------------------------------------------------------------------------------
# MANIFEST
# ----------------------------------------------------------------------------------------------
def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def update_manifest(folder: str | Path, name: str, files: list[str | Path], command: str,
                    metrics: dict | None = None, config: dict | None = None) -> Path:
    """Add or replace entry ``name`` in ``<folder>/MANIFEST.json`` with each file's sha256 and size.

    ``commands`` keeps the whole chain that made the files: a ``--resume`` run appends to the
    commands of the run it continued, an ``--init STEM`` run (a warm start) to the commands that
    made ``STEM`` (where this MANIFEST lists it), and any other run starts the list again.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    entries = {}
    for file in files:
        file = Path(file)
        key = os.path.relpath(file.resolve(), folder.resolve())  # paths in the MANIFEST are relative to it
        entries[Path(key).as_posix()] = {"sha256": sha256(file), "bytes": file.stat().st_size}
    previous = manifest.get(name, {})
    words = command.split()
    if "--init" in words[:-1] and "--resume" not in words:
        previous = manifest.get(Path(words[words.index("--init") + 1]).name, {})
    chain = previous.get("commands", [previous["command"]] if "command" in previous else [])
    manifest[name] = {
        "files": entries,
        "command": command,
        "commands": chain + [command] if ("--resume" in words or "--init" in words) else [command],
        "metrics": metrics or {},
        "config": _normalise(config or {}),
        "updated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write_json(manifest_path, dict(sorted(manifest.items())))
    return manifest_path


def verify_manifest(folder: str | Path) -> dict[str, bool]:
    """Check every file listed in the MANIFEST against its sha256: ``{file: ok}``."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    return {f: (folder / f).exists() and sha256(folder / f) == info["sha256"]
            for entry in manifest.values() for f, info in entry["files"].items()}


def same_latents(folder: str | Path, name: str) -> set[str]:
    """The 12-hex sha256 prefixes of autoencoder ``name``'s weights in ``folder`` and of its earlier decoders.

    A decoder fine-tuned with the encoder frozen (``--finetune-decoder``) leaves every latent, and every
    diffusion model trained on them, as it was; the MANIFEST keeps the decoders it replaced under
    ``earlier_decoders``. A result measured through any of them (``benchmarks/results/tasks_*.json``
    record the autoencoders they were measured through) describes this book's latents and models.
    """
    folder = Path(folder)
    weights = folder / f"{name}.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no {weights}: the shipped {name} checkpoint is missing")
    manifest = json.loads((folder / MANIFEST_NAME).read_text()) if (folder / MANIFEST_NAME).exists() else {}
    earlier = manifest.get(name, {}).get("earlier_decoders", [])
    return {sha256(weights)[:12]} | {d["files"][f"{name}.safetensors"]["sha256"][:12] for d in earlier}


__all__ = [
    "save_checkpoint", "load_checkpoint", "checkpoint_paths", "config_differences",
    "save_training_state", "load_training_state", "rng_state", "set_rng_state",
    "sha256", "update_manifest", "verify_manifest", "same_latents",
]
