"""Issue 11's normalization and PReLU columns (quantities.NORM), each against an independent
computation: the parameters and their autograd gradients read directly, BatchNorm's running-vs-batch
distance from the normalized activations computed both ways by hand."""

from __future__ import annotations

import csv

import pytest
import torch

from gradlab.config.experiment import validate
from gradlab.build.models import build_model
from gradlab.measure.probe import Probe
from gradlab.vocab.quantities import LAYERS_COLUMNS, NORM, RESIDUAL, has_norm_columns, layers_columns
from probing import probed_rows

LOSS = torch.nn.functional.cross_entropy


def measured(model, x, y, groups=("weights", "activations")):
    probe = Probe(model, groups)
    return probed_rows(probe, model, x, y)


def build(kind="mlp", **model):
    data = {"name": "images"} if kind == "cnn" else {}
    cfg = validate({"data": data, "model": {"kind": kind, "depth": 3, "width": 8, **model}})
    torch.manual_seed(0)
    shape = (1, 8, 8) if kind == "cnn" else (6,)
    return build_model(cfg.model, shape, 3), shape


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", ["batchnorm", {"name": "batchnorm", "placement": "post"}, "layernorm", {"name": "groupnorm", "groups": 4}], ids=str)
def test_gamma_and_beta_norms_and_gradients_against_autograd(kind, norm):
    model, shape = build(kind, norm=norm)
    with torch.no_grad():  # not the initial ones and zeros, so that the norms say something
        for block in model.blocks:
            inner = getattr(block.norm, "inner", block.norm)
            inner.weight.uniform_(0.5, 1.5)
            inner.bias.uniform_(-0.5, 0.5)
    x, y = torch.randn(16, *shape), torch.randint(0, 3, (16,))
    rows = measured(model, x, y)
    twin, _ = build(kind, norm=norm)
    twin.load_state_dict(model.state_dict())
    LOSS(twin(x), y).backward()
    for row, block in zip(rows, twin.blocks):
        inner = getattr(block.norm, "inner", block.norm)
        assert row["norm_weight_norm"] == pytest.approx(inner.weight.detach().norm().item(), rel=1e-6)
        assert row["norm_bias_norm"] == pytest.approx(inner.bias.detach().norm().item(), rel=1e-6)
        assert row["norm_weight_grad_norm"] == pytest.approx(inner.weight.grad.norm().item(), rel=1e-5)
        assert row["norm_bias_grad_norm"] == pytest.approx(inner.bias.grad.norm().item(), rel=1e-5)
    head = rows[-1]
    assert all(head[q] is None for q in NORM)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bn_stat_distance_is_the_rms_gap_between_batch_and_running_normalization(kind):
    model, shape = build(kind, norm={"name": "batchnorm", "momentum": 0.3})
    x = torch.randn(16, *shape)
    y = torch.randint(0, 3, (16,))
    for _ in range(3):  # running statistics that are neither the initial ones nor this batch's
        model(torch.randn(16, *shape) * 2 + 1)
    # independent: each block's BatchNorm input, normalized with the batch's statistics and with the
    # running statistics as they are before this forward, by hand
    expected, h = [], x
    for block in model.blocks:
        z = block.linear(h).detach()
        dims = (0, 2, 3) if z.dim() == 4 else (0,)
        shape_c = (1, -1, 1, 1) if z.dim() == 4 else (1, -1)
        bn = block.norm
        mu, var = z.mean(dims), z.var(dims, unbiased=False)
        with_batch = (z - mu.reshape(shape_c)) / torch.sqrt(var + bn.eps).reshape(shape_c)
        with_running = (z - bn.running_mean.reshape(shape_c)) / torch.sqrt(bn.running_var + bn.eps).reshape(shape_c)
        expected.append((with_batch - with_running).double().pow(2).mean().sqrt().item())
        with torch.no_grad():
            h = block.act(torch.nn.functional.batch_norm(z, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, True, 0.0, bn.eps))
            if block.pool is not None:
                h = block.pool(h)
    rows = measured(model, x, y)
    assert [r["bn_stat_distance"] for r in rows[:-1]] == pytest.approx(expected, rel=1e-4)
    assert all(e > 0.1 for e in expected)
    # evaluation mode: nothing measured (BatchNorm uses its running statistics: no gap to speak of)
    model.eval()
    assert all(r["bn_stat_distance"] is None for r in measured(model, x, y))


def test_prelu_slope_mean():
    model, shape = build(activation={"name": "prelu", "shared": False})
    with torch.no_grad():
        model.blocks[1].act.weight.copy_(torch.linspace(0, 0.7, 8))
    rows = measured(model, torch.randn(4, *shape), torch.randint(0, 3, (4,)))
    assert rows[1]["prelu_slope_mean"] == pytest.approx(0.35, rel=1e-6)
    assert rows[0]["prelu_slope_mean"] == pytest.approx(0.25, rel=1e-6)
    assert rows[0]["norm_weight_norm"] is None  # no norm


def test_only_runs_with_a_norm_or_prelu_get_the_columns(tmp_path):
    assert layers_columns() == LAYERS_COLUMNS and layers_columns(True) == [*LAYERS_COLUMNS, *RESIDUAL]
    assert layers_columns(False, True) == [*LAYERS_COLUMNS, *NORM]
    assert not has_norm_columns(validate({}).model)
    assert has_norm_columns(validate({"model": {"norm": "lrn"}}).model) and has_norm_columns(validate({"model": {"activation": "prelu"}}).model)
    from gradlab.orchestrate.runner import run_experiment

    config = {"seed": 0, "device": "cpu", "data": {"name": "gaussian", "dim": 6, "classes": 3, "n_train": 32, "n_test": 16, "batch_size": 8},
              "model": {"depth": 2, "width": 8, "norm": "batchnorm"}, "train": {"steps": 2, "eval_every": 2},
              "log": {"every": 1, "out": str(tmp_path)}}  # fmt: skip
    run_dir = run_experiment(validate(config)).run_dir
    with open(run_dir / "layers.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == [*LAYERS_COLUMNS, *NORM]
    assert float(rows[0]["bn_stat_distance"]) > 0 and rows[0]["prelu_slope_mean"] == ""


def test_test_metrics_with_batch_statistics_against_a_copy_in_training_mode(tmp_path):
    import copy

    from gradlab.build.data import load_dataset
    from gradlab.orchestrate.train import evaluate, evaluate_with_batch_stats

    exp = validate({"seed": 0, "data": {"name": "gaussian", "dim": 6, "classes": 3, "n_train": 32, "n_test": 21, "batch_size": 8},
                    "model": {"depth": 2, "width": 8, "norm": "batchnorm", "dropout": 0.5}})  # fmt: skip
    data = load_dataset(exp.data, exp.seed)
    torch.manual_seed(0)
    model = build_model(exp.model, data.input_shape, data.classes)
    for _ in range(3):
        model(torch.randn(8, 6) * 3)  # running statistics away from the initial ones
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, accuracy = evaluate_with_batch_stats(model, data, LOSS, torch.device("cpu"), 8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics untouched
    # independent: a copy with every BatchNorm in training mode and no dropout, batch by batch
    twin = copy.deepcopy(model).eval()
    for m in twin.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.train()
    losses, right = [], 0
    for start in range(0, 21, 8):  # 8, 8, 5 examples
        x, y = data.x_test[start : start + 8], data.y_test[start : start + 8]
        logits = twin(x)
        losses.append(LOSS(logits, y).item() * len(y))
        right += (logits.argmax(1) == y).sum().item()
    assert loss == pytest.approx(sum(losses) / 21, rel=1e-6) and accuracy == right / 21
    running_loss, _ = evaluate(model, data, LOSS, torch.device("cpu"))
    assert abs(running_loss - loss) > 1e-3  # the two ways differ here


def test_a_run_writes_both_test_rows_on_demand(tmp_path):
    from gradlab.orchestrate.runner import run_experiment

    config = {"seed": 0, "device": "cpu", "data": {"name": "gaussian", "dim": 6, "classes": 3, "n_train": 32, "n_test": 16, "batch_size": 8},
              "model": {"depth": 2, "width": 8, "norm": "batchnorm"}, "train": {"steps": 2, "eval_every": 2},
              "log": {"every": 1, "out": str(tmp_path), "test_batch_stats": True}}  # fmt: skip
    run_dir = run_experiment(validate(config)).run_dir
    with open(run_dir / "metrics.csv", newline="") as file:
        splits = [(r["step"], r["split"]) for r in csv.DictReader(file) if r["split"] != "train"]
    assert splits == [("0", "test_batch_stats"), ("0", "test"), ("2", "test_batch_stats"), ("2", "test")]
    assert "test_batch_stats: true" in (run_dir / "config.yaml").read_text()
