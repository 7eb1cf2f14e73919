"""Teacher-output cache: same losses as live distillation, refusals, reuse."""

from __future__ import annotations

import json

import pytest
import torch

from medkd.config import parse_config
from medkd.data.augment import apply_ops
from medkd.distill.cache import TeacherCache
from medkd.errors import ConfigError
from medkd.models import FeatureTapper, create_model
from medkd.run import RunFolder
from medkd.train.trainer import train


@pytest.fixture(scope="module")
def teacher_run(synth2d, tmp_path_factory, make_run_config):
    run = tmp_path_factory.mktemp("cache") / "teacher"
    cfg = make_run_config(synth2d, name="teacher", model={"name": "unet_s2"},
                          train={"epochs": 1, "batch_size": 4, "progress": False})
    train(cfg, run, device="cpu")
    return run


def _kd_config(make_config, root, teacher, cache: bool, augment: dict):
    data = make_config(root, name="kd", train={"epochs": 1, "batch_size": 4, "progress": False})
    data["data"]["augment"] = augment
    data["distill"] = {"teacher": {"run": str(teacher)}, "cache": cache,
                       "terms": [{"loss": "logits_kl", "weight": 1.0, "temperature": 2.0},
                                 {"loss": "kernel_matrix", "weight": 0.9, "tap": "bottleneck"},
                                 {"loss": "attention_map", "weight": 0.5, "tap": "decoder"}]}
    return parse_config(data)


def test_cached_and_live_distillation_give_the_same_losses(synth2d, teacher_run, tmp_path, make_config):
    no_aug = {"flip": False, "rot90": False}
    train(_kd_config(make_config, synth2d, teacher_run, False, no_aug), tmp_path / "live", device="cpu")
    train(_kd_config(make_config, synth2d, teacher_run, True, no_aug), tmp_path / "cached", device="cpu")
    live = [r for r in RunFolder(tmp_path / "live").metrics() if r["kind"] == "step"]
    cached = [r for r in RunFolder(tmp_path / "cached").metrics() if r["kind"] == "step"]
    assert len(live) == len(cached) > 0
    for a, b in zip(live, cached):
        for key in (k for k in a if k.startswith("kd/")):
            assert b[key] == pytest.approx(a[key], rel=2e-3, abs=1e-4), key
    index = json.loads((tmp_path / "cached" / "teacher_cache" / "index.json").read_text())
    assert index["dtype"] == "float16" and set(index["taps"]) == {"logits", "bottleneck", "decoder"}
    assert index["bytes"] > 0


def test_cache_refuses_intensity_augmentation(synth2d, teacher_run, tmp_path, make_config):
    cfg = _kd_config(make_config, synth2d, teacher_run, True, {"flip": True, "intensity": 0.1})
    with pytest.raises(ConfigError, match="augment.intensity changes what the teacher sees"):
        train(cfg, tmp_path / "run", device="cpu")


def test_cache_reads_back_and_flips_apply_exactly(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("unet_s1", 1, 3, 2).eval()
    inputs = torch.randn(5, 1, 32, 32)
    messages = []
    cache = TeacherCache.build(tmp_path / "c", teacher, inputs, ["logits", "bottleneck"], batch_size=2,
                               shard_size=2, log=messages.append)
    assert "MiB (float16) in 3 shard(s)" in messages[0]
    with torch.no_grad(), FeatureTapper(teacher, ["logits", "bottleneck"]) as tapper:
        teacher(inputs[[4, 1]])
        live = dict(tapper.features)
    got = cache.get(torch.tensor([4, 1]))
    for tap in ("logits", "bottleneck"):
        assert torch.allclose(got[tap], live[tap], atol=2e-3, rtol=2e-3)
    ops = torch.tensor([[1, 0, 1], [0, 1, 3]])
    flipped = apply_ops(got["logits"], ops)
    assert torch.equal(flipped[0], torch.rot90(torch.flip(got["logits"][0], [1]), 1, dims=(1, 2)))
    # same teacher and inputs: reused, not rebuilt
    TeacherCache.build(tmp_path / "c", teacher, inputs, ["logits", "bottleneck"], log=messages.append)
    assert messages[-1].startswith("teacher cache: reusing")
    # different weights: rebuilt
    with torch.no_grad():
        next(teacher.parameters()).add_(1.0)
    TeacherCache.build(tmp_path / "c", teacher, inputs, ["logits", "bottleneck"], log=messages.append)
    assert "reusing" not in messages[-1]


def test_held_cache_reads_exactly_what_the_disk_path_reads(tmp_path):
    torch.manual_seed(1)
    teacher = create_model("unet_s1", 1, 3, 2).eval()
    inputs = torch.randn(5, 1, 32, 32)
    cache = TeacherCache.build(tmp_path / "c", teacher, inputs, ["logits", "bottleneck"], batch_size=2,
                               shard_size=2, log=lambda _: None)  # 3 shards, the last one short
    keys = torch.tensor([4, 0, 3, 3, 1, 2])  # every shard, a repeat, out of order
    disk = cache.get(keys)
    # too big for the limit: not held, reads keep coming from disk
    assert cache.hold(max_bytes=1) is False
    assert cache._held is None
    still_disk = cache.get(keys)
    assert all(torch.equal(still_disk[t], disk[t]) for t in disk)
    assert cache.hold() is True
    held = cache.get(keys)
    assert set(held) == set(disk) == {"logits", "bottleneck"}
    for tap in disk:
        assert held[tap].dtype == disk[tap].dtype == torch.float32
        assert torch.equal(held[tap], disk[tap]), tap
    # and single keys agree with a fresh disk-backed cache, row by row
    fresh = TeacherCache(tmp_path / "c")
    for k in range(5):
        one = torch.tensor([k])
        assert all(torch.equal(cache.get(one)[t], fresh.get(one)[t]) for t in disk)
