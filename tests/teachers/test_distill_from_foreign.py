"""A student distilled for a few steps from each kind of foreign teacher, through medkd's own training loop."""

from __future__ import annotations

import json
import math

import pytest

from medkd.errors import ConfigError
from medkd.train.checks import check_before_data
from medkd.train.trainer import train

LABELS = {"background": 0, "organ": 1, "lesion": 2}
QUICK = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False, "grad_norm_every": None}


def _kd_losses(run_dir) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["kd/logits_kl@logits"] for r in lines if r.get("kind") == "step"]


def _teacher(kind, tmp_path, make):
    if kind == "nnunet":
        return {"nnunet": str(make.nnunet(tmp_path, ["T2"], LABELS)[0]), "fold": 0,
                "checkpoint": "checkpoint_final.pth"}
    if kind == "bundle":
        return {"bundle": str(make.bundle(tmp_path, "T2", list(LABELS))[0])}
    return {kind: str(getattr(make, kind)(tmp_path / f"teacher.{kind}", make.small_net(3)))}


@pytest.mark.parametrize("kind", ["nnunet", "bundle", "torchscript", "onnx"])
def test_a_student_distils_from_each_kind(kind, synth2d, tmp_path, make, make_run_config):
    terms = [{"loss": "logits_kl", "weight": 1.0}]
    if kind == "nnunet":  # a feature tap of nnU-Net's architecture, through an adapter
        terms.append({"loss": "feature_mse", "weight": 0.5, "tap": "bottleneck"})
    distill = {"teacher": _teacher(kind, tmp_path, make), "terms": terms, "cache": kind == "onnx"}
    cfg = make_run_config(synth2d, name=f"from_{kind}", train=QUICK, distill=distill)
    result = train(cfg, tmp_path / "run", device="cpu")
    kd = _kd_losses(tmp_path / "run")
    assert result.epochs == 1 and len(kd) >= 2 and all(math.isfinite(v) and v > 0 for v in kd)
    if kind == "onnx":  # the ONNX teacher ran once, over every distinct training input
        index = json.loads((tmp_path / "run" / "teacher_cache" / "index.json").read_text())
        assert index["taps"] == ["logits"] and index["shapes"]["logits"] == [3, 32, 32] and index["n"] >= 8


def test_a_feature_loss_on_an_onnx_teacher_fails_before_the_data(synth2d, tmp_path, make, make_run_config):
    distill = {"teacher": _teacher("onnx", tmp_path, make),
               "terms": [{"loss": "logits_kl", "weight": 1.0}, {"loss": "kernel_matrix", "weight": 1.0}]}
    cfg = make_run_config(synth2d, name="bad", train=QUICK, distill=distill)
    with pytest.raises(ConfigError, match=r"distill.terms\[1\] \(kernel_matrix\).*only 'logits'"):
        check_before_data(cfg)
