"""The scripts under ``benchmarks/`` render their committed JSON to exactly their committed markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_run", BENCHMARKS / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dims", [2, 3])
def test_efficiency(dims):
    stem = BENCHMARKS / "efficiency" / f"efficiency_{dims}d"
    result = json.loads(stem.with_suffix(".json").read_text())
    assert _script("efficiency").render(result, dims) == stem.with_suffix(".md").read_text()


def test_losses_and_an_error_row():
    run = _script("losses")
    result = json.loads((BENCHMARKS / "losses" / "losses_cpu.json").read_text())
    assert run.render_md(result) == (BENCHMARKS / "losses" / "losses_cpu.md").read_text()
    result["results"] = [{"term": "affinity", "dim": "3d", "error": "out of memory"}]
    assert run.render_md(result).splitlines()[-1] == "| affinity | 3d | error: out of memory | | | | | |"


def test_losses_merge_replaces_only_the_remeasured_rows_and_says_so():
    run = _script("losses")
    result = json.loads((BENCHMARKS / "losses" / "losses_cpu.json").read_text())
    old = [{k: v for k, v in r.items() if k != "measured_utc"} for r in result["results"]]
    fresh = {**old[4], "median_s": 0.001, "measured_utc": "2026-12-06T16:00:00Z"}
    merged = run.merge_results(old, [fresh, {"term": "new_term", "dim": "2d", "error": "x"}])
    assert len(merged) == len(old) + 1 and merged[4] is fresh and merged[-1]["term"] == "new_term"
    assert all(a is b for i, (a, b) in enumerate(zip(old, merged)) if i != 4)
    lines = run.render_md({**result, "results": merged}).splitlines()
    assert lines[-1] == f"Re-measured later with `--merge` (same machine kind, date): {old[4]['term']} 2d (2026-12-06)."


def test_losses_merge_refuses_another_machine_or_scale(tmp_path, capsys):
    run = _script("losses")
    result = json.loads((BENCHMARKS / "losses" / "losses_cpu.json").read_text())
    (tmp_path / "losses_cpu.json").write_text(json.dumps(result))
    parser = run.argparse.ArgumentParser(prog="run.py")
    same = result["machine"]
    assert run._previous_result(parser, tmp_path, result["scale"], same)["results"] == result["results"]
    for scale, machine in [("tiny", same), (result["scale"], {**same, "cpu": "another CPU"})]:
        with pytest.raises(SystemExit) as exit_info:
            run._previous_result(parser, tmp_path, scale, machine)
        assert exit_info.value.code == 2 and "--merge" in capsys.readouterr().err


def test_losses_machine_record():
    machine = _script("losses").machine_info()
    assert list(machine) == ["platform", "python", "torch", "cpu", "cpu_count", "torch_threads", "note"]
    assert machine["cpu_count"] >= 1 and machine["cpu"]


def test_startup():
    record = json.loads((BENCHMARKS / "startup" / "startup_cpu.json").read_text())
    assert _script("startup").render_md(record) == (BENCHMARKS / "startup" / "startup_cpu.md").read_text()


def test_student_step_committed_results_render_to_the_committed_markdown():
    stem = BENCHMARKS / "student_step" / "step_cpu"
    result = json.loads(stem.with_suffix(".json").read_text())
    assert _script("student_step").render_markdown(result) == stem.with_suffix(".md").read_text()
    students = {"enet", "espnet", "erfnet", "unet_s1"}
    bf16 = {f"{s} (bf16)" for s in students}
    assert {r["student"] for r in result["rows"]} == students | {"enet (native unpool)"} | bf16


def test_student_step_under_bf16_autocast_trains_and_names_its_row():
    import torch

    run = _script("student_step")
    step = run.StudentStep("unet_s1", torch.device("cpu"), run.AMP)
    assert step.name == "unet_s1 (bf16)"
    before = [p.detach().clone() for p in step.model.parameters()]
    step(*run.batch(2, 32, torch.device("cpu")))
    assert all(p.dtype == torch.float32 for p in step.model.parameters())  # autocast keeps float32 weights
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))


def test_student_step_native_unpool_is_the_same_network_and_restores_enet():
    import torch

    import medkd.models.enet as enet_module

    run = _script("student_step")
    original = enet_module.max_pool2x_with_winners
    assert run.check_native_parity(torch.device("cpu")) < 1e-6
    assert enet_module.max_pool2x_with_winners is original  # the patch ends with its context
    step = run.StudentStep(run.NATIVE, torch.device("cpu"))
    before = [p.detach().clone() for p in step.model.parameters()]
    step(*run.batch(2, 32, torch.device("cpu")))
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))  # the step trains
    prof = run.profile_step(step, run.batch(2, 32, torch.device("cpu")), top=3)
    assert prof["aten_ops"] > 100 and len(prof["top"]) == 3 and 0 < prof["top"][0]["share"] <= 1
