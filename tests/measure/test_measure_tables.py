"""medkd.measure.tables: markdown tables and formatting."""

from __future__ import annotations

import pytest

from medkd.measure.tables import fmt, key_values, markdown_row, markdown_table


def test_markdown_table_exact_text():
    lines = markdown_table(["model", "ms", "note"], [["enet", "1.5", "fast"], ["unet", 12, ""]], "lrl")
    assert lines == ["| model | ms | note |", "|---|---:|---|", "| enet | 1.5 | fast |", "| unet | 12 | |"]


def test_markdown_table_checks_column_counts():
    with pytest.raises(ValueError, match="align 'lr'"):
        markdown_table(["a", "b", "c"], [], "lr")
    with pytest.raises(ValueError, match="align 'lx'"):
        markdown_table(["a", "b"], [], "lx")
    with pytest.raises(ValueError, match="2 cells, the header 3"):
        markdown_table(["a", "b", "c"], [["1", "2"]], "lll")


def test_row_fmt_and_key_values():
    assert markdown_row(["a", 0, ""]) == "| a | 0 | |"
    assert fmt(None) == "-" and fmt(3.14159) == "3.1" and fmt(2.5, ".0f") == "2" and fmt(7, "d") == "7"
    info = {"cpu": "x86", "monai": None, "threads": 2}
    assert key_values(info) == "cpu x86, monai None, threads 2"
    assert key_values(info, skip_none=True) == "cpu x86, threads 2"
