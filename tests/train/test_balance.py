"""Per-term gradient norms, automatic term balancing, and the validation-collapse warning."""

from __future__ import annotations

import json
import math

import pytest
import torch

import medkd.train.trainer as trainer_mod
from medkd.config import BalanceConfig
from medkd.train.balance import TermBalancer, gradient_norms
from medkd.train.validation import validation_collapse


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def _separate_norm(part_fn, params) -> float:
    for p in params:
        p.grad = None
    part_fn().backward()
    squares = [p.grad.pow(2).sum() for p in params if p.grad is not None]
    for p in params:
        p.grad = None
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


# ------------------------------------------------------------------------------------------------------------
# gradient_norms


def test_gradient_norms_equal_separate_backward_passes():
    net = _net()
    other = torch.nn.Linear(4, 2)  # not among the measured parameters
    x = torch.randn(5, 4)
    params = list(net.parameters())

    def seg():
        return (net(x) ** 2).mean()

    def kd():
        return 7.0 * net(x)[:, 1].sum() + 0.1 * (net(x) - other(x)).abs().mean()

    def elsewhere():
        return other(x).pow(2).sum()

    expected = {"seg": _separate_norm(seg, params), "kd/a": _separate_norm(kd, params)}
    assert expected["seg"] > 0 and expected["kd/a"] > 0 and expected["seg"] != pytest.approx(expected["kd/a"])
    out = net(x)
    parts = {"seg": (out ** 2).mean(), "kd/a": 7.0 * out[:, 1].sum() + 0.1 * (out - other(x)).abs().mean(),
             "unreached": other(x).pow(2).sum(), "constant": torch.tensor(3.0)}
    norms = gradient_norms(parts, params)
    assert set(norms) == set(parts)
    assert norms["seg"] == pytest.approx(expected["seg"], rel=1e-5)
    assert norms["kd/a"] == pytest.approx(expected["kd/a"], rel=1e-5)
    assert norms["unreached"] == 0.0 and norms["constant"] == 0.0
    assert _separate_norm(elsewhere, list(other.parameters())) > 0  # it has a gradient, just not on params
    # measuring accumulates nothing in .grad, and the graph is kept for the step's own backward
    assert all(p.grad is None for p in params)
    total = sum(parts.values())
    total.backward()
    manual = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    out2 = net(x)
    (((out2 ** 2).mean()) + 7.0 * out2[:, 1].sum() + 0.1 * (out2 - other(x)).abs().mean()).backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(manual, params))


def test_gradient_norms_skip_frozen_parameters():
    net = _net()
    net[0].weight.requires_grad_(False)
    x = torch.randn(3, 4)
    trainable = [p for p in net.parameters() if p.requires_grad]
    expected = _separate_norm(lambda: net(x).pow(2).sum(), trainable)
    assert gradient_norms({"seg": net(x).pow(2).sum()}, list(net.parameters()))["seg"] == pytest.approx(expected,
                                                                                                          rel=1e-5)


# ------------------------------------------------------------------------------------------------------------
# TermBalancer


def _balancer(mode: str, target: float = 0.5, every: int = 10, momentum: float = 0.9, names=("a", "b")):
    return TermBalancer(BalanceConfig(target=target, mode=mode, every=every, momentum=momentum), list(names))


def test_cap_mode_scales_large_terms_down_and_never_up():
    bal = _balancer("cap")
    assert bal.scales == {"a": 1.0, "b": 1.0}
    bal.update(2.0, {"a": 10.0, "b": 0.1})
    assert bal.scales["a"] == pytest.approx(0.5 * 2.0 / 10.0)  # 0.1: a's gradient now 0.5 x seg's
    assert bal.scales["b"] == 1.0  # ratio 10 would amplify; cap never does
    bal.update(2.0, {"a": 1.0, "b": 0.1})
    assert bal.scales["a"] == pytest.approx(0.9 * 0.1 + 0.1 * 1.0)  # EMA toward the new ratio (capped at 1)
    assert bal.scales["b"] == 1.0


def test_cap_mode_stays_at_or_below_one():
    bal = _balancer("cap", momentum=0.3)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        seg, a, b = (10 ** (4 * torch.rand(3, generator=g) - 2)).tolist()
        bal.update(seg, {"a": a, "b": b})
        assert 0 < bal.scales["a"] <= 1.0 and 0 < bal.scales["b"] <= 1.0


def test_match_mode_first_update_exact_then_moving_average():
    bal = _balancer("match", target=0.25, momentum=0.8)
    bal.update(4.0, {"a": 10.0, "b": 0.5})
    assert bal.scales["a"] == pytest.approx(0.25 * 4.0 / 10.0)
    assert bal.scales["b"] == pytest.approx(0.25 * 4.0 / 0.5)  # 2.0: match amplifies small terms
    bal.update(4.0, {"a": 2.0, "b": 4.0})
    assert bal.scales["a"] == pytest.approx(0.8 * 0.1 + 0.2 * 0.5)
    assert bal.scales["b"] == pytest.approx(0.8 * 2.0 + 0.2 * 0.25)


def test_term_without_gradient_keeps_its_scale():
    bal = _balancer("match", momentum=0.5)
    bal.update(1.0, {"a": 0.0, "b": 1.0})
    assert bal.scales["a"] == 1.0 and bal.scales["b"] == pytest.approx(0.5)
    bal.update(1.0, {"a": 5.0, "b": 0.0})
    bal_scale_a = bal.scales["a"]
    assert bal.scales["b"] == pytest.approx(0.5)  # unchanged by the zero norm
    for bad in (0.0, float("nan"), float("inf")):
        bal.update(1.0, {"a": bad})
        assert bal.scales["a"] == bal_scale_a
    bal.update(float("nan"), {"a": 1.0, "b": 1.0})  # a non-finite seg norm changes nothing either
    assert bal.scales == {"a": bal_scale_a, "b": pytest.approx(0.5)}


def test_state_dict_round_trip_continues_the_average():
    bal = _balancer("match", momentum=0.7)
    bal.update(3.0, {"a": 6.0, "b": 1.0})
    state = bal.state_dict()
    fresh = _balancer("match", momentum=0.7)
    fresh.load_state_dict(state)
    assert fresh.scales == bal.scales
    # the restored balancer is past its first measurement: the next update averages, like the original's
    bal.update(3.0, {"a": 1.0, "b": 2.0})
    fresh.update(3.0, {"a": 1.0, "b": 2.0})
    assert fresh.scales == bal.scales
    assert fresh.scales["a"] == pytest.approx(0.7 * 0.25 + 0.3 * 1.5)
    # the saved state is a snapshot, not a view of the live scales
    assert state["scales"]["a"] == pytest.approx(0.25)
    # a never-measured state restores as never measured: the first update is taken as is
    unmeasured = _balancer("match")
    unmeasured.load_state_dict(_balancer("match").state_dict())
    unmeasured.update(3.0, {"a": 1.0})
    assert unmeasured.scales["a"] == pytest.approx(1.5)


def test_due_every_n_steps_from_zero():
    bal = _balancer("cap", every=3)
    assert [s for s in range(10) if bal.due(s)] == [0, 3, 6, 9]
    assert all(_balancer("cap", every=1).due(s) for s in range(5))


# ------------------------------------------------------------------------------------------------------------
# validation_collapse


def test_validation_collapse_flags_a_sustained_drop():
    msg = validation_collapse(0.8, [0.5, 0.8, 0.7, 0.72, 0.68])
    assert isinstance(msg, str) and "\n" not in msg
    assert "0.8000" in msg and "0.7000" in msg  # best and the mean of the last 3


def test_validation_collapse_quiet_otherwise():
    assert validation_collapse(0.8, [0.5, 0.8, 0.77, 0.76, 0.78]) is None  # 0.03 below the best
    assert validation_collapse(0.8, [0.8, 0.7, 0.7, 0.7]) is not None  # 4 validations: enough
    assert validation_collapse(0.8, [0.8, 0.3, 0.3]) is None  # 3 validations: too little history
    assert validation_collapse(0.8, []) is None
    assert validation_collapse(None, [0.9, 0.1, 0.1, 0.1]) is None
    assert validation_collapse(math.nan, [0.9, 0.1, 0.1, 0.1]) is None
    # only the last 3 count: an early dip that recovered is no collapse
    assert validation_collapse(0.8, [0.8, 0.1, 0.1, 0.1, 0.79, 0.8, 0.78]) is None


def test_validation_collapse_ignores_a_run_that_is_still_improving():
    assert validation_collapse(0.8, [0.5, 0.6, 0.7, 0.8]) is None
    assert validation_collapse(0.8, [0.2, 0.4, 0.6, 0.8]) is None


@pytest.mark.parametrize(("scores", "flagged"), [([0.8, 0.5, 0.5, 0.5], True), ([0.5, 0.6, 0.7, 0.8], False)])
def test_train_summary_records_a_collapse_from_the_run_history(synth2d, make_run_config, tmp_path, monkeypatch,
                                                               scores, flagged):
    given = iter(scores)
    monkeypatch.setattr(trainer_mod, "validate", lambda *args, **kwargs: next(given))
    cfg = make_run_config(synth2d, train={"epochs": 4, "batch_size": 4, "val_every": 1, "threads": 1,
                                          "max_steps_per_epoch": 1})
    trainer_mod.train(cfg, tmp_path / "run", device="cpu")
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert (summary["val_collapse"] is not None) == flagged
    assert summary["best"]["val_dice"] == max(scores)
