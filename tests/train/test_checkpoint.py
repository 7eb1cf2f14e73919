from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import medkd.train.checkpoint as mod
from medkd.io import atomic_write, atomic_write_text
from medkd.train.checkpoint import (
    flatten_state,
    load_checkpoint,
    save_best,
    save_checkpoint,
    unflatten_state,
)
from medkd.weights import load_model_weights


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def test_flatten_roundtrip_optimizer_state():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "best": {"val_dice": float("-inf"), "epoch": None}, "nan": float("nan")}
    tensors, skeleton = flatten_state(state)
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    opt2 = torch.optim.Adam(_model().parameters(), lr=0.01)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][0][k]))
    assert back["best"]["val_dice"] == float("-inf") and back["nan"] != back["nan"]


def test_save_and_load_checkpoint_is_safetensors_and_keeps_one(tmp_path):
    model = _model()
    ckpt = tmp_path / "checkpoints"
    for epoch in (1, 2, 3):
        save_checkpoint(ckpt, epoch, model.state_dict(), {}, {"epoch": epoch, "rng": torch.get_rng_state()})
    assert json.loads((ckpt / "last.json").read_text()) == {"epoch": 3, "dir": "e0003"}
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["e0003"]
    weights = load_file(str(ckpt / "e0003" / "model.safetensors"))  # plain safetensors, no pickle
    assert set(weights) == set(model.state_dict())
    model_state, extras, state = load_checkpoint(ckpt)
    assert state["epoch"] == 3 and torch.equal(state["rng"], torch.get_rng_state())
    assert extras == {}


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
    model = _model()
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(ckpt, 1, model.state_dict(), {}, {"epoch": 1})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt, 2, model.state_dict(), {}, {"epoch": 2})
    # last.json was never switched: resume still finds epoch 1
    assert load_checkpoint(ckpt)[2]["epoch"] == 1


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def failing_writer(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_best_weights_load_into_a_fresh_network(tmp_path):
    model = _model()
    save_best(tmp_path, model.state_dict(), {"epoch": 1, "val_dice": 0.5})
    fresh = _model()
    torch.nn.init.zeros_(fresh[0].weight)
    load_model_weights(fresh, tmp_path / "best.safetensors")
    assert torch.equal(fresh[0].weight, model[0].weight)
