"""Checkpoints: safetensors weights plus a JSON trainer state, written atomically.

Layout inside a run's ``checkpoints/`` folder::

    e0007/model.safetensors      network weights only (what export and predict read)
    e0007/extras.safetensors     trainable distillation extras (adapters, heads, affinity weights)
    e0007/optimizer.safetensors  optimiser / RNG tensors
    e0007/state.json             epoch, step, optimiser and scheduler scalars, best metric
    last.json                    pointer to the newest complete epoch folder (replaced atomically)
    best.safetensors, best.json  weights of the best validation epoch

An epoch folder is written under a temporary name and renamed when complete, and ``last.json`` is
switched only afterwards, so a run killed at any moment resumes from the last complete epoch.
No pickle is ever loaded.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medkd.errors import MedkdError
from medkd.io import atomic_write_json
from medkd.weights import plain_tensors, save_weights

__all__ = [
    "flatten_state",
    "load_checkpoint",
    "save_best",
    "save_checkpoint",
    "unflatten_state",
]


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts / lists / tensors / scalars) into tensors and a JSON skeleton.

    Tensors are replaced by ``{"__tensor__": key}`` markers so :func:`unflatten_state` can rebuild it.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[key] = o
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {"__dict__": [[_json_key(k), walk(v, f"{key}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(o)]
        if isinstance(o, float) and math.isnan(o):
            return {"__float__": "nan"}
        if isinstance(o, (int, float, str, bool)) or o is None:
            return o
        raise TypeError(f"cannot serialise {type(o).__name__} at {key}")

    skeleton = walk(obj, prefix or "s")
    return tensors, skeleton


def _json_key(k: Any) -> Any:
    if isinstance(k, (int, str)):
        return k
    raise TypeError(f"unsupported state key {k!r}")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__float__" in skeleton:
            return float(skeleton["__float__"])
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(ckpt_dir: Path, epoch: int, model_state: dict[str, torch.Tensor],
                    extras_state: dict[str, torch.Tensor], trainer_state: dict[str, Any], keep: int = 1) -> Path:
    """Write a complete epoch checkpoint and switch ``last.json`` to it.

    Args:
        ckpt_dir: the run's ``checkpoints/`` folder.
        epoch: number of completed epochs.
        model_state: network weights.
        extras_state: distillation extras (may be empty).
        trainer_state: nested dict with optimiser / scheduler / RNG state and counters (tensors allowed).
        keep: how many epoch folders to keep.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"e{epoch:04d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(plain_tensors(model_state), str(tmp / "model.safetensors"))
    save_file(plain_tensors(extras_state), str(tmp / "extras.safetensors"))
    tensors, skeleton = flatten_state(trainer_state)
    save_file(plain_tensors(tensors), str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps(skeleton))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_json(ckpt_dir / "last.json", {"epoch": epoch, "dir": name})
    epochs = sorted(p for p in ckpt_dir.glob("e[0-9][0-9][0-9][0-9]") if p.is_dir())
    for old in epochs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None:
    """Load the newest complete checkpoint: (model state, extras state, trainer state), or None if absent."""
    pointer = ckpt_dir / "last.json"
    if not pointer.is_file():
        return None
    current = pointer  # the file being read, named when it is broken
    try:
        info = json.loads(pointer.read_text())
        folder = ckpt_dir / info["dir"]
        current = folder / "model.safetensors"
        model = load_file(str(current))
        current = folder / "extras.safetensors"
        extras = load_file(str(current))
        current = folder / "optimizer.safetensors"
        tensors = load_file(str(current))
        current = folder / "state.json"
        skeleton = json.loads(current.read_text())
    except Exception as exc:  # OSError, KeyError, JSON and safetensors errors: all mean a broken checkpoint
        what = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc.__class__.__name__})"
        raise MedkdError(f"{current}: checkpoint file {what}; the run cannot resume from it (train again into a "
                         "new --out folder)") from None
    return model, extras, unflatten_state(skeleton, tensors)


def save_best(ckpt_dir: Path, model_state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Save the best-so-far weights (model only) and their epoch / metric."""
    save_weights(ckpt_dir / "best.safetensors", model_state)
    atomic_write_json(ckpt_dir / "best.json", info)
