"""The comparison report of a few run folders (the demo's): cells, Δ, p and verdicts from the evaluation."""

from __future__ import annotations

from pathlib import Path

from medkd.evaluate.stats import format_mean_std, paired_wilcoxon
from medkd.report.compare import comparison_document, load_run_result
from medkd.report.scores import case_foreground_means
from medkd.run import RunFolder

RUNS = {"teacher": "fixed/teacher-t/seed0", "student": "fixed/student-s/baseline/seed0",
        "distilled": "fixed/student-s/kd-from-t/seed0"}


def _row(md: str, label: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_run_result_reads_the_run_folder(tiny_experiment: Path) -> None:
    run = RunFolder(tiny_experiment / "runs" / RUNS["student"])
    res = load_run_result("student", run.path)
    model, _ = run.load_model()
    assert res.model == "unet_s1" and res.params == sum(p.numel() for p in model.parameters())
    assert res.summary == run.evaluation() and res.per_case == run.per_case()
    assert [e["epoch"] for e in res.epochs] == [1]
    assert res.train_seconds == run.summary()["train_seconds"] > 0


def test_table_delta_p_and_verdicts(tiny_experiment: Path, tmp_path: Path) -> None:
    paths = {label: tiny_experiment / "runs" / name for label, name in RUNS.items()}
    doc = comparison_document("tiny", paths, baseline="student", context="ctx line", figures_dir=tmp_path / "figures",
                              compare_pairs=[("distilled", "student"), ("teacher", "nobody")])
    md = doc.markdown()
    fg = {label: case_foreground_means(RunFolder(p).per_case()) for label, p in paths.items()}
    row = _row(md, "distilled")
    assert row[4] == format_mean_std(list(fg["distilled"].values()), 3)
    test = paired_wilcoxon(fg["distilled"], fg["student"])
    assert row[-2] == f"{test['delta']:+.3f}"
    assert _row(md, "student")[-2:] == ["-", "-"]
    assert f"mean foreground Dice change {test['delta']:+.3f} over {test['n']} paired test cases" in md
    assert "teacher vs nobody" not in md and "*ctx line*" in md
    assert (tmp_path / "figures" / "training_curves.png").stat().st_size > 1000
