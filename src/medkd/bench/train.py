"""``medkd bench train``: training throughput of distillation set-ups, and their peak memory.

For a teacher -> student pair at a fixed input size and batch, four set-ups are timed on random
inputs (the data path is not what is measured). Every set-up runs the trainer's own step,
:func:`medkd.train.step.train_step` (forward, losses, backward, optimiser), so the benchmark times the loop users
run; each row also records the step's loss on the first and the last step (``loss_first`` / ``loss_last``):

- ``student_alone``: the student's training step (forward, segmentation loss, backward, Adam);
- ``live_naive``: the same plus a live teacher forward in fp32 eager mode, as the seeds' code did;
- ``live_optimised``: the live teacher with bf16 autocast and channels-last (2D);
- ``cached``: teacher logits read from a :class:`~medkd.distill.cache.TeacherCache` on disk instead;
- ``live_compiled`` (opt-in, see :data:`OPTIONAL_MODES`): ``live_optimised`` with the student and the teacher
  under ``torch.compile`` (inductor); compilation happens in the warm-up steps, which are not timed;
- ``student_graphs`` and ``cached_graphs`` (opt-in): ``student_alone`` and ``cached`` with the student under
  ``torch.compile(mode="reduce-overhead")`` (``train.compile: reduce-overhead``): on a GPU its forward and backward
  replay as CUDA graphs, one launch instead of thousands. A small student's step is launch-bound there (ENet's is
  about 8,000 ATen operator calls, ``benchmarks/student_step``), so these are the modes for the issue's targets.

Each reports images (or volumes) per second over timed steps after warm-up, and peak memory: GPU
``max_memory_allocated`` per mode on CUDA; on CPU the process's peak RSS so far (``ru_maxrss``), which
only grows from mode to mode and so bounds, not isolates, each mode's memory.

Example:
    >>> rows = bench_train([("unetplusplus", "enet", (256, 256), 16)], device="cuda")
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medkd.distill.cache import TeacherCache
from medkd.distill.objective import DistillObjective
from medkd.distill.segmentation import create_seg_loss
from medkd.measure.memory import cuda_peak_mib, reset_cuda_peak, rusage_peak_mib
from medkd.measure.timing import clock, cuda_sync
from medkd.models import FeatureTapper, create_model
from medkd.train.optim import fusable
from medkd.train.step import StepContext, StepSettings, compiled, train_step

__all__ = ["MODES", "OPTIONAL_MODES", "bench_pair", "bench_train", "render_markdown"]

MODES = ("student_alone", "live_naive", "live_optimised", "cached")
OPTIONAL_MODES = ("live_compiled", "student_graphs", "cached_graphs")
#: The ``torch.compile`` mode of each compiled benchmark mode (the others run eager).
_COMPILE_MODES = {"live_compiled": "default", "student_graphs": "reduce-overhead", "cached_graphs": "reduce-overhead"}
#: Modes without a distillation term, and modes that read the teacher from the cache.
_ALONE, _CACHED = ("student_alone", "student_graphs"), ("cached", "cached_graphs")


def bench_pair(teacher_name: str, student_name: str, size: Sequence[int], batch: int, device: str = "cpu",
               steps: int = 10, warmup: int = 2, num_classes: int = 4, in_channels: int = 1,
               modes: Sequence[str] = MODES) -> list[dict[str, Any]]:
    """Time the set-ups of ``modes`` (:data:`MODES`, :data:`OPTIONAL_MODES`) for one teacher -> student pair."""
    unknown = [m for m in modes if m not in MODES + OPTIONAL_MODES]
    if unknown:
        raise ValueError(f"unknown benchmark mode(s) {unknown}; choose from {list(MODES + OPTIONAL_MODES)}")
    dev = torch.device(device)
    torch.manual_seed(0)
    teacher = create_model(teacher_name, in_channels, num_classes, len(size)).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    inputs = torch.randn(batch * 2, in_channels, *size)
    labels = torch.randint(0, num_classes, (batch * 2, 1, *size))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = None
        if any(m in _CACHED for m in modes):
            cache = TeacherCache.build(Path(tmp) / "cache", teacher, inputs, ["logits"], batch_size=batch,
                                       device=dev, log=lambda _: None)
        for mode in modes:
            torch.manual_seed(0)
            student = create_model(student_name, in_channels, num_classes, len(size)).to(dev).train()
            ctx, channels_last = _mode_context(mode, student, teacher, num_classes, size, dev)
            elapsed, losses = _time_steps(ctx, inputs, labels, cache if mode in _CACHED else None, batch, steps,
                                          warmup, channels_last)
            for tapper in (ctx.s_tapper, ctx.t_tapper):
                if tapper is not None:
                    tapper.remove()
            if channels_last:
                teacher.to(memory_format=torch.contiguous_format)
            rows.append(_row(teacher_name, student_name, mode, size, batch, dev, steps, elapsed, losses))
    _add_ratios(rows)
    return rows


def _mode_context(mode: str, student: torch.nn.Module, teacher: torch.nn.Module, num_classes: int,
                  size: Sequence[int], dev: torch.device) -> tuple[StepContext, bool]:
    """The trainer's step context for ``mode`` (fused Adam, dice + CE, logits KL at T = 4); whether it is channels-last.

    ``student_alone`` / ``student_graphs`` have no distillation; the cached modes no live teacher; the optimised
    modes use bf16 autocast and (2D) channels-last; the compiled modes hand their networks, taps registered, to
    ``torch.compile`` (:data:`_COMPILE_MODES`).
    """
    optimised = mode in ("live_optimised", "live_compiled")
    channels_last = optimised and len(size) == 2
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    objective = s_tapper = t_tapper = None
    if mode not in _ALONE:
        objective = DistillObjective.from_config([{"loss": "logits_kl", "weight": 1.0, "temperature": 4.0}])
        probe = torch.zeros(1, num_classes, *size)
        objective.setup({"logits": probe}, {"logits": probe})
        objective.to(dev)
        s_tapper = FeatureTapper(student, ["logits"])
        t_tapper = FeatureTapper(teacher, ["logits"]) if mode not in _CACHED else None
    compile_mode = _COMPILE_MODES.get(mode, "off")
    params = list(student.parameters())  # the trainer's fused Adam (train.optimizer.fused, on by default)
    ctx = StepContext(
        settings=StepSettings(seg_weight=1.0, amp="bf16" if optimised else "none"),
        model=compiled(student, compile_mode), student=student,
        teacher=compiled(teacher, compile_mode) if t_tapper is not None else None, objective=objective,
        seg_loss=create_seg_loss("dice_ce", num_classes), s_tapper=s_tapper, t_tapper=t_tapper,
        optimizer=torch.optim.Adam(params, lr=1e-3, fused=fusable(params)), ascent_opt=None, dev=dev)
    return ctx, channels_last


def _time_steps(ctx: StepContext, inputs: torch.Tensor, labels: torch.Tensor, cache: TeacherCache | None,
                batch: int, steps: int, warmup: int, channels_last: bool) -> tuple[float, list[float]]:
    """Run ``warmup + steps`` trainer steps on alternating halves of ``inputs``; seconds of the timed steps and
    every step's loss. A cache, when given, replaces the teacher's forward (as ``distill.cache`` does)."""
    dev, sync = ctx.dev, cuda_sync(ctx.dev)
    t0, losses = clock(sync), []
    if sync is not None:
        reset_cuda_peak(dev)
    for step in range(warmup + steps):
        if step == warmup:
            t0 = clock(sync)
        idx = torch.arange(batch) + (step % 2) * batch
        x, y = inputs[idx].to(dev), labels[idx].to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cached = {k: v.to(dev) for k, v in cache.get(idx).items()} if cache is not None else None
        logs = train_step(ctx, {"image": x, "label": y, "teacher_image": x}, batch, cached)
        losses.append(logs["loss"])
    return clock(sync) - t0, losses


def _row(teacher_name: str, student_name: str, mode: str, size: Sequence[int], batch: int, dev: torch.device,
         steps: int, elapsed: float, losses: list[float]) -> dict[str, Any]:
    """One result row: throughput, step time, the first and last step's loss, peak memory."""
    row = {"teacher": teacher_name, "student": student_name, "mode": mode, "size": list(size), "batch": batch,
           "device": str(dev), "steps": steps, "seconds": round(elapsed, 4),
           "samples_per_s": round(batch * steps / elapsed, 2), "step_ms": round(1000 * elapsed / steps, 2),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
    if dev.type == "cuda":
        row["peak_gpu_mib"] = round(cuda_peak_mib(dev), 1)
    else:
        row["process_peak_rss_mib"] = round(rusage_peak_mib(), 1)
    return row


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's step time relative to ``student_alone`` and its speed-up over ``live_naive`` (when timed)."""
    base = {r["mode"]: r["step_ms"] for r in rows}
    for r in rows:
        if "student_alone" in base:
            r["step_vs_student_alone"] = round(r["step_ms"] / base["student_alone"], 2)
        if "live_naive" in base:
            r["speedup_vs_naive"] = round(base["live_naive"] / r["step_ms"], 2)


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
