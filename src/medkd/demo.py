"""``medkd demo``: the whole distillation story on embedded synthetic data, on a laptop CPU.

1. generate a 2D multi-site phantom dataset (``medkd data synth``) into ``OUT/data``;
2. train a teacher on every training case, the student alone on half of them (labels are scarce), and
   the same student distilled from the frozen teacher with medkd's recommended recipe (``medkd recipe``:
   the other half as images without labels, CWD, pseudo-labels, balanced terms), each a normal run folder
   (``OUT/teacher``, ``OUT/student``, ``OUT/distilled``) read through the same loader a user's own data takes;
3. evaluate all three on the held-out test cases (whole cases, per class and per site);
4. write ``OUT/report.md`` and ``OUT/report.html`` with a table, training curves, a qualitative panel
   and a verdict computed from the numbers (including when distillation does not help).
"""

from __future__ import annotations

import platform
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
import yaml

from medkd.config import parse_config
from medkd.data.loader import open_dataset
from medkd.data.pipeline import prepare_cases
from medkd.data.synthetic import generate_dataset
from medkd.errors import MedkdError
from medkd.evaluate.runner import evaluate_run
from medkd.inference import predict_volume, predicted_classes
from medkd.recipe import choose, recipe_configs
from medkd.report.compare import comparison_document
from medkd.report.figures import plot_qualitative
from medkd.run import RunFolder, resolve_paths
from medkd.train.trainer import train

__all__ = ["demo_config", "run_demo"]

RUNS = ("teacher", "student", "distilled")


def demo_config(which: str, data_root: Path, teacher_run: Path | None, quick: bool, seed: int) -> Any:
    """The packaged demo config ``which`` with the data / teacher paths (and quick settings) filled in."""
    preset = "student" if which == "distilled" else which
    text = resources.files("medkd.presets").joinpath("demo", f"{preset}.yaml").read_text()
    data = yaml.safe_load(text)
    data["seed"] = seed
    data["data"]["root"] = str(data_root)
    data["train"]["threads"] = max(1, min(2, torch.get_num_threads()))
    if quick:
        data["data"]["size"] = [48, 48]
        data["train"]["epochs"] = 2
        data["train"]["batch_size"] = 4
        data["train"]["progress"] = False
    if which == "distilled":  # the student's config plus medkd's recommended recipe
        return resolve_paths(recipe_configs(data, teacher_run, source="demo/student.yaml + recipe")[1])
    return resolve_paths(parse_config(data, source=f"demo/{which}.yaml"))


def _qualitative(out: Path, runs: dict[str, Path], n_rows: int = 3) -> Path:
    """Middle slice of a few test cases with the reference and each run's prediction."""
    models = {label: RunFolder(path).load_model() for label, path in runs.items()}
    _, cfg = next(iter(models.values()))
    info = RunFolder(runs["teacher"]).split()
    index = open_dataset(cfg.data, root=info["dataset"])
    chosen = info["test"][:: max(1, len(info["test"]) // n_rows)][:n_rows]
    cases = prepare_cases(index, chosen, index.channel_indices(info["channels"]), cfg.data)
    images, refs, labels = [], [], []
    preds: dict[str, list[np.ndarray]] = {label: [] for label in models}
    for pc in cases:
        z = pc.image.shape[-1] // 2
        images.append(pc.image[0, ..., z])
        refs.append(pc.reference[..., z])
        labels.append(f"{pc.case_id} ({pc.site})")
        for label, (model, mcfg) in models.items():
            probs = pc.restore(predict_volume(model, pc.image, mcfg.data.dim, mcfg.data.size))
            preds[label].append(predicted_classes(probs)[..., z])
    return plot_qualitative(images, refs, preds, out / "figures" / "qualitative.png", labels)


def run_demo(out: Path, quick: bool = False, seed: int = 0, cases: int | None = None) -> dict[str, dict]:
    """Run the demo into ``out`` and return each run's test summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MedkdError(f"{out}: folder exists and is not empty; choose another --out or remove it")
    n_cases = cases or (24 if quick else 96)
    data_root = out / "data"
    typer.echo(f"[1/5] generating {n_cases} synthetic 2D cases from 4 sites -> {data_root}")
    generate_dataset(data_root, dim=2, cases=n_cases, sites=4, modalities=1, seed=seed,
                     size=(64, 64) if quick else (128, 128))
    summaries: dict[str, dict] = {}
    paths = {name: out / name for name in RUNS}
    for step, name in enumerate(RUNS, start=2):
        cfg = demo_config(name, data_root, paths["teacher"], quick, seed)
        params_note = f"{cfg.model.name}"
        typer.echo(f"[{step}/5] training {name} ({params_note}, {cfg.train.epochs} epochs)")
        train(cfg, paths[name], device="cpu")
        summaries[name] = evaluate_run(paths[name], "test", "cpu", progress=False)
    typer.echo("[5/5] writing the report")
    context = (f"Synthetic 2D phantoms ({n_cases} cases, 4 simulated sites, seed {seed}), "
               f"{summaries['teacher']['n_cases']} held-out test cases, one seed; "
               f"{'quick' if quick else 'demo'} budget on CPU ({platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} threads). Cells: mean ± std over test cases.")
    doc = comparison_document("medkd demo: teacher, student alone, distilled student", paths, baseline="student",
                              context=context, figures_dir=out / "figures",
                              compare_pairs=[("distilled", "student"), ("teacher", "student")])
    kept = choose(paths["student"], paths["distilled"], out / "recipe.json")
    doc.paragraph(f"medkd recipe's choice on the validation cases (never the test cases): kept the "
                  f"{'distilled student' if kept['chosen'] == 'distilled' else 'student alone'} (best validation "
                  f"Dice: student alone {_fmt(kept['val_dice']['alone'])}, distilled "
                  f"{_fmt(kept['val_dice']['distilled'])}); recipe.json records it.")
    qual = _qualitative(out, paths)
    doc.heading("Qualitative results", 3)
    doc.image(str(qual.relative_to(out)), "middle slice of test cases: reference red, prediction green")
    doc.paragraph("Run folders: teacher/, student/, distilled/ (config.yaml, split.json, checkpoints/, "
                  "metrics.jsonl, evaluation/).")
    doc.write(out)
    _print_table(summaries)
    typer.echo(f"recipe (chosen on validation): kept {kept['chosen']}")
    typer.echo(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return summaries


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_table(summaries: dict[str, dict]) -> None:
    typer.echo(f"\n{'run':<10} {'Dice (fg mean)':>16} " + " ".join(
        f"{c:>10}" for c in next(iter(summaries.values()))["foreground_classes"]))
    for name, s in summaries.items():
        fg = s["foreground_mean"]["dice"]
        cells = [f"{s['classes'][c]['dice']['mean']:.3f}" if s["classes"][c]["dice"]["mean"] is not None else "n/a"
                 for c in s["foreground_classes"]]
        typer.echo(f"{name:<10} {fg['mean']:.3f} ± {fg['std']:.3f}   " + " ".join(f"{c:>10}" for c in cells))
