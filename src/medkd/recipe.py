"""``medkd recipe``: the recommended distillation recipe, with a fallback that keeps it from ever doing harm.

Given a student-alone config (data, model, training) and a frozen teacher, the recipe trains two ordinary run
folders with the same seed and data: ``OUT/alone`` (the config as it is) and ``OUT/distilled`` (the config plus
the packaged overlay ``presets/recommended/distill.yaml``: distillation on images without labels, CWD on the
logits, the pseudo-label term, gradient balancing, a cached teacher). It then keeps whichever has the higher best
VALIDATION Dice and records the choice in ``OUT/recipe.json``; the test split never takes part in the choice. On
the quality benchmark, with images without labels, the distilled student won on validation for every seed and
student; without them (arm ``cwd_bal``) it lost on every unet_s1 seed, and the fallback kept the student alone.

The overlay needs images without labels: the training cases that ``data.train_fraction`` leaves out, or an
extra folder (``data.unlabeled``). With neither (``train_fraction`` 1 and no folder) the recipe distils on the
labelled images alone, without the pseudo-label term, and says so.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medkd.config import RunConfig, apply_overrides, deep_merge, parse_config
from medkd.errors import ConfigError, MedkdError
from medkd.io import atomic_write_json
from medkd.run import RunFolder

__all__ = ["ARMS", "choose", "recipe_configs", "recipe_overlay"]

ARMS = ("alone", "distilled")


def recipe_overlay() -> dict[str, Any]:
    """The packaged recipe (``presets/recommended/distill.yaml``) as a config fragment."""
    text = resources.files("medkd.presets").joinpath("recommended", "distill.yaml").read_text()
    return yaml.safe_load(text)


def recipe_configs(student: dict[str, Any], teacher_run: str | Path, source: str = "config"
                   ) -> tuple[RunConfig, RunConfig, list[str]]:
    """The ``alone`` and ``distilled`` configs of a student-alone config dict, and notes on what was adapted."""
    if student.get("distill") is not None:
        raise ConfigError(f"{source}: has a distill: section; medkd recipe takes a student-alone config and adds "
                          "the recipe's distillation itself")
    notes: list[str] = []
    overlay = recipe_overlay()
    overlay["distill"]["teacher"] = {"run": str(teacher_run)}
    data = student.get("data", {})
    if data.get("unlabeled") is not None:
        overlay["data"].pop("unlabeled_left_out")
    elif float(data.get("train_fraction", 1.0)) >= 1.0:
        overlay.pop("data")
        overlay["distill"].pop("pseudo_label")
        notes.append("no images without labels (data.train_fraction is 1 and data.unlabeled is not set): "
                     "distilling on the labelled images only, without the pseudo-label term (on medkd's quality "
                     "benchmark this lost to unet_s1 alone on every seed: expect the student alone to be kept)")
    alone = dict(student, name=f"{student.get('name', 'student')}-alone",
                 data={k: v for k, v in data.items() if not k.startswith("unlabeled")})  # images with labels only
    distilled = deep_merge(dict(student, name=f"{student.get('name', 'student')}-distilled"), overlay)
    return parse_config(alone, source), parse_config(distilled, source), notes


def read_config_dict(path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A run config YAML as a dict, with ``--set`` overrides applied (validated later)."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return apply_overrides(data, overrides)


def _best_val(run_dir: Path) -> float | None:
    """Best validation Dice of a finished run (None when it has none or it is not finite)."""
    run = RunFolder(run_dir)
    if not run.has_summary():
        raise MedkdError(f"{run_dir}: {run.summary_path.name} missing; the run did not finish")
    value = run.summary()["best"].get("val_dice")
    return float(value) if value is not None and math.isfinite(value) else None


def choose(alone: Path, distilled: Path, record: Path) -> dict[str, Any]:
    """Keep the ``distilled`` or the ``alone`` run by best validation Dice; write the choice to ``record``.

    The distilled student is kept only when its best validation Dice is strictly higher; without validation
    scores the student alone is kept (nothing shows the distillation helped).
    """
    scores = {"alone": _best_val(alone), "distilled": _best_val(distilled)}
    a, d = scores["alone"], scores["distilled"]
    chosen = "distilled" if d is not None and (a is None or d > a) else "alone"
    result = {"chosen": chosen, "run": str(distilled if chosen == "distilled" else alone), "val_dice": scores,
              "rule": "the distilled student is kept only when its best validation Dice beats the student alone's"}
    atomic_write_json(Path(record), result)
    return result
