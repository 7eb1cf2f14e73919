"""One description of the machine a measurement ran on: CPU, cores, library versions, load average, time.

:func:`main` (``FOLDER --device cuda --note TEXT``) writes ``FOLDER/machine.json`` (:func:`write_runs_machine`),
the record the GPU scripts under ``benchmarks/`` leave beside their runs (``benchmarks/gpu_common.sh``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from medkd.io import atomic_write_json

__all__ = ["cpu_model", "load_average", "machine_info", "runs_machine", "utc_now", "write_runs_machine"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages rounded to 0.01, or None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch / MONAI / Python versions, torch threads, platform, UTC time.

    torch and MONAI are imported on the first call only (``monai`` is None where it is missing).
    """
    import torch  # lazy: the rest of medkd.measure runs in processes that must not load torch

    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # pragma: no cover
        monai_version = None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": utc_now(),
    }


def runs_machine(device: str, note: str) -> dict[str, Any]:
    """What a folder of benchmark runs ran on: the GPU (None unless ``device`` is CUDA and one is there), the
    CPU model and its logical cores, torch, and ``note`` (how the runs shared the machine)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"gpu": gpu, "cpu": f"{cpu_model()}, {os.cpu_count()} cores", "torch": torch.__version__, "note": note}


def write_runs_machine(folder: Path, device: str, note: str, keep: bool = False) -> Path:
    """Write :func:`runs_machine` to ``folder/machine.json``; with ``keep``, a description already there stays."""
    path = Path(folder) / "machine.json"
    if not (keep and path.is_file()):
        atomic_write_json(path, runs_machine(device, note))
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line of :func:`write_runs_machine`: ``FOLDER [--device cuda] [--note TEXT] [--keep]``."""
    parser = argparse.ArgumentParser(prog="medkd.measure.machine", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="folder that receives machine.json")
    parser.add_argument("--device", default="cuda", help="cpu or cuda (the GPU is named only for cuda)")
    parser.add_argument("--note", default="", help="how the runs shared the machine")
    parser.add_argument("--keep", action="store_true", help="keep a machine.json already there")
    args = parser.parse_args(argv)
    path = write_runs_machine(args.folder, args.device, args.note, args.keep)
    record = json.loads(path.read_text(encoding="utf-8"))
    print("machine:", record["gpu"] or record["cpu"], record["torch"])
