from __future__ import annotations

import json

import pytest

import medkd.bench.train as bench_mod
import medkd.train.step as step_mod
import medkd.train.trainer as trainer_mod
from medkd.bench.train import MODES, bench_pair, render_markdown
from medkd.cli import main

STEPS, WARMUP = 4, 1  # 5 steps on alternating batches: the last one sees the first one's batch again
ROW_KEYS = {"teacher", "student", "mode", "size", "batch", "device", "steps", "seconds", "samples_per_s", "step_ms",
            "loss_first", "loss_last", "process_peak_rss_mib", "step_vs_student_alone", "speedup_vs_naive"}


@pytest.fixture(scope="module")
def bench_run():
    """One benchmark of every mode, with every call of the trainer's step counted (by mode)."""
    calls: list[bool] = []
    real = step_mod.train_step

    def counted(ctx, batch, n_labelled, cached=None, measure=False):
        calls.append(ctx.objective is not None)
        return real(ctx, batch, n_labelled, cached, measure)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_mod, "train_step", counted)
        rows = bench_pair("unet_s1", "unet_s1", (32, 32), 2, device="cpu", steps=STEPS, warmup=WARMUP,
                          num_classes=3)
    return rows, calls


def test_the_benchmark_times_the_trainers_own_step(bench_run):
    assert bench_mod.train_step is step_mod.train_step is trainer_mod.train_step
    rows, calls = bench_run
    assert len(calls) == len(MODES) * (WARMUP + STEPS)
    # student_alone runs without distillation, every other mode with it
    assert calls == [False] * (WARMUP + STEPS) + [True] * (len(MODES) - 1) * (WARMUP + STEPS)


def test_bench_train_rows_record_their_steps_times_and_ratios(bench_run):
    rows, _ = bench_run
    assert [r["mode"] for r in rows] == list(MODES)
    by_mode = {r["mode"]: r for r in rows}
    for r in rows:
        assert set(r) == ROW_KEYS
        assert (r["teacher"], r["student"], r["size"], r["batch"], r["steps"]) == ("unet_s1", "unet_s1", [32, 32],
                                                                                    2, STEPS)
        assert r["step_ms"] == pytest.approx(1000 * r["seconds"] / STEPS, abs=0.02)
        assert r["samples_per_s"] == pytest.approx(2 * STEPS / r["seconds"], rel=0.01)
        assert r["step_vs_student_alone"] == pytest.approx(r["step_ms"] / by_mode["student_alone"]["step_ms"],
                                                           abs=0.006)
        assert r["speedup_vs_naive"] == pytest.approx(by_mode["live_naive"]["step_ms"] / r["step_ms"], abs=0.006)
    assert by_mode["student_alone"]["step_vs_student_alone"] == 1.0
    assert by_mode["live_naive"]["speedup_vs_naive"] == 1.0
    table = render_markdown(rows, "test machine")
    assert table.count("\n| unet_s1 -> unet_s1") == len(MODES)


def test_bench_train_steps_really_train(bench_run):
    rows, _ = bench_run
    by_mode = {r["mode"]: r for r in rows}
    for r in rows:  # the same batch, four optimiser steps later
        assert r["loss_last"] < r["loss_first"] - 0.01, r["mode"]
    # same seeded student, same first batch: the distillation modes add the KL term to the same segmentation loss
    assert by_mode["live_naive"]["loss_first"] > by_mode["student_alone"]["loss_first"]
    # teacher logits read from the cache give the live teacher's loss
    assert by_mode["cached"]["loss_first"] == pytest.approx(by_mode["live_naive"]["loss_first"], abs=2e-3)
    assert by_mode["cached"]["loss_last"] == pytest.approx(by_mode["live_naive"]["loss_last"], abs=2e-3)


def test_bench_train_cli_writes_json_and_markdown(tmp_path, capsys):
    argv = ["bench", "train", "--teacher", "unet_s2", "--student", "unet_s1", "--size", "32x32", "--batch", "2",
            "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "training_bench.json").read_text())
    assert [r["mode"] for r in rows] == list(MODES)
    assert all(set(r) == ROW_KEYS and (r["teacher"], r["student"], r["steps"]) == ("unet_s2", "unet_s1", 1)
               for r in rows)
    md = (tmp_path / "training_bench.md").read_text()
    assert all(f"| unet_s2 -> unet_s1 | 32x32 | 2 | {mode} |" in md for mode in MODES)


@pytest.mark.slow
def test_bench_train_compiled_mode_runs_with_inductor_on_cpu():
    """The opt-in torch.compile mode (inductor; about 40 s of compilation on 2 cores) times a real step."""
    rows = bench_pair("unet_s1", "unet_s1", (32, 32), 2, device="cpu", steps=1, warmup=1, num_classes=3,
                      modes=("student_alone", "live_compiled"))
    assert [r["mode"] for r in rows] == ["student_alone", "live_compiled"]
    compiled = rows[1]
    assert compiled["step_ms"] == pytest.approx(1000 * compiled["seconds"], abs=0.1)  # one timed step
    assert compiled["loss_first"] > rows[0]["loss_first"]  # the compiled step adds the distillation term


def test_bench_train_rejects_unknown_modes():
    with pytest.raises(ValueError, match="unknown benchmark mode"):
        bench_pair("unet_s1", "unet_s1", (32, 32), 2, modes=("student_alone", "turbo"))


@pytest.mark.parametrize(("mode", "distils"), [("student_graphs", False), ("cached_graphs", True)])
def test_graph_modes_compile_the_student_for_cuda_graphs_and_never_run_the_teacher(monkeypatch, mode, distils):
    import torch

    from medkd.models import create_model

    seen: list[str] = []
    monkeypatch.setattr(bench_mod, "compiled", lambda module, how: seen.append(how) or module)
    student, teacher = create_model("unet_s1", 1, 3, 2), create_model("unet_s1", 1, 3, 2)
    ctx, channels_last = bench_mod._mode_context(mode, student, teacher, 3, (32, 32), torch.device("cpu"))
    assert seen == ["reduce-overhead"]  # the student only: a cached or absent teacher is never compiled
    assert ctx.teacher is None and ctx.t_tapper is None and not channels_last
    assert (ctx.objective is not None) is distils and ctx.settings.amp == "none"
