"""Markdown tables and the small formatting helpers benchmark reports share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["fmt", "key_values", "markdown_row", "markdown_table"]


def fmt(value: Any, spec: str = ".1f") -> str:
    """``format(value, spec)``, or ``"-"`` for None."""
    return "-" if value is None else format(value, spec)


def key_values(info: Mapping[str, Any], skip_none: bool = False) -> str:
    """``"k1 v1, k2 v2"`` (a machine description in one line); ``skip_none`` drops None values."""
    return ", ".join(f"{k} {v}" for k, v in info.items() if not (skip_none and v is None))


def markdown_row(cells: Sequence[Any]) -> str:
    """``| a | b |``; an empty cell is written ``| |``."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str) -> list[str]:
    """The lines of a markdown table: header, separator, one line per row.

    Args:
        head: column titles.
        rows: cells per row (formatted already; ``str()`` is applied).
        align: one letter per column, ``"l"`` (``---``) or ``"r"`` (``---:``).

    Raises:
        ValueError: ``align`` or a row does not have one entry per column.
    """
    if len(align) != len(head) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: need one 'l' or 'r' per column ({len(head)} columns)")
    lines = [markdown_row(head), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for row in rows:
        if len(row) != len(head):
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells, the header {len(head)}")
        lines.append(markdown_row(row))
    return lines
