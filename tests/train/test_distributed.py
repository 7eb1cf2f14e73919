"""DDP on CPU (gloo): 2 processes via torchrun give the same weights as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medkd.config import parse_config
from medkd.train.trainer import train


def _last_weights(run):
    folder = json.loads((run / "checkpoints" / "last.json").read_text())["dir"]
    return load_file(str(run / "checkpoints" / folder / "model.safetensors"))


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(synth2d, tmp_path, make_config):
    # instance norm (no batch statistics) so the per-rank batches see exactly what one process sees
    base = make_config(synth2d, name="ddp", model={"name": "monai.BasicUNet",
                                                   "kwargs": {"features": [8, 8, 16, 16, 32, 8]}},
                       train={"epochs": 2, "batch_size": 2, "progress": False,
                              "optimizer": {"name": "sgd", "lr": 0.05}})
    base["data"]["augment"] = {"flip": False, "rot90": False}
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(base))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "medkd",
         "train", str(config), "--out", str(tmp_path / "ddp"), "--device", "cpu", "--no-evaluate"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    single = dict(base)
    single["train"] = {**base["train"], "batch_size": 4}  # the same global batch in one process
    train(parse_config(single), tmp_path / "single", device="cpu")
    a, b = _last_weights(tmp_path / "ddp"), _last_weights(tmp_path / "single")
    assert set(a) == set(b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, worst
    # rank 0 alone logged: one line per step, not two
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if x["kind"] == "step"]
    assert steps == sorted(set(steps))
    assert torch.isfinite(torch.tensor([x["loss"] for x in lines if x["kind"] == "step"])).all()
