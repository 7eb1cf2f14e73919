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
recorded. A shared CPU makes timings swing, so every worker records ``other_cpu_cores``: the CPU time other
processes used while it ran (``/proc/stat`` busy time minus the worker's own CPU time), divided by its wall
time. With ``max_busy``, each worker first waits until other processes use less than ``max_busy`` cores (sampled
over 2 s; the load average lags and counts the benchmark's own workers) and is run again (at most ``retries``
times) when others used more than that while it ran, within a total budget of ``wait_budget_s`` seconds.
The load average is recorded before and after each model.

Example::

    from medkd.bench.infer import run_bench

    result = run_bench(["unetplusplus", "enet"], size=256, out="benchmarks/inference")
    print(result["markdown"])
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medkd.errors import ConfigError, MedkdError

__all__ = [
    "DEFAULT_MODELS",
    "ENGINES",
    "TARGETS",
    "peak_rss_mb",
    "render_markdown",
    "run_bench",
    "busy_cores",
    "time_ms",
    "wait_for_quiet",
]

#: Teachers and students measured by default.
DEFAULT_MODELS: tuple[str, ...] = ("unetplusplus", "deeplabv3plus", "enet", "espnet", "erfnet", "unet_s1")
#: Engines, each measured in its own process.
ENGINES: tuple[str, ...] = ("torch", "onnx")
#: Issue targets: the student's ms per slice at most this, and at least this many times faster than the teacher.
TARGETS: dict[str, Any] = {"student": "enet", "teacher": "unetplusplus", "max_ms_per_slice": 10.0, "min_speedup": 100.0}

_MB = 1024 * 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``VmHWM``, else ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / _MB


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int, max_seconds: float = 30.0) -> list[float]:
    """Wall times in ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    Stops early once ``max_seconds`` have passed and at least ``min(3, repeats)`` runs are timed.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds and len(times) >= min(3, repeats):
            break
    return times


def _stats(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "runs": len(times)}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot, summed over cores (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_cores(interval: float = 2.0) -> float | None:
    """Cores kept busy by the whole machine over the next ``interval`` seconds (None without /proc/stat)."""
    first = _cpu_busy_seconds()
    if first is None:
        return None
    t0 = time.monotonic()
    time.sleep(interval)
    return max(0.0, (_cpu_busy_seconds() - first) / (time.monotonic() - t0))


def wait_for_quiet(max_busy: float, timeout_s: float = 600.0, poll_s: float = 5.0) -> dict[str, Any]:
    """Wait until the machine uses less than ``max_busy`` cores over a 2 s sample (at most ``timeout_s``).

    Without ``/proc/stat`` the 1-minute load average is compared instead.

    Returns:
        ``{"waited_s", "busy_cores", "load_average", "quiet"}``; ``quiet`` is false when the timeout passed first.
    """
    start = time.monotonic()
    while True:
        busy = busy_cores()
        load = _loadavg()
        level = busy if busy is not None else (load[0] if load else 0.0)
        done = level < max_busy
        if done or time.monotonic() - start >= timeout_s:
            return {"waited_s": round(time.monotonic() - start, 1),
                    "busy_cores": None if busy is None else round(busy, 2), "load_average": load, "quiet": done}
        time.sleep(poll_s)


# ----------------------------------------------------------------------------------------------- workers


def _torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model, time it with PyTorch eager, then save safetensors and export ONNX (after measuring)."""
    import torch

    torch.set_num_threads(spec["threads"])
    from medkd.models import count_parameters, create_model, model_info

    base = _rss_mb()
    torch.manual_seed(0)
    model = create_model(spec["model"], spec["in_channels"], spec["num_classes"], spatial_dims=2).eval()
    size, depth = spec["size"], spec["depth"]
    gen = torch.Generator().manual_seed(0)
    slice_x = torch.randn(1, spec["in_channels"], size, size, generator=gen)
    volume_x = torch.randn(depth, spec["in_channels"], size, size, generator=gen)
    from medkd.models import normalize_output

    with torch.inference_mode():
        slice_t = time_ms(lambda: model(slice_x), spec["repeats"], spec["warmup"], spec["max_seconds"])
        volume_t = time_ms(lambda: normalize_output(model(volume_x)).argmax(1), spec["volume_repeats"],
                           min(1, spec["warmup"]), spec["max_seconds"])
    peak = peak_rss_mb()
    threads = torch.get_num_threads()
    work = Path(spec["workdir"])
    from safetensors.torch import save_model

    from medkd.export import _export_onnx

    save_model(model, str(work / "model.safetensors"))
    exported = _export_onnx(model, work / "model.onnx", slice_x, check=spec["check_export"])
    return {
        "role": model_info(spec["model"])["role"],
        "params": count_parameters(model),
        "safetensors_mb": (work / "model.safetensors").stat().st_size / _MB,
        "onnx_mb": (work / "model.onnx").stat().st_size / _MB,
        "onnx_dynamic": exported["dynamic"],
        "torch_version": torch.__version__,
        "engine": {"ms_per_slice": _stats(slice_t), "ms_per_volume": _stats(volume_t), "peak_rss_mb": peak,
                   "base_rss_mb": base, "threads": threads, "imports_torch": True},
    }


def _onnx_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the ONNX export with onnxruntime's CPU provider; imports numpy and onnxruntime only."""
    import numpy as np
    import onnxruntime as ort

    base = _rss_mb()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(Path(spec["workdir"]) / "model.onnx"), sess_options=opts,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    size, depth, c = spec["size"], spec["depth"], spec["in_channels"]
    slice_x = rng.standard_normal((1, c, size, size), dtype=np.float32)
    volume_x = rng.standard_normal((depth, c, size, size), dtype=np.float32)
    slice_t = time_ms(lambda: session.run(None, {name: slice_x}), spec["repeats"], spec["warmup"], spec["max_seconds"])
    volume_t = time_ms(lambda: np.argmax(session.run(None, {name: volume_x})[0], axis=1), spec["volume_repeats"],
                       min(1, spec["warmup"]), spec["max_seconds"])
    return {
        "onnxruntime_version": ort.__version__,
        "engine": {"ms_per_slice": _stats(slice_t), "ms_per_volume": _stats(volume_t), "peak_rss_mb": peak_rss_mb(),
                   "base_rss_mb": base, "threads": spec["threads"], "imports_torch": "torch" in sys.modules},
    }


def _worker_main(argv: Sequence[str]) -> int:
    kind, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result = (_torch_worker if kind == "torch" else _onnx_worker)(spec)
    Path(out_path).write_text(json.dumps(result))
    return 0


def _run_worker(kind: str, spec: dict[str, Any], work: Path, timeout_s: float) -> dict[str, Any]:
    spec_path, out_path = work / f"{kind}_spec.json", work / f"{kind}_result.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    try:
        proc = subprocess.run([sys.executable, "-m", "medkd.bench.infer", kind, str(spec_path), str(out_path)],
                              env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MedkdError(f"bench infer: {spec['model']} ({kind}) took longer than {timeout_s:.0f} s") from None
    if proc.returncode != 0 or not out_path.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise MedkdError(f"bench infer: {spec['model']} ({kind}) worker failed: {why}")
    return json.loads(out_path.read_text())


def _children_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _measure(kind: str, spec: dict[str, Any], work: Path, timeout_s: float, max_busy: float | None,
             retries: int, deadline: float) -> dict[str, Any]:
    """Run one worker; with ``max_busy``, wait for a quiet machine first and redo a disturbed measurement."""
    waits = []
    for attempt in range(retries + 1):
        if max_busy is not None:
            waits.append(wait_for_quiet(max_busy, timeout_s=max(0.0, deadline - time.monotonic())))
        busy0, cpu0, t0 = _cpu_busy_seconds(), _children_cpu_seconds(), time.monotonic()
        result = _run_worker(kind, spec, work, timeout_s)
        busy1, cpu1, wall = _cpu_busy_seconds(), _children_cpu_seconds(), time.monotonic() - t0
        others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / wall
        result["engine"].update(other_cpu_cores=None if others is None else round(others, 3), attempts=attempt + 1,
                                waited_s=round(sum(w["waited_s"] for w in waits), 1))
        if max_busy is None or others is None or others < max_busy or time.monotonic() >= deadline:
            return result
    return result


# ----------------------------------------------------------------------------------------------- driver


def _check_models(models: Sequence[str]) -> list[str]:
    from medkd.errors import unknown_name_error
    from medkd.models import list_models, model_info

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


def _machine(threads: int) -> dict[str, Any]:
    try:
        from medkd.models.efficiency import machine_info

        info = machine_info()
    except Exception:  # pragma: no cover - keep the benchmark running without the efficiency module
        info = {"logical_cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        info["onnxruntime"] = None
    info["threads"] = threads
    info.pop("torch_threads", None)
    return info


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
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

    Returns:
        The JSON payload plus ``"markdown"`` (the rendered table).

    Raises:
        ConfigError: an unknown model name or bad sizes; MedkdError: a worker failed.
    """
    names = _check_models(models)
    if size < 8 or depth < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(f"bench infer: size {size}, depth {depth}, repeats {repeats}, warmup {warmup} out of range")
    threads = int(threads or os.cpu_count() or 1)
    deadline = time.monotonic() + wait_budget_s
    settings = {"size": [size, size], "depth": depth, "in_channels": in_channels, "num_classes": num_classes,
                "repeats": repeats, "warmup": warmup, "volume_repeats": volume_repeats or max(1, repeats // 4),
                "max_seconds": max_seconds, "threads": threads, "weights": "random init (seed 0)",
                "max_busy": max_busy, "retries": retries, "wait_budget_s": wait_budget_s,
                "volume": f"{size}x{size}x{depth} stack, slice-wise, all {depth} slices in one batch, logits -> argmax"}
    load_before = _loadavg()
    rows: list[dict[str, Any]] = []
    versions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medkd_bench_") as tmp:
        for name in names:
            work = Path(tmp) / name.replace(".", "_")
            work.mkdir()
            spec = {"model": name, "size": size, "depth": depth, "repeats": repeats, "warmup": warmup,
                    "volume_repeats": settings["volume_repeats"], "threads": threads, "in_channels": in_channels,
                    "num_classes": num_classes, "max_seconds": max_seconds, "workdir": str(work),
                    "check_export": check_export}
            row_load = _loadavg()
            t = _measure("torch", spec, work, timeout_s, max_busy, retries, deadline)
            o = _measure("onnx", spec, work, timeout_s, max_busy, retries, deadline)
            versions.update(torch=t.pop("torch_version"), onnxruntime=o.pop("onnxruntime_version"))
            rows.append({"name": name, "role": t["role"], "params": t["params"],
                         "safetensors_mb": t["safetensors_mb"], "onnx_mb": t["onnx_mb"],
                         "onnx_dynamic": t["onnx_dynamic"], "load_average_before": row_load,
                         "load_average_after": _loadavg(), "engines": {"torch": t["engine"], "onnx": o["engine"]}})
    teacher = next((r for r in rows if r["name"] == TARGETS["teacher"]), None)
    if teacher is None:
        teacher = next((r for r in rows if r["role"] == "teacher"), None)
    for r in rows:
        r["speedup_vs_teacher"] = None if teacher is None else {
            e: teacher["engines"][e]["ms_per_slice"]["median"] / r["engines"][e]["ms_per_slice"]["median"]
            for e in ENGINES}
    machine = _machine(threads)
    machine.update({k: v for k, v in versions.items() if v})
    payload: dict[str, Any] = {
        "benchmark": "medkd bench infer",
        "machine": machine,
        "settings": settings,
        "load_average": {"before": load_before, "after": _loadavg()},
        "reference_teacher": None if teacher is None else teacher["name"],
        "models": rows,
        "targets": _targets(rows),
        "note": note,
    }
    markdown = render_markdown(payload)
    if out is not None:
        from medkd.io import atomic_write_json, atomic_write_text

        out = Path(out)
        atomic_write_json(out / f"{stem}.json", payload)
        atomic_write_text(out / f"{stem}.md", markdown)
    return {**payload, "markdown": markdown}


def _f(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(payload: dict[str, Any]) -> str:
    """The benchmark as a markdown document: table, targets, method, machine."""
    s = payload["settings"]
    size = "x".join(str(v) for v in s["size"])
    ref = payload.get("reference_teacher")
    lines = [f"# CPU inference: teachers vs students ({size} slices, {s['threads']} threads)", ""]
    head = ["model", "role", "params (M)", "safetensors (MB)", "ONNX (MB)", "torch ms/slice", "ORT ms/slice",
            f"torch ms/volume (x{s['depth']})", f"ORT ms/volume (x{s['depth']})", "torch peak RSS (MB)",
            "ORT peak RSS (MB)", f"speed-up vs {ref or 'teacher'} (torch / ORT)", "others' CPU (cores, torch / ORT)"]
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in payload["models"]:
        t, o = r["engines"]["torch"], r["engines"]["onnx"]
        sp = r.get("speedup_vs_teacher")
        lines.append("| " + " | ".join([
            r["name"], r["role"], f"{r['params'] / 1e6:.3f}", _f(r["safetensors_mb"], ".2f"), _f(r["onnx_mb"], ".2f"),
            _f(t["ms_per_slice"]["median"]), _f(o["ms_per_slice"]["median"]),
            _f(t["ms_per_volume"]["median"], ".0f"), _f(o["ms_per_volume"]["median"], ".0f"),
            _f(t["peak_rss_mb"], ".0f"), _f(o["peak_rss_mb"], ".0f"),
            "-" if sp is None else f"{sp['torch']:.1f}x / {sp['onnx']:.1f}x",
            f"{_f(t.get('other_cpu_cores'), '.2f')} / {_f(o.get('other_cpu_cores'), '.2f')}",
        ]) + " |")
    tg = payload["targets"]
    lines += ["", "## Issue targets", ""]
    names = {"torch": "PyTorch eager", "onnx": "onnxruntime"}
    for engine, entry in tg["engines"].items():
        if "student_ms_per_slice" in entry:
            met = "met" if entry["ms_target_met"] else "not met"
            lines.append(f"- {tg['student']} <= {tg['max_ms_per_slice']:g} ms per {size} slice on "
                         f"{s['threads']} threads, {names[engine]}: "
                         f"{entry['student_ms_per_slice']:.1f} ms — **{met}**.")
        if "speedup" in entry:
            met = "met" if entry["speedup_target_met"] else "not met"
            lines.append(f"- {tg['student']} >= {tg['min_speedup']:g}x faster than {tg['teacher']}, {names[engine]}: "
                         f"{entry['teacher_ms_per_slice']:.1f} / {entry['student_ms_per_slice']:.1f} ms = "
                         f"{entry['speedup']:.1f}x — **{met}**.")
    if not any(tg["engines"].values()):
        lines.append(f"- not evaluated: the run did not include {tg['student']} and {tg['teacher']}.")
    la = payload["load_average"]
    m = payload["machine"]
    lines += [
        "", "## Method", "",
        f"- Slice: batch 1, 1 x {s['in_channels']} x {size}, median of up to {s['repeats']} timed runs after "
        f"{s['warmup']} warm-up runs (a measurement stops after {s['max_seconds']:g} s once it has 3 runs; "
        "`runs` in the JSON).",
        f"- Volume: {s['volume']}; median of up to {s['volume_repeats']} runs after {min(1, s['warmup'])} "
        "warm-up run(s).",
        "- Each model and engine runs in a fresh process; peak RSS is that process's VmHWM right after its timed "
        "runs (imports + weights + inference). The onnxruntime process imports numpy and onnxruntime only.",
        f"- Weights: {s['weights']} (timing does not depend on values); {s['num_classes']} output classes. "
        "PyTorch: eval mode, `torch.inference_mode`. onnxruntime: CPU provider, sequential execution, "
        f"{s['threads']} intra-op threads; ONNX from `medkd.export.export_onnx` (opset 17).",
        "", "## Machine", "",
        "- " + ", ".join(f"{k} {v}" for k, v in m.items() if v is not None) + ".",
        f"- Load average (1, 5, 15 min) before: {la['before']}, after: {la['after']}; per model in the JSON "
        "(`load_average_before` / `_after`).",
        "- The CPU is shared with other jobs. \"Others' CPU\" is the CPU time other processes used while a worker "
        "ran (`/proc/stat` busy time minus the worker's own), in cores: near 0 means an undisturbed measurement."
        + (f" Each worker waited for fewer than {s['max_busy']:g} busy cores first and was re-run (at most "
           f"{s['retries']} times) when others used more while it ran (`attempts`, `waited_s` in the JSON)."
           if s.get("max_busy") is not None else ""),
    ]
    if payload.get("note"):
        lines += ["", "## Note", "", payload["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
