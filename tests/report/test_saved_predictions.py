"""Saved panel predictions: which cases, exact round trip, missing and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medkd.errors import DataError
from medkd.evaluate.saved_predictions import (
    load_panel_predictions,
    panel_cases,
    prediction_path,
    save_panel_prediction,
)

CASES = [f"c{k}" for k in range(10)]


def test_panel_cases_spread_over_the_split() -> None:
    assert panel_cases(CASES) == ["c0", "c3", "c6"]
    assert panel_cases(CASES, n_rows=2) == ["c0", "c5"]
    assert panel_cases(["a", "b"]) == ["a", "b"]
    assert panel_cases([]) == []


def test_only_panel_cases_are_saved_and_read_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = {cid: rng.integers(0, 4, size=(6, 5, 3)) for cid in CASES}
    written = [save_panel_prediction(tmp_path, CASES, cid, maps[cid]) for cid in CASES]
    assert [p.name for p in written if p is not None] == ["c0.npz", "c3.npz", "c6.npz"]
    assert sorted(p.name for p in (tmp_path / "panel").iterdir()) == ["c0.npz", "c3.npz", "c6.npz"]
    loaded = load_panel_predictions(tmp_path, ["c0", "c3", "c6"])
    assert loaded is not None and len(loaded) == 3
    for cid, arr in zip(["c0", "c3", "c6"], loaded):
        np.testing.assert_array_equal(arr, maps[cid])


def test_large_label_indices_keep_their_values(tmp_path: Path) -> None:
    labels = np.array([[0, 300], [2, 1]])
    save_panel_prediction(tmp_path, ["a"], "a", labels)
    np.testing.assert_array_equal(load_panel_predictions(tmp_path, ["a"])[0], labels)


def test_missing_gives_none_and_broken_raises(tmp_path: Path) -> None:
    save_panel_prediction(tmp_path, ["a", "b"], "a", np.zeros((2, 2), dtype=np.int64))
    assert load_panel_predictions(tmp_path, ["a", "b"]) is None
    assert load_panel_predictions(tmp_path, []) is None
    prediction_path(tmp_path, "b").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="b.npz: not a saved prediction"):
        load_panel_predictions(tmp_path, ["a", "b"])
