"""``medkd bench infer`` on a tiny size: JSON structure, positive numbers, markdown (no timing thresholds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medkd.bench.infer import TARGETS, _combine_processes, _targets, render_markdown
from medkd.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "inference"


def test_bench_infer_cli_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "infer", "--models", "enet", "--size", "32", "--depth", "2", "--repeats", "1",
                 "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads((out / "inference_cpu.json").read_text())
    assert data["settings"]["size"] == [32, 32] and data["settings"]["depth"] == 2 and data["settings"]["threads"] == 1
    assert data["machine"]["logical_cores"] == os.cpu_count() and data["machine"]["onnxruntime"]
    assert list(data["machine"]) == ["cpu", "logical_cores", "torch", "monai", "python", "platform", "date_utc",
                                     "onnxruntime", "threads"]
    assert len(data["load_average"]["before"]) == 3 and data["settings"]["max_busy"] is None
    (row,) = data["models"]
    assert row["name"] == "enet" and row["role"] == "student" and row["params"] > 0
    assert row["safetensors_mb"] > 0 and row["onnx_mb"] > 0 and row["onnx_dynamic"] == "batch+spatial"
    assert set(row["engines"]) == {"torch", "onnx"}
    for engine, m in row["engines"].items():
        assert m["ms_per_slice"]["median"] > 0 and m["ms_per_slice"]["runs"] == 1, engine
        assert list(m["ms_per_slice"]) == ["median", "min", "runs"], engine
        assert m["ms_per_volume"]["median"] > 0 and m["peak_rss_mb"] > m["base_rss_mb"] > 0, engine
        assert m["threads"] == 1 and m["attempts"] == 1 and m["waited_s"] == 0
        # cores other processes used while the worker ran: a share of this machine's cores, to 3 decimals
        assert 0 <= m["other_cpu_cores"] <= os.cpu_count() and m["other_cpu_cores"] == round(m["other_cpu_cores"], 3)
    assert row["engines"]["onnx"]["imports_torch"] is False  # the onnxruntime process never loads torch
    assert row["speedup_vs_teacher"] is None  # no teacher in this run
    onnx_ms = row["engines"]["onnx"]["ms_per_slice"]["median"]
    assert data["targets"]["engines"]["onnx"]["student_ms_per_slice"] == onnx_ms
    md = (out / "inference_cpu.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| enet | student |" in md and "## Issue targets" in md and "Load average" in md


def test_markdown_states_the_targets_with_measured_ratio():
    def row(name, role, ms):
        eng = {"ms_per_slice": {"median": ms, "min": ms, "runs": 3}, "ms_per_volume": {"median": 10 * ms},
               "peak_rss_mb": 100.0, "base_rss_mb": 50.0, "threads": 2}
        return {"name": name, "role": role, "params": 1000, "safetensors_mb": 1.0, "onnx_mb": 1.0,
                "engines": {"torch": eng, "onnx": eng}, "speedup_vs_teacher": None}

    rows = [row("unetplusplus", "teacher", 1500.0), row("enet", "student", 12.0)]
    payload = {"settings": {"size": [256, 256], "threads": 2, "depth": 10, "in_channels": 1, "repeats": 20,
                            "warmup": 3, "max_seconds": 30, "volume_repeats": 5, "volume": "v", "weights": "w",
                            "num_classes": 4},
               "reference_teacher": "unetplusplus", "models": rows, "targets": _targets(rows),
               "machine": {"cpu": "x"}, "load_average": {"before": [0, 0, 0], "after": [0, 0, 0]}}
    t = payload["targets"]["engines"]["torch"]
    assert t["speedup"] == pytest.approx(125.0) and t["speedup_target_met"] and not t["ms_target_met"]
    md = render_markdown(payload)
    assert f"<= {TARGETS['max_ms_per_slice']:g} ms" in md and "12.0 ms — **not met**" in md
    assert "1500.0 / 12.0 ms = 125.0x — **met**" in md


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["bench", "infer", "--models", "enett", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown 2D model 'enett'" in err[0] and "enet" in err[0]


@pytest.mark.parametrize("stem", ["inference_cpu", "inference_cpu_1thread"])
def test_committed_results_render_to_the_committed_markdown(stem):
    payload = json.loads((RESULTS / f"{stem}.json").read_text())
    assert render_markdown(payload) == (RESULTS / f"{stem}.md").read_text()


def test_several_processes_report_the_median_of_their_medians(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "infer", "--models", "enet", "--size", "32", "--depth", "2", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--processes", "3", "--out", str(out)]) == 0
    data = json.loads((out / "inference_cpu.json").read_text())
    assert data["settings"]["processes"] == 3
    for engine, m in data["models"][0]["engines"].items():
        per_process = m["ms_per_slice"]["process_medians"]
        assert len(per_process) == 3 and m["processes"] == 3 and m["attempts"] == 3, engine
        assert m["ms_per_slice"]["median"] == sorted(per_process)[1] and m["ms_per_slice"]["runs"] == 3
        assert m["ms_per_slice"]["min"] <= min(per_process)
        assert len(m["ms_per_volume"]["process_medians"]) == 3
    assert data["models"][0]["onnx_mb"] > 0 and data["models"][0]["safetensors_mb"] > 0  # from the first process
    md = (out / "inference_cpu.md").read_text()
    assert "ran in 3 fresh processes" in md and "(median of 3 processes: " in md


def test_torch_worker_without_export_writes_no_files(tmp_path):
    from medkd.bench.infer_torch import measure_torch

    spec = {"model": "enet", "in_channels": 1, "num_classes": 4, "size": 32, "depth": 2, "repeats": 1, "warmup": 0,
            "volume_repeats": 1, "threads": 1, "max_seconds": 5.0, "check_export": False, "workdir": str(tmp_path)}
    result = measure_torch({**spec, "export": False})
    assert result["onnx_mb"] is None and result["safetensors_mb"] is None and not any(tmp_path.iterdir())
    assert result["engine"]["ms_per_slice"]["median"] > 0
    exported = measure_torch(spec)
    assert exported["onnx_mb"] > 0 and (tmp_path / "model.onnx").is_file()


def test_combining_processes_keeps_the_worst_memory_and_disturbance():
    def result(ms, rss, others):
        timing = {"median": ms, "min": ms - 1, "runs": 5}
        return {"role": "student", "engine": {"ms_per_slice": timing, "ms_per_volume": timing, "peak_rss_mb": rss,
                                              "base_rss_mb": 10.0, "other_cpu_cores": others, "attempts": 1,
                                              "waited_s": 2.0, "threads": 2}}

    combined = _combine_processes([result(9.0, 100.0, 0.01), result(7.0, 120.0, None), result(8.0, 90.0, 0.05)])
    e = combined["engine"]
    assert e["ms_per_slice"] == {"median": 8.0, "min": 6.0, "runs": 15, "process_medians": [9.0, 7.0, 8.0]}
    assert e["peak_rss_mb"] == 120.0 and e["other_cpu_cores"] == 0.05 and e["attempts"] == 3 and e["waited_s"] == 6.0
    assert combined["role"] == "student" and _combine_processes([result(5.0, 1.0, 0.0)])["engine"]["ms_per_slice"][
        "median"] == 5.0
