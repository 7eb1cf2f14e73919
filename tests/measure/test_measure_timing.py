"""medkd.measure.timing: the timing loop's counts, budget and sync; percentiles and the summary."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medkd.measure.timing import clock, cuda_sync, percentile, summarize, time_ms


def test_time_ms_runs_warmup_untimed_then_repeats():
    events: list[str] = []
    times = time_ms(lambda: events.append("fn"), repeats=4, warmup=2, before=lambda: events.append("before"))
    assert len(times) == 4
    assert events == ["before", "fn"] * 6  # set-up before each of the 2 warm-up and 4 timed calls


def test_time_ms_measures_the_call_not_the_setup():
    times = time_ms(lambda: time.sleep(0.02), repeats=3, before=lambda: time.sleep(0.15))
    assert min(times) >= 20.0  # time.sleep sleeps at least as long as asked
    assert max(times) < 150.0  # the 150 ms set-up is not in the timing


def test_time_ms_budget_stops_after_three_runs():
    calls = []
    assert len(time_ms(lambda: calls.append(1), repeats=50, warmup=0, max_seconds=0.0)) == 3
    assert len(time_ms(lambda: calls.append(1), repeats=2, max_seconds=0.0)) == 2  # fewer asked than 3
    assert len(time_ms(lambda: calls.append(1), repeats=7)) == 7  # no budget: every run


def test_sync_is_called_around_every_timed_call():
    syncs = []
    time_ms(lambda: None, repeats=3, warmup=1, sync=lambda: syncs.append(1))
    assert len(syncs) == 6  # before and after each of the 3 timed calls, never during warm-up
    before = time.perf_counter()
    assert before <= clock(lambda: syncs.append(1)) <= time.perf_counter() and len(syncs) == 7


def test_cuda_sync_is_none_off_cuda():
    assert cuda_sync("cpu") is None and cuda_sync("meta") is None
    assert callable(cuda_sync("cuda:0"))  # built without touching the GPU


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_sync_makes_the_timing_wait_for_the_gpu():
    import torch

    x = torch.randn(4096, 4096, device="cuda")
    synced = summarize(time_ms(lambda: x @ x, repeats=5, warmup=2, sync=cuda_sync("cuda")))
    unsynced = summarize(time_ms(lambda: x @ x, repeats=5, warmup=2))
    assert synced["median"] > unsynced["median"]  # without sync only the kernel launch is timed


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    values = [5.0, 1.0, 4.0, 2.0, 10.0, 3.0]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="percentile 101"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="0 values"):
        percentile([], 50)


def test_summarize():
    stats = summarize([4.0, 1.0, 3.0, 2.0], percentiles=(90,))
    assert stats == {"median": 2.5, "min": 1.0, "max": 4.0, "runs": 4, "p90": pytest.approx(3.7)}
