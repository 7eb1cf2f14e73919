r"""Case groups and seeded k-fold cross-validation (nnU-Net's convention).

A case group is what must stay on one side of every split (e.g. the two frames of one patient): the first match
of ``data.split.group_pattern`` in the case id, or the id itself. :func:`fold_splits` follows nnU-Net: the sorted
group keys are split by scikit-learn's ``KFold(n_splits=k, shuffle=True, random_state=12345)`` — a
``RandomState(seed)`` shuffle of ``0..n-1``, then ``k`` consecutive folds, the first ``n % k`` of them one longer —
implemented with numpy (same result, no scikit-learn needed). :mod:`medkd.data.splits` and
:mod:`medkd.data.protocols` both build on this module.

Example:
    >>> group_cases(["patient001_frame01", "patient001_frame12", "patient002_frame01"], r"patient\d+")
    [['patient001_frame01', 'patient001_frame12'], ['patient002_frame01']]
"""

from __future__ import annotations

import re

import numpy as np

from medkd.data.formats_base import DatasetIndex
from medkd.errors import ConfigError

__all__ = ["NNUNET_FOLD_SEED", "case_group", "fold_splits", "group_cases", "kfold_test_indices"]

#: nnU-Net's cross-validation seed.
NNUNET_FOLD_SEED = 12345


def case_group(case_id: str, pattern: str | None) -> str:
    """Group key of a case: the first match of ``pattern`` in its id (or the id itself)."""
    if not pattern:
        return case_id
    m = re.search(pattern, case_id)
    return m.group(0) if m else case_id


def group_cases(case_ids: list[str], pattern: str | None) -> list[list[str]]:
    """Case ids grouped by :func:`case_group` (each group sorted), groups sorted by their key."""
    by_group: dict[str, list[str]] = {}
    for cid in sorted(case_ids):
        by_group.setdefault(case_group(cid, pattern), []).append(cid)
    return [by_group[k] for k in sorted(by_group)]


def kfold_test_indices(n: int, k: int, seed: int = NNUNET_FOLD_SEED) -> list[np.ndarray]:
    """Test indices of each fold of a shuffled k-fold split of ``n`` items (scikit-learn ``KFold`` semantics).

    Args:
        n: number of items.
        k: number of folds (2 <= k <= n).
        seed: ``RandomState`` seed of the shuffle.

    Returns:
        ``k`` arrays of indices; together a permutation of ``0..n-1``.
    """
    if k < 2:
        raise ConfigError(f"data.split.folds: need at least 2 folds, got {k}")
    if k > n:
        raise ConfigError(f"data.split.folds: {k} folds but only {n} case group(s)")
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [indices[bounds[i]:bounds[i + 1]] for i in range(k)]


def _carve_val(groups: list[list[str]], val: float, seed: int) -> tuple[list[str], list[str]]:
    """Split groups into (train ids, val ids) with a seeded ``val`` fraction of the groups."""
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = int(round(val * len(groups)))
    if groups and n_val >= len(groups):
        n_val = len(groups) - 1
    val_ids = [i for g in order[:n_val] for i in groups[g]]
    train_ids = [i for g in order[n_val:] for i in groups[g]]
    return sorted(train_ids), sorted(val_ids)


def fold_splits(index: DatasetIndex, k: int = 5, seed: int = NNUNET_FOLD_SEED, group_pattern: str | None = None,
                val: float = 0.0, val_seed: int = 0) -> list[dict[str, list[str]]]:
    """All ``k`` folds of a seeded k-fold cross-validation over the labelled cases (see the module docstring).

    Args:
        index: the dataset.
        k: number of folds.
        seed: shuffle seed (nnU-Net: 12345).
        group_pattern: regular expression whose match groups cases (e.g. ``patient\\d+``).
        val: fraction of each fold's training groups held out for validation.
        val_seed: seed of that hold-out.

    Returns:
        One ``{"train", "val", "test"}`` split per fold; the test parts are disjoint and cover every case.
    """
    labelled = [c.case_id for c in index.cases if c.label_file is not None]
    groups = group_cases(labelled, group_pattern)  # sorted by group key
    out = []
    for test_idx in kfold_test_indices(len(groups), k, seed):
        test_set = set(int(i) for i in test_idx)
        rest = [g for i, g in enumerate(groups) if i not in test_set]
        train, val_ids = _carve_val(rest, val, val_seed)
        out.append({"train": train, "val": val_ids, "test": sorted(i for t in test_set for i in groups[t])})
    return out
