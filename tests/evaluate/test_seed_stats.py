"""Seed-level statistics: paired t-test over seeds and the seed x volume hierarchical bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from medkd.evaluate.stats import hierarchical_bootstrap, paired_seed_test

# ------------------------------------------------------------------------------------------------------------
# paired_seed_test


def test_paired_seed_test_matches_scipy():
    a = {0: 0.81, 1: 0.84, 2: 0.79, 3: 0.86, 4: 0.80}
    b = {0: 0.78, 1: 0.80, 2: 0.80, 3: 0.81, 4: 0.77}
    seeds = sorted(a)
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    d = x - y
    r = paired_seed_test(a, b)
    ref = sps.ttest_rel(x, y)
    assert r["n"] == 5 and r["reason"] is None
    assert r["delta"] == pytest.approx(d.mean())
    assert r["sd"] == pytest.approx(d.std(ddof=1))
    assert r["wins"] == 4 and r["losses"] == 1
    assert r["t"] == pytest.approx(float(ref.statistic))
    assert r["p"] == pytest.approx(float(ref.pvalue))
    half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert r["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    # hand check of the t statistic itself
    assert r["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(5)))
    json.dumps(r, allow_nan=False)
    # swapping the methods flips the signs, keeps p
    s = paired_seed_test(b, a)
    assert s["delta"] == pytest.approx(-r["delta"]) and s["t"] == pytest.approx(-r["t"])
    assert s["p"] == pytest.approx(r["p"]) and (s["wins"], s["losses"]) == (1, 4)


def test_paired_seed_test_uses_only_seeds_both_hold():
    a = {"s0": 0.7, "s1": 0.75, "s2": 0.72, "only_a": 0.1, "s3": None}
    b = {"s0": 0.69, "s1": 0.70, "s2": 0.73, "only_b": 0.9, "s3": 0.5}
    r = paired_seed_test(a, b)
    d = np.array([0.01, 0.05, -0.01])
    assert r["n"] == 3
    assert r["delta"] == pytest.approx(d.mean())
    assert r["p"] == pytest.approx(float(sps.ttest_rel([0.7, 0.75, 0.72], [0.69, 0.70, 0.73]).pvalue))
    assert (r["wins"], r["losses"]) == (2, 1)


def test_paired_seed_test_needs_two_seeds():
    one = paired_seed_test({0: 0.8}, {0: 0.7})
    assert one["n"] == 1 and one["delta"] == pytest.approx(0.1)
    assert one["p"] is None and one["t"] is None and one["ci95"] is None and one["sd"] is None
    assert "1" in one["reason"]
    none = paired_seed_test({0: 0.8}, {1: 0.7})
    assert none["n"] == 0 and none["delta"] is None and none["p"] is None and none["reason"]
    json.dumps(none, allow_nan=False)


def test_paired_seed_test_min_n_withholds_the_p_value():
    a, b = {0: 0.80, 1: 0.84}, {0: 0.78, 1: 0.79}
    two = paired_seed_test(a, b)
    assert two["p"] == pytest.approx(float(sps.ttest_rel([0.80, 0.84], [0.78, 0.79]).pvalue))
    held = paired_seed_test(a, b, min_n=3)
    assert held["n"] == 2 and held["p"] is None and held["t"] is None and held["reason"] == "only 2 paired seed(s)"
    assert held["delta"] == pytest.approx(0.035) and held["wins"] == 2


def test_paired_seed_test_without_spread_gives_a_reason():
    r = paired_seed_test({0: 0.5, 1: 0.75, 2: 0.25}, {0: 0.25, 1: 0.5, 2: 0.0})  # every difference 0.25
    assert r["n"] == 3 and r["delta"] == pytest.approx(0.25) and r["wins"] == 3
    assert r["p"] is None and r["t"] is None and r["ci95"] is None
    assert r["reason"] and "spread" in r["reason"]
    json.dumps(r, allow_nan=False)
    # equal differences up to floating-point rounding are no spread either (not a t of 1e15 and p of 1e-31)
    r = paired_seed_test({0: 0.8, 1: 0.9, 2: 0.7}, {0: 0.7, 1: 0.8, 2: 0.6})
    assert r["delta"] == pytest.approx(0.1) and r["p"] is None and r["t"] is None and "spread" in r["reason"]


# ------------------------------------------------------------------------------------------------------------
# hierarchical_bootstrap


def _per_case(seed: int, n_seeds: int = 4, n_cases: int = 8, effect: float = 0.03):
    rng = np.random.default_rng(seed)
    b = {s: {f"c{c}": float(rng.uniform(0.6, 0.9)) for c in range(n_cases)} for s in range(n_seeds)}
    a = {s: {c: v + effect + float(rng.normal(0, 0.02)) for c, v in cases.items()} for s, cases in b.items()}
    return a, b


def test_bootstrap_is_deterministic_and_contains_the_delta():
    a, b = _per_case(0)
    r1 = hierarchical_bootstrap(a, b, n_boot=500, seed=3)
    r2 = hierarchical_bootstrap(a, b, n_boot=500, seed=3)
    assert r1 == r2
    assert hierarchical_bootstrap(a, b, n_boot=500, seed=4)["ci95"] != r1["ci95"]
    expected = np.mean([np.mean([a[s][c] - b[s][c] for c in a[s]]) for s in a])
    assert r1["delta"] == pytest.approx(expected)
    assert r1["n_seeds"] == 4 and r1["n_cases"] == 8 and r1["n_boot"] == 500
    lo, hi = r1["ci95"]
    assert lo < r1["delta"] < hi
    assert 0.0 <= r1["p_le_0"] <= 1.0
    json.dumps(r1, allow_nan=False)


def test_constant_shift_gives_a_point_interval():
    _, b = _per_case(1)
    a = {s: {c: v + 0.1 for c, v in cases.items()} for s, cases in b.items()}
    r = hierarchical_bootstrap(a, b, n_boot=300, seed=0)
    assert r["delta"] == pytest.approx(0.1)
    assert r["ci95"] == pytest.approx([0.1, 0.1])
    assert r["p_le_0"] == 0.0
    # the reverse direction: every resample <= 0
    assert hierarchical_bootstrap(b, a, n_boot=300, seed=0)["p_le_0"] == 1.0


def test_seed_level_spread_is_in_the_interval():
    """Two seeds, one with difference 0 on every case, one with 0.2: resampling seeds gives 0, 0.1 or 0.2."""
    b = {s: {f"c{c}": 0.5 for c in range(6)} for s in (0, 1)}
    a = {0: {c: 0.5 for c in b[0]}, 1: {c: 0.7 for c in b[1]}}
    r = hierarchical_bootstrap(a, b, n_boot=4000, seed=0)
    assert r["delta"] == pytest.approx(0.1)
    assert r["ci95"] == pytest.approx([0.0, 0.2], abs=1e-9)
    assert r["p_le_0"] == pytest.approx(0.25, abs=0.03)  # both draws from seed 0


def test_unpaired_cases_and_seeds_are_ignored():
    a, b = _per_case(2, n_seeds=3, n_cases=5)
    base = hierarchical_bootstrap(a, b, n_boot=400, seed=1)
    a2 = {s: dict(cases) for s, cases in a.items()}
    b2 = {s: dict(cases) for s, cases in b.items()}
    a2[0]["only_in_a"] = 100.0
    b2[1]["only_in_b"] = -100.0
    a2["seed_only_in_a"] = {"c0": 50.0}
    b2["seed_only_in_b"] = {"c0": -50.0}
    assert hierarchical_bootstrap(a2, b2, n_boot=400, seed=1) == base


def test_bootstrap_needs_two_seeds():
    a, b = _per_case(3, n_seeds=1)
    r = hierarchical_bootstrap(a, b, n_boot=100, seed=0)
    assert r["n_seeds"] == 1 and r["ci95"] is None and r["p_le_0"] is None
    assert r["delta"] == pytest.approx(np.mean([a[0][c] - b[0][c] for c in a[0]]))
    empty = hierarchical_bootstrap({}, {}, n_boot=10)
    assert empty["n_seeds"] == 0 and empty["delta"] is None and empty["ci95"] is None
