"""DistillObjective (built from the studies' presets) and the segmentation losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceLoss, FocalLoss

from medkd.distill import STUDY_OBJECTIVES, DistillObjective, create_seg_loss, study_objective
from medkd.errors import ConfigError


def feats(nd, c, seed, chans, sizes, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(2, ch, *(n,) * nd, generator=g) for k, ch, n in zip(
        ("logits", "encoder", "bottleneck", "decoder"), (c, *chans), sizes)}
    if grad:
        for v in out.values():
            v.requires_grad_(True)
    return out


STUDY_SETUPS = {
    # study: (spatial dims, classes, student channels, teacher channels, student sizes, teacher sizes)
    "paper_a": (2, 2, (16, 64, 16), (64, 512, 64), (32, 16, 4, 32), (32, 16, 2, 32)),
    "thesis_b": (2, 1, (16, 64, 16), (64, 1024, 64), (32, 16, 8, 32), (32, 16, 2, 32)),
    "kdnet": (3, 4, (8, 32, 8), (8, 32, 8), (16, 8, 2, 16), (16, 8, 2, 16)),
}


@pytest.mark.parametrize("study", sorted(STUDY_OBJECTIVES))
def test_study_objectives_build_setup_forward(study):
    cfg = study_objective(study)
    assert set(cfg) == {"seg_loss", "seg_weight", "terms"}
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg  # plain data, ready for experiment YAMLs
    nd, c, sch, tch, ssz, tsz = STUDY_SETUPS[study]
    s = feats(nd, c, 0, sch, ssz, grad=True)
    t = feats(nd, c, 1, tch, tsz, grad=True)
    obj = DistillObjective.from_config(cfg["terms"])
    assert set(obj.student_taps()) <= set(s) and set(obj.teacher_taps()) <= set(t)
    obj.setup(s, t)
    label = torch.randint(0, max(c, 2), (2, 1, *(ssz[0],) * nd))
    total, parts = obj(s, t, {"label": label})
    assert len(parts) == len(cfg["terms"]) and all(torch.isfinite(v) for v in parts.values())
    expected = sum(spec["weight"] * parts[name] for spec, name in zip(cfg["terms"], obj.names))
    assert total.item() == pytest.approx(float(expected), rel=1e-5)
    total.backward()
    assert all(v.grad is None for v in t.values())
    for p in obj.descent_parameters() + obj.ascent_parameters():
        assert p.grad is not None
    # seg loss of the study runs on the student logits
    seg = create_seg_loss(cfg["seg_loss"], c)
    assert torch.isfinite(seg(s["logits"].detach(), label))


def test_study_term_names_and_weights():
    obj = DistillObjective.from_config(STUDY_OBJECTIVES["paper_a"]["terms"])
    assert obj.names == ["logits_kl@logits", "kernel_matrix@bottleneck", "adaptive_affinity@logits"]
    assert obj.weights == [0.2, 0.9, 0.9]
    b = DistillObjective.from_config(STUDY_OBJECTIVES["thesis_b"]["terms"])
    assert b.names == ["contrastive@encoder", "contrastive@bottleneck", "contrastive@decoder", "logits_kl@logits"]
    assert b.weights == [0.1, 0.2, 0.1, 0.2] and b.losses[3].temperature == 4.0
    assert STUDY_OBJECTIVES["thesis_b"]["seg_weight"] == 0.4 and STUDY_OBJECTIVES["kdnet"]["seg_weight"] == 0.25
    c = DistillObjective.from_config(STUDY_OBJECTIVES["kdnet"]["terms"])
    assert c.weights == [0.75, 10.0] and c.losses[0].temperature == 5.0


def test_objective_state_dict_and_parameter_split():
    nd, c, sch, tch, ssz, tsz = STUDY_SETUPS["paper_a"]
    s, t = feats(nd, c, 0, sch, ssz), feats(nd, c, 1, tch, tsz)
    obj = DistillObjective.from_config(STUDY_OBJECTIVES["paper_a"]["terms"])
    obj.setup(s, t)
    keys = set(obj.state_dict())
    assert {"losses.1.adapter.conv.weight", "losses.2.class_weights"} <= keys
    asc = {id(p) for p in obj.ascent_parameters()}
    desc = {id(p) for p in obj.descent_parameters()}
    assert len(asc) == 1 and not asc & desc and asc | desc == {id(p) for p in obj.parameters()}
    other = DistillObjective.from_config(STUDY_OBJECTIVES["paper_a"]["terms"])
    other.setup(s, t)
    other.load_state_dict(obj.state_dict())
    assert other(s, t)[0].item() == pytest.approx(obj(s, t)[0].item(), rel=1e-6)


def test_objective_names_unique_and_spec_errors():
    obj = DistillObjective([{"loss": "feature_mse", "tap": "decoder"}, {"loss": "feature_mse", "tap": "decoder"},
                            {"loss": "logits_kl", "name": "pmd"}])
    assert obj.names == ["feature_mse@decoder", "feature_mse@decoder#2", "pmd"] and obj.weights[0] == 1.0
    assert obj.student_taps() == ("decoder", "logits")
    with pytest.raises(ConfigError, match="'loss'"):
        DistillObjective([{"weight": 1.0}])
    with pytest.raises(ConfigError, match="weight"):
        DistillObjective([{"loss": "logits_kl", "weight": "high"}])
    with pytest.raises(ConfigError, match="logits_kl"):
        DistillObjective([{"loss": "logit_kl"}])
    with pytest.raises(ConfigError, match="temprature"):
        DistillObjective([{"loss": "logits_kl", "temprature": 2}])
    with pytest.raises(ConfigError, match="list"):
        DistillObjective({"loss": "logits_kl"})
    with pytest.raises(ConfigError, match="paper_a"):
        study_objective("paper-a")
    empty = DistillObjective([])
    total, parts = empty({"logits": torch.zeros(1)}, {}, {})
    assert total.item() == 0.0 and parts == {}


# ----------------------------------------------------------------------------------------------------------------
# segmentation losses
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", ["dice_ce", "focal_dice", "dice", "dice_bce"])
def test_seg_losses_run_and_reach_minimum(name, c, nd):
    g = torch.Generator().manual_seed(c + nd)
    label = torch.randint(0, max(c, 2), (2, 1, *(6,) * nd), generator=g)
    logits = torch.randn(2, c, *(6,) * nd, generator=g, requires_grad=True)
    loss = create_seg_loss(name, c)
    value = loss(logits, label)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and logits.grad.abs().sum() > 0
    # a confident correct prediction is (near) the minimum 0
    if c == 1:
        perfect = (label.float() * 2 - 1) * 30
    else:
        perfect = F.one_hot(label[:, 0], c).movedim(-1, 1).float() * 30
    assert loss(perfect, label).item() < 1e-3 < value.item()
    assert loss(perfect, label[:, 0]).item() < 1e-3  # (B, *spatial) labels are accepted too


def test_seg_loss_golden_compositions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    label = torch.randint(0, 3, (2, 1, 5, 5), generator=g)
    onehot = F.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    dice = DiceLoss(softmax=True, to_onehot_y=True)(logits, label)
    focal = FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True)(logits, label)
    assert create_seg_loss("focal_dice", 3)(logits, label).item() == pytest.approx((0.5 * focal + 0.5 * dice).item())
    bce = F.binary_cross_entropy(logits.softmax(1), onehot)
    assert create_seg_loss("dice_bce", 3)(logits, label).item() == pytest.approx((dice + bce).item(), rel=1e-5)
    b_logits = logits[:, :1]
    b_label = (label > 0).long()
    ref = DiceLoss(sigmoid=True)(b_logits, b_label.float()) + F.binary_cross_entropy_with_logits(
        b_logits, b_label.float())
    assert create_seg_loss("dice_bce", 1)(b_logits, b_label).item() == pytest.approx(ref.item(), rel=1e-5)
    # hand case: Dice of a perfect binary mask is 0, BCE of logit 0 is ln 2
    zero = torch.zeros(1, 1, 2, 2)
    half = create_seg_loss("dice_bce", 1)(zero, torch.ones(1, 1, 2, 2, dtype=torch.long))
    assert half.item() == pytest.approx((1 - (2 * 2 + 1e-5) / (2 + 4 + 1e-5)) + 0.693147, rel=1e-4)


def test_seg_loss_errors():
    with pytest.raises(ConfigError, match="dice_bce"):
        create_seg_loss("dice_bec", 2)
    with pytest.raises(ConfigError, match="gamma"):
        create_seg_loss("dice", 2, gamma=2.0)
    loss = create_seg_loss("dice", 2)
    with pytest.raises(ConfigError, match="channels"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="label shape"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 3, 4, dtype=torch.long))
