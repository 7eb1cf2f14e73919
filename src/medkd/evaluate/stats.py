"""Summary statistics and significance tests for comparing runs.

Every function returns plain Python numbers (``float`` / ``int``) or ``None`` where a value is undefined,
so results can be written to JSON as they are (no NaN, no numpy scalars).

Example:
    >>> format_mean_std([0.80, 0.82, 0.84])
    '0.820 ± 0.020'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from medkd.errors import MedkdError

__all__ = ["finite_values", "format_mean_std", "hierarchical_bootstrap", "mean_std", "one_way_anova",
           "paired_seed_test", "paired_wilcoxon"]

#: Fewest paired cases for which :func:`paired_wilcoxon` reports a p-value. With 5 pairs the smallest
#: possible exact two-sided p-value is 2 / 2**5 = 0.0625, so no difference could ever be significant.
WILCOXON_MIN_N = 6


def _to_float(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def finite_values(values: Iterable[Any]) -> list[float]:
    """Return the finite numbers of ``values`` as floats, dropping ``None``, NaN and infinities.

    Args:
        values: numbers, possibly with ``None`` / NaN for undefined entries.

    Returns:
        The defined values, in order.
    """
    return [v for v in (_to_float(x) for x in values) if v is not None]


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the defined values.

    ``None`` / NaN entries are ignored. The standard deviation uses ``ddof=1`` when there are at least two
    values; a single value has standard deviation ``0.0``; no values give ``(None, None)``.

    Args:
        values: numbers, possibly with ``None`` for undefined entries.

    Returns:
        ``(mean, std)`` as floats, or ``(None, None)``.
    """
    vals = finite_values(values)
    if not vals:
        return None, None
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def format_mean_std(values: Iterable[Any], digits: int = 3) -> str:
    """Format the defined values as ``"mean ± std"``, e.g. ``"0.812 ± 0.021"``.

    Args:
        values: numbers, possibly with ``None`` for undefined entries.
        digits: digits after the decimal point.

    Returns:
        The formatted string, or ``"n/a"`` when no value is defined.
    """
    mean, std = mean_std(values)
    if mean is None or std is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_wilcoxon(
    a: Mapping[Any, Any],
    b: Mapping[Any, Any],
    alternative: str = "two-sided",
    min_n: int = WILCOXON_MIN_N,
) -> dict[str, Any]:
    """Two-sided (by default) Wilcoxon signed-rank test of ``a`` against ``b`` on the cases both hold.

    A case is paired when it is a key of both mappings and both values are defined (not ``None`` / NaN).
    The test is ``scipy.stats.wilcoxon(a_i, b_i)`` with SciPy's defaults (zero differences dropped,
    exact distribution for small samples). It is not run, and ``p`` is ``None`` with a ``reason``, when
    fewer than ``min_n`` cases are paired or every difference is zero.

    Args:
        a: case id -> value of method A (e.g. per-case Dice of the student with distillation).
        b: case id -> value of method B (e.g. per-case Dice of the baseline).
        alternative: ``"two-sided"``, ``"greater"`` (A > B) or ``"less"``.
        min_n: fewest paired cases for which the test is run.

    Returns:
        ``{"n", "delta", "median_delta", "statistic", "p", "reason", "cases"}`` where ``delta`` is the mean
        of ``a_i - b_i`` over the paired cases and ``reason`` is ``None`` when the test ran.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise MedkdError(
            f"paired_wilcoxon: alternative must be two-sided, greater or less, got {alternative!r}"
        )
    cases = sorted((k for k in a if k in b), key=str)
    pairs = [(k, _to_float(a[k]), _to_float(b[k])) for k in cases]
    pairs = [(k, x, y) for k, x, y in pairs if x is not None and y is not None]
    out: dict[str, Any] = {
        "n": len(pairs),
        "delta": None,
        "median_delta": None,
        "statistic": None,
        "p": None,
        "reason": None,
        "cases": [k for k, _, _ in pairs],
    }
    if not pairs:
        out["reason"] = "no case has a defined value in both"
        return out
    x = np.asarray([p[1] for p in pairs], dtype=np.float64)
    y = np.asarray([p[2] for p in pairs], dtype=np.float64)
    diff = x - y
    out["delta"] = float(diff.mean())
    out["median_delta"] = float(np.median(diff))
    if len(pairs) < min_n:
        out["reason"] = f"only {len(pairs)} paired cases (fewer than {min_n})"
        return out
    if np.all(diff == 0):
        out["reason"] = "all paired differences are zero"
        return out
    res = sps.wilcoxon(x, y, alternative=alternative)
    out["statistic"] = _to_float(res.statistic)
    out["p"] = _to_float(res.pvalue)
    if out["p"] is None:
        out["reason"] = "scipy returned an undefined p-value"
    return out


def one_way_anova(groups: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """One-way ANOVA across groups of values (``scipy.stats.f_oneway``), e.g. the runs of several methods.

    ``None`` / NaN values are dropped first. ``F`` and ``p`` are ``None``, with a ``reason``, when fewer than two
    groups have values, when there are no degrees of freedom within groups (every group has one value), or when
    the statistic is undefined (no variance at all).

    Args:
        groups: group name -> values.

    Returns:
        ``{"F", "p", "df": [df_between, df_within], "n_groups", "n_total", "means", "reason"}``.
    """
    clean = {str(k): finite_values(v) for k, v in groups.items()}
    used = {k: v for k, v in clean.items() if v}
    k = len(used)
    n_total = sum(len(v) for v in used.values())
    out: dict[str, Any] = {
        "F": None,
        "p": None,
        "df": [k - 1, n_total - k] if k else [0, 0],
        "n_groups": k,
        "n_total": n_total,
        "means": {name: float(np.mean(v)) for name, v in used.items()},
        "reason": None,
    }
    if k < 2:
        out["reason"] = f"need at least 2 groups with values, got {k}"
        return out
    if n_total - k < 1:
        out["reason"] = "no degrees of freedom within groups (each group has a single value)"
        return out
    values = [np.asarray(v, dtype=np.float64) for v in used.values()]
    if all(np.all(v == values[0][0]) for v in values):
        out["reason"] = "all values are identical"
        return out
    if all(np.all(v == v[0]) for v in values):
        # No variance within groups but the means differ: F is infinite and p is 0.
        out["reason"] = "no variance within groups (F is infinite)"
        out["p"] = 0.0
        return out
    res = sps.f_oneway(*values)
    out["F"] = _to_float(res.statistic)
    out["p"] = _to_float(res.pvalue)
    return out


def paired_seed_test(a: Mapping[Any, Any], b: Mapping[Any, Any], min_n: int = 2) -> dict[str, Any]:
    """Paired comparison with the SEED as the unit: one value per seed and method (e.g. mean test Dice).

    The per-seed differences ``a_s - b_s`` (seeds both hold) are tested with a two-sided paired t-test
    (``scipy.stats.ttest_rel``), and their mean gets a 95% t interval. Unlike a Wilcoxon over volumes, this asks
    whether the effect exceeds the seed-to-seed spread of training itself.

    Args:
        a: seed -> value of method A.
        b: seed -> value of method B.
        min_n: fewest paired seeds for which the test is run (at least 2; reports ask for 3).

    Returns:
        ``{"n", "delta", "sd", "ci95": [lo, hi], "t", "p", "wins", "losses", "reason"}``; ``wins`` counts seeds
        with ``a > b``. ``t`` / ``p`` / ``ci95`` are ``None`` with a ``reason`` below ``min_n`` seeds or with no
        spread.
    """
    seeds = sorted((k for k in a if k in b), key=str)
    diffs = [(x, y) for x, y in ((_to_float(a[k]), _to_float(b[k])) for k in seeds) if x is not None and y is not None]
    d = np.asarray([x - y for x, y in diffs], dtype=np.float64)
    out: dict[str, Any] = {"n": len(d), "delta": float(d.mean()) if len(d) else None,
                           "sd": float(d.std(ddof=1)) if len(d) > 1 else None, "ci95": None, "t": None, "p": None,
                           "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "reason": None}
    if len(d) < max(2, min_n):
        out["reason"] = f"only {len(d)} paired seed(s)"
        return out
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal up to rounding (0.8 - 0.7 vs 0.9 - 0.8)
        out["reason"] = "every seed has the same difference (no spread)"
        return out
    res = sps.ttest_rel([x for x, _ in diffs], [y for _, y in diffs])
    half = float(sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    out.update(t=_to_float(res.statistic), p=_to_float(res.pvalue), ci95=[out["delta"] - half, out["delta"] + half])
    return out


def hierarchical_bootstrap(a: Mapping[Any, Mapping[Any, Any]], b: Mapping[Any, Mapping[Any, Any]],
                           n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Bootstrap of the mean difference over seeds AND volumes (``a[seed][case]`` vs ``b[seed][case]``).

    Each resample draws seeds with replacement (paired: the same seeds for both methods), then, within each
    drawn seed, volumes with replacement (paired), and takes the mean of ``a - b``. Both sources of variation
    (which training seed, which test volumes) are in the interval, so it neither pools volumes over seeds as
    if they were independent nor ignores the test sample.

    Returns:
        ``{"n_seeds", "n_cases", "delta", "ci95": [lo, hi], "p_le_0", "n_boot"}``; ``p_le_0`` is the share of
        resamples whose mean difference is <= 0 (a one-sided bootstrap p-value for "a > b").
    """
    seeds = sorted((s for s in a if s in b), key=str)
    diffs = []
    for s in seeds:
        cases = sorted((c for c in a[s] if c in b[s]), key=str)
        row = [(_to_float(a[s][c]), _to_float(b[s][c])) for c in cases]
        diffs.append(np.asarray([x - y for x, y in row if x is not None and y is not None], dtype=np.float64))
    diffs = [d for d in diffs if len(d)]
    out: dict[str, Any] = {"n_seeds": len(diffs), "n_cases": int(min((len(d) for d in diffs), default=0)),
                           "delta": float(np.mean([d.mean() for d in diffs])) if diffs else None, "ci95": None,
                           "p_le_0": None, "n_boot": n_boot}
    if len(diffs) < 2:
        return out
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(n_boot):
        picks = rng.integers(0, len(diffs), len(diffs))
        means[i] = np.mean([diffs[p][rng.integers(0, len(diffs[p]), len(diffs[p]))].mean() for p in picks])
    out["ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    out["p_le_0"] = float((means <= 0).mean())
    return out
