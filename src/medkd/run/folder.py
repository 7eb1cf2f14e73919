""":class:`RunFolder`: the one writer and reader of a run folder.

Training writes it (:meth:`RunFolder.prepare`, :meth:`RunFolder.log`, :meth:`RunFolder.write_summary`); every
later stage reads it through the same object (:meth:`RunFolder.config`, :meth:`RunFolder.split`,
:meth:`RunFolder.metrics`, :meth:`RunFolder.summary`, :meth:`RunFolder.evaluation`, :meth:`RunFolder.load_model`,
...). A missing or unreadable file raises :class:`medkd.errors.MedkdError` with one line naming it.

Example::

    run = RunFolder("runs/student")
    model, cfg = run.load_model()
    dice = run.evaluation()["foreground_mean"]["dice"]["mean"]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from medkd.config import RunConfig, load_config, save_config
from medkd.data.loader import open_dataset
from medkd.errors import DataError, MedkdError
from medkd.io import atomic_write_json, atomic_write_text
from medkd.run.files import (
    BEST_WEIGHTS,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EVAL_PER_CASE,
    EVAL_PER_CASE_CSV,
    EVAL_SUMMARY,
    EVALUATION_DIR,
    LAST_POINTER,
    METRICS_FILE,
    PREDICTIONS_DIR,
    RECONSTRUCTION_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    read_json,
    read_jsonl,
)
from medkd.run.networks import load_network
from medkd.run.progress import training_progress
from medkd.run.resume import SPLIT_KEYS, config_text

__all__ = ["RunFolder", "load_run_model"]


class RunFolder:
    """Paths, writers and readers of one run folder.

    Args:
        path: the run folder (it need not exist yet).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self.config_path = self.path / CONFIG_FILE
        self.split_path = self.path / SPLIT_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.summary_path = self.path / SUMMARY_FILE

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- state ---------------------------------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder holds a run's ``config.yaml``."""
        return self.config_path.is_file()

    def has_started(self) -> bool:
        """Whether training logged a line or finished an epoch here."""
        return self.metrics_path.exists() or (self.checkpoints / LAST_POINTER).exists()

    def has_checkpoint(self) -> bool:
        """Whether an epoch finished (``checkpoints/last.json``): training can resume."""
        return (self.checkpoints / LAST_POINTER).is_file()

    def has_summary(self) -> bool:
        """Whether training wrote ``train_summary.json`` (it ran to its end)."""
        return self.summary_path.is_file()

    def has_evaluation(self, split: str | None = None) -> bool:
        """Whether ``medkd evaluate`` wrote the ``summary.json`` of ``split`` (the test split when None)."""
        return (self.evaluation_dir(split) / EVAL_SUMMARY).is_file()

    @property
    def best_weights(self) -> Path:
        """``checkpoints/best.safetensors`` (it may not exist yet)."""
        return self.checkpoints / BEST_WEIGHTS

    def progress(self, planned_epochs: int | None = None) -> dict[str, Any]:
        """How far training got: :func:`medkd.run.training_progress` of this folder."""
        return training_progress(self.path, planned_epochs)

    # ---- writers -------------------------------------------------------------------------------------------

    def reset_logs(self) -> None:
        """Remove ``metrics.jsonl`` (a run that starts over in the same folder)."""
        self.metrics_path.unlink(missing_ok=True)

    def split_record(self, bundle: Any) -> dict[str, Any]:
        """What ``split.json`` records for ``bundle`` (plain JSON types)."""
        return json.loads(json.dumps({
            "dataset": str(bundle.index.root), "format": bundle.index.format,
            "channels": [bundle.index.channel_names[i] for i in bundle.channels],
            "teacher_channels": None if bundle.teacher_channels is None
            else [bundle.index.channel_names[i] for i in bundle.teacher_channels],
            "classes": bundle.class_names, **bundle.split,
            "sites": {cid: bundle.index.case(cid).site for part in bundle.split.values() for cid in part},
            **bundle.record(),
        }))

    def check_resume_split(self, bundle: Any) -> None:
        """Raise DataError if the dataset now gives other cases, channels or classes than ``split.json`` records."""
        path = self.split_path
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{path}: not valid JSON; the run cannot resume") from None
        new = self.split_record(bundle)
        for key in SPLIT_KEYS:
            if key in saved and saved[key] != new.get(key):
                raise DataError(f"{path}: '{key}' differs from what {bundle.index.root} gives now (the dataset "
                                "changed?); a resume cannot change the run's cases, channels or classes")

    def prepare(self, cfg: RunConfig, bundle: Any, is_main: bool = True, resume: bool = False) -> None:
        """Create the folder and record the resolved config and split (rank 0 only).

        On ``resume`` (a checkpoint exists and :func:`medkd.run.check_resume_config` / :meth:`check_resume_split`
        passed) ``split.json`` is kept as it is, and ``config.yaml`` is rewritten only when a
        :data:`medkd.run.RESUME_FREE_KEYS` key changed (e.g. more ``train.epochs``).
        """
        if not is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path, split_path = self.config_path, self.split_path
        if not resume or not cfg_path.is_file() or cfg_path.read_text() != config_text(cfg):
            save_config(cfg, cfg_path)
        if not resume or not split_path.is_file():
            atomic_write_json(split_path, self.split_record(bundle))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``."""
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, epoch: int) -> None:
        """Drop log lines written after the checkpoint of ``epoch`` (a resumed run rewrites them)."""
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``train_summary.json`` (atomically): the run trained to its end."""
        atomic_write_json(self.summary_path, summary)

    def remove_summary(self) -> None:
        """Remove ``train_summary.json`` (a resumed run trains on)."""
        self.summary_path.unlink(missing_ok=True)

    def write_evaluation(self, split: str, summary: dict[str, Any], records: list[dict[str, Any]],
                         per_case_csv: str) -> Path:
        """Write the evaluation of ``split`` (``per_case.csv`` from its text, ``summary.json``, ``per_case.json``);
        returns its folder. The CSV's text comes from :func:`medkd.evaluate.metrics.per_case_csv_text`."""
        out_dir = self.evaluation_dir(split)
        atomic_write_text(out_dir / EVAL_PER_CASE_CSV, per_case_csv)
        atomic_write_json(out_dir / EVAL_SUMMARY, summary)
        atomic_write_json(out_dir / EVAL_PER_CASE, records)
        return out_dir

    def write_reconstruction(self, result: dict[str, Any]) -> None:
        """Write the test reconstruction PSNR of a multi-task teacher next to its evaluation (atomically)."""
        atomic_write_json(self.evaluation_dir() / RECONSTRUCTION_FILE, result)

    def prediction_path(self, split: str, case: str) -> Path:
        """Where the evaluation of ``split`` saves the label map of ``case`` (its folder is created)."""
        folder = self.evaluation_dir(split) / PREDICTIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{case}.nii.gz"

    # ---- readers -------------------------------------------------------------------------------------------

    def config(self) -> RunConfig:
        """The run's resolved config (``config.yaml``)."""
        if not self.config_path.is_file():
            raise MedkdError(f"{self.path}: not a run folder (no {CONFIG_FILE})")
        return load_config(self.config_path)

    def split(self) -> dict[str, Any]:
        """``split.json``: the cases of each split, channels, classes, dataset and its recorded facts."""
        if not self.split_path.is_file():
            raise MedkdError(f"{self.path}: {SPLIT_FILE} missing; the run never started")
        split = read_json(self.split_path)
        if not isinstance(split, dict) or not isinstance(split.get("channels"), list) \
                or not isinstance(split.get("classes"), list):
            raise MedkdError(f"{self.split_path}: not a run split (needs 'channels' and 'classes' lists)")
        return split

    @property
    def in_channels(self) -> int:
        """Input channels of the run's network (dataset channels times slab neighbours)."""
        split = self.split()
        return int(split.get("in_channels", len(split["channels"])))

    def channels(self) -> list[str]:
        """Names of the dataset channels the network reads (one input file each at prediction)."""
        return list(self.split()["channels"])

    def class_names(self) -> list[str]:
        """Class names, one per network output channel (background first)."""
        return [str(name) for name in self.split()["classes"]]

    def label_values(self, cfg: RunConfig | None = None) -> list[int]:
        """The dataset label value of each class index (the class index when the dataset is not at hand)."""
        split = self.split()
        values = list(range(len(split["classes"])))
        if Path(split["dataset"]).is_dir():
            data_cfg = (cfg or self.config()).data
            values = sorted(open_dataset(data_cfg, root=split["dataset"]).labels.values())
        return [int(v) for v in values]

    def metrics(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl`` (none before training logged one)."""
        return read_jsonl(self.metrics_path)

    def epoch_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (``kind == "epoch"``)."""
        return [r for r in self.metrics() if isinstance(r, dict) and r.get("kind") == "epoch"]

    def summary(self) -> dict[str, Any]:
        """``train_summary.json``: what training reports at its end."""
        return read_json(self.summary_path, "not found; the run has not finished training")

    def evaluation_dir(self, split: str | None = None) -> Path:
        """Folder of the evaluation files of ``split``: ``evaluation/`` for test (or None), else
        ``evaluation/<split>/``."""
        base = self.path / EVALUATION_DIR
        return base if split in (None, "test") else base / split

    def evaluation(self, name: str | None = None) -> dict[str, Any]:
        """``summary.json`` of the evaluation of split ``name`` (the test split when None)."""
        return read_json(self.evaluation_dir(name) / EVAL_SUMMARY, "not found; run medkd evaluate first")

    def per_case(self, name: str | None = None) -> list[dict[str, Any]]:
        """``per_case.json`` of the evaluation of split ``name``: ``{"case", "site", "metrics"}`` per case."""
        return read_json(self.evaluation_dir(name) / EVAL_PER_CASE, "not found; run medkd evaluate first")

    def reconstruction(self) -> dict[str, Any] | None:
        """The test reconstruction PSNR of a multi-task teacher, or None when the run has none."""
        path = self.evaluation_dir() / RECONSTRUCTION_FILE
        return read_json(path) if path.is_file() else None

    def parameter_count(self) -> int | None:
        """Parameters in the best weights (BatchNorm statistics left out), read from the safetensors header
        without building the network; None before the first checkpoint."""
        if not self.best_weights.is_file():
            return None
        total = 0
        with safe_open(str(self.best_weights), framework="pt") as f:
            for key in f.keys():
                if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                    total += math.prod(int(d) for d in f.get_slice(key).get_shape())
        return total

    def weights(self, which: str = "best") -> Path:
        """The safetensors file of the ``best`` or ``last`` weights (checked to exist)."""
        if which == "best":
            path = self.best_weights
        else:
            pointer = self.checkpoints / LAST_POINTER
            if not pointer.is_file():
                raise MedkdError(f"{self.path}: no finished epoch yet (checkpoints/{LAST_POINTER} missing)")
            path = self.checkpoints / read_json(pointer)["dir"] / "model.safetensors"
        if not path.is_file():
            raise MedkdError(f"{path}: checkpoint not found; has the run finished an epoch?")
        return path

    def load_model(self, which: str = "best") -> tuple[torch.nn.Module, RunConfig]:
        """The trained network (``best`` or ``last`` weights, eval mode, on the CPU) and the run's config."""
        cfg = self.config()
        model = load_network(cfg.model, self.in_channels, len(self.class_names()), cfg.data.dim, self.weights(which))
        return model, cfg


def load_run_model(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, RunConfig]:
    """The trained network of a run folder and its config: :meth:`RunFolder.load_model`."""
    return RunFolder(run_dir).load_model(which)
