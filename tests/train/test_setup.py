"""build_parts: the parts of a run (data, networks, taps, cache, optimisers), and a resume's restored loop state."""

from __future__ import annotations

import json

import pytest
import torch

from medkd.config import parse_config
from medkd.run import build_network
from medkd.train.setup import build_parts
from medkd.train.trainer import train
from medkd.weights import save_weights


@pytest.fixture(scope="module")
def teacher_weights(synth2d, tmp_path_factory, make_run_config):
    """Untrained unet_s1 weights for synth2d, as a teacher checkpoint."""
    torch.manual_seed(1)
    net = build_network(make_run_config(synth2d).model, 1, 3, 2)
    path = tmp_path_factory.mktemp("setup") / "teacher.safetensors"
    save_weights(path, net.state_dict())
    return path


def _kd(synth2d, make_config, teacher, cache: bool):
    data = make_config(synth2d, name="kd", train={"epochs": 1, "batch_size": 4, "progress": False})
    data["distill"] = {"teacher": {"model": {"name": "unet_s1"}, "checkpoint": str(teacher)}, "cache": cache,
                       "terms": [{"loss": "logits_kl", "weight": 1.0},
                                 {"loss": "kernel_matrix", "weight": 0.5, "tap": "bottleneck"}]}
    return parse_config(data)


def test_plain_run_parts(synth2d, tmp_path, make_run_config):
    cfg = make_run_config(synth2d, train={"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 3, "progress": False})
    parts = build_parts(cfg, tmp_path / "run", device="cpu")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert parts.is_main and parts.dev == torch.device("cpu")
    assert len(parts.data.val_cases) == len(split["val"]) > 0
    assert parts.opts.per_epoch == min(3, len(parts.data.source) // 4) == 2 and parts.cache is None
    assert parts.nets.teacher is None and parts.nets.objective is None
    assert parts.ctx.s_tapper is None and parts.ctx.t_tapper is None and parts.ctx.model is parts.nets.student
    assert (parts.progress.epoch, parts.progress.step, parts.progress.best["epoch"]) == (0, 0, None)


@pytest.mark.parametrize("cache", [False, True])
def test_distillation_parts_tap_both_networks_or_read_the_cache(synth2d, tmp_path, make_config, teacher_weights,
                                                               cache):
    parts = build_parts(_kd(synth2d, make_config, teacher_weights, cache), tmp_path / "run", device="cpu")
    assert parts.nets.s_taps == ["bottleneck", "logits"] and parts.nets.t_taps == ["bottleneck", "logits"]
    assert parts.ctx.objective.names == ["logits_kl@logits", "kernel_matrix@bottleneck"]
    assert parts.ctx.s_tapper is not None
    assert not any(p.requires_grad for p in parts.nets.teacher.parameters())
    if cache:  # the teacher never runs during training
        assert parts.ctx.teacher is None and parts.ctx.t_tapper is None
        assert (tmp_path / "run" / "teacher_cache" / "index.json").is_file()
    else:
        assert parts.ctx.teacher is parts.nets.teacher and parts.ctx.t_tapper is not None


def test_resumed_parts_continue_where_the_run_stopped(synth2d, tmp_path, make_run_config):
    one = make_run_config(synth2d, train={"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2,
                                          "progress": False})
    train(one, tmp_path / "run", device="cpu")
    two = make_run_config(synth2d, train={"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 2,
                                          "progress": False})
    parts = build_parts(two, tmp_path / "run", resume=True, device="cpu")
    assert (parts.progress.epoch, parts.progress.step, parts.progress.best["epoch"]) == (1, 2, 1)
    assert not (tmp_path / "run" / "train_summary.json").exists()  # the run is no longer finished
    assert parts.opts.optimizer.state_dict()["state"]  # Adam's moments came back
