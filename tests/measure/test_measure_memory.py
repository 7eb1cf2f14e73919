"""medkd.measure.memory: peak and current RSS from /proc, the getrusage fallback (KiB on Linux, bytes on macOS)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from medkd.measure import memory


def test_peak_grows_with_an_allocation():
    # a fresh process: in this one an earlier test may have left a higher peak than any new allocation
    code = ("from medkd.measure import memory as m\n"
            "before = m.peak_rss_mib()\n"
            "block = bytearray(128 * 1024 * 1024)  # zero-filled: every page is touched\n"
            "print(before, m.peak_rss_mib(), m.current_rss_mib())\n"
            "del block\n"
            "print(m.peak_rss_mib(), m.current_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, peak, now, peak_after_free, now_after_free = map(float, out)
    assert 128 <= peak - before < 140 and now == pytest.approx(peak, abs=2)
    assert peak_after_free == pytest.approx(peak, abs=1) and now_after_free < peak - 100  # the peak stays


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux-only")
def test_proc_and_rusage_agree_on_linux():
    assert memory.rusage_peak_mib() == pytest.approx(memory.peak_rss_mib(), abs=64)
    assert 0 < memory.current_rss_mib() <= memory.peak_rss_mib()


@pytest.mark.parametrize("platform, maxrss", [("linux", 2048), ("darwin", 2 * 1024 * 1024)])
def test_rusage_units(monkeypatch, platform, maxrss):
    monkeypatch.setattr(memory.sys, "platform", platform)
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=maxrss))
    assert memory.rusage_peak_mib() == 2.0


def test_without_proc_the_peak_comes_from_rusage(monkeypatch):
    monkeypatch.setattr(memory, "_proc_status_mib", lambda field: None)
    monkeypatch.setattr(memory, "rusage_peak_mib", lambda: 123.0)
    assert memory.peak_rss_mib() == 123.0 and memory.current_rss_mib() == 123.0


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_counts_an_allocation():
    import torch

    memory.reset_cuda_peak("cuda")
    base = memory.cuda_peak_mib("cuda")
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    assert memory.cuda_peak_mib("cuda") - base >= 64
    del block
    memory.reset_cuda_peak("cuda")
    assert memory.cuda_peak_mib("cuda") < base + 64
