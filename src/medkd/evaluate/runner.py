"""``medkd evaluate``: score a trained run on whole cases of a split.

Writes ``evaluation/per_case.csv`` and ``evaluation/summary.json`` (test split; other splits go to
``evaluation/<split>/``): Dice, IoU, precision, recall and HD95 per case and class (and per region
when ``evaluate.regions`` is set), their mean / std, the foreground mean, and per-site summaries when
the cases have sites. ``summary.json`` states the HD95 definition used (``hd95_definition``, from
``evaluate.hd95``), the epoch whose weights were scored (``epoch``), whether the run had finished training
(``finished``) and whether its cases lost their simulated sites (``without_sites``); evaluating an unfinished run
prints a one-line warning on stderr.

``without_sites`` scores a run trained with ``data.simulate_sites`` on the same cases without their simulated
acquisition (into ``evaluation/<split>-without-sites/``): the difference to the plain evaluation is what the
simulated site costs the network, e.g. the unseen target site of a leave-one-site-out protocol.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medkd.config import DataConfig, RunConfig
from medkd.data.loader import open_dataset
from medkd.data.nifti_io import spacing_from_affine, write_nifti
from medkd.data.pipeline import prepare_cases
from medkd.errors import MedkdError
from medkd.evaluate.metrics import HD95, case_metrics, per_case_csv_text, summarize
from medkd.evaluate.saved_predictions import panel_cases, save_panel_prediction
from medkd.inference import predict_volume, predicted_classes
from medkd.run import RunFolder

__all__ = ["TEST_WITHOUT_SITES", "WITHOUT_SITES_SUFFIX", "evaluate_run", "evaluation_dir"]


WITHOUT_SITES_SUFFIX = "-without-sites"
#: The evaluation name of the test split without its simulated sites (``evaluation/test-without-sites/``).
TEST_WITHOUT_SITES = "test" + WITHOUT_SITES_SUFFIX


def evaluation_dir(run_dir: Path, split: str) -> Path:
    """Folder of the evaluation files of ``split``: :meth:`medkd.run.RunFolder.evaluation_dir`."""
    return RunFolder(run_dir).evaluation_dir(split)


def _data_without_sites(cfg: RunConfig, run_dir: Path) -> DataConfig:
    """The run's data section with its simulated sites turned off (an error when it has none)."""
    if cfg.data.simulate_sites is None:
        raise MedkdError(f"{run_dir}: --without-sites needs a run trained with data.simulate_sites; this one has none")
    return cfg.data.model_copy(update={"simulate_sites": None})


def evaluate_run(run_dir: str | Path, split: str | None = None, device: str | None = None,
                 save_predictions: bool = False, progress: bool = True, without_sites: bool = False
                 ) -> dict[str, Any]:
    """Evaluate a run's best weights on every case of ``split`` and write the evaluation files.

    ``without_sites``: the same cases without their simulated sites (see the module docstring).

    Returns:
        The summary dict (as written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    model, cfg = run.load_model()
    data = _data_without_sites(cfg, run_dir) if without_sites else cfg.data
    progress_info = run.progress(cfg.train.epochs)
    _warn_unfinished(run_dir, cfg.train.epochs, progress_info)
    split = split or cfg.evaluate.split
    name = split + WITHOUT_SITES_SUFFIX if without_sites else split
    info = run.split()
    case_ids = info.get(split, [])
    if not case_ids:
        raise MedkdError(f"{run_dir}: split '{split}' has no cases")
    index = open_dataset(data, root=info["dataset"])
    channels = index.channel_indices(info["channels"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    values = np.asarray(sorted(index.labels.values()))
    groups = _metric_groups(cfg, index.labels)
    records = []
    shown = set(panel_cases(case_ids))
    panel: dict[str, np.ndarray] = {}
    for cid in tqdm(case_ids, desc=f"evaluate {run_dir.name}/{name}", disable=not progress, leave=False):
        pc = prepare_cases(index, [cid], channels, data)[0]
        probs = pc.restore(predict_volume(model, pc.image, data.dim, data.size, data.volume_size,
                                          cfg.evaluate.batch_size, cfg.evaluate.sw_overlap, dev))
        labels = predicted_classes(probs)
        pred = values[labels]
        metrics = case_metrics(pred, values[pc.reference], groups, spacing=spacing_from_affine(pc.affine),
                               hd95=cfg.evaluate.hd95)
        records.append({"case": cid, "site": pc.site, "metrics": metrics})
        if cid in shown and not without_sites:
            panel[cid] = labels
        if save_predictions:
            write_nifti(run.prediction_path(name, cid), pred.astype(np.uint8), affine=pc.affine)
    has_sites = all(r["site"] is not None for r in records)
    summary = summarize(records, group_key="site" if has_sites else None)
    summary = {"run": run_dir.name, "split": split, "model": cfg.model.name, "dataset": index.root.name,
               "channels": info["channels"], "epoch": progress_info["epoch"],
               "finished": progress_info["finished"], "without_sites": without_sites,
               "hd95_unit": "mm", "hd95_definition": HD95[cfg.evaluate.hd95], **summary}
    run.write_evaluation(name, summary, records, per_case_csv_text(records))
    for cid, labels in panel.items():  # the report's qualitative panel reads these instead of predicting again
        save_panel_prediction(run.evaluation_dir(name), case_ids, cid, labels)
    return summary


def _warn_unfinished(run_dir: Path, epochs: int, progress_info: dict[str, Any]) -> None:
    """One line on stderr when the run's training has not finished (its best weights so far are scored)."""
    if progress_info["finished"]:
        return
    done = "no" if progress_info["last_epoch"] is None else str(progress_info["last_epoch"])
    print(f"warning: {run_dir}: training has not finished ({done} of {epochs} epochs); evaluating "
          f"the best weights so far (epoch {progress_info['epoch']})", file=sys.stderr)


def _metric_groups(cfg: RunConfig, labels: dict[str, int]) -> dict[str, Any]:
    """What the metrics are computed for: each foreground class (``evaluate.classes``) and ``evaluate.regions``."""
    values = sorted(labels.values())
    groups: dict[str, Any] = {}
    if cfg.evaluate.classes:
        groups.update({n: v for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != values[0]})
    if cfg.evaluate.regions:
        groups.update(cfg.evaluate.regions)
    return groups
