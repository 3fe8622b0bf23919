"""Whole runs: the records against an independent replay, BatchNorm evaluation by hand,
determinism, divergence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradlab.build.components import build_optimizer
from gradlab.config.experiment import validate
from gradlab.build.data import Batches, load_dataset
from gradlab.build.models import build_model
from gradlab.records.layout import LAYERS_COLUMNS, METRICS_COLUMNS
from gradlab.orchestrate.runner import resolve_device, run_experiment
from gradlab.orchestrate.train import Trainer


def small(tmp_path, **sections):
    base = {
        "name": "t",
        "data": {"name": "gaussian", "dim": 12, "classes": 4, "n_train": 256, "n_test": 96, "batch_size": 32},
        "model": {"depth": 4, "width": 16, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"steps": 20, "eval_every": 10},
        "log": {"every": 5, "out": str(tmp_path)},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return validate(base)


def tables(run_dir):
    return pd.read_csv(run_dir / "layers.csv"), pd.read_csv(run_dir / "metrics.csv")


def test_a_run_writes_its_records(tmp_path):
    exp = small(tmp_path)
    result = run_experiment(exp)
    assert result.status == "completed" and result.steps_done == 20
    assert result.run_dir.parent == tmp_path / "t"
    layers, metrics = tables(result.run_dir)
    assert list(layers.columns) == LAYERS_COLUMNS and list(metrics.columns) == METRICS_COLUMNS
    assert sorted(layers["step"].unique()) == [0, 5, 10, 15, 20]
    assert list(layers[layers.step == 0]["name"]) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]
    assert list(layers[layers.step == 0]["kind"]) == ["hidden"] * 4 + ["head"]
    train = metrics[metrics.split == "train"]
    assert list(train.step) == [0, 5, 10, 15, 20]
    assert list(metrics[metrics.split == "test"].step) == [0, 10, 20]
    assert metrics[metrics.split == "test"]["grad_norm"].isna().all()
    # the last measurement is taken without an update: no update_ratio there, and only there
    assert layers[layers.step == 20]["update_ratio"].isna().all()
    assert layers[layers.step < 20]["update_ratio"].notna().all()
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["steps_done"] == 20 and meta["seed"] == 0
    assert meta["device"] == "cpu" and meta["versions"]["torch"] == torch.__version__
    assert validate(__import__("yaml").safe_load((result.run_dir / "config.yaml").read_text())) == exp


def test_step_zero_matches_an_independent_replay(tmp_path):
    """Rebuild the network and the first batch from the seed and compute every column by hand."""
    exp = small(tmp_path, model={"activation": "relu", "bias": True}, optim={"name": "sgd", "lr": 0.05, "momentum": 0.0})
    result = run_experiment(exp)
    layers, metrics = tables(result.run_dir)
    row0 = layers[layers.step == 0].reset_index(drop=True)

    data = load_dataset(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, data.input_shape, data.classes)
    x, y = next(Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed))
    h, zs, outs = x, [], []
    for block in model.blocks:
        z = block.linear(h)
        z.retain_grad()
        h = torch.relu(z)
        zs.append(z)
        outs.append(h.detach().numpy())
    logits = model.head(h)
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    linears = [b.linear for b in model.blocks] + [model.head]
    before = [m.weight.detach().clone() for m in linears]
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad  # plain SGD, by hand

    for i, m in enumerate(linears):
        r = row0.iloc[i]
        assert r.weight_norm == pytest.approx(before[i].norm().item(), rel=1e-6)
        assert r.weight_grad_norm == pytest.approx(m.weight.grad.norm().item(), rel=1e-6)
        assert r.bias_grad_norm == pytest.approx(m.bias.grad.norm().item(), rel=1e-6)
        delta = (zs[i] if i < len(zs) else logits).grad.norm().item()
        assert r.delta_norm == pytest.approx(delta, rel=1e-6)
        assert r.update_ratio == pytest.approx(((m.weight.detach() - before[i]).norm() / before[i].norm()).item(), rel=1e-5)
        if i < len(zs):
            out = outs[i]
            assert r.act_mean == pytest.approx(out.mean(), rel=1e-5)
            assert r.act_std == pytest.approx(out.std(), rel=1e-5)
            z = zs[i].detach().numpy()
            assert r.inactive_frac == pytest.approx(np.mean(z <= 0)) and math.isnan(r.saturated_frac)  # relu: no tail
            assert r.dead_frac == pytest.approx(np.mean((z <= 0).all(axis=0)))
            assert r.preact_mean == pytest.approx(z.mean(), rel=1e-5) and r.dact_mean == pytest.approx(np.mean(z > 0))
            assert r.delta_rms == pytest.approx(r.delta_norm * math.sqrt(x.shape[0]), rel=1e-12)
        else:
            assert math.isnan(r.act_mean) and math.isnan(r.dead_frac)

    train0 = metrics[(metrics.step == 0) & (metrics.split == "train")].iloc[0]
    assert train0.loss == pytest.approx(loss.item(), rel=1e-6)
    assert train0.accuracy == pytest.approx((logits.argmax(1) == y).float().mean().item())
    all_grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert train0.grad_norm == pytest.approx(all_grads.norm().item(), rel=1e-6)
    assert train0.lr == 0.05


def test_test_metrics_are_the_whole_test_set_in_eval_mode(tmp_path):
    exp = small(tmp_path, loss="mse", train={"steps": 0, "eval_every": 10})
    result = run_experiment(exp)
    _, metrics = tables(result.run_dir)
    data = load_dataset(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, data.input_shape, data.classes).eval()
    with torch.no_grad():
        logits = model(data.x_test)
    onehot = torch.nn.functional.one_hot(data.y_test, 4).float()
    expected_loss = ((logits - onehot) ** 2).sum(1).mean().item()  # summed over units, mean over batch
    test = metrics[metrics.split == "test"].iloc[0]
    assert test.loss == pytest.approx(expected_loss, rel=1e-5)
    assert test.accuracy == pytest.approx((logits.argmax(1) == data.y_test).float().mean().item())


def test_bce_loss_is_summed_over_units_and_averaged_over_the_batch():
    from gradlab.build.components import get_loss

    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    y = torch.tensor([1, 0])
    p = torch.sigmoid(logits)
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    by_hand = -(t * p.log() + (1 - t) * (1 - p).log()).sum(1).mean()
    assert get_loss("bce")(logits, y).item() == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batchnorm_evaluation_uses_the_running_statistics(tmp_path, kind):
    sections = {"model": {"kind": kind, "depth": 2, "width": 6, "activation": "tanh", "norm": {"name": "batchnorm", "momentum": 0.3}}}
    if kind == "cnn":
        sections["data"] = {"name": "images", "n_train": 64, "n_test": 16, "batch_size": 16}
    exp = small(tmp_path, **sections)
    data = load_dataset(exp.data, exp.seed)
    trainer = Trainer(exp, torch.device("cpu"), data)
    batches = Batches(data.x_train, data.y_train, exp.data.batch_size, 0)
    for _ in range(5):
        trainer.plain_step(*next(batches))
    # by hand: (z - running_mean) / sqrt(running_var + eps) * gamma + beta, per unit/channel
    model = trainer.model
    h = data.x_test
    with torch.no_grad():
        for block in model.blocks:
            z = block.linear(h if kind == "cnn" else h.flatten(1))
            bn = block.norm
            shape = (1, -1, 1, 1) if kind == "cnn" else (1, -1)
            assert bn.num_batches_tracked.item() == 5
            normed = (z - bn.running_mean.reshape(shape)) / torch.sqrt(bn.running_var.reshape(shape) + bn.eps)
            h = torch.tanh(normed * bn.weight.reshape(shape) + bn.bias.reshape(shape))
        if kind == "cnn":
            h = h.mean(dim=(2, 3))
        logits = model.head(h)
    expected = torch.nn.functional.cross_entropy(logits, data.y_test).item()
    from gradlab.orchestrate.train import evaluate

    loss, _ = evaluate(model, data, trainer.loss_fn, torch.device("cpu"))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert model.training  # evaluation puts the model back in training mode


@pytest.mark.parametrize(
    "sections",
    [
        {"model": {"activation": "rrelu", "norm": "batchnorm"}},
        {"model": {"activation": {"name": "prelu", "shared": False}, "norm": {"name": "batchnorm", "placement": "post"}}},
        {"model": {"kind": "cnn", "depth": 3, "width": 4, "norm": "batchnorm", "activation": "rrelu", "pool_every": 2},
         "data": {"name": "images", "n_train": 64, "n_test": 32, "batch_size": 16}},
    ],
    ids=["mlp-rrelu-bn", "mlp-prelu-bn-post", "cnn-rrelu-bn"],
)
def test_same_config_and_seed_give_identical_records(tmp_path, sections):
    runs = [run_experiment(small(tmp_path, **sections)).run_dir for _ in range(2)]
    assert runs[0] != runs[1]
    texts = []
    for run in runs:
        layers, metrics = tables(run)
        texts.append((layers.to_csv(index=False), metrics.drop(columns="time_s").to_csv(index=False)))
    assert texts[0] == texts[1]
    other = run_experiment(small(tmp_path, seed=1, **sections)).run_dir
    assert tables(other)[0].to_csv(index=False) != texts[0][0]


def test_an_exploding_run_is_recorded_as_diverged(tmp_path):
    exp = small(tmp_path, model={"depth": 6, "init": {"weight": {"name": "normal", "std": 3.0}, "bias": "zeros"}},
                optim={"name": "sgd", "lr": 10.0}, train={"steps": 50, "eval_every": 10}, log={"every": 1})  # fmt: skip
    result = run_experiment(exp)
    assert result.status == "diverged"
    d = result.divergence
    assert set(d) == {"step", "layer", "name", "tensor"} and 0 < d["step"] < 50
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["status"] == "diverged" and meta["divergence"] == d and meta["steps_done"] == d["step"]
    layers, metrics = tables(result.run_dir)
    # every logged row before the divergence is there, whole and finite
    assert sorted(layers.step.unique()) == list(range(d["step"]))
    hidden = layers[layers.kind == "hidden"].drop(columns=["name", "kind", "saturated_frac"])  # relu: no saturating tail, empty
    assert np.isfinite(hidden.to_numpy(dtype=float)).all()
    # loss_scale and skipped_update are watch's, under a GradScaler: empty in gradlab run's records
    filled = metrics.drop(columns=["split", "grad_norm", "clipped_grad_norm", "loss_scale", "skipped_update"], errors="ignore")
    assert np.isfinite(filled.to_numpy(dtype=float)).all()

    clipped = run_experiment(small(tmp_path, model=exp.model.model_dump(), train={"steps": 50, "eval_every": 10},
                                   optim={"name": "sgd", "lr": 10.0, "grad_clip": 1.0}))  # fmt: skip
    assert clipped.status == "completed"


def test_locate_non_finite_names_the_first_bad_tensor():
    from gradlab.measure.locate import locate_non_finite

    exp = validate({"model": {"depth": 3, "width": 4}})
    torch.manual_seed(0)
    model = build_model(exp.model, (5,), 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    loss_fn = torch.nn.functional.cross_entropy
    assert locate_non_finite(model, x, y, loss_fn)["tensor"].startswith("none found")
    with torch.no_grad():
        model.blocks[1].linear.weight[0, 0] = float("nan")
    assert locate_non_finite(model, x, y, loss_fn) == {"layer": 1, "name": "blocks.1", "tensor": "blocks.1.linear.weight (parameter)"}
    with torch.no_grad():
        model.blocks[1].linear.weight[0, 0] = 0.0
    x[0, 0] = float("inf")
    assert locate_non_finite(model, x, y, loss_fn) == {"layer": 0, "name": "blocks.0", "tensor": "blocks.0.linear output"}


def test_probe_groups_choose_the_columns(tmp_path):
    result = run_experiment(small(tmp_path, log={"probes": ["deltas"]}))
    layers, _ = tables(result.run_dir)
    assert layers["delta_norm"].notna().all()
    for column in ["weight_norm", "weight_grad_norm", "bias_grad_norm", "act_mean", "saturated_frac", "update_ratio"]:
        assert layers[column].isna().all(), column


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        from gradlab.vocab.errors import ConfigError

        with pytest.raises(ConfigError, match="device: cuda asked for"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")
def test_a_run_on_cuda_matches_the_cpu_profile(tmp_path):
    cpu = run_experiment(small(tmp_path, device="cpu", log={"probes": ["deltas"]}, train={"steps": 0}))
    gpu = run_experiment(small(tmp_path, device="cuda", log={"probes": ["deltas"]}, train={"steps": 0}))
    a, b = tables(cpu.run_dir)[0], tables(gpu.run_dir)[0]
    np.testing.assert_allclose(a.delta_norm, b.delta_norm, rtol=1e-4)


def test_optimizers_build_with_their_parameters():
    params = [torch.nn.Parameter(torch.zeros(2))]
    for spec in [{"name": "sgd", "momentum": 0.9, "nesterov": True}, {"name": "adam", "beta1": 0.8}, {"name": "adamw"}, {"name": "rmsprop", "alpha": 0.9}]:
        optimizer = build_optimizer(validate({"optim": spec}).optim, params)
        group = optimizer.param_groups[0]
        if spec["name"] == "adam":
            assert group["betas"] == (0.8, 0.999)
        if spec["name"] == "adamw":
            assert group["weight_decay"] == 0.01
