"""Evaluation protocols: k-fold cross-validation, leave-one-site-out, and simulated sites.

* **Explicit split file** (``data.split.file``, e.g. ACDC's ``splits.json``): :func:`medkd.data.splits.make_split`.
* **k-fold** (``data.split.folds`` / ``fold``): :func:`fold_splits` (from :mod:`medkd.data.folds`): nnU-Net's
  shuffled k-fold over the sorted case groups (patients), so no patient is in two parts. Fold ``i`` is the test
  part; a seeded ``val`` fraction of the remaining groups validates.
* **Leave-one-site-out** (``data.split.test_sites``): :func:`site_splits` gives one split per target site.
* **Student data fraction** (``data.train_fraction``): :func:`medkd.data.splits.subsample_cases`; the chosen
  cases are the ``train`` list the run records in ``split.json``.
* **Simulated sites** (``data.simulate_sites: {k, seed}``): :func:`simulate_sites` deals the case groups of
  one real dataset to ``k`` sites (seeded, balanced: site sizes differ by at most one group) and records each
  site's :class:`~medkd.data.sites.SiteProfile` in ``index.meta["simulated_sites"]``; every load of a case
  applies its site's profile (:func:`apply_simulated_site`), with per-case randomness fixed by the seed and
  the case id, so train, validation and evaluation see the same image. Resolution and blur act in physical
  units (the case's voxel spacing) and, with ``in_plane`` (the default, recorded), on the first two axes only:
  the slices of a stack such as ACDC's (5-10 mm apart, acquired one by one) are never mixed. Results on such data
  are *simulated* sites, never the seed's multi-site result.

The experiment runner expands a protocol into runs by setting ``data.split.fold = 0..k-1`` or
``data.split.test_sites = [site]`` for each element of :func:`fold_splits` / :func:`site_splits`.

Example:
    >>> folds = fold_splits(index, k=3)                  # paper C's 3-fold cross-validation
    >>> [len(f["test"]) for f in folds]
    [2, 2, 2]
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from medkd.config import SplitConfig
from medkd.data.folds import NNUNET_FOLD_SEED, fold_splits, group_cases, kfold_test_indices
from medkd.data.formats_base import Case, DatasetIndex
from medkd.data.sites import SiteProfile, apply_site, make_site_profiles, random_bias_field
from medkd.data.splits import make_split
from medkd.errors import ConfigError

__all__ = [
    "NNUNET_FOLD_SEED",
    "apply_simulated_site",
    "assign_sites",
    "fold_splits",
    "kfold_test_indices",
    "site_splits",
    "simulate_sites",
]


def site_splits(index: DatasetIndex, val: float = 0.0, seed: int = 0, group_pattern: str | None = None
                ) -> dict[str, dict[str, list[str]]]:
    """Leave-one-site-out: for each site, a split testing on it and training on the other sites.

    Raises:
        ConfigError: fewer than two sites.
    """
    if len(index.sites) < 2:
        raise ConfigError(f"leave-one-site-out needs at least 2 sites; {index.root} has {index.sites or 'none'}")
    return {site: make_split(index, SplitConfig(test_sites=[site], val=val, seed=seed, group_pattern=group_pattern))
            for site in index.sites}


def assign_sites(case_ids: list[str], k: int, seed: int = 0, group_pattern: str | None = None) -> dict[str, str]:
    """Deal case groups to sites ``site1..siteK``: seeded shuffle, then round robin (balanced).

    Returns:
        Case id -> site name; cases of one group share a site.
    """
    groups = group_cases(case_ids, group_pattern)
    if k > len(groups):
        raise ConfigError(f"data.simulate_sites.k: {k} sites but only {len(groups)} case group(s)")
    order = np.random.default_rng([int(seed), 104729]).permutation(len(groups))
    out = {}
    for rank, g in enumerate(order):
        for cid in groups[g]:
            out[cid] = f"site{rank % k + 1}"
    return out


def simulate_sites(index: DatasetIndex, k: int, seed: int = 0, group_pattern: str | None = None,
                   in_plane: bool = True) -> DatasetIndex:
    """A copy of ``index`` whose cases belong to ``k`` simulated sites (see the module docstring).

    ``index.meta["simulated_sites"]`` records ``k``, ``seed``, the profiles and the number of cases per site.

    Raises:
        ConfigError: the dataset already has sites, or has fewer case groups than ``k``.
    """
    if index.sites:
        raise ConfigError(f"data.simulate_sites: {index.root} already has sites {index.sites}; "
                          "simulate sites only on a single-site dataset")
    assignment = assign_sites([c.case_id for c in index.cases], k, seed, group_pattern)
    profiles = make_site_profiles(k, seed)
    cases = [replace(c, site=assignment[c.case_id]) for c in index.cases]
    counts = {p.name: sum(1 for s in assignment.values() if s == p.name) for p in profiles}
    record = {"k": int(k), "seed": int(seed), "simulated": True, "group_pattern": group_pattern,
              "in_plane": bool(in_plane), "profiles": [p.to_dict() for p in profiles], "cases_per_site": counts}
    return replace(index, cases=cases, meta={**index.meta, "simulated_sites": record})


def apply_simulated_site(index: DatasetIndex, case: Case, image: np.ndarray, channels: list[int] | tuple[int, ...],
                         spacing: list[float] | None = None) -> np.ndarray:
    """Apply the case's simulated-site profile to its (C, *spatial) image (held channels ``channels``).

    Deterministic per case and per dataset channel: the bias field is drawn from (seed, case id) and shared
    by the channels; the noise of channel ``ch`` from (seed, case id, ch), whichever channels are loaded.
    ``spacing`` (one voxel size per spatial axis) makes resolution and blur physical
    (:func:`medkd.data.sites.apply_site`); the record's ``in_plane`` keeps them on the first two axes.
    """
    record = index.meta["simulated_sites"]
    profiles = {p["name"]: p for p in record["profiles"]}
    if case.site not in profiles:
        return image
    profile = SiteProfile.from_dict(profiles[case.site])
    key = zlib.crc32(case.case_id.encode("utf-8"))
    seed = int(record["seed"])
    spatial = image.shape[1:]
    bias = random_bias_field(spatial, profile, np.random.default_rng([seed, key, 0]))
    out = np.empty_like(image, dtype=np.float32)
    for pos, ch in enumerate(channels):
        out[pos] = apply_site(image[pos], profile, np.random.default_rng([seed, key, 1 + int(ch)]), bias=bias,
                              spacing=spacing, in_plane=record["in_plane"])
    return out
