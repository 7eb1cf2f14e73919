"""medkd.measure.machine and .load: the machine description, load average, other processes' CPU, waiting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from medkd.measure import load, machine


def test_machine_info_fields_and_order():
    info = machine.machine_info()
    assert list(info) == ["cpu", "logical_cores", "torch", "torch_threads", "monai", "python", "platform",
                          "date_utc"]
    assert info["logical_cores"] == os.cpu_count() and info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads() and info["cpu"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["date_utc"])


def test_runs_machine_is_written_once_by_one_writer(tmp_path):
    """The record beside a folder of benchmark runs: the GPU scripts call the module, the drivers the function."""
    record = machine.runs_machine("cpu", "1 run(s) at a time")
    assert record == {"gpu": None, "cpu": f"{machine.cpu_model()}, {os.cpu_count()} cores",
                      "torch": torch.__version__, "note": "1 run(s) at a time"}
    call = "import sys; from medkd.measure.machine import main; main(sys.argv[1:])"  # as benchmarks/gpu_common.sh
    cmd = [sys.executable, "-c", call, str(tmp_path), "--device", "cpu", "--note", "shared"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    written = json.loads((tmp_path / "machine.json").read_text())
    assert written["note"] == "shared" and written["gpu"] is None and out.startswith("machine: ")
    machine.write_runs_machine(tmp_path, "cpu", "another", keep=True)
    assert json.loads((tmp_path / "machine.json").read_text())["note"] == "shared"
    machine.write_runs_machine(tmp_path, "cpu", "another")
    assert json.loads((tmp_path / "machine.json").read_text())["note"] == "another"


def test_load_average_is_three_rounded_values():
    la = machine.load_average()
    assert la is not None and len(la) == 3 and all(v == round(v, 2) for v in la)


def test_other_cores_subtracts_our_own_and_clamps():
    assert load.other_cores(3.0, 1.0, 2.0) == 1.0  # 2 CPU-s by others over 2 s
    assert load.other_cores(0.5, 0.8, 2.0) == 0.0  # clock granularity can make it negative
    assert load.other_cores(None, 1.0, 2.0) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")
def test_busy_seconds_count_our_own_work():
    busy0, child0 = load.cpu_busy_seconds(), load.children_cpu_seconds()
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    busy1, child1 = load.cpu_busy_seconds(), load.children_cpu_seconds()
    assert child1 - child0 >= 0.3
    assert busy1 - busy0 >= 0.25  # the machine was busy at least while the child spun (jiffy resolution)


def test_wait_for_quiet_polls_until_quiet_or_timeout(monkeypatch):
    levels = iter([5.0, 3.0, 0.2])
    monkeypatch.setattr(load, "busy_cores", lambda: next(levels))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    got = load.wait_for_quiet(1.0, timeout_s=60)
    assert got["quiet"] is True and got["busy_cores"] == 0.2 and got["waited_s"] < 5
    monkeypatch.setattr(load, "busy_cores", lambda: 4.0)
    start = time.monotonic()
    got = load.wait_for_quiet(1.0, timeout_s=0.0)
    assert got["quiet"] is False and got["busy_cores"] == 4.0 and time.monotonic() - start < 5


def test_importing_measure_loads_neither_torch_nor_numpy():
    code = "import sys, medkd.measure; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
