"""Where a student's training step goes (issue 16, item 1): time, ATen operator calls, fixed cost, top operators.

One step is what the trainer runs for a student alone: zero the gradients, the forward pass, MONAI's Dice +
cross-entropy (``dice_ce``), backward and a fused Adam update (``train.optimizer.fused``, medkd's default). For each
student (ENet, ESPNet, ERFNet, the thesis' small U-Net) it records:

- **step ms**: the median of the timed steps at the benchmark's size (batch 16, 128 x 128 on a CPU, 256 x 256 on a
  GPU), the students interleaved round by round so that a shared, fluctuating machine slows them alike;
- **ATen ops per step**: operator calls counted by ``torch.profiler`` (views included). On a GPU at this size most
  are a kernel launch each, so this count is what bounds the step there; it is the same on any device;
- **fixed cost ms**: the step on a 1 x 32 x 32 batch, where the arithmetic is negligible: dispatch and Python
  overhead, what CUDA graphs (``train.compile: reduce-overhead``) remove;
- **top operators** by self CPU time in one profiled step, with their share.

Every student also runs under bf16 autocast (the rows ``<student> (bf16)``), as ``train.amp: bf16`` runs it: the
forward pass and the loss under ``torch.autocast`` (the logits cast back to float32 for the loss), backward and
the update outside it. On a CPU with AMX (Intel Sapphire Rapids and newer) oneDNN runs bf16 convolutions on it.

ENet also runs with PyTorch's native ``max_pool2d(return_indices=True)`` / ``max_unpool2d`` in place of medkd's
winners + one-hot unpool (the row ``enet (native unpool)``; its forward is checked equal to ENet's first). That
answers whether training should switch to the native pair; ``max_unpool2d`` has no deterministic CUDA kernel
(PyTorch raises under ``torch.use_deterministic_algorithms``), which medkd's form avoids.

Usage::

    python benchmarks/student_step/run.py                  # CPU; writes step_cpu.json / step_cpu.md here
    python benchmarks/student_step/run.py --device cuda    # GPU; writes step_cuda.json / step_cuda.md
    python benchmarks/student_step/run.py --size 32 --batch 2 --steps 1 --warmup 0 --out-dir "$(mktemp -d)"  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medkd.measure.machine import machine_info, utc_now
from medkd.measure.tables import markdown_table
from medkd.measure.timing import clock, cuda_sync
from medkd.train.step import autocast

HERE = Path(__file__).resolve().parent
STUDENTS = ("enet", "espnet", "erfnet", "unet_s1")
NATIVE = "enet (native unpool)"
AMP = "bf16"  # the autocast dtype of the extra rows (``train.amp``)
IN_CHANNELS, NUM_CLASSES = 1, 4
TINY = (1, 32)  # batch, size of the fixed-cost step
WORTH_A_SECOND_PATH = 0.10  # the native unpool must save this share of ENet's step to be worth a training-only path


def _native_pool(x: torch.Tensor, channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_pool2d`` with PyTorch's flat indices, in place of ENet's per-window winners."""
    return F.max_pool2d(x, 2, return_indices=True)


class _NativeUnpool(torch.nn.Module):
    """``max_unpool2d`` from the flat indices of :func:`_native_pool`."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return F.max_unpool2d(x, indices, 2)


@contextlib.contextmanager
def native_pooling() -> Iterator[None]:
    """ENet's down-sampling blocks pool with PyTorch's ``max_pool2d(return_indices=True)`` inside the block."""
    import medkd.models.enet as enet_module

    saved = enet_module.max_pool2x_with_winners
    enet_module.max_pool2x_with_winners = _native_pool
    try:
        yield
    finally:
        enet_module.max_pool2x_with_winners = saved


def use_native_unpool(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ENet up-sampling block's unpool by :class:`_NativeUnpool` (pair with :func:`native_pooling`)."""
    from medkd.models.enet import _UpBottleneck

    for block in model.modules():
        if isinstance(block, _UpBottleneck):
            block.unpool = _NativeUnpool()
    return model


class StudentStep:
    """One student, its loss and fused Adam; :meth:`__call__` runs one training step on the given batch."""

    def __init__(self, name: str, device: torch.device, amp: str = "none") -> None:
        from medkd.distill.segmentation import create_seg_loss
        from medkd.models import create_model

        torch.manual_seed(0)
        self.name = name if amp == "none" else amp_row(name, amp)
        self.amp, self.device = amp, device
        self.native = name == NATIVE
        model = create_model("enet" if self.native else name, IN_CHANNELS, NUM_CLASSES, 2)
        self.model = (use_native_unpool(model) if self.native else model).to(device).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.loss = create_seg_loss("dice_ce", NUM_CLASSES)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)

    def context(self) -> contextlib.AbstractContextManager[None]:
        """Where the step runs: ENet's native pooling for the native row, else nothing."""
        return native_pooling() if self.native else contextlib.nullcontext()

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> None:
        with self.context():
            self.opt.zero_grad(set_to_none=True)
            with autocast(self.amp, self.device):
                loss = self.loss(self.model(image).float(), label)
            loss.backward()
            self.opt.step()


def check_native_parity(device: torch.device) -> float:
    """Largest difference between ENet's forward with medkd's pool / unpool and with the native pair (same weights)."""
    plain, native = StudentStep("enet", device), StudentStep(NATIVE, device)
    native.model.load_state_dict(plain.model.state_dict())
    plain.model.eval(), native.model.eval()
    x = torch.randn(2, IN_CHANNELS, 64, 64, device=device)
    with torch.no_grad():
        a = plain.model(x)
        with native.context():
            b = native.model(x)
    return float((a - b).abs().max())


def batch(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels (timing does not depend on the values)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(n, IN_CHANNELS, size, size, generator=gen)
    label = torch.randint(0, NUM_CLASSES, (n, 1, size, size), generator=gen)
    return image.to(device), label.to(device)


def time_steps(steps: list[StudentStep], data: tuple[torch.Tensor, torch.Tensor], rounds: int, warmup: int,
               device: torch.device) -> dict[str, list[float]]:
    """Milliseconds per step of every student, interleaved round by round; warm-up rounds are not kept."""
    sync = cuda_sync(device)
    times: dict[str, list[float]] = {s.name: [] for s in steps}
    for r in range(warmup + rounds):
        for step in steps:
            t0 = clock(sync)
            step(*data)
            if r >= warmup:
                times[step.name].append(1e3 * (clock(sync) - t0))
    return times


def profile_step(step: Callable[..., None], data: tuple[torch.Tensor, torch.Tensor], top: int) -> dict[str, Any]:
    """ATen operator calls in one step and the ``top`` operators by self CPU time (share of the step's total)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(*data)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"aten_ops": sum(e.count for e in events),
            "top": [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                     "share": round(e.self_cpu_time_total / total, 3)} for e in ranked]}


def run(device: torch.device, size: int, batch_size: int, rounds: int, warmup: int, top: int) -> dict[str, Any]:
    """Every student's step: timing at the benchmark's size and at the tiny size, operator counts, top operators."""
    steps = [StudentStep(name, device) for name in (*STUDENTS, NATIVE)]
    steps += [StudentStep(name, device, AMP) for name in STUDENTS]
    data, tiny = batch(batch_size, size, device), batch(TINY[0], TINY[1], device)
    times = time_steps(steps, data, rounds, warmup, device)
    fixed = time_steps(steps, tiny, rounds, warmup, device)
    rows = []
    for step in steps:
        prof = profile_step(step, data, top)
        rows.append({"student": step.name, "params": step.params,
                     "step_ms": round(statistics.median(times[step.name]), 2),
                     "min_ms": round(min(times[step.name]), 2),
                     "fixed_ms": round(statistics.median(fixed[step.name]), 2),
                     "images_per_s": round(1e3 * batch_size / statistics.median(times[step.name]), 1), **prof})
    return {"rows": rows, "native_unpool_max_abs_diff": check_native_parity(device)}


def machine(device: torch.device) -> dict[str, Any]:
    """The machine the numbers come from: CPU model, threads, torch and (on CUDA) the GPU."""
    m = machine_info()
    info = {"cpu": m["cpu"], "threads": m["torch_threads"], "torch": m["torch"], "platform": m["platform"],
            "date_utc": utc_now()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def render_markdown(result: dict[str, Any]) -> str:
    """The results as markdown: the table, the top operators per student, the unpool verdict."""
    m, c = result["machine"], result["config"]
    where = m.get("gpu", f"{m['cpu']}, {m['threads']} torch threads")
    head = ["student", "params (M)", "step ms (median)", "min ms", "images/s", "ATen ops per step",
            f"fixed cost ms ({TINY[0]} x {TINY[1]}x{TINY[1]})"]
    table = [[r["student"], f"{r['params'] / 1e6:.3f}", f"{r['step_ms']:.1f}", f"{r['min_ms']:.1f}",
              f"{r['images_per_s']:.1f}", r["aten_ops"], f"{r['fixed_ms']:.1f}"] for r in result["rows"]]
    lines = ["# Where a student's training step goes", "",
             f"Machine: {where}; torch {m['torch']}; {m['date_utc']}.", "",
             f"Step: forward, Dice + CE (MONAI), backward, fused Adam; batch {c['batch']}, {c['size']}x{c['size']}, "
             f"{NUM_CLASSES} classes, device {c['device']}; median of {c['steps']} timed steps after {c['warmup']} "
             "warm-up steps, students interleaved round by round. ATen ops: operator calls in one profiled step.",
             "", *markdown_table(head, table, "lrrrrrr"), "", "## Top operators by self CPU time (one step)", ""]
    for r in result["rows"]:
        tops = ", ".join(f"{t['op'].removeprefix('aten::')} {100 * t['share']:.0f}% ({t['calls']} calls)"
                         for t in r["top"])
        lines.append(f"- **{r['student']}**: {tops}.")
    lines += ["", "## Native max_unpool2d in ENet", "", unpool_verdict(result)]
    if any(r["student"] == amp_row(name) for r in result["rows"] for name in STUDENTS):
        lines += ["", f"## {AMP} autocast (`train.amp: {AMP}`)", "", amp_verdict(result)]
    return "\n".join(lines) + "\n"


def unpool_verdict(result: dict[str, Any]) -> str:
    """What the native pool / unpool row says against ENet's own, in numbers."""
    by = {r["student"]: r for r in result["rows"]}
    plain, native = by["enet"], by[NATIVE]
    time_change = native["step_ms"] / plain["step_ms"] - 1
    ops_change = native["aten_ops"] / plain["aten_ops"] - 1
    measured = (f"Same forward (largest difference {result['native_unpool_max_abs_diff']:.1e}). Step "
                f"{native['step_ms']:.1f} vs {plain['step_ms']:.1f} ms ({100 * time_change:+.1f}%), "
                f"{native['aten_ops']} vs {plain['aten_ops']} ATen ops ({100 * ops_change:+.1f}%). ")
    if time_change <= -WORTH_A_SECOND_PATH:
        return measured + ("The native pair is worth a training-only path here, despite `max_unpool2d` having no "
                           "deterministic CUDA kernel.")
    return measured + (f"Under {100 * WORTH_A_SECOND_PATH:.0f}% faster: medkd keeps its winners + one-hot unpool in "
                       "training and export (`max_unpool2d` also has no deterministic CUDA kernel).")


def amp_row(student: str, amp: str = AMP) -> str:
    """The row name of ``student``'s step under ``amp`` autocast."""
    return f"{student} ({amp})"


def amp_verdict(result: dict[str, Any]) -> str:
    """Each student's step under autocast against its float32 step."""
    by = {r["student"]: r for r in result["rows"]}
    pairs = [(name, by[name], by[amp_row(name)]) for name in STUDENTS if amp_row(name) in by]
    ratios = ", ".join(f"{name} {fp32['step_ms'] / low['step_ms']:.2f}x ({low['step_ms']:.1f} vs "
                       f"{fp32['step_ms']:.1f} ms)" for name, fp32, low in pairs)
    return (f"Speed-up of the step under {AMP} autocast over float32: {ratios}. Speed only: whether a student "
            f"trained under {AMP} reaches the same Dice is not measured here.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=None, help="default: 128 on a CPU, 256 on a GPU")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=HERE)
    args = p.parse_args()
    device = torch.device(args.device)
    size = args.size or (256 if device.type == "cuda" else 128)
    config = {"device": device.type, "size": size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup}
    result = {"benchmark": "student training step", "machine": machine(device), "config": config,
              **run(device, size, args.batch, args.steps, args.warmup, args.top)}
    stem = f"step_{device.type}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = render_markdown(result)
    (args.out_dir / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
