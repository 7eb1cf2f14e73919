"""``medkd models``: the model zoo as a table of parameters and GFLOPs (with ``--efficiency``, checkpoint size and
CPU latency), printed and optionally written as JSON + markdown.

Example::

    from medkd.bench.zoo import models_cli

    print(models_cli("unet*", input_size="1x64x64"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.errors import ConfigError, MedkdError
from medkd.measure.machine import machine_info
from medkd.models import list_models, model_info
from medkd.models.efficiency import FLOP_COUNTING, measure, parse_input_size, render_markdown

__all__ = ["models_cli"]


def _plain_text(rows: Sequence[dict[str, Any]], skipped: Sequence[str], size_text: str) -> str:
    """The table ``medkd models`` prints."""
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
        base = _write(Path(out), input_size, rows)
        text += f"wrote {base.with_suffix('.json')} and {base.with_suffix('.md')}\n"
    return text


def _write(out: Path, input_size: str, rows: list[dict[str, Any]]) -> Path:
    """Write ``<base>.json`` and ``<base>.md`` for ``out`` (see :func:`models_cli`); returns ``<base>``."""
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
    return base
