from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medkd.config import parse_config
from medkd.data.synthetic import generate_dataset
from medkd.errors import ConfigError, MedkdError
from medkd.evaluate.runner import evaluate_run
from medkd.run import RunFolder
from medkd.train import trainer as trainer_mod
from medkd.train.trainer import train


def _weights(run_dir):
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())["dir"]
    return load_file(str(run_dir / "checkpoints" / last / "model.safetensors"))


def test_training_learns_an_easy_synthetic_task(tmp_path, make_run_config):
    """Loss falls and whole-case test Dice clears a real threshold on an easy synthetic set."""
    root = generate_dataset(tmp_path / "data", dim=2, cases=40, sites=2, size=(64, 64), seed=0)
    cfg = make_run_config(root, train={"epochs": 40, "batch_size": 4, "optimizer": {"name": "adam", "lr": 0.01},
                                       "progress": False},
                          data={"root": str(root), "dim": 2, "size": [64, 64],
                                "split": {"val": 0.2, "test": 0.2, "seed": 0}})
    result = train(cfg, tmp_path / "run", device="cpu")
    epochs = [r for r in RunFolder(tmp_path / "run").metrics() if r["kind"] == "epoch"]
    assert len(epochs) == 40
    assert epochs[-1]["train_seg"] < 0.6 * epochs[0]["train_seg"]
    assert result.best_val_dice is not None and result.best_val_dice > 0.6
    summary = evaluate_run(tmp_path / "run", "test", "cpu", progress=False)
    assert summary["foreground_mean"]["dice"]["mean"] > 0.5
    assert summary["classes"]["organ"]["dice"]["mean"] > 0.55
    # run folder contract
    for name in ("config.yaml", "split.json", "metrics.jsonl", "train_summary.json",
                 "checkpoints/best.safetensors", "checkpoints/last.json",
                 "evaluation/per_case.csv", "evaluation/summary.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_training_is_deterministic_on_cpu(synth2d, tmp_path, make_run_config):
    cfg = make_run_config(synth2d)
    train(cfg, tmp_path / "a", device="cpu")
    train(cfg, tmp_path / "b", device="cpu")
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resumed_run_ends_with_the_same_weights(synth2d, tmp_path, monkeypatch, make_run_config):
    cfg = make_run_config(synth2d, train={"epochs": 3, "batch_size": 4, "progress": False,
                                          "scheduler": {"name": "cosine"}},
                          data={"root": str(synth2d), "dim": 2, "size": [32, 32],
                                "augment": {"flip": True, "rot90": True}})
    train(cfg, tmp_path / "full", device="cpu")

    real_iter = trainer_mod.iter_indexed_batches
    calls = {"n": 0}

    def killed_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies during epoch 2
        return real_iter(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "iter_indexed_batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", device="cpu")
    assert json.loads((tmp_path / "killed/checkpoints/last.json").read_text())["epoch"] == 1
    monkeypatch.setattr(trainer_mod, "iter_indexed_batches", real_iter)
    with pytest.raises(MedkdError, match="already holds a run"):
        train(cfg, tmp_path / "killed", device="cpu")
    train(cfg, tmp_path / "killed", resume=True, device="cpu")
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the log of the resumed run matches the uninterrupted one
    full = [r for r in RunFolder(tmp_path / "full").metrics() if r["kind"] == "epoch"]
    resumed = [r for r in RunFolder(tmp_path / "killed").metrics() if r["kind"] == "epoch"]
    assert [r["train_loss"] for r in full] == [r["train_loss"] for r in resumed]


def test_distillation_freezes_teacher_and_logs_each_term(synth2d, tmp_path, make_config, make_run_config):
    teacher_cfg = make_run_config(synth2d, name="teacher", train={"epochs": 1, "batch_size": 4, "progress": False})
    train(teacher_cfg, tmp_path / "teacher", device="cpu")
    before = load_file(str(tmp_path / "teacher/checkpoints/best.safetensors"))
    data = make_config(synth2d, name="kd", model={"name": "unet_s1"})
    data["distill"] = {"teacher": {"run": str(tmp_path / "teacher")},
                       "terms": [{"loss": "logits_kl", "weight": 0.5, "temperature": 4.0},
                                 {"loss": "kernel_matrix", "weight": 0.9, "tap": "bottleneck"}]}
    train(parse_config(data), tmp_path / "kd", device="cpu")
    steps = [r for r in RunFolder(tmp_path / "kd").metrics() if r["kind"] == "step"]
    kd_keys = {k for k in steps[0] if k.startswith("kd/")}
    assert len(kd_keys) == 2
    assert all(all(torch.isfinite(torch.tensor(s[k])) for k in kd_keys) for s in steps)
    after = load_file(str(tmp_path / "teacher/checkpoints/best.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # extras (the kernel-matrix adapter) are saved with the student checkpoint, never in its weights
    folder = tmp_path / "kd/checkpoints" / json.loads((tmp_path / "kd/checkpoints/last.json").read_text())["dir"]
    assert len(load_file(str(folder / "extras.safetensors"))) > 0
    student_keys = set(load_file(str(tmp_path / "kd/checkpoints/best.safetensors")))
    assert not any("adapter" in k for k in student_keys)


def test_teacher_channel_subset_mismatch_is_a_clear_error(synth2d_mm, tmp_path, make_config, make_run_config):
    teacher_cfg = make_run_config(synth2d_mm, name="teacher", train={"epochs": 1, "batch_size": 4, "progress": False})
    train(teacher_cfg, tmp_path / "teacher", device="cpu")  # reads both modalities
    data = make_config(synth2d_mm, name="kd")
    index_channels = json.loads((tmp_path / "teacher/split.json").read_text())["channels"]
    assert len(index_channels) == 2
    data["data"]["channels"] = [index_channels[0]]
    data["data"]["teacher_channels"] = [index_channels[0]]
    data["distill"] = {"teacher": {"run": str(tmp_path / "teacher")}, "terms": [{"loss": "logits_kl", "weight": 1}]}
    with pytest.raises(ConfigError, match="teacher reads"):
        train(parse_config(data), tmp_path / "kd", device="cpu")
    # the right subset works: student on modality 0 only, teacher on both
    data["data"]["teacher_channels"] = index_channels
    train(parse_config(data), tmp_path / "kd2", device="cpu")
    assert json.loads((tmp_path / "kd2/split.json").read_text())["channels"] == [index_channels[0]]


def test_bf16_autocast_and_channels_last_train_on_cpu(synth2d, tmp_path, make_run_config):
    cfg = make_run_config(synth2d, train={"epochs": 1, "batch_size": 4, "progress": False, "amp": "bf16",
                                          "channels_last": True})
    result = train(cfg, tmp_path / "run", device="cpu")
    assert torch.isfinite(torch.tensor(result.final_loss))


def test_compiled_distillation_matches_eager(synth2d, tmp_path, make_config, make_run_config):
    """train.compile traces the student and the live teacher with their taps: same losses and weights as eager
    (aot_eager backend: tracing without code generation, so the numbers must agree to float rounding)."""
    teacher_cfg = make_run_config(synth2d, name="teacher", train={"epochs": 1, "batch_size": 4, "progress": False})
    train(teacher_cfg, tmp_path / "teacher", device="cpu")
    data = make_config(synth2d, name="kd", model={"name": "unet_s1"})
    data["train"].update({"epochs": 2, "max_steps_per_epoch": 2})
    data["distill"] = {"teacher": {"run": str(tmp_path / "teacher")},
                       "terms": [{"loss": "logits_kl", "weight": 0.5, "temperature": 4.0},
                                 {"loss": "kernel_matrix", "weight": 0.9, "tap": "bottleneck"}]}
    train(parse_config(data), tmp_path / "eager", device="cpu")
    data["train"]["compile"] = "aot_eager"
    train(parse_config(data), tmp_path / "compiled", device="cpu")
    eager = [r for r in RunFolder(tmp_path / "eager").metrics() if r["kind"] == "step"]
    compiled = [r for r in RunFolder(tmp_path / "compiled").metrics() if r["kind"] == "step"]
    assert len(eager) == len(compiled) == 4
    for a, b in zip(eager, compiled):
        for key in ("seg", "kd/logits_kl@logits", "kd/kernel_matrix@bottleneck", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    wa, wb = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
