"""Read a pickled PyTorch checkpoint without executing code from it (``weights_only=True``).

Checkpoints written by other frameworks (nnU-Net's ``checkpoint_final.pth``, a MONAI bundle's ``model.pt``) hold
tensors plus a few plain Python and NumPy values (NumPy scalars in training logs, ``torch.device`` in init
arguments). :func:`load_weights_only` allows exactly those NumPy globals, which rebuild plain numbers, and
refuses anything else in one line that names the global blocking it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medkd.errors import ConfigError

try:
    from numpy._core.multiarray import scalar  # NumPy >= 2
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import scalar

__all__ = ["SAFE_NUMPY_GLOBALS", "load_weights_only"]


def _numpy_globals() -> list[Any]:
    kinds = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_)
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


#: NumPy globals a checkpoint may use: scalars and dtypes of numbers (nothing that runs code).
SAFE_NUMPY_GLOBALS: list[Any] = _numpy_globals()

_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_weights_only(path: Path, where: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with :data:`SAFE_NUMPY_GLOBALS` allowed.

    Args:
        path: the checkpoint file.
        where: the config key naming it, for errors.

    Raises:
        ConfigError: the file is missing or unreadable, or it needs a global outside the allowed ones (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: file not found")
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED.search(str(exc))
        what = f"it pickles {found.group(1)}" if found else str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: {path}: refused to load ({what}, which loading without executing pickled "
                          "code does not allow); save its state_dict alone with torch.save") from None
    except (RuntimeError, OSError, EOFError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: {path}: not a readable PyTorch checkpoint ({detail})") from None
