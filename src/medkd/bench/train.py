"""``medkd bench train``: training throughput of distillation set-ups, and their peak memory.

For a teacher -> student pair at a fixed input size and batch, four set-ups are timed on random
inputs (the data path is not what is measured):

- ``student_alone``: the student's training step (forward, segmentation loss, backward, Adam);
- ``live_naive``: the same plus a live teacher forward in fp32 eager mode, as the seeds' code did;
- ``live_optimised``: the live teacher with bf16 autocast and channels-last (2D);
- ``cached``: teacher logits read from a :class:`~medkd.distill.cache.TeacherCache` on disk instead;
- ``live_compiled`` (opt-in, see :data:`OPTIONAL_MODES`): ``live_optimised`` with the student and the teacher
  under ``torch.compile`` (inductor); compilation happens in the warm-up steps, which are not timed.

Each reports images (or volumes) per second over timed steps after warm-up, and peak memory: GPU
``max_memory_allocated`` per mode on CUDA; on CPU the process's peak RSS so far (``ru_maxrss``), which
only grows from mode to mode and so bounds, not isolates, each mode's memory.

Example:
    >>> rows = bench_train([("unetplusplus", "enet", (256, 256), 16)], device="cuda")
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["MODES", "OPTIONAL_MODES", "bench_pair", "bench_train", "render_markdown"]

MODES = ("student_alone", "live_naive", "live_optimised", "cached")
OPTIONAL_MODES = ("live_compiled",)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_pair(teacher_name: str, student_name: str, size: Sequence[int], batch: int, device: str = "cpu",
               steps: int = 10, warmup: int = 2, num_classes: int = 4, in_channels: int = 1,
               modes: Sequence[str] = MODES) -> list[dict[str, Any]]:
    """Time the set-ups of ``modes`` (:data:`MODES`, :data:`OPTIONAL_MODES`) for one teacher -> student pair."""
    unknown = [m for m in modes if m not in MODES + OPTIONAL_MODES]
    if unknown:
        raise ValueError(f"unknown benchmark mode(s) {unknown}; choose from {list(MODES + OPTIONAL_MODES)}")
    from medkd.distill.cache import TeacherCache
    from medkd.distill.objective import DistillObjective
    from medkd.distill.segmentation import create_seg_loss
    from medkd.models import create_model, normalize_output

    dev = torch.device(device)
    dims = len(size)
    torch.manual_seed(0)
    teacher = create_model(teacher_name, in_channels, num_classes, dims).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    n_inputs = batch * 2
    inputs = torch.randn(n_inputs, in_channels, *size)
    labels = torch.randint(0, num_classes, (n_inputs, 1, *size))
    seg_loss = create_seg_loss("dice_ce", num_classes)
    rows = []
    tmp = tempfile.TemporaryDirectory()
    cache = None
    if "cached" in modes:
        cache = TeacherCache.build(Path(tmp.name) / "cache", teacher, inputs, ["logits"], batch_size=batch,
                                   device=dev, log=lambda _: None)
    for mode in modes:
        torch.manual_seed(0)
        student = create_model(student_name, in_channels, num_classes, dims).to(dev).train()
        objective = DistillObjective.from_config([{"loss": "logits_kl", "weight": 1.0, "temperature": 4.0}])
        probe = torch.zeros(1, num_classes, *size)
        objective.setup({"logits": probe}, {"logits": probe})
        optimised = mode in ("live_optimised", "live_compiled")
        channels_last = optimised and dims == 2
        if channels_last:
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        run_student, run_teacher = student, teacher
        if mode == "live_compiled":
            run_student, run_teacher = torch.compile(student), torch.compile(teacher)
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=optimised)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = None
        for step in range(warmup + steps):
            if step == warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            idx = torch.arange(batch) + (step % 2) * batch
            x, y = inputs[idx].to(dev), labels[idx].to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with amp:
                logits = normalize_output(run_student(x))
                loss = seg_loss(logits.float(), y)
                if mode != "student_alone":
                    if mode == "cached":
                        t_logits = cache.get(idx)["logits"].to(dev)
                    else:
                        with torch.no_grad():
                            t_logits = normalize_output(run_teacher(x))
                    kd, _ = objective({"logits": logits.float()}, {"logits": t_logits.float()}, {"label": y})
                    loss = loss + kd
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if channels_last:
            teacher.to(memory_format=torch.contiguous_format)
        row = {"teacher": teacher_name, "student": student_name, "mode": mode, "size": list(size), "batch": batch,
               "device": str(dev), "steps": steps, "seconds": round(elapsed, 4),
               "samples_per_s": round(batch * steps / elapsed, 2), "step_ms": round(1000 * elapsed / steps, 2)}
        if dev.type == "cuda":
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            row["process_peak_rss_mib"] = round(_peak_rss_mib(), 1)
        rows.append(row)
    tmp.cleanup()
    base = {r["mode"]: r["step_ms"] for r in rows}
    for r in rows:
        if "student_alone" in base:
            r["step_vs_student_alone"] = round(r["step_ms"] / base["student_alone"], 2)
        if "live_naive" in base:
            r["speedup_vs_naive"] = round(base["live_naive"] / r["step_ms"], 2)
    return rows


def bench_train(pairs: Sequence[tuple[str, str, Sequence[int], int]], device: str = "cpu", steps: int = 10,
                warmup: int = 2, modes: Sequence[str] = MODES) -> list[dict[str, Any]]:
    """Run :func:`bench_pair` for several (teacher, student, size, batch) set-ups."""
    rows: list[dict[str, Any]] = []
    for teacher, student, size, batch in pairs:
        rows.extend(bench_pair(teacher, student, size, batch, device, steps, warmup, modes=modes))
    return rows


def render_markdown(rows: list[dict[str, Any]], machine: str) -> str:
    """A table of the rows (one per set-up and mode)."""
    lines = [f"# Distillation training throughput ({machine})", "",
             "| teacher -> student | input | batch | mode | samples/s | step ms | x student alone | "
             "speed-up vs naive | peak memory MiB (GPU per mode; CPU process RSS so far) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = r.get("peak_gpu_mib", r.get("process_peak_rss_mib"))
        lines.append(f"| {r['teacher']} -> {r['student']} | {'x'.join(map(str, r['size']))} | {r['batch']} | "
                     f"{r['mode']} | {r['samples_per_s']} | {r['step_ms']} | {r.get('step_vs_student_alone', '')} | "
                     f"{r.get('speedup_vs_naive', '')} | {mem} |")
    return "\n".join(lines) + "\n"
