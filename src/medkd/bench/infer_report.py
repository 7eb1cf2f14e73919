"""The markdown document of ``medkd bench infer``: the table, the issue targets, the method and the machine."""

from __future__ import annotations

from typing import Any

from medkd.measure.tables import fmt, key_values, markdown_table

__all__ = ["render_markdown"]

_ENGINE_NAMES = {"torch": "PyTorch eager", "onnx": "onnxruntime"}


def _table(payload: dict[str, Any]) -> list[str]:
    """One row per model: sizes, ms per slice / volume, peak RSS, speed-up and others' CPU for both engines."""
    s, ref = payload["settings"], payload.get("reference_teacher")
    head = ["model", "role", "params (M)", "safetensors (MB)", "ONNX (MB)", "torch ms/slice", "ORT ms/slice",
            f"torch ms/volume (x{s['depth']})", f"ORT ms/volume (x{s['depth']})", "torch peak RSS (MB)",
            "ORT peak RSS (MB)", f"speed-up vs {ref or 'teacher'} (torch / ORT)", "others' CPU (cores, torch / ORT)"]
    rows = []
    for r in payload["models"]:
        t, o = r["engines"]["torch"], r["engines"]["onnx"]
        sp = r.get("speedup_vs_teacher")
        rows.append([
            r["name"], r["role"], f"{r['params'] / 1e6:.3f}", fmt(r["safetensors_mb"], ".2f"), fmt(r["onnx_mb"], ".2f"),
            fmt(t["ms_per_slice"]["median"]), fmt(o["ms_per_slice"]["median"]),
            fmt(t["ms_per_volume"]["median"], ".0f"), fmt(o["ms_per_volume"]["median"], ".0f"),
            fmt(t["peak_rss_mb"], ".0f"), fmt(o["peak_rss_mb"], ".0f"),
            "-" if sp is None else f"{sp['torch']:.1f}x / {sp['onnx']:.1f}x",
            f"{fmt(t.get('other_cpu_cores'), '.2f')} / {fmt(o.get('other_cpu_cores'), '.2f')}",
        ])
    return markdown_table(head, rows, "ll" + "r" * (len(head) - 2))


def _process_medians(payload: dict[str, Any], model: str, engine: str) -> str:
    """`` (median of N processes: a, b, ... ms)`` for a row measured in several processes, else ``""``."""
    row = next((r for r in payload["models"] if r["name"] == model), None)
    medians = None if row is None else row["engines"][engine]["ms_per_slice"].get("process_medians")
    if not medians:
        return ""
    return f" (median of {len(medians)} processes: {', '.join(f'{m:.1f}' for m in medians)} ms)"


def _targets(payload: dict[str, Any], size: str) -> list[str]:
    """The issue targets, met or not, per engine."""
    tg, threads = payload["targets"], payload["settings"]["threads"]
    lines = ["", "## Issue targets", ""]
    for engine, entry in tg["engines"].items():
        if "student_ms_per_slice" in entry:
            met = "met" if entry["ms_target_met"] else "not met"
            lines.append(f"- {tg['student']} <= {tg['max_ms_per_slice']:g} ms per {size} slice on "
                         f"{threads} threads, {_ENGINE_NAMES[engine]}: "
                         f"{entry['student_ms_per_slice']:.1f} ms{_process_medians(payload, tg['student'], engine)}"
                         f" — **{met}**.")
        if "speedup" in entry:
            met = "met" if entry["speedup_target_met"] else "not met"
            lines.append(f"- {tg['student']} >= {tg['min_speedup']:g}x faster than {tg['teacher']}, "
                         f"{_ENGINE_NAMES[engine]}: {entry['teacher_ms_per_slice']:.1f} / "
                         f"{entry['student_ms_per_slice']:.1f} ms = {entry['speedup']:.1f}x — **{met}**.")
    if not any(tg["engines"].values()):
        lines.append(f"- not evaluated: the run did not include {tg['student']} and {tg['teacher']}.")
    return lines


def _method(payload: dict[str, Any], size: str) -> list[str]:
    """How slices and volumes were timed and memory measured."""
    s = payload["settings"]
    return [
        "", "## Method", "",
        f"- Slice: batch 1, 1 x {s['in_channels']} x {size}, median of up to {s['repeats']} timed runs after "
        f"{s['warmup']} warm-up runs (a measurement stops after {s['max_seconds']:g} s once it has 3 runs; "
        "`runs` in the JSON).",
        f"- Volume: {s['volume']}; median of up to {s['volume_repeats']} runs after {min(1, s['warmup'])} "
        "warm-up run(s).",
        _processes_line(s),
        f"- Weights: {s['weights']} (timing does not depend on values); {s['num_classes']} output classes. "
        "PyTorch: eval mode, `torch.inference_mode`. onnxruntime: CPU provider, sequential execution, "
        f"{s['threads']} intra-op threads; ONNX from `medkd.export.export_onnx` (opset 17).",
    ]


def _processes_line(settings: dict[str, Any]) -> str:
    """How many fresh processes measured each model and engine, and what the table reports of them."""
    n = settings.get("processes", 1)
    if n == 1:
        return ("- Each model and engine runs in a fresh process; peak RSS is that process's VmHWM right after its "
                "timed runs (imports + weights + inference). The onnxruntime process imports numpy and onnxruntime "
                "only.")
    return (f"- Each model and engine ran in {n} fresh processes, the engines alternating; the times are the median "
            "of the processes' medians (`process_medians` in the JSON), the minimum over all runs, and peak RSS the "
            "largest VmHWM of the processes, read right after their timed runs (imports + weights + inference). "
            "The onnxruntime processes import numpy and onnxruntime only.")


def _machine(payload: dict[str, Any]) -> list[str]:
    """The machine, its load average and how disturbance by other processes was handled."""
    s, la = payload["settings"], payload["load_average"]
    return [
        "", "## Machine", "",
        "- " + key_values(payload["machine"], skip_none=True) + ".",
        f"- Load average (1, 5, 15 min) before: {la['before']}, after: {la['after']}; per model in the JSON "
        "(`load_average_before` / `_after`).",
        "- The CPU is shared with other jobs. \"Others' CPU\" is the CPU time other processes used while a worker "
        "ran (`/proc/stat` busy time minus the worker's own), in cores: near 0 means an undisturbed measurement."
        + (f" Each worker waited for fewer than {s['max_busy']:g} busy cores first and was re-run (at most "
           f"{s['retries']} times) when others used more while it ran (`attempts`, `waited_s` in the JSON)."
           if s.get("max_busy") is not None else ""),
    ]


def render_markdown(payload: dict[str, Any]) -> str:
    """The benchmark as a markdown document: table, targets, method, machine (and the note, if any)."""
    s = payload["settings"]
    size = "x".join(str(v) for v in s["size"])
    lines = [f"# CPU inference: teachers vs students ({size} slices, {s['threads']} threads)", ""]
    lines += _table(payload) + _targets(payload, size) + _method(payload, size) + _machine(payload)
    if payload.get("note"):
        lines += ["", "## Note", "", payload["note"]]
    return "\n".join(lines) + "\n"
