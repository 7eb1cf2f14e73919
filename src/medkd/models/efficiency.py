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

import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medkd.errors import ConfigError
from medkd.measure.machine import machine_info
from medkd.measure.tables import fmt, key_values, markdown_table
from medkd.measure.timing import summarize, time_ms

from .layers import count_parameters
from .registry import create_model, model_info

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
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def checkpoint_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's ``state_dict`` saved with safetensors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_model(model, path)
        return os.path.getsize(path)


def cpu_latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> list[float]:
    """Wall times in milliseconds of ``repeats`` forward passes (after ``warmup`` untimed ones)."""
    with torch.inference_mode():
        return time_ms(lambda: model(x), repeats, warmup)


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
        stats = summarize(times)
        row["checkpoint_mb"] = round(checkpoint_bytes(model) / 2**20, 3)
        row["latency_ms_median"] = round(stats["median"], 2)
        row["latency_ms_min"] = round(stats["min"], 2)
        row["latency_ms_max"] = round(stats["max"], 2)
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


def _cells(row: dict[str, Any], timed: bool) -> list[str]:
    """One :func:`render_markdown` table row."""
    cells = [row["name"], str(row["role"]), row["input"], f"{row['params']:,}", f"{row['params'] / 1e6:.3f}",
             fmt(row.get("gflops"), ".3f"), fmt(row.get("gmacs"), ".3f")]
    if timed:
        cells += [fmt(row.get("checkpoint_mb"), ".2f"), fmt(row.get("latency_ms_median"), ".1f"),
                  fmt(row.get("latency_ms_min"), ".1f"), fmt(row.get("threads"), "d")]
    return cells


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
    lines = [f"# {title}", ""] if title else []
    lines += markdown_table(head, [_cells(r, timed) for r in rows], "ll" + "r" * (len(head) - 2))
    lines += ["", f"FLOPs: {FLOP_COUNTING}."]
    if timed:
        lines.append("Latency: batch 1, eval mode, torch.inference_mode, median of the timed repeats after warm-up.")
    if machine:
        lines.append("Machine: " + key_values(machine) + ".")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"
