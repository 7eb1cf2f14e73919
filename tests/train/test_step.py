"""The shared training step (medkd.train.step), the optimiser set-up (medkd.train.optim), and that the trainer
runs every step through the one step function."""

from __future__ import annotations

import copy

import pytest
import torch

import medkd.train.trainer as trainer_mod
from medkd.config import parse_config
from medkd.distill.objective import DistillObjective
from medkd.distill.segmentation import create_seg_loss
from medkd.errors import ConfigError
from medkd.models import FeatureTapper, create_model
from medkd.run import RunFolder
from medkd.train.optim import build_optimisers, fusable, make_optimizer, step_scheduler
from medkd.train.step import StepContext, StepSettings, train_step
from medkd.train.trainer import train

KL = {"loss": "logits_kl", "weight": 0.5, "temperature": 2.0}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 1, 32, 32, generator=gen)
    return {"image": image, "label": torch.randint(0, 3, (2, 1, 32, 32), generator=gen), "teacher_image": image}


def _context(settings: StepSettings, distill: bool = False, lr: float = 1e-3, sgd: bool = False) -> StepContext:
    torch.manual_seed(0)
    student = create_model("unet_s1", 1, 3, 2)
    teacher = objective = s_tapper = t_tapper = None
    if distill:
        teacher = create_model("unet_s1", 1, 3, 2).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        objective = DistillObjective.from_config([dict(KL)])
        probe = torch.zeros(1, 3, 32, 32)
        objective.setup({"logits": probe}, {"logits": probe})
        s_tapper, t_tapper = FeatureTapper(student, ["logits"]), FeatureTapper(teacher, ["logits"])
    opt = torch.optim.SGD(student.parameters(), lr=lr) if sgd else torch.optim.Adam(student.parameters(), lr=lr)
    return StepContext(settings, student, student, teacher, objective, create_seg_loss("dice_ce", 3), s_tapper,
                       t_tapper, opt, None, torch.device("cpu"))


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_step_loss_is_the_weighted_sum_of_its_parts_and_only_the_student_learns():
    ctx = _context(StepSettings(seg_weight=2.0), distill=True)
    student0, teacher0 = _flat(ctx.student), _flat(ctx.teacher)
    logs = train_step(ctx, _batch(), n_labelled=2)
    assert set(logs) == {"seg", "kd/logits_kl@logits", "loss"}
    assert logs["loss"] == pytest.approx(2.0 * logs["seg"] + 0.5 * logs["kd/logits_kl@logits"], rel=1e-5)
    assert logs["kd/logits_kl@logits"] > 0  # two differently initialised networks disagree
    assert not torch.equal(_flat(ctx.student), student0)
    assert torch.equal(_flat(ctx.teacher), teacher0)


def test_zero_weighted_step_leaves_the_student_unchanged():
    ctx = _context(StepSettings(seg_weight=0.0))
    before = _flat(ctx.student)
    logs = train_step(ctx, _batch(), n_labelled=2)
    assert logs["loss"] == 0.0 and logs["seg"] > 0.5
    assert torch.equal(_flat(ctx.student), before)


def test_measured_step_logs_gradient_norms_and_takes_the_same_step():
    plain, measured = _context(StepSettings(), distill=True), _context(StepSettings(), distill=True)
    reference = copy.deepcopy(measured.student)
    logs_plain = train_step(plain, _batch(), 2)
    logs = train_step(measured, _batch(), 2, measure=True)
    assert set(logs) - set(logs_plain) == {"gn/seg", "gn/kd/logits_kl@logits"}
    assert logs["loss"] == pytest.approx(logs_plain["loss"], rel=1e-6)
    assert torch.allclose(_flat(measured.student), _flat(plain.student), atol=1e-7)
    # gn/seg is the norm of the weighted segmentation loss's gradient on the student's parameters
    batch = _batch()
    seg = create_seg_loss("dice_ce", 3)(reference(batch["image"]), batch["label"])
    grads = torch.autograd.grad(seg, list(reference.parameters()), allow_unused=True)
    norm = float(torch.cat([g.flatten() for g in grads if g is not None]).norm())
    assert logs["gn/seg"] == pytest.approx(norm, rel=1e-4)


def test_gradient_clipping_bounds_the_update():
    ctx = _context(StepSettings(grad_clip=1e-3), lr=1.0, sgd=True)
    before = _flat(ctx.student)
    train_step(ctx, _batch(), 2)
    assert float((_flat(ctx.student) - before).norm()) == pytest.approx(1e-3, rel=1e-3)


def test_step_settings_read_the_config(synth2d, make_config):
    data = make_config(synth2d, train={"seg_loss": {"name": "dice_ce", "weight": 0.7, "recon_weight": 0.3},
                                       "grad_clip": 2.5, "amp": "bf16"})
    assert StepSettings.from_config(parse_config(data)) == StepSettings(0.7, 0.3, "bf16", 2.5, None)


def _optim_config(synth2d, make_config, **train_cfg):
    return parse_config(make_config(synth2d, train={"epochs": 3, "batch_size": 4, **train_cfg}))


def test_build_optimisers_counts_steps_and_refuses_a_batch_larger_than_the_data(synth2d, make_config):
    params = [torch.nn.Parameter(torch.zeros(2))]
    opts = build_optimisers(_optim_config(synth2d, make_config), params, [], n_samples=30)
    assert opts.per_epoch == 7 and opts.ascent_opt is None and opts.scheduler is None
    assert build_optimisers(_optim_config(synth2d, make_config), params, [], 30, world_size=2).per_epoch == 3
    capped = build_optimisers(_optim_config(synth2d, make_config, max_steps_per_epoch=2), params, params, 30)
    assert capped.per_epoch == 2 and capped.ascent_opt.defaults["maximize"] is True
    with pytest.raises(ConfigError, match="train.batch_size 4: larger than the 3 training samples"):
        build_optimisers(_optim_config(synth2d, make_config), params, [], n_samples=3)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_updates_match_the_plain_ones_and_can_be_turned_off(synth2d, make_config, name):
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(4)]

    def run(fused: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        params = [torch.nn.Parameter(t.clone()) for t in start]
        cfg = _optim_config(synth2d, make_config, optimizer={"name": name, "lr": 0.01, "weight_decay": 1e-4,
                                                             "fused": fused})
        opt = make_optimizer(cfg, params)
        for step in range(5):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        return opt, [p.detach().clone() for p in params]

    fused, fused_params = run(True)
    plain, plain_params = run(False)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for a, b in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all((a - b).abs().min() > 1e-3 for a, b in zip(fused_params, start, strict=True))  # every entry moved


def test_rmsprop_and_parameters_on_two_devices_are_not_fused(synth2d, make_config):
    cfg = _optim_config(synth2d, make_config, optimizer={"name": "rmsprop"})
    assert not make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))]).defaults.get("fused")
    meta = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not fusable(meta) and fusable(meta[:1]) and not fusable([])


def test_plateau_schedulers_step_on_validation_only_and_others_on_steps(synth2d, make_config):
    params = [torch.nn.Parameter(torch.zeros(2))]
    plateau = build_optimisers(_optim_config(synth2d, make_config, scheduler={"name": "plateau", "patience": 1,
                                                                              "factor": 0.5}), params, [], 8)
    lr0 = plateau.optimizer.param_groups[0]["lr"]
    for _ in range(3):
        step_scheduler(plateau.scheduler)  # per-step calls: no effect
    assert plateau.optimizer.param_groups[0]["lr"] == lr0
    for _ in range(3):
        step_scheduler(plateau.scheduler, 0.5)  # two validations without improvement, patience 1
    assert plateau.optimizer.param_groups[0]["lr"] == pytest.approx(lr0 * 0.5)
    cosine = build_optimisers(_optim_config(synth2d, make_config, scheduler={"name": "cosine"}), params, [], 8)
    cosine.optimizer.step()  # (no gradients: nothing moves) the order torch expects before a scheduler step
    step_scheduler(cosine.scheduler, 0.5)  # validation calls: no effect
    assert cosine.optimizer.param_groups[0]["lr"] == lr0
    step_scheduler(cosine.scheduler)
    assert cosine.optimizer.param_groups[0]["lr"] < lr0


def test_the_trainer_runs_every_step_through_train_step(synth2d, tmp_path, make_run_config, monkeypatch):
    returned: list[float] = []
    real = trainer_mod.train_step

    def counted(*args, **kwargs):
        logs = real(*args, **kwargs)
        returned.append(logs["loss"])
        return logs

    monkeypatch.setattr(trainer_mod, "train_step", counted)
    cfg = make_run_config(synth2d, train={"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False})
    train(cfg, tmp_path / "run", device="cpu")
    steps = [r for r in RunFolder(tmp_path / "run").metrics() if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["loss"] for r in steps] == returned
