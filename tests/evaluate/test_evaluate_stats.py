"""Tests of medkd.evaluate.stats against hand-computed values and direct SciPy calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from medkd.errors import MedkdError
from medkd.evaluate.stats import format_mean_std, mean_std, one_way_anova, paired_wilcoxon


def test_mean_std():
    vals = [0.8, 0.82, 0.84, None, float("nan")]
    mean, std = mean_std(vals)
    assert mean == pytest.approx(np.mean([0.8, 0.82, 0.84]))
    assert std == pytest.approx(np.std([0.8, 0.82, 0.84], ddof=1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([]) == (None, None)
    assert mean_std([None]) == (None, None)
    assert isinstance(mean_std(np.array([1.0, 2.0]))[0], float)


def test_format_mean_std():
    assert format_mean_std([0.8, 0.82, 0.84]) == "0.820 ± 0.020"
    assert format_mean_std([1.0, 2.0], digits=1) == "1.5 ± 0.7"
    assert format_mean_std([]) == "n/a"


def test_wilcoxon_exact_by_hand():
    # Six pairs, every difference positive and distinct: W- = 0, exact two-sided p = 2 / 2**6.
    a = {f"c{i}": 0.5 + 0.01 * (i + 1) for i in range(6)}
    b = {f"c{i}": 0.5 - 0.001 * i for i in range(6)}
    r = paired_wilcoxon(a, b)
    assert r["n"] == 6 and r["reason"] is None
    assert r["statistic"] == pytest.approx(0.0)
    assert r["p"] == pytest.approx(2 / 64)
    assert r["delta"] == pytest.approx(np.mean([a[k] - b[k] for k in a]))
    assert paired_wilcoxon(a, b, alternative="greater")["p"] == pytest.approx(1 / 64)


def test_wilcoxon_matches_scipy_on_common_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(0.8, 0.05, 12)
    y = x - rng.normal(0.02, 0.03, 12)
    a = {f"case{i:02d}": float(v) for i, v in enumerate(x)}
    b = {f"case{i:02d}": float(v) for i, v in enumerate(y)}
    a["only_in_a"] = 0.1
    b["only_in_b"] = 0.9
    a["case11"] = None  # undefined value: pair dropped
    r = paired_wilcoxon(a, b)
    ref = sps.wilcoxon(x[:11], y[:11])
    assert r["n"] == 11 and r["cases"] == [f"case{i:02d}" for i in range(11)]
    assert r["statistic"] == pytest.approx(float(ref.statistic))
    assert r["p"] == pytest.approx(float(ref.pvalue))
    assert r["delta"] == pytest.approx(float(np.mean(x[:11] - y[:11])))
    assert r["median_delta"] == pytest.approx(float(np.median(x[:11] - y[:11])))
    json.dumps(r, allow_nan=False)


def test_wilcoxon_small_and_degenerate():
    a = {"a": 0.9, "b": 0.8, "c": 0.7}
    b = {"a": 0.8, "b": 0.7, "c": 0.6, "d": 0.1}
    r = paired_wilcoxon(a, b)
    assert r["p"] is None and r["statistic"] is None and "fewer than 6" in r["reason"]
    assert r["n"] == 3 and r["delta"] == pytest.approx(0.1)
    same = {f"c{i}": 0.5 for i in range(8)}
    r = paired_wilcoxon(same, dict(same))
    assert r["p"] is None and "zero" in r["reason"] and r["delta"] == 0.0
    r = paired_wilcoxon({"x": 1.0}, {"y": 1.0})
    assert r["n"] == 0 and r["p"] is None and r["delta"] is None and r["reason"]
    with pytest.raises(MedkdError, match="alternative"):
        paired_wilcoxon(a, b, alternative="bigger")


def test_anova_by_hand_and_vs_scipy():
    # Means 2 and 5, grand mean 3.5: SSB = 2 * 3 * 1.5**2 = 13.5 (df 1), SSW = 2 + 2 = 4 (df 4) -> F = 13.5.
    r = one_way_anova({"kd": [1, 2, 3], "base": [4, 5, 6]})
    assert r["F"] == pytest.approx(13.5)
    assert r["p"] == pytest.approx(float(sps.f.sf(13.5, 1, 4)))
    assert r["df"] == [1, 4] and r["n_groups"] == 2 and r["n_total"] == 6
    assert r["means"] == {"kd": pytest.approx(2.0), "base": pytest.approx(5.0)}
    groups = {"a": [0.61, 0.58, 0.63, 0.60], "b": [0.55, 0.52, 0.57], "c": [0.59, 0.62, 0.64, 0.6, None]}
    r = one_way_anova(groups)
    ref = sps.f_oneway(groups["a"], groups["b"], groups["c"][:4])
    assert r["F"] == pytest.approx(float(ref.statistic)) and r["p"] == pytest.approx(float(ref.pvalue))
    assert r["df"] == [2, 8] and r["reason"] is None
    json.dumps(r, allow_nan=False)


def test_anova_degenerate():
    assert one_way_anova({"a": [1.0, 2.0]})["reason"].startswith("need at least 2 groups")
    assert one_way_anova({"a": [1.0, 2.0], "b": []})["F"] is None
    r = one_way_anova({"a": [1.0], "b": [2.0]})
    assert r["F"] is None and "degrees of freedom" in r["reason"]
    r = one_way_anova({"a": [1.0, 1.0], "b": [1.0, 1.0]})
    assert r["F"] is None and r["p"] is None and "identical" in r["reason"]
    r = one_way_anova({"a": [1.0, 1.0], "b": [2.0, 2.0]})
    assert r["F"] is None and r["p"] == 0.0 and "infinite" in r["reason"]
    json.dumps(r, allow_nan=False)
