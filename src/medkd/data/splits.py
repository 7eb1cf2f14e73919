"""Train / val / test splits of case ids: an explicit split file or a seeded grouped random split.

Every run records the split it used (``split.json`` in the run folder), so which cases it trained and
tested on is never in doubt. A split file without a ``val`` list gets a validation part carved from its
``train`` list (:func:`carve_validation`: ``data.split.val`` of the case groups, seeded by ``data.split.seed``),
and the run records that (``val_carved_from_train``) — a run never picks its "best" epoch without validation
unless told to (an explicit ``"val": []`` or ``data.split.val: 0``).

Example:
    >>> split = make_split(index, SplitConfig(val=0.2, test=0.2, seed=0))
    >>> sorted(split)
    ['test', 'train', 'val']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medkd.config import SplitConfig
from medkd.data.folds import case_group, fold_splits, group_cases
from medkd.data.formats_base import DatasetIndex
from medkd.errors import ConfigError, DataError

__all__ = ["carve_validation", "case_group", "make_split", "read_split_file", "subsample_cases"]

SPLIT_NAMES = ("train", "val", "test")


def _read_split_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict) or "train" not in data:
        raise DataError(f"{path}: expected an object with 'train' (and 'val', 'test') lists of case ids")
    for name in SPLIT_NAMES:
        if name in data and not isinstance(data[name], list):
            raise DataError(f"{path}: '{name}' must be a list of case ids")
    return data


def read_split_file(path: Path, index: DatasetIndex) -> dict[str, list[str]]:
    """Read a JSON split file with ``train`` / ``val`` / ``test`` lists of case ids (a missing list is empty)."""
    data = _read_split_json(path)
    known = {c.case_id for c in index.cases}
    split = {}
    for name in SPLIT_NAMES:
        ids = [str(i) for i in data.get(name, [])]
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DataError(f"{path}: '{name}' names case {unknown[0]!r}, which is not in {index.root}")
        split[name] = ids
    return split


def carve_validation(train: list[str], fraction: float, seed: int, group_pattern: str | None = None,
                     source: str = "data.split") -> tuple[list[str], list[str]]:
    """Hold out a seeded ``fraction`` of the training case groups (at least one) for validation.

    Cases sharing a ``group_pattern`` match (one patient) stay on one side.

    Args:
        train: training case ids.
        fraction: share of the case groups to hold out (``data.split.val``), > 0.
        seed: seed of the draw (``data.split.seed``).
        group_pattern: regular expression grouping cases (``data.split.group_pattern``).
        source: what to name in the error (the split file).

    Returns:
        ``(train ids, val ids)``, both sorted.

    Raises:
        ConfigError: fewer than two case groups, so no validation part can be carved.
    """
    groups = group_cases(train, group_pattern)
    n_val = max(1, int(round(fraction * len(groups))))
    if len(groups) - n_val < 1:
        raise ConfigError(f"{source}: no 'val' list, and its {len(groups)} training case group(s) are too few to "
                          f"carve one (data.split.val {fraction}); add a 'val' list or set data.split.val: 0 to "
                          "train without validation")
    order = np.random.default_rng([int(seed), 104723]).permutation(len(groups))
    val = sorted(i for g in order[:n_val] for i in groups[g])
    rest = sorted(i for g in order[n_val:] for i in groups[g])
    return rest, val


def make_split(index: DatasetIndex, cfg: SplitConfig, facts: dict | None = None) -> dict[str, list[str]]:
    """Split the dataset's labelled cases into train / val / test.

    ``cfg.file`` wins when given; a file without a ``val`` list gets one carved from its ``train`` list
    (:func:`carve_validation`, unless ``cfg.val`` is 0). ``cfg.folds`` selects fold ``cfg.fold`` of a seeded
    k-fold split (:func:`medkd.data.folds.fold_splits`). Otherwise cases (grouped by ``cfg.group_pattern`` so
    that e.g. two frames of one patient stay together) are shuffled with ``cfg.seed``; ``cfg.test_sites`` sends
    whole sites to the test part (leave-site-out).

    Args:
        index: the dataset.
        cfg: the split config (``data.split``).
        facts: if given, filled with facts a run records in ``split.json`` (``val_carved_from_train`` and
            ``val_carve`` when a validation part was carved from a split file's ``train`` list).
    """
    if cfg.file:
        path = Path(cfg.file)
        if not path.is_absolute():
            path = index.root / path if (index.root / path).exists() else path
        split = read_split_file(path, index)
        if "val" not in _read_split_json(path) and cfg.val > 0:
            split["train"], split["val"] = carve_validation(split["train"], cfg.val, cfg.seed, cfg.group_pattern,
                                                            source=str(path))
            if facts is not None:
                facts["val_carved_from_train"] = True
                facts["val_carve"] = {"fraction": cfg.val, "seed": cfg.seed, "group_pattern": cfg.group_pattern,
                                      "n_val": len(split["val"])}
        return split
    if cfg.folds:
        return fold_splits(index, cfg.folds, cfg.fold_seed, cfg.group_pattern, cfg.val, cfg.seed)[cfg.fold]
    labelled = [c for c in index.cases if c.label_file is not None]
    if cfg.test_sites:
        unknown = [s for s in cfg.test_sites if s not in index.sites]
        if unknown:
            raise ConfigError(f"data.split.test_sites: site {unknown[0]!r} not in dataset (sites: {index.sites})")
        test = [c.case_id for c in labelled if c.site in cfg.test_sites]
        rest = [c.case_id for c in labelled if c.site not in cfg.test_sites]
        groups = group_cases(rest, cfg.group_pattern)
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(groups))
        n_val = int(round(cfg.val * len(groups)))
        val = [i for g in order[:n_val] for i in groups[g]]
        train = [i for g in order[n_val:] for i in groups[g]]
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    groups = group_cases([c.case_id for c in labelled], cfg.group_pattern)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(groups))
    n_test = int(round(cfg.test * len(groups)))
    n_val = int(round(cfg.val * len(groups)))
    if len(groups) - n_test - n_val < 1:
        raise ConfigError(f"data.split: {len(groups)} case groups leave no training cases "
                          f"(val={cfg.val}, test={cfg.test})")
    test = [i for g in order[:n_test] for i in groups[g]]
    val = [i for g in order[n_test:n_test + n_val] for i in groups[g]]
    train = [i for g in order[n_test + n_val:] for i in groups[g]]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def subsample_cases(case_ids: list[str], fraction: float, seed: int, group_pattern: str | None = None) -> list[str]:
    """A seeded subset of ``fraction`` of the case groups (at least one), e.g. thesis B's 50% student data."""
    if fraction >= 1.0:
        return list(case_ids)
    groups = group_cases(case_ids, group_pattern)
    rng = np.random.default_rng(seed + 7919)
    keep = max(1, int(round(fraction * len(groups))))
    chosen = sorted(rng.permutation(len(groups))[:keep])
    return sorted(i for g in chosen for i in groups[g])
