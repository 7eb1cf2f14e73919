"""The ``bench infer`` worker protocol: spec in, JSON out, one-line errors for a failed or slow worker."""

from __future__ import annotations

import json

import pytest

from medkd.bench.worker import run_worker, timing_stats, worker_main
from medkd.errors import MedkdError

SPEC = {"model": "enet", "threads": 1}


def test_worker_main_round_trip(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"a": 21}))
    assert worker_main(lambda spec: {"twice": 2 * spec["a"]}, [tmp_path / "spec.json", tmp_path / "out.json"]) == 0
    assert json.loads((tmp_path / "out.json").read_text()) == {"twice": 42}


def test_timing_stats_keeps_median_min_runs():
    assert timing_stats([3.0, 1.0, 2.0, 9.0]) == {"median": 2.5, "min": 1.0, "runs": 4}


def test_failed_worker_names_model_kind_and_cause(tmp_path):
    with pytest.raises(MedkdError) as err:
        run_worker("onnx", "medkd.no_such_worker", SPEC, tmp_path, timeout_s=60)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("bench infer: enet (onnx) worker failed: ")
    assert "No module named medkd.no_such_worker" in msg
    assert json.loads((tmp_path / "onnx_spec.json").read_text()) == SPEC


def test_slow_worker_times_out(tmp_path):
    with pytest.raises(MedkdError, match=r"^bench infer: enet \(torch\) took longer than 0 s$"):
        run_worker("torch", "medkd.bench.infer_onnx", SPEC, tmp_path, timeout_s=0.01)
