"""What a resume may change: :func:`check_resume_config` compares a new config with the run's saved one.

A resume never rewrites what the checkpoints depend on: only :data:`RESUME_FREE_KEYS` may differ from the run's
``config.yaml``, and :meth:`medkd.run.RunFolder.check_resume_split` checks the :data:`SPLIT_KEYS` of ``split.json``,
both before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from medkd.config import RunConfig, load_config
from medkd.errors import ConfigError
from medkd.run.files import CONFIG_FILE
from medkd.run.paths import resolve_paths

__all__ = ["RESUME_FREE_KEYS", "SPLIT_KEYS", "check_resume_config", "config_text"]

#: Config keys a resume may change (how long, how often, how verbose, how fast); every other key must equal the
#: run's ``config.yaml``, since the checkpoints, the split or the run's meaning depend on it.
RESUME_FREE_KEYS: tuple[str, ...] = (
    "name", "train.epochs", "train.progress", "train.threads", "train.val_every", "train.grad_norm_every",
    "train.compile", "evaluate", "data.prepared", "data.prepared_dir",
)

#: ``split.json`` entries a resumed run must find unchanged (the cases, channels and classes it trained on).
SPLIT_KEYS: tuple[str, ...] = ("train", "val", "test", "channels", "teacher_channels", "classes", "in_channels",
                               "teacher_in_channels")

_UNSET = object()


def config_text(cfg: RunConfig) -> str:
    """The YAML text :func:`medkd.config.save_config` writes for ``cfg``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys (leaves or dict entries) where two plain-data configs differ, in the old config's key order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in [*old, *(k for k in new if k not in old)]:
            out += _differences(old.get(k, _UNSET), new.get(k, _UNSET), f"{key}.{k}" if key else str(k))
        return out
    return [] if old == new else [(key, old, new)]


def _shown(value: Any) -> str:
    if value is _UNSET:
        return "no value"
    return value if isinstance(value, str) else json.dumps(value)


def check_resume_config(run_dir: Path, cfg: RunConfig) -> RunConfig | None:
    """Refuse a resume whose config differs from the run's ``config.yaml`` outside :data:`RESUME_FREE_KEYS`.

    Paths are compared after :func:`medkd.run.resolve_paths`. Nothing is written.

    Returns:
        The run's saved config, or None when the folder has no ``config.yaml``.

    Raises:
        ConfigError: one line naming the first key that differs, e.g.
            ``model.name: the run was trained with unet_s1; a resume cannot change it (got unet_s2)``.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    saved = load_config(path)

    def plain(c: RunConfig) -> Any:
        return yaml.safe_load(config_text(resolve_paths(c)))

    for key, old, new in _differences(plain(saved), plain(cfg)):
        if any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS):
            continue
        trained = "without it" if old is _UNSET else f"with {_shown(old)}"
        raise ConfigError(f"{key}: the run was trained {trained}; a resume cannot change it (got {_shown(new)}); "
                          f"train into a new --out folder instead")
    return saved
