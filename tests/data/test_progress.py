"""Long waits show progress on a terminal (data check, case loading) and stay silent in logs and pipes."""

from __future__ import annotations

import io
import sys

import pytest

from medkd.data.check import check_dataset
from medkd.data.formats import read_dataset
from medkd.data.pipeline import prepare_cases


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_loading_and_checking_show_progress_on_a_terminal_only(synth2d, monkeypatch, terminal):
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    index = read_dataset(synth2d)
    prepare_cases(index, [c.case_id for c in index.cases[:3]], [0], "zscore", progress="loading training cases")
    check_dataset(synth2d, max_cases=3, progress=True)
    text = err.getvalue()
    assert ("loading training cases" in text and f"checking {synth2d.name}" in text) == terminal
    assert terminal or text == ""


def test_no_progress_unless_asked(synth2d, monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    index = read_dataset(synth2d)
    prepare_cases(index, [index.cases[0].case_id], [0], "zscore")
    check_dataset(synth2d, max_cases=2)
    assert err.getvalue() == ""
