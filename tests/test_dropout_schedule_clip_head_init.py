"""Training components: model.dropout, optim.schedule, model.init.head, and the gradient norm
after clipping, each against an independent computation (torch's own modules, schedulers, clipping)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from gradlab.build.components import schedule_factor
from gradlab.config.experiment import validate
from gradlab.build.models import build_model
from gradlab.orchestrate.runner import run_experiment


def test_dropout_after_the_activation_is_torchs_dropout_with_the_same_draws():
    cfg = validate({"model": {"depth": 2, "width": 16, "activation": "tanh", "dropout": 0.5}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (6,), 3)
    x = torch.randn(32, 6)
    torch.manual_seed(7)
    out = model.blocks[0](x)
    torch.manual_seed(7)
    expected = torch.nn.functional.dropout(torch.tanh(model.blocks[0].linear(x)), 0.5, training=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert 0.3 < (out == 0).float().mean().item() < 0.7
    model.eval()  # evaluation: no dropout
    torch.testing.assert_close(model.blocks[0](x), torch.tanh(model.blocks[0].linear(x)), rtol=0, atol=0)


def test_no_dropout_adds_no_module_and_writes_no_key():
    cfg = validate({"model": {"depth": 2, "width": 8}})
    model = build_model(cfg.model, (6,), 3)
    assert all(block.drop is None for block in model.blocks)
    assert "dropout" not in cfg.to_yaml() and "head" not in cfg.to_yaml() and "schedule" not in cfg.to_yaml()
    assert "dropout: 0.25" in validate({"model": {"dropout": 0.25}}).to_yaml()
    with pytest.raises(Exception, match="dropout"):
        validate({"model": {"dropout": 1.0}})


@pytest.mark.parametrize(
    "schedule, scheduler",
    [
        ({"name": "step", "step_size": 3, "gamma": 0.5}, lambda opt: torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)),
        ({"name": "exponential", "gamma": 0.9}, lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)),
        ({"name": "cosine", "steps": 10, "min_factor": 0.1}, lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10, eta_min=0.01)),
        ({"name": "warmup", "warmup_steps": 4}, lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 0.25, 1.0, total_iters=3)),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else "",
)
def test_schedules_match_pytorchs_schedulers(schedule, scheduler):
    spec = validate({"optim": {"name": "sgd", "lr": 0.1, "schedule": schedule}}).optim["schedule"]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = scheduler(opt)
    for k in range(10):
        assert 0.1 * schedule_factor(spec, k, 100) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), k
        opt.step()
        reference.step()


def test_cosine_without_steps_spans_the_run():
    spec = validate({"optim": {"name": "sgd", "schedule": "cosine"}}).optim["schedule"]
    assert schedule_factor(spec, 0, 50) == 1.0 and schedule_factor(spec, 25, 50) == pytest.approx(0.5) and schedule_factor(spec, 50, 50) == 0.0


def test_a_schedule_error_names_its_key():
    from gradlab.vocab.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate({"optim": {"name": "sgd", "schedule": {"name": "step", "gama": 0.5}}})
    assert info.value.lines == ["optim.schedule.gama: unknown parameter of schedule 'step' (did you mean 'gamma'?); allowed: step_size, gamma"]


def run(tmp_path, **sections):
    config = {
        "name": "opts", "seed": 0, "device": "cpu",
        "data": {"name": "gaussian", "dim": 8, "classes": 3, "n_train": 64, "n_test": 32, "batch_size": 16},
        "model": {"depth": 3, "width": 8},
        "train": {"steps": 6, "eval_every": 3}, "log": {"every": 1, "out": str(tmp_path)},
    }  # fmt: skip
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    run_dir = run_experiment(validate(config)).run_dir
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_the_lr_column_follows_the_schedule(tmp_path):
    rows = run(tmp_path, optim={"name": "sgd", "lr": 0.2, "schedule": {"name": "step", "step_size": 2, "gamma": 0.5}})
    train = {int(r["step"]): float(r["lr"]) for r in rows if r["split"] == "train"}
    # the row of step s: the lr of update s (k = s); the last step (no update) shows the next one's
    assert train == {s: 0.2 * 0.5 ** (s // 2) for s in range(7)}
    test = {int(r["step"]): float(r["lr"]) for r in rows if r["split"] == "test"}
    assert test == {0: 0.2, 3: 0.1, 6: 0.025}


def test_clipped_grad_norm_is_what_clipping_leaves(tmp_path):
    rows = run(tmp_path, optim={"name": "sgd", "lr": 0.1, "grad_clip": 0.3})
    train = [r for r in rows if r["split"] == "train"]
    assert any(float(r["grad_norm"]) > 0.3 for r in train) and any(float(r["grad_norm"]) < 0.3 for r in train)  # both cases
    for row in train:
        norm = float(row["grad_norm"])
        # independent: a gradient of that norm, clipped by torch
        g = torch.full((4,), norm / 2, dtype=torch.float64, requires_grad=True)
        g.grad = g.detach().clone()
        torch.nn.utils.clip_grad_norm_([g], 0.3)
        assert float(row["clipped_grad_norm"]) == pytest.approx(g.grad.norm().item(), rel=1e-12)
    unclipped = run(tmp_path / "b")
    assert all(r["clipped_grad_norm"] == "" for r in unclipped)


def test_the_head_has_its_own_initializer():
    cfg = validate({"model": {"depth": 2, "width": 16, "init": {"weight": {"name": "constant", "value": 0.1}, "head": {"name": "normal", "std": 0.5}}}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (6,), 3)
    assert torch.all(model.blocks[1].linear.weight == 0.1)
    head = model.head.weight.detach()
    assert head.std().item() == pytest.approx(0.5, rel=0.35) and len(torch.unique(head)) == head.numel()
    # with the constant head every hidden unit of the last block gets the same gradient; with its own init not
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = model.blocks[1].linear.weight.grad
    assert not torch.allclose(grads[0], grads[1])
    symmetric = build_model(validate({"model": {"depth": 2, "width": 16, "init": {"weight": {"name": "constant", "value": 0.1}}}}).model, (6,), 3)
    torch.nn.functional.cross_entropy(symmetric(x), y).backward()
    same = symmetric.blocks[1].linear.weight.grad
    assert torch.allclose(same[0], same[1]) and math.isfinite(same.sum().item())
