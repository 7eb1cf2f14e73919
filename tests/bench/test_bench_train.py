from __future__ import annotations

import pytest

from medkd.bench.train import MODES, bench_pair, render_markdown


def test_bench_train_reports_every_mode_with_ratios():
    rows = bench_pair("unet_s1", "unet_s1", (32, 32), 2, device="cpu", steps=1, warmup=0, num_classes=3)
    assert [r["mode"] for r in rows] == list(MODES)
    for r in rows:
        assert r["samples_per_s"] > 0 and r["step_ms"] > 0 and r["process_peak_rss_mib"] > 0
        assert r["step_vs_student_alone"] > 0 and r["speedup_vs_naive"] > 0
    assert next(r for r in rows if r["mode"] == "student_alone")["step_vs_student_alone"] == 1.0
    table = render_markdown(rows, "test machine")
    assert table.count("\n| unet_s1 -> unet_s1") == len(MODES)


def test_bench_train_cli_writes_json_and_markdown(tmp_path, capsys):
    import json

    from medkd.cli import main

    argv = ["bench", "train", "--teacher", "unet_s2", "--student", "unet_s1", "--size", "32x32", "--batch", "2",
            "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "training_bench.json").read_text())
    assert {r["mode"] for r in rows} == set(MODES)
    assert "cached" in (tmp_path / "training_bench.md").read_text()


@pytest.mark.slow
def test_bench_train_compiled_mode_runs_with_inductor_on_cpu():
    """The opt-in torch.compile mode (inductor; about 40 s of compilation on 2 cores) times a real step."""
    rows = bench_pair("unet_s1", "unet_s1", (32, 32), 2, device="cpu", steps=1, warmup=1, num_classes=3,
                      modes=("student_alone", "live_compiled"))
    assert [r["mode"] for r in rows] == ["student_alone", "live_compiled"]
    assert rows[1]["step_ms"] > 0 and rows[1]["step_vs_student_alone"] > 0


def test_bench_train_rejects_unknown_modes():
    with pytest.raises(ValueError, match="unknown benchmark mode"):
        bench_pair("unet_s1", "unet_s1", (32, 32), 2, modes=("student_alone", "turbo"))
