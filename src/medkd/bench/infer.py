"""``medkd bench infer``: CPU inference of teachers and students, with PyTorch eager and onnxruntime.

For every model (random-init weights: timing does not depend on the values) and engine, a fresh Python process
measures, with ``threads`` threads:

* **ms per slice** — batch 1, ``1 x C x S x S``, median (and min) of the timed runs after warm-up;
* **ms per volume** — a ``S x S x depth`` stack (ACDC-like: 10 short-axis slices of 256 x 256) predicted slice-wise,
  all slices in one batch as ``medkd predict`` does (``evaluate.batch_size`` >= depth), logits then argmax;
* **peak RSS** — ``VmHWM`` of the worker process (``/proc/self/status``; ``ru_maxrss`` where there is no /proc)
  read right after its timed runs: imports, model load and inference, nothing else. The onnxruntime worker
  imports only numpy and onnxruntime, never torch (recorded as ``imports_torch``);
* **file sizes** — the ``state_dict`` as safetensors and the ONNX export (:func:`medkd.export.export_onnx`).

A measurement stops early after ``max_seconds`` once it has 3 runs (the slow teachers); the number of runs is
recorded. With ``processes`` > 1 every model and engine is measured that many times, each in its own fresh
process, and the row reports the median of the processes' medians (``process_medians`` lists them): one process
can be lucky or unlucky in memory layout and frequency scaling, a median over processes is what a user sees.
A shared CPU makes timings swing, so every worker records ``other_cpu_cores``: the CPU time other
processes used while it ran (``/proc/stat`` busy time minus the worker's own CPU time), divided by its wall
time. With ``max_busy``, each worker first waits until other processes use less than ``max_busy`` cores (sampled
over 2 s; the load average lags and counts the benchmark's own workers) and is run again (at most ``retries``
times) when others used more than that while it ran, within a total budget of ``wait_budget_s`` seconds.
The load average is recorded before and after each model.

The workers are :mod:`medkd.bench.infer_torch` and :mod:`medkd.bench.infer_onnx` (protocol in
:mod:`medkd.bench.worker`), the markdown comes from :mod:`medkd.bench.infer_report`; timing, memory, machine
and load helpers from :mod:`medkd.measure`.

Example::

    from medkd.bench.infer import run_bench

    result = run_bench(["unetplusplus", "enet"], size=256, out="benchmarks/inference")
    print(result["markdown"])
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.bench.infer_report import render_markdown
from medkd.bench.worker import run_worker
from medkd.errors import ConfigError, unknown_name_error
from medkd.io import atomic_write_json, atomic_write_text
from medkd.measure.load import children_cpu_seconds, cpu_busy_seconds, other_cores, wait_for_quiet
from medkd.measure.machine import load_average, machine_info
from medkd.models import list_models, model_info

__all__ = ["DEFAULT_MODELS", "ENGINES", "TARGETS", "render_markdown", "run_bench"]

#: Teachers and students measured by default.
DEFAULT_MODELS: tuple[str, ...] = ("unetplusplus", "deeplabv3plus", "enet", "espnet", "erfnet", "unet_s1")
#: Engines, each measured in its own process.
ENGINES: tuple[str, ...] = ("torch", "onnx")
#: Issue targets: the student's ms per slice at most this, and at least this many times faster than the teacher.
TARGETS: dict[str, Any] = {"student": "enet", "teacher": "unetplusplus", "max_ms_per_slice": 8.0, "min_speedup": 100.0}

#: Settings every worker's spec copies.
_SPEC_KEYS = ("depth", "repeats", "warmup", "volume_repeats", "threads", "in_channels", "num_classes", "max_seconds")
#: The worker module of each engine (run as ``python -m``).
_WORKERS: dict[str, str] = {"torch": "medkd.bench.infer_torch", "onnx": "medkd.bench.infer_onnx"}


def _measure(kind: str, spec: dict[str, Any], work: Path, timeout_s: float, max_busy: float | None,
             retries: int, deadline: float) -> dict[str, Any]:
    """Run one worker; with ``max_busy``, wait for a quiet machine first and redo a disturbed measurement."""
    waits = []
    for attempt in range(retries + 1):
        if max_busy is not None:
            waits.append(wait_for_quiet(max_busy, timeout_s=max(0.0, deadline - time.monotonic())))
        busy0, cpu0, t0 = cpu_busy_seconds(), children_cpu_seconds(), time.monotonic()
        result = run_worker(kind, _WORKERS[kind], spec, work, timeout_s)
        busy1, cpu1, wall = cpu_busy_seconds(), children_cpu_seconds(), time.monotonic() - t0
        others = other_cores(None if busy0 is None or busy1 is None else busy1 - busy0, cpu1 - cpu0, wall)
        result["engine"].update(other_cpu_cores=None if others is None else round(others, 3), attempts=attempt + 1,
                                waited_s=round(sum(w["waited_s"] for w in waits), 1))
        if max_busy is None or others is None or others < max_busy or time.monotonic() >= deadline:
            return result
    return result


def _combine_timings(timings: list[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' ``{"median", "min", "runs"}`` as one: the median of medians, the overall min, all runs."""
    medians = [t["median"] for t in timings]
    return {"median": statistics.median(medians), "min": min(t["min"] for t in timings),
            "runs": sum(t["runs"] for t in timings), "process_medians": medians}


def _combine_processes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers of one model and engine as one result; memory and disturbance: the worst process."""
    if len(results) == 1:
        return results[0]
    engines = [r["engine"] for r in results]
    engine = {**engines[0],
              "ms_per_slice": _combine_timings([e["ms_per_slice"] for e in engines]),
              "ms_per_volume": _combine_timings([e["ms_per_volume"] for e in engines]),
              "peak_rss_mb": max(e["peak_rss_mb"] for e in engines),
              "base_rss_mb": max(e["base_rss_mb"] for e in engines),
              "other_cpu_cores": max((e["other_cpu_cores"] for e in engines if e["other_cpu_cores"] is not None),
                                     default=None),
              "attempts": sum(e["attempts"] for e in engines),
              "waited_s": round(sum(e["waited_s"] for e in engines), 1),
              "processes": len(engines)}
    return {**results[0], "engine": engine}


# ----------------------------------------------------------------------------------------------- driver


def _check_models(models: Sequence[str]) -> list[str]:
    """The distinct model names, in order.

    Raises:
        ConfigError: no names, or one that is not a 2D zoo model.
    """
    names = list(dict.fromkeys(models))
    if not names:
        raise ConfigError("bench infer: --models is empty")
    valid = list_models(spatial_dims=2)
    for n in names:
        if n.startswith("monai."):
            model_info(n)  # raises for an unknown MONAI class
        elif n not in valid:
            raise unknown_name_error("2D model", n, valid)
    return names


def _machine(threads: int, versions: dict[str, Any]) -> dict[str, Any]:
    """:func:`~medkd.measure.machine_info` less torch's threads, plus the workers' versions and ``threads``."""
    info = machine_info()
    info.pop("torch_threads", None)
    info.update(onnxruntime=None, threads=threads)
    info.update({k: v for k, v in versions.items() if v})
    return info


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """:data:`TARGETS` with, per engine, the student's ms per slice and its speed-up over the teacher."""
    by_name = {r["name"]: r for r in rows}
    student, teacher = by_name.get(TARGETS["student"]), by_name.get(TARGETS["teacher"])
    out: dict[str, Any] = {**TARGETS, "engines": {}}
    for engine in ENGINES:
        entry: dict[str, Any] = {}
        if student is not None:
            ms = student["engines"][engine]["ms_per_slice"]["median"]
            entry["student_ms_per_slice"] = ms
            entry["ms_target_met"] = ms <= TARGETS["max_ms_per_slice"]
        if student is not None and teacher is not None:
            ratio = teacher["engines"][engine]["ms_per_slice"]["median"] / student["engines"][engine]["ms_per_slice"][
                "median"]
            entry["teacher_ms_per_slice"] = teacher["engines"][engine]["ms_per_slice"]["median"]
            entry["speedup"] = ratio
            entry["speedup_target_met"] = ratio >= TARGETS["min_speedup"]
        out["engines"][engine] = entry
    return out


def run_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    size: int = 256,
    depth: int = 10,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    out: str | Path | None = None,
    max_busy: float | None = None,
    retries: int = 2,
    wait_budget_s: float = 600.0,
    in_channels: int = 1,
    num_classes: int = 4,
    volume_repeats: int | None = None,
    max_seconds: float = 30.0,
    check_export: bool = True,
    timeout_s: float = 1800.0,
    stem: str = "inference_cpu",
    note: str | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Measure every model with both engines, each in a fresh process; write JSON + markdown to ``out``.

    Args:
        models: 2D zoo model names (teachers and students).
        size: slice size ``S`` (``S x S``); must suit every model's size divisor.
        depth: slices per volume.
        repeats: timed runs per slice measurement (after ``warmup``).
        warmup: untimed runs first (volumes get at most 1).
        threads: torch / onnxruntime intra-op threads (default: all logical cores).
        out: folder for ``<stem>.json`` and ``<stem>.md`` (nothing written when None).
        max_busy: before each worker, wait until other processes use fewer cores than this; redo a worker
            during which they used more (see the module docstring). None measures at once.
        retries: re-runs of a disturbed worker.
        wait_budget_s: total seconds spent waiting and re-running before measuring regardless.
        in_channels: input channels.
        num_classes: output classes (4, as ACDC: background, RV, myocardium, LV).
        volume_repeats: timed runs per volume (default ``max(1, repeats // 4)``).
        max_seconds: a measurement stops after this long once it has 3 runs.
        check_export: verify each ONNX export against PyTorch with onnxruntime.
        timeout_s: per worker process.
        stem: file name stem of the outputs in ``out``.
        note: a paragraph added to the markdown (and the JSON).
        processes: fresh worker processes per model and engine; the row reports the median of their medians.

    Returns:
        The JSON payload plus ``"markdown"`` (the rendered table).

    Raises:
        ConfigError: an unknown model name or bad sizes; MedkdError: a worker failed.
    """
    names = _check_models(models)
    if size < 8 or depth < 1 or repeats < 1 or warmup < 0 or processes < 1:
        raise ConfigError(f"bench infer: size {size}, depth {depth}, repeats {repeats}, warmup {warmup}, "
                          f"processes {processes} out of range")
    threads = int(threads or os.cpu_count() or 1)
    deadline = time.monotonic() + wait_budget_s
    settings = {"size": [size, size], "depth": depth, "in_channels": in_channels, "num_classes": num_classes,
                "repeats": repeats, "warmup": warmup, "volume_repeats": volume_repeats or max(1, repeats // 4),
                "max_seconds": max_seconds, "threads": threads, "weights": "random init (seed 0)",
                "max_busy": max_busy, "retries": retries, "wait_budget_s": wait_budget_s, "processes": processes,
                "volume": f"{size}x{size}x{depth} stack, slice-wise, all {depth} slices in one batch, logits -> argmax"}
    load_before = load_average()
    base = {**{k: settings[k] for k in _SPEC_KEYS}, "size": size, "check_export": check_export}
    rows, versions = _measure_models(names, base, timeout_s, max_busy, retries, deadline, processes)
    teacher = _add_speedups(rows)
    payload: dict[str, Any] = {
        "benchmark": "medkd bench infer", "machine": _machine(threads, versions), "settings": settings,
        "load_average": {"before": load_before, "after": load_average()},
        "reference_teacher": None if teacher is None else teacher["name"], "models": rows,
        "targets": _targets(rows), "note": note}
    markdown = render_markdown(payload)
    if out is not None:
        out = Path(out)
        atomic_write_json(out / f"{stem}.json", payload)
        atomic_write_text(out / f"{stem}.md", markdown)
    return {**payload, "markdown": markdown}


def _measure_models(names: Sequence[str], base: dict[str, Any], timeout_s: float, max_busy: float | None,
                    retries: int, deadline: float, processes: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per model (both engines, each in ``processes`` worker processes) and the torch / onnxruntime
    versions. The engines alternate process by process, so a slow spell of the machine hits both alike."""
    rows: list[dict[str, Any]] = []
    versions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medkd_bench_") as tmp:
        for name in names:
            work = Path(tmp) / name.replace(".", "_")
            work.mkdir()
            spec = {"model": name, **base, "workdir": str(work)}
            row_load = load_average()
            runs: dict[str, list[dict[str, Any]]] = {"torch": [], "onnx": []}
            for process in range(processes):  # the first torch process exports; the others reuse its files
                for kind in ENGINES:
                    runs[kind].append(_measure(kind, {**spec, "export": process == 0}, work, timeout_s, max_busy,
                                               retries, deadline))
            t, o = _combine_processes(runs["torch"]), _combine_processes(runs["onnx"])
            versions.update(torch=t.pop("torch_version"), onnxruntime=o.pop("onnxruntime_version"))
            rows.append({"name": name, "role": t["role"], "params": t["params"],
                         "safetensors_mb": t["safetensors_mb"], "onnx_mb": t["onnx_mb"],
                         "onnx_dynamic": t["onnx_dynamic"], "load_average_before": row_load,
                         "load_average_after": load_average(), "engines": {"torch": t["engine"], "onnx": o["engine"]}})
    return rows, versions


def _add_speedups(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Set each row's ``speedup_vs_teacher`` against :data:`TARGETS`' teacher (else the first teacher); return it."""
    teacher = next((r for r in rows if r["name"] == TARGETS["teacher"]), None)
    if teacher is None:
        teacher = next((r for r in rows if r["role"] == "teacher"), None)
    for r in rows:
        r["speedup_vs_teacher"] = None if teacher is None else {
            e: teacher["engines"][e]["ms_per_slice"]["median"] / r["engines"][e]["ms_per_slice"]["median"]
            for e in ENGINES}
    return teacher
