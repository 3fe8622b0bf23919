"""Residual networks (model.residual): the block x_(l+1) = skip(x_l) + alpha * branch(x_l), its
measurements (quantities.RESIDUAL) against a hand computation (the same modules applied by hand,
retain_grad() and numpy), and layers.csv: new columns for residual runs only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradlab.config.experiment import validate
from gradlab.vocab.errors import ConfigError
from gradlab.build.models import Block, ResidualBlock, build_model
from gradlab.measure.probe import Probe
from gradlab.vocab.quantities import LAYERS_COLUMNS, RESIDUAL, layers_columns
from probing import probed_rows

LOSS = torch.nn.functional.cross_entropy


def make(shape=(6,), classes=3, seed=0, **model):
    data = {"name": "images"} if model.get("kind") == "cnn" else {}
    cfg = validate({"model": {"depth": 3, "width": 8, "residual": True, **model}, "data": data})
    torch.manual_seed(seed)
    return build_model(cfg.model, shape, classes)


def batch(shape, n=16, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def measured(model, x, y, groups=("weights", "deltas", "activations", "updates")):
    probe = Probe(model, groups)
    return {row["layer"]: row for row in probed_rows(probe, model, x, y)}


def by_hand(model, x, y, alpha):
    """The forward pass written out from the model's own modules (relu, norm none), every stream,
    branch output and first pre-activation kept with retain_grad()."""
    streams, branches, zs = [], [], []
    h = x.flatten(1) if model.blocks[0].linear.weight.dim() == 2 else x
    for block in model.blocks:
        z = block.linear(h)
        z.retain_grad()
        r = torch.relu(z)
        for layer in block.inner:
            r = torch.relu(layer.linear(r))
        s = (h if block.skip is None else block.skip(h)) + alpha * r
        s.retain_grad()
        zs.append(z), branches.append(r), streams.append(s)
        h = s if block.pool is None else block.pool(s)
    logits = model.head(h if h.dim() == 2 else h.mean(dim=(2, 3)))
    LOSS(logits, y).backward()
    return streams, branches, zs


@pytest.mark.parametrize("kind, shape, model", [
    ("mlp", (6,), {"branch_depth": 2, "residual_scale": 0.5}),
    ("mlp", (8,), {"residual_scale": 1.0}),  # input size = width: no projection anywhere
    ("cnn", (2, 6, 6), {"branch_depth": 2, "residual_scale": 0.3, "pool_every": 2}),
])  # fmt: skip
def test_residual_quantities_match_a_hand_computation(kind, shape, model):
    net = make(shape, kind=kind, activation="relu", **model)
    x, y = batch(shape)
    rows = measured(net, x, y)
    streams, branches, zs = by_hand(make(shape, kind=kind, activation="relu", **model), x, y, model["residual_scale"])
    for layer, (s, r, z) in enumerate(zip(streams, branches, zs)):
        row = rows[layer]
        axes = (0, *range(2, s.dim()))
        sn, rn = s.detach().double().numpy(), r.detach().double().numpy()
        assert row["stream_delta_norm"] == pytest.approx(float(np.linalg.norm(s.grad.double().numpy())), rel=1e-5)
        assert row["delta_norm"] == pytest.approx(float(np.linalg.norm(z.grad.double().numpy())), rel=1e-5)
        assert row["spp_sq_mean"] == pytest.approx(float(np.mean(np.mean(sn, axis=axes) ** 2)), rel=1e-5)
        assert row["spp_var"] == pytest.approx(float(np.mean(np.var(sn, axis=axes))), rel=1e-5)
        assert row["spp_branch_var"] == pytest.approx(float(np.mean(np.var(rn, axis=axes))), rel=1e-5)
    head = rows[len(streams)]
    assert all(head[q] is None for q in RESIDUAL)


def test_projection_only_where_the_input_size_differs_from_the_width():
    net = make((6,))
    assert net.blocks[0].skip is not None and net.blocks[0].skip.weight.shape == (8, 6) and net.blocks[0].skip.bias is None
    assert all(block.skip is None for block in net.blocks[1:])
    assert make((8,)).blocks[0].skip is None
    cnn = make((2, 6, 6), kind="cnn")
    assert cnn.blocks[0].skip.weight.shape == (8, 2, 1, 1)
    # LeCun normal: variance 1/fan_in (checked on a wide projection)
    wide = make((400,), width=300)
    assert float(wide.blocks[0].skip.weight.detach().var()) == pytest.approx(1 / 400, rel=0.02)


def test_branch_depth_adds_layers_named_after_the_block():
    net = make((6,), branch_depth=3, norm="batchnorm")
    names = [name for name, _ in net.named_parameters() if name.startswith("blocks.1.")]
    assert names == ["blocks.1.linear.weight", "blocks.1.norm.weight", "blocks.1.norm.bias",
                     "blocks.1.inner.0.linear.weight", "blocks.1.inner.0.norm.weight", "blocks.1.inner.0.norm.bias",
                     "blocks.1.inner.1.linear.weight", "blocks.1.inner.1.norm.weight", "blocks.1.inner.1.norm.bias"]  # fmt: skip
    assert isinstance(net.blocks[1], ResidualBlock)


def test_residual_scale_zero_is_the_identity_at_init():
    net = make((8,), residual_scale=0.0)
    x, _ = batch((8,))
    h = x
    for block in net.blocks:
        h = block(h)
    assert torch.equal(h, x)


def test_plain_models_are_unchanged():
    cfg = validate({"model": {"depth": 3, "width": 8}})
    torch.manual_seed(0)
    net = build_model(cfg.model, (6,), 3)
    assert all(type(block) is Block for block in net.blocks)
    assert "residual" not in cfg.model.model_dump()  # the resolved config.yaml of a plain run is as before


def test_residual_keys_need_residual_true():
    with pytest.raises(ConfigError) as caught:
        validate({"model": {"branch_depth": 2}})
    assert caught.value.lines == ["model.branch_depth: branch_depth applies to residual: true only"]
    dumped = validate({"model": {"residual": True, "residual_scale": 0.1}}).model.model_dump()
    assert (dumped["residual"], dumped["branch_depth"], dumped["residual_scale"]) == (True, 1, 0.1)


def test_layers_csv_gains_the_residual_columns_only_for_residual_runs(tmp_path):
    from gradlab.orchestrate.runner import run_experiment

    def header(model):
        exp = validate({"name": "h", "device": "cpu", "data": {"dim": 8, "n_train": 64, "n_test": 16, "batch_size": 16},
                        "model": {"depth": 2, "width": 8, **model}, "train": {"steps": 2, "eval_every": 2}, "log": {"every": 1, "out": str(tmp_path)}})  # fmt: skip
        run_dir = run_experiment(exp).run_dir
        return (run_dir / "layers.csv").read_text().splitlines()[0].split(",")

    assert header({}) == LAYERS_COLUMNS
    assert header({"residual": True}) == [*LAYERS_COLUMNS, *RESIDUAL] == layers_columns(True)


def test_fixup_zeroes_each_branchs_last_layer_and_the_head_and_scales_the_rest():
    # Zhang et al. 2019: L = 4 branches of m = 2 layers -> scale L^(-1/(2m-2)) = 4^(-1/2) = 0.5
    wide = make((300,), depth=4, width=300, branch_depth=2, activation="relu", init={"weight": "fixup"})
    for block in wide.blocks:
        first, last = block.linears()
        assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0 and torch.count_nonzero(first.bias) == 0
    assert torch.count_nonzero(wide.head.weight) == 0 and torch.count_nonzero(wide.head.bias) == 0
    # He normal for ReLU (variance 2/fan_in) times 0.5² on the branch's first layer
    first = wide.blocks[2].linear.weight.detach()
    assert float(first.var()) == pytest.approx(2 / 300 * 0.25, rel=0.03)
    x, y = batch((300,))
    assert torch.count_nonzero(wide(x)) == 0  # the network starts as zero logits


@pytest.mark.parametrize("model", [{"residual": False}, {"branch_depth": 1}])
def test_fixup_needs_residual_branches_of_two_layers(model):
    with pytest.raises(ConfigError) as caught:
        validate({"model": {"residual": True, "init": {"weight": "fixup"}, **model}})
    assert caught.value.lines == ["model.init.weight: fixup initializes residual branches of two or more layers: set residual: true and branch_depth >= 2"]


def test_fixup_has_no_gradient_prediction():
    from gradlab.theory.predict import predict

    p = predict(validate({"model": {"residual": True, "branch_depth": 2, "init": {"weight": "fixup"}}}))
    assert p.theory == "none" and "fixup" in p.reason
