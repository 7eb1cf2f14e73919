"""Efficiency numbers of zoo models: parameters, GFLOPs, checkpoint size, CPU latency.

* **Parameters** — every parameter tensor counted once.
* **GFLOPs** — :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass of a batch of 1, run on
  the ``meta`` device (no arithmetic is done). It counts 2 FLOPs per multiply-accumulate of convolutions,
  transposed convolutions, matrix products and attention, and nothing for normalisation, activations,
  pooling or interpolation; ``gmacs`` is ``gflops / 2`` (what ``thop``-style tools call FLOPs).
* **Checkpoint size** — the ``state_dict`` written with ``safetensors`` to a temporary file.
* **CPU latency** — median wall time of ``repeats`` batch-1 forward passes under ``torch.inference_mode``
  in eval mode, after ``warmup`` passes, with the stated number of torch threads.

Example::

    from medkd.models.efficiency import measure, efficiency_table, render_markdown

    row = measure("enet", input_size=(256, 256), repeats=5)
    print(render_markdown(efficiency_table(["enet", "espnet"], (256, 256))))
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkd.errors import ConfigError, MedkdError

from .layers import count_parameters
from .registry import create_model, list_models, model_info

__all__ = [
    "FLOP_COUNTING",
    "parse_input_size",
    "count_flops",
    "checkpoint_bytes",
    "cpu_latency_ms",
    "measure",
    "efficiency_table",
    "machine_info",
    "render_markdown",
    "models_cli",
]

FLOP_COUNTING = (
    "torch.utils.flop_counter.FlopCounterMode, batch 1, one forward pass on the meta device; "
    "2 FLOPs per multiply-accumulate (GMACs = GFLOPs / 2); convolutions, matrix products and attention only"
)

_SIZE_RE = re.compile(r"^\s*(\d+)(?:\s*[xX×,]\s*(\d+)){2,3}\s*$")


def parse_input_size(text: str) -> tuple[int, tuple[int, ...]]:
    """Parse ``"CxHxW"`` or ``"CxDxHxW"`` (e.g. ``"1x256x256"``, ``"1x64x64x64"``).

    Returns:
        ``(in_channels, spatial_size)``.

    Raises:
        ConfigError: one line naming the string and the expected form.
    """
    if not isinstance(text, str) or not _SIZE_RE.match(text):
        raise ConfigError(
            f"input size {text!r} must look like CxHxW or CxDxHxW with positive integers, e.g. 1x256x256 or 1x64x64x64"
        )
    parts = [int(p) for p in re.split(r"[xX×,]", text.replace(" ", ""))]
    if any(p < 1 for p in parts):
        raise ConfigError(f"input size {text!r} has a zero size; every entry must be a positive integer")
    return parts[0], tuple(parts[1:])


def _build(
    name: str, in_channels: int, num_classes: int, spatial_dims: int, device: str | torch.device, **kwargs: Any
) -> nn.Module:
    with torch.device(device):
        model = create_model(name, in_channels, num_classes, spatial_dims=spatial_dims, **kwargs)
    return model.eval()


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``x`` (see :data:`FLOP_COUNTING`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def checkpoint_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's ``state_dict`` saved with safetensors."""
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_model(model, path)
        return os.path.getsize(path)


def cpu_latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> list[float]:
    """Wall times in milliseconds of ``repeats`` forward passes (after ``warmup`` untimed ones)."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _params_and_flops(
    name: str, in_channels: int, num_classes: int, size: tuple[int, ...], **model_kwargs: Any
) -> tuple[int, int]:
    """Parameters and FLOPs on the meta device (no memory, no arithmetic); on the CPU where meta fails."""
    dims = len(size)
    try:
        model = _build(name, in_channels, num_classes, dims, "meta", **model_kwargs)
        return count_parameters(model), count_flops(model, torch.zeros(1, in_channels, *size, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError):  # a network that calls .item() / numpy at build time
        model = _build(name, in_channels, num_classes, dims, "cpu", **model_kwargs)
        return count_parameters(model), count_flops(model, torch.zeros(1, in_channels, *size))


def measure(
    name: str,
    in_channels: int = 1,
    num_classes: int = 2,
    input_size: Sequence[int] = (256, 256),
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    latency: bool = True,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Measure one model.

    Args:
        name: registry name (see :func:`medkd.models.list_models`).
        in_channels: input channels.
        num_classes: output channels.
        input_size: spatial input size; its length sets ``spatial_dims``.
        repeats: timed forward passes (latency = their median).
        warmup: untimed passes before timing.
        threads: torch CPU threads during timing (default: leave as is); recorded in the result.
        latency: measure checkpoint size and CPU latency (False: parameters and FLOPs only, on the meta device).
        model_kwargs: model options.

    Returns:
        A dict with ``name, role, spatial_dims, input, params, flops, gflops, gmacs`` and, with ``latency``,
        ``checkpoint_mb, latency_ms_median, latency_ms_min, latency_ms_max, repeats, warmup, threads``.
    """
    size = tuple(int(s) for s in input_size)
    dims = len(size)
    info = model_info(name)
    params, flops = _params_and_flops(name, in_channels, num_classes, size, **model_kwargs)
    row: dict[str, Any] = {
        "name": name,
        "role": info["role"],
        "spatial_dims": dims,
        "input": "x".join(str(s) for s in (in_channels, *size)),
        "num_classes": num_classes,
        "params": params,
        "flops": flops,
        "gflops": round(flops / 1e9, 4),
        "gmacs": round(flops / 2e9, 4),
    }
    if latency:
        model = _build(name, in_channels, num_classes, dims, "cpu", **model_kwargs)
        x = torch.randn(1, in_channels, *size)
        old_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        try:
            times = cpu_latency_ms(model, x, repeats, warmup)
            used_threads = torch.get_num_threads()
        finally:
            torch.set_num_threads(old_threads)
        row["checkpoint_mb"] = round(checkpoint_bytes(model) / 2**20, 3)
        row["latency_ms_median"] = round(statistics.median(times), 2)
        row["latency_ms_min"] = round(min(times), 2)
        row["latency_ms_max"] = round(max(times), 2)
        row["repeats"] = repeats
        row["warmup"] = warmup
        row["threads"] = used_threads
    return row


def efficiency_table(
    names: Sequence[str],
    input_size: Sequence[int] = (256, 256),
    in_channels: int = 1,
    num_classes: int = 2,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    latency: bool = True,
) -> list[dict[str, Any]]:
    """:func:`measure` for each name, in order."""
    return [measure(n, in_channels, num_classes, input_size, repeats, warmup, threads, latency) for n in names]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch / MONAI / Python versions, torch threads, platform, UTC time."""
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # pragma: no cover
        monai_version = None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(
    rows: Sequence[dict[str, Any]],
    title: str | None = None,
    machine: dict[str, Any] | None = None,
    note: str | None = None,
) -> str:
    """Render :func:`measure` rows as a Markdown table (latency columns only when measured).

    Args:
        rows: result rows.
        title: optional heading.
        machine: optional :func:`machine_info` dict, printed under the table.
        note: optional paragraph printed under the table.

    Returns:
        Markdown text.
    """
    timed = any("latency_ms_median" in r for r in rows)
    head = ["model", "role", "input", "params", "params (M)", "GFLOPs", "GMACs"]
    if timed:
        head += ["checkpoint (MB)", "CPU latency median (ms)", "min (ms)", "threads"]
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        cells = [
            r["name"],
            str(r["role"]),
            r["input"],
            f"{r['params']:,}",
            f"{r['params'] / 1e6:.3f}",
            _fmt(r.get("gflops"), ".3f"),
            _fmt(r.get("gmacs"), ".3f"),
        ]
        if timed:
            cells += [
                _fmt(r.get("checkpoint_mb"), ".2f"),
                _fmt(r.get("latency_ms_median"), ".1f"),
                _fmt(r.get("latency_ms_min"), ".1f"),
                _fmt(r.get("threads"), "d"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"FLOPs: {FLOP_COUNTING}."]
    if timed:
        lines.append("Latency: batch 1, eval mode, torch.inference_mode, median of the timed repeats after warm-up.")
    if machine:
        lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _plain_text(rows: Sequence[dict[str, Any]], skipped: Sequence[str], size_text: str) -> str:
    timed = any("latency_ms_median" in r for r in rows)
    w = max([22, *(len(r["name"]) + 2 for r in rows)])
    head = f"{'model':<{w}}{'role':<9}{'dims':<6}{'params':>14}{'GFLOPs':>10}"
    if timed:
        head += f"{'ckpt MB':>10}{'CPU ms':>10}"
    out = [f"models at input {size_text} (GFLOPs = 2 x MACs, batch 1)", head]
    for r in rows:
        dims = "/".join(str(d) for d in model_info(r["name"])["spatial_dims"])
        line = f"{r['name']:<{w}}{r['role']:<9}{dims:<6}{r['params']:>14,}{r['gflops']:>10.3f}"
        if timed:
            line += f"{r['checkpoint_mb']:>10.2f}{r['latency_ms_median']:>10.1f}"
        out.append(line)
    if skipped:
        out.append(f"not shown (they take other spatial dims than {size_text}): {', '.join(skipped)}")
    return "\n".join(out) + "\n"


def models_cli(
    pattern: str = "*",
    efficiency: bool = False,
    input_size: str = "1x256x256",
    out: Path | str | None = None,
    num_classes: int = 2,
    repeats: int = 10,
) -> str:
    """Back end of ``medkd models``: list zoo models with parameters and GFLOPs at ``input_size``.

    Args:
        pattern: shell-style name pattern (``"*"``, ``"unet*"``).
        efficiency: also measure checkpoint size and CPU latency (slow for the teachers).
        input_size: ``"CxHxW"`` or ``"CxDxHxW"``; models that do not support its dimensionality are skipped.
        out: write ``<out>.json`` and ``<out>.md`` (a ``.json`` / ``.md`` suffix is replaced; a directory
            gets ``models.json`` / ``models.md``).
        num_classes: output channels the models are built with.
        repeats: timed runs per model with ``efficiency``.

    Returns:
        The text to print.

    Raises:
        ConfigError: a bad ``input_size`` or a pattern matching no model.
    """
    in_channels, size = parse_input_size(input_size)
    dims = len(size)
    names = list_models(pattern)
    if not names:
        raise ConfigError(f"no model matches {pattern!r}; models: {', '.join(list_models())}")
    usable = [n for n in names if dims in model_info(n)["spatial_dims"]]
    skipped = [n for n in names if n not in usable]
    rows, failed = [], []
    for n in usable:
        try:
            rows.append(measure(n, in_channels, num_classes, size, repeats=repeats, latency=efficiency))
        except (MedkdError, ImportError) as err:  # e.g. a MONAI network whose optional package is missing
            failed.append(f"{n} ({str(err).splitlines()[0]})")
    text = _plain_text(rows, skipped, input_size)
    if failed:
        text += "could not build: " + "; ".join(failed) + "\n"
    if out is not None:
        out = Path(out)
        if out.suffix.lower() in (".json", ".md"):
            base = out.with_suffix("")
        else:
            out.mkdir(parents=True, exist_ok=True)
            base = out / "models"
        base.parent.mkdir(parents=True, exist_ok=True)
        machine = machine_info()
        payload = {"input": input_size, "flop_counting": FLOP_COUNTING, "machine": machine, "rows": rows}
        base.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        base.with_suffix(".md").write_text(
            render_markdown(rows, title=f"medkd models at {input_size}", machine=machine), encoding="utf-8"
        )
        text += f"wrote {base.with_suffix('.json')} and {base.with_suffix('.md')}\n"
    return text
