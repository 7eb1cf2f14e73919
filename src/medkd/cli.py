"""The ``medkd`` command line (typer).

Verbs read like sentences: ``medkd data synth OUT``, ``medkd train CONFIG``, ``medkd evaluate RUN``,
``medkd predict RUN INPUT --out DIR``, ``medkd export RUN --format onnx``, ``medkd bench infer``,
``medkd demo``. Errors a user can cause print one line
(``error: <what and where>``) and exit with status 2; no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medkd.errors import MedkdError

if TYPE_CHECKING:
    from medkd.data.prepared import PreparedInfo

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation for medical image segmentation.")
data_app = typer.Typer(no_args_is_help=True, help="Make, check and inspect datasets.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: CPU inference of teachers and students.")
app.add_typer(bench_app, name="bench")
experiment_app = typer.Typer(no_args_is_help=True, help="Study experiments: a preset's grid of runs.")
app.add_typer(experiment_app, name="experiment")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="folder to create (nnU-Net v2 raw layout)"),
    dim: int = typer.Option(2, "--dim", help="2 (H x W x 1 images) or 3 (volumes)"),
    cases: int = typer.Option(48, "--cases", min=1),
    sites: int = typer.Option(3, "--sites", min=1, help="acquisition sites with different scanners"),
    modalities: int = typer.Option(1, "--modalities", min=1),
    seed: int = typer.Option(0, "--seed"),
    size: str | None = typer.Option(None, "--size", help="e.g. 128x128 or 64x64x48"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Generate a synthetic multi-site phantom dataset (deterministic from --seed)."""
    from medkd.data.synthetic import generate_dataset, load_summary

    if dim not in (2, 3):
        raise MedkdError(f"--dim {dim}: must be 2 or 3")
    shape = _parse_size(size, "--size") if size else None
    path = generate_dataset(out, dim=dim, cases=cases, sites=sites, modalities=modalities, seed=seed, size=shape,
                            overwrite=overwrite)
    typer.echo(str(load_summary(path)))


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="dataset folder (nnU-Net v2, MSD, site folders or PNG pairs)"),
    format: str = typer.Option("auto", "--format", help="nnunet, msd, site_folders, png_pairs or auto"),
    max_cases: int | None = typer.Option(None, "--max-cases", min=1, help="check only the first N cases"),
) -> None:
    """Read every case and report counts, channels, labels, shapes, spacings, sites and problems."""
    from medkd.data.check import check_dataset

    report = check_dataset(root, format, max_cases=max_cases, progress=True)
    typer.echo(report.summary())
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.problems:
        raise MedkdError(f"{root}: {len(report.problems)} problem(s); fix them before training")


@data_app.command("compact")
def data_compact(
    source: Path = typer.Argument(..., help="dataset folder to copy (never modified)"),
    out: Path = typer.Argument(..., help="new folder for the copy (nnU-Net v2 raw layout)"),
    size: str = typer.Option("128x128", "--size", help="in-plane size of every slice, e.g. 128x128"),
    dtype: str = typer.Option("uint8", "--dtype", help="uint8 (per-volume min-max scaled) or float32"),
    format: str = typer.Option("auto", "--format", help="format of SOURCE (auto-detected by default)"),
) -> None:
    """Write a compact copy of a dataset: slices resized in-plane, small data type (to carry or to train small)."""
    from medkd.data.compact import write_compact_copy

    index = write_compact_copy(source, out, _parse_size(size, "--size"), dtype, format)
    megabytes = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
    typer.echo(f"{out}: {len(index.cases)} cases at {size} ({dtype}), {megabytes:.1f} MiB")


@data_app.command("prepare")
def data_prepare(
    config: Path = typer.Argument(..., help="run config (YAML) whose training samples to prepare"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set data.size=[128,128]"),
) -> None:
    """Build the prepared-sample cache of a 2D run ahead of time: its training slices and its whole validation
    cases (see data.prepared)."""
    from medkd.config import load_config
    from medkd.data.loader import build_bundle
    from medkd.data.prepared import prepared_slices
    from medkd.data.prepared_cases import prepared_cases
    from medkd.errors import ConfigError
    from medkd.run import resolve_paths

    cfg = resolve_paths(load_config(config, set_))
    if cfg.data.dim != 2:
        raise ConfigError(f"{config}: data.dim is 3; only 2D runs have a prepared-sample cache")
    if cfg.data.prepared == "off":
        raise ConfigError(f"{config}: data.prepared is off; nothing to prepare")
    bundle = build_bundle(cfg)
    if cfg.distill is not None:  # a teacher with its own normalisation (nnU-Net) adds its copy to the samples
        from medkd.teachers import TeacherInputs, teacher_input_normalization

        bundle.teacher_normalization = teacher_input_normalization(cfg.distill.teacher,
                                                                   TeacherInputs.of_run(cfg, bundle))
    images, _, _, info = prepared_slices(cfg.data, bundle.index, bundle.split["train"], bundle.loaded_channels,
                                         progress="preparing training cases" if cfg.train.progress else None,
                                         must_write=True, teacher=bundle.teacher_copy)
    _echo_prepared(info, f"{images.shape[0]} slices of {len(bundle.split['train'])} training cases")
    if bundle.split["val"]:  # whole validation volumes, read by every validation of the run
        progress = "preparing validation cases" if cfg.train.progress else None
        _, val_info = prepared_cases(cfg.data, bundle.index, bundle.split["val"], bundle.channels, progress)
        if val_info.folder is not None:
            _echo_prepared(val_info, f"{len(bundle.split['val'])} validation cases")


def _echo_prepared(info: PreparedInfo, what: str) -> None:
    """One line per prepared-cache folder: where, what it holds, its size and whether it was reused."""
    from medkd.data.prepared import folder_size

    state = "reused" if info.reused else "written"
    typer.echo(f"{info.folder}: {what}, {folder_size(info.folder) / 2**20:.1f} MiB ({state})")


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    out: Path | None = typer.Option(None, "--out", help="run folder (default: runs/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed run from its last checkpoint (same "
                                "config; only e.g. train.epochs may change)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=5"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)"),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="evaluate on the test split afterwards"),
) -> None:
    """Train a teacher, a student alone, or a student distilled from a frozen teacher.

    The config, the distillation terms and the teacher are checked before any data is read or anything written;
    a --resume that cannot go on (another model, another split, a finished run) changes nothing.
    """
    from medkd.config import load_config
    from medkd.run import resolve_paths
    from medkd.train.distributed import distributed_context
    from medkd.train.trainer import train

    cfg = resolve_paths(load_config(config, set_))
    run_dir = out or Path("runs") / cfg.name
    with distributed_context(device) as ctx:
        result = train(cfg, run_dir, resume=resume, device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
        if ctx.rank == 0:
            best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
            typer.echo(f"trained {cfg.name}: {result.epochs} epochs, best val Dice {best} "
                       f"(epoch {result.best_epoch}) -> {run_dir}")
            if evaluate:
                _print_summary(_evaluate(run_dir, None, ctx.device))


@app.command("recipe")
def recipe_cmd(
    config: Path = typer.Argument(..., help="student-alone run config (YAML): data, model, train"),
    teacher: Path = typer.Option(..., "--teacher", help="the frozen teacher's run folder"),
    out: Path = typer.Option(..., "--out", help="folder for OUT/alone, OUT/distilled and OUT/recipe.json"),
    set_: list[str] = typer.Option([], "--set", help="override a config key of the student, e.g. train.epochs=5"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)"),
) -> None:
    """The recommended recipe: train the student alone and distilled, keep the better one on validation."""
    from medkd.recipe import choose, read_config_dict, recipe_configs
    from medkd.run import RunFolder, resolve_paths
    from medkd.train.trainer import train

    alone, distilled, notes = recipe_configs(read_config_dict(config, set_), teacher, source=str(config))
    for note in notes:
        typer.echo(f"note: {note}")
    for arm, cfg in (("alone", alone), ("distilled", distilled)):
        run_dir = out / arm
        if RunFolder(run_dir).has_summary():
            typer.echo(f"{run_dir}: finished earlier; kept")
            continue
        typer.echo(f"training {arm} -> {run_dir}")
        train(resolve_paths(cfg), run_dir, resume=RunFolder(run_dir).has_checkpoint(), device=device)
        _print_summary(_evaluate(run_dir, None, device))
    record = choose(out / "alone", out / "distilled", out / "recipe.json")
    scores = ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in record["val_dice"].items())
    typer.echo(f"recipe: kept {record['chosen']} (best validation Dice: {scores}) -> {record['run']}")


def _evaluate(run_dir: Path, split: str | None, device: str | None) -> dict:
    from medkd.evaluate.runner import evaluate_run

    return evaluate_run(run_dir, split, device)


def _print_summary(summary: dict) -> None:
    fg = summary["foreground_mean"]
    parts = [f"{m} {fg[m]['mean']:.4f}" for m in ("dice", "iou") if fg[m]["mean"] is not None]
    hd = fg["hd95"]["mean"]
    if hd is not None:
        parts.append(f"HD95 {hd:.2f} mm")
    split = summary["split"] + (" without sites" if summary.get("without_sites") else "")
    typer.echo(f"{summary['run']} [{split}, {summary['n_cases']} cases]: " + ", ".join(parts))
    for name, block in summary["classes"].items():
        d = block["dice"]
        if d["mean"] is not None:
            typer.echo(f"  {name:>16}: Dice {d['mean']:.4f} ± {d['std']:.4f} (n={d['n']}, "
                       f"both empty {d['n_both_empty']})")


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder"),
    split: str | None = typer.Option(None, "--split", help="train, val or test (default: the config's)"),
    device: str | None = typer.Option(None, "--device"),
    save_predictions: bool = typer.Option(False, "--save-predictions"),
    without_sites: bool = typer.Option(False, "--without-sites", help="score the same cases without their "
                                       "simulated acquisition (runs trained with data.simulate_sites); writes "
                                       "evaluation/<split>-without-sites/"),
) -> None:
    """Per-case and per-class Dice, IoU, precision, recall and HD95 on whole volumes.

    HD95 follows evaluate.hd95 (monai: max of the directed 95th percentiles; pooled: medpy's). An unfinished run
    is evaluated with a warning, and summary.json records the epoch scored and whether training had finished.
    """
    from medkd.evaluate.runner import evaluate_run

    if split is not None and split not in ("train", "val", "test"):
        raise MedkdError(f"--split {split!r}: must be train, val or test")
    _print_summary(evaluate_run(run_dir, split, device, save_predictions=save_predictions,
                                without_sites=without_sites))


@app.command("predict")
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run folder"),
    inputs: list[Path] = typer.Argument(..., help="NIfTI files or folders"),
    out: Path = typer.Option(..., "--out", help="output folder for label maps (never replaces an input)"),
    device: str | None = typer.Option(None, "--device"),
    engine: str = typer.Option("torch", "--engine", help="torch (the run's weights) or onnx (onnxruntime, CPU; "
                               "exports the run to RUN/export/model.onnx first when it has no current export)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing label maps in --out"),
) -> None:
    """Segment NIfTI images; outputs keep the input's affine and shape.

    Every input is checked before anything is written; the label maps appear all together or not at all. An
    output never replaces an input file, nor (without --overwrite) any existing file.
    """
    from medkd.predict import ENGINES, predict_files

    if engine not in ENGINES:
        from medkd.errors import unknown_name_error

        raise unknown_name_error("engine", engine, ENGINES)
    if engine == "onnx":
        from medkd.export import resolve_onnx_export, unfinished_warning

        path, info, exported = resolve_onnx_export(run_dir)
        if exported:
            typer.echo(f"exported the run's best weights to {path} (no current ONNX export)")
            warning = unfinished_warning(run_dir, info)
            if warning:
                typer.echo(warning, err=True)
    written = predict_files(run_dir, inputs, out, device, progress=sys.stderr.isatty(), engine=engine,
                            overwrite=overwrite)
    typer.echo(f"wrote {len(written)} label map(s) to {out}")


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run folder"),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript"),
    out: Path | None = typer.Option(None, "--out", help="file or folder (default: RUN/export/model.onnx | model.ts)"),
    opset: int = typer.Option(17, "--opset", min=17, help="ONNX opset"),
) -> None:
    """Export the run's network alone (best weights, no distillation adapters) plus a JSON sidecar."""
    from medkd.export import export_run, read_export_info, sidecar_path, unfinished_warning

    path = export_run(run_dir, format, out, opset=opset)
    info = read_export_info(path)
    warning = unfinished_warning(run_dir, info)
    if warning:
        typer.echo(warning, err=True)
    shape = "x".join(str(d) for d in info["input_shape"])
    typer.echo(f"exported {info['model']} ({format}, input {info['input_name']} {shape}) to {path} "
               f"(+ {sidecar_path(path).name})")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("medkd_demo"), "--out", help="output folder"),
    quick: bool = typer.Option(False, "--quick", help="a much shorter run (for tests)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The whole story on synthetic data: teacher, student alone, distilled student, report."""
    from medkd.demo import run_demo

    run_demo(out, quick=quick, seed=seed)


@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="glob over model names"),
    efficiency: bool = typer.Option(False, "--efficiency", help="also measure checkpoint size and CPU latency"),
    input_size: str = typer.Option("1x256x256", "--input", help="C x H x W (or C x D x H x W)"),
    out: Path | None = typer.Option(None, "--out", help="write JSON + markdown here"),
) -> None:
    """List the model zoo: role, dimensions, parameters and GFLOPs."""
    from medkd.bench.zoo import models_cli

    typer.echo(models_cli(pattern, efficiency, input_size, out))


@app.command("losses")
def losses_cmd() -> None:
    """List the distillation losses and the taps each needs."""
    from medkd.distill.losses import list_losses, loss_info

    for name in list_losses():
        info = loss_info(name)
        typer.echo(f"{name:<20} {info.get('description', '')}")
        taps = info.get("taps") or info.get("student_taps")
        if taps:
            typer.echo(f"{'':<20} taps: {', '.join(taps) if not isinstance(taps, str) else taps}")


@bench_app.command("infer")
def bench_infer_cmd(
    models: str | None = typer.Option(None, "--models", help="comma-separated 2D zoo model names (default: "
                                      "unetplusplus,deeplabv3plus,enet,espnet,erfnet,unet_s1)"),
    size: int = typer.Option(256, "--size", min=8, help="slice size (size x size)"),
    depth: int = typer.Option(10, "--depth", min=1, help="slices per volume"),
    repeats: int = typer.Option(20, "--repeats", min=1, help="timed runs per measurement (after warm-up)"),
    warmup: int = typer.Option(3, "--warmup", min=0),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch / onnxruntime threads (default: cores)"),
    max_busy: float | None = typer.Option(None, "--max-busy", help="wait until other processes use fewer CPU "
                                          "cores than this before each measurement; redo disturbed ones"),
    processes: int = typer.Option(1, "--processes", min=1, help="fresh processes per model and engine; the table "
                                  "reports the median of their medians"),
    out: Path | None = typer.Option(None, "--out", help="folder for inference_cpu.json / inference_cpu.md"),
) -> None:
    """Teacher vs student CPU inference: ms per slice and volume (torch, onnxruntime), peak RSS, file sizes."""
    from medkd.bench.infer import DEFAULT_MODELS, run_bench

    names = list(DEFAULT_MODELS) if models is None else [m.strip() for m in models.split(",") if m.strip()]
    result = run_bench(names, size=size, depth=depth, repeats=repeats, warmup=warmup, threads=threads,
                       out=out, max_busy=max_busy, processes=processes)
    typer.echo(result["markdown"])


@bench_app.command("train")
def bench_train_cmd(
    teacher: str = typer.Option("unetplusplus", "--teacher"),
    student: str = typer.Option("enet", "--student"),
    size: str = typer.Option("256x256", "--size", help="input size, e.g. 256x256 or 64x64x64"),
    batch: int = typer.Option(16, "--batch", min=1),
    steps: int = typer.Option(10, "--steps", min=1, help="timed steps per mode (after warm-up)"),
    warmup: int = typer.Option(2, "--warmup", min=0),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)"),
    out: Path | None = typer.Option(None, "--out", help="write training_bench.json + .md here"),
    compile_mode: bool = typer.Option(False, "--compile", help="also time the compiled modes: the live teacher "
                                      "under torch.compile, the student alone and cached under reduce-overhead"),
) -> None:
    """Distillation training throughput: student alone, live teacher (naive, bf16), cached teacher; with --compile
    also torch.compile (live) and CUDA graphs (student alone, cached)."""
    import json

    import torch

    from medkd.bench.train import MODES, OPTIONAL_MODES, bench_pair, render_markdown

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    modes = MODES + OPTIONAL_MODES if compile_mode else MODES
    rows = bench_pair(teacher, student, _parse_size(size, "--size"), batch, dev, steps, warmup, modes=modes)
    table = render_markdown(rows, dev)
    if out is not None:
        from medkd.io import atomic_write_text

        atomic_write_text(out / "training_bench.json", json.dumps(rows, indent=2) + "\n")
        atomic_write_text(out / "training_bench.md", table)
    typer.echo(table)


@experiment_app.command("run")
def experiment_run_cmd(
    preset: Path = typer.Argument(..., help="experiment preset (YAML), e.g. experiments/paper_a_acdc.yaml"),
    budget: str = typer.Option("quick", "--budget", help="quick (2-core CPU, ~30 min), cpu (2-core CPU, ~1 h), "
                               "gpu (one <= 9-min GPU call) or full (GPU)"),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="seeds of the headline runs (default: preset)"),
    out: Path | None = typer.Option(None, "--out", help="experiment folder (default: runs/<preset name>)"),
    only: str | None = typer.Option(None, "--only", help="run names matching this pattern (+ their teachers)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the grid and exit"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda if available)"),
) -> None:
    """Train and evaluate a preset's grid; finished runs are skipped, so a killed experiment resumes."""
    from medkd.experiment.runner import run_experiment

    run_experiment(preset, out or Path("runs") / preset.stem, budget, seeds, only, dry_run, device, echo=typer.echo)


@app.command("report")
def report_cmd(
    folder: Path = typer.Argument(..., help="an experiment folder (from `medkd experiment run`)"),
    out: Path | None = typer.Option(None, "--out", help="results folder (default: the experiment folder)"),
    note: str | None = typer.Option(None, "--note", help="a sentence added to the report (e.g. machine sharing)"),
) -> None:
    """Render an experiment's tables, statistics and figures to report.md + report.html (and per-run JSON)."""
    from medkd.report.study import render_report

    md, html = render_report(folder, out, note)
    typer.echo(f"report: {md} and {html}")


def _parse_size(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MedkdError(f"{option} {text!r}: expected sizes like 128x128") from None
    if not values or min(values) < 1:
        raise MedkdError(f"{option} {text!r}: sizes must be positive")
    return values


def _os_error_line(exc: OSError) -> str:
    """One line for a file-system error: the path and the system's reason."""
    reason = exc.strerror or str(exc).strip().replace("\n", " ") or type(exc).__name__
    if exc.filename is None:
        return reason
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {reason}"


def _write_error_line(exc: Exception) -> str | None:
    """One line for a library's own write error (safetensors: a full disk while saving a checkpoint)."""
    if type(exc).__name__ == "SafetensorError" and "serializ" in str(exc):
        return f"cannot write a safetensors checkpoint ({str(exc).strip().splitlines()[0]})"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors and file-system errors (a read-only folder, a full disk)
    into one line and exit status 2."""
    try:
        app(args=argv, standalone_mode=False)
    except MedkdError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except OSError as exc:
        typer.echo(f"error: {_os_error_line(exc)}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return int(exc.code or 0)
    except Exception as exc:  # usage errors from click (typer may vendor its own copy of click)
        line = _write_error_line(exc)
        if line is not None:
            typer.echo(f"error: {line}", err=True)
            return 2
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return int(exc.exit_code)
        if type(exc).__name__ == "Abort":
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
