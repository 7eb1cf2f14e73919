"""Network weights as safetensors files: the one module that writes and reads them.

A weights file is a flat ``state_dict`` (what ``best.safetensors``, an epoch's ``model.safetensors`` and a teacher
fixture hold). It is written atomically and read without pickle; a file that is missing, unreadable or does not
fit the network is a :class:`~medkd.errors.MedkdError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medkd.errors import MedkdError
from medkd.io import atomic_write

__all__ = ["load_model_weights", "plain_tensors", "save_weights"]


def plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies without shared storage (what safetensors requires)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat tensor dict as safetensors (tensors made contiguous, shared storage split)."""
    tensors = plain_tensors(state)
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {}))


def load_model_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights into ``model`` with a clear error when they do not fit."""
    path = Path(path)
    if not path.is_file():
        raise MedkdError(f"{path}: checkpoint not found")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for corrupt files
        raise MedkdError(f"{path}: not a readable safetensors checkpoint ({exc.__class__.__name__})") from None
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise MedkdError(f"{path}: weights do not fit the model ({detail})") from None
