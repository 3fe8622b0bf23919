"""Every measured column against an independent computation (autograd, hand counts, numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradlab.theory import activations
from gradlab.config.experiment import validate
from gradlab.build.models import build_model
from gradlab.measure.probe import Probe

LOSS = torch.nn.functional.cross_entropy


def make_model(seed=0, input_dim=6, classes=3, **model):
    data = {"name": "images"} if model.get("kind") == "cnn" else {}
    cfg = validate({"model": {"depth": 3, "width": 8, **model}, "data": data})
    torch.manual_seed(seed)
    shape = (1, 8, 8) if cfg.model.kind == "cnn" else (input_dim,)
    return build_model(cfg.model, shape, classes), shape


def measure(model, x, y, groups=("weights", "deltas", "activations", "updates"), optimizer=None):
    """One logged step through the probe API, exactly as train.Trainer.logged_step uses it."""
    probe = Probe(model, groups)
    model.zero_grad(set_to_none=True)
    probe.attach()
    logits = model(x)  # the model taps its sites, the logits among them
    loss = LOSS(logits, y)
    loss.backward()
    probe.detach()
    values, extras = probe.measure(loss, logits, y).fetch()
    if optimizer is not None:
        probe.snapshot_weights()
        optimizer.step()
        values.update(probe.update_ratios())
    return probe.rows(0, values), extras


def batch(shape, n=16, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


NORMS = ["none", "batchnorm", {"name": "batchnorm", "placement": "post"}, "layernorm", {"name": "groupnorm", "groups": 4}, "lrn"]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_weight_and_bias_grad_norms_match_autograd(kind, norm):
    model, shape = make_model(kind=kind, norm=norm, activation="tanh")
    x, y = batch(shape)
    rows, extras = measure(model, x, y)
    # independent: a fresh backward on an identical copy, reading p.grad
    twin, _ = make_model(kind=kind, norm=norm, activation="tanh")
    twin.load_state_dict(model.state_dict())
    LOSS(twin(x), y).backward()
    layers = [b.linear for b in twin.blocks] + [twin.head]
    for row, layer in zip(rows, layers):
        assert row["weight_norm"] == pytest.approx(layer.weight.detach().norm().item(), rel=1e-6)
        assert row["weight_grad_norm"] == pytest.approx(layer.weight.grad.norm().item(), rel=1e-6)
        if layer.bias is None:
            assert row["bias_grad_norm"] is None
        else:
            assert row["bias_grad_norm"] == pytest.approx(layer.bias.grad.norm().item(), rel=1e-6)
    all_grads = torch.cat([p.grad.flatten() for p in twin.parameters() if p.grad is not None])
    assert extras["grad_norm"] == pytest.approx(all_grads.norm().item(), rel=1e-6)


def test_batchnorm_pre_drops_the_redundant_bias():
    model, _ = make_model(norm="batchnorm")
    assert all(b.linear.bias is None for b in model.blocks)
    post, _ = make_model(norm={"name": "batchnorm", "placement": "post"})
    assert all(b.linear.bias is not None for b in post.blocks)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_delta_norm_matches_retain_grad_on_the_pre_activation(kind, norm):
    model, shape = make_model(kind=kind, norm=norm, activation="elu")
    x, y = batch(shape)
    rows, _ = measure(model, x, y, groups=("deltas",))
    # independent: rebuild the forward pass by hand from the submodules, retain_grad on z
    zs = []
    h = x if kind == "cnn" else x.flatten(1)
    for block in model.blocks:
        z = block.linear(h)
        z.retain_grad()
        zs.append(z)
        if block.norm is not None and block.norm_first:
            h = block.act(block.norm(z))
        elif block.norm is not None:
            h = block.norm(block.act(z))
        else:
            h = block.act(z)
    if kind == "cnn":
        h = h.mean(dim=(2, 3))
    logits = model.head(h)
    logits.retain_grad()
    model.zero_grad()
    LOSS(logits, y).backward()
    expected = [z.grad.norm().item() for z in zs] + [logits.grad.norm().item()]
    assert [r["delta_norm"] for r in rows] == pytest.approx(expected, rel=1e-5)
    assert all(r["weight_norm"] is None and r["act_mean"] is None for r in rows)


def identity_relu_model(activation):
    """depth 1, width 4, input 4: the linear map is the identity, so u = x exactly."""
    model, _ = make_model(input_dim=4, depth=1, width=4, activation=activation)
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(torch.eye(4))
        model.blocks[0].linear.bias.zero_()
    return model


def test_saturated_and_dead_fractions_by_hand_count_relu():
    model = identity_relu_model("relu")
    x = torch.tensor([[1.0, -1.0, 2.0, -3.0], [2.0, -1.0, -1.0, -0.5], [0.5, -2.0, 3.0, -1.0]])
    rows, _ = measure(model, x, torch.tensor([0, 1, 2]), groups=("activations",))
    # relu' = 0 for u <= 0: inactive pairs are the non-positive entries: 2 + 3 + 2 = 7 of 12;
    # units 1 and 3 are non-positive on every example: 2 of 4 units dead; ReLU has no saturating tail
    assert rows[0]["inactive_frac"] == pytest.approx(7 / 12)
    assert rows[0]["saturated_frac"] is None
    assert rows[0]["dead_frac"] == pytest.approx(2 / 4)
    assert rows[0]["dact_mean"] == pytest.approx(5 / 12)
    out = x.clamp(min=0).numpy()
    assert rows[0]["act_mean"] == pytest.approx(float(np.mean(out)), rel=1e-6)
    assert rows[0]["act_std"] == pytest.approx(float(np.std(out)), rel=1e-6)
    assert rows[1]["kind"] == "head" and rows[1]["saturated_frac"] is None and rows[1]["act_mean"] is None


def test_saturated_fraction_by_hand_count_sigmoid():
    # sigmoid'(u) < 5% of 1/4  <=>  |u| > 4.3605 (sigma(1-sigma) = 0.0125)
    model = identity_relu_model("sigmoid")
    x = torch.tensor([[5.0, 0.0, -4.0, -6.0], [4.5, 1.0, -4.5, 10.0]])
    rows, _ = measure(model, x, torch.tensor([0, 1]), groups=("activations",))
    assert rows[0]["saturated_frac"] == pytest.approx(5 / 8)  # 5, -6, 4.5, -4.5, 10
    assert rows[0]["inactive_frac"] is None  # sigmoid has no off side
    # dead: sigmoid' = y(1 - y) is exactly 0 in float32 only where y rounds to 1 (u = 10 does not: no unit dead)
    assert rows[0]["dead_frac"] == 0.0


def test_leaky_relu_with_large_slope_never_saturates():
    model = identity_relu_model({"name": "leaky_relu", "negative_slope": 0.2})
    x = -torch.ones(3, 4)
    rows, _ = measure(model, x, torch.tensor([0, 1, 2]), groups=("activations",))
    assert rows[0]["inactive_frac"] == 1.0 and rows[0]["saturated_frac"] is None and rows[0]["dead_frac"] == 0.0


def test_dead_channels_in_a_cnn_by_hand_count():
    model, _ = make_model(kind="cnn", depth=1, width=2, kernel_size=1, activation="relu")
    with torch.no_grad():
        conv = model.blocks[0].linear
        conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        conv.bias.zero_()
    x = torch.rand(5, 1, 8, 8) + 0.1  # positive: channel 0 alive everywhere, channel 1 dead everywhere
    x[0, 0, 0, 0] = -1.0  # one position where channel 0 is saturated and channel 1 is not
    rows, _ = measure(model, x, torch.zeros(5, dtype=torch.long), groups=("activations",))
    assert rows[0]["inactive_frac"] == pytest.approx((5 * 64 - 1 + 1) / (2 * 5 * 64))
    assert rows[0]["dead_frac"] == pytest.approx(0.0)  # channel 1 is alive at one position
    x[0, 0, 0, 0] = 1.0
    rows, _ = measure(model, x, torch.zeros(5, dtype=torch.long), groups=("activations",))
    assert rows[0]["dead_frac"] == pytest.approx(0.5)


@pytest.mark.parametrize("optim", [{"name": "sgd", "lr": 0.5, "momentum": 0.9}, {"name": "adam", "lr": 0.01}])
def test_update_ratio_against_weights_saved_before_and_after(optim):
    from gradlab.build.components import build_optimizer

    model, shape = make_model(norm="batchnorm", activation="relu")
    optimizer = build_optimizer(validate({"optim": optim}).optim, model.parameters())
    x, y = batch(shape)
    layers = [b.linear for b in model.blocks] + [model.head]
    before = [m.weight.detach().clone() for m in layers]
    rows, _ = measure(model, x, y, optimizer=optimizer)
    for row, m, w0 in zip(rows, layers, before):
        expected = ((m.weight.detach() - w0).norm() / w0.norm()).item()
        assert expected > 0
        assert row["update_ratio"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_prelu_is_dead_only_where_its_learned_slope_is_zero(shared):
    model = identity_relu_model({"name": "prelu", "init": 0.25, "shared": shared})
    with torch.no_grad():
        model.blocks[0].act.weight.copy_(torch.tensor([0.01, 0.0, 0.02, 3.0]) if not shared else torch.tensor([0.25]))
    x = -torch.ones(2, 4)  # every pair on the negative side: act' = the unit's slope a
    rows, _ = measure(model, x, torch.tensor([0, 1]), groups=("activations",))
    # inactive whatever the slope; dead only where the slope is exactly 0 (unit 1, per-unit slopes)
    assert rows[0]["inactive_frac"] == 1.0 and rows[0]["saturated_frac"] is None
    assert rows[0]["dead_frac"] == pytest.approx(0.0 if shared else 1 / 4)
    slopes = [0.25] * 4 if shared else [0.01, 0.0, 0.02, 3.0]
    assert rows[0]["dact_mean"] == pytest.approx(sum(slopes) / 4, rel=1e-6)


def profile_at_init(depth, activation, weight_init, width=256, seed=0, n=128):
    cfg = validate({"model": {"depth": depth, "width": width, "activation": activation,
                              "init": {"weight": weight_init, "bias": "zeros"}}})  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(cfg.model, (width,), 10)
    x, y = batch((width,), n=n, classes=10, seed=seed + 1)
    rows, _ = measure(model, x, y, groups=("deltas",))
    deltas = [r["delta_norm"] for r in rows if r["kind"] == "hidden"]
    gain = deltas[0] / deltas[-1]
    return gain, gain ** (1 / (depth - 1))


def test_kaiming_keeps_a_30_layer_relu_stack_within_2x():
    gain, _ = profile_at_init(30, "relu", "kaiming_normal")
    assert 0.5 < gain < 2.0


def test_xavier_loses_sqrt2_per_layer_in_a_relu_stack():
    _, factor = profile_at_init(30, "relu", {"name": "xavier_normal", "gain": 1.0})
    assert factor == pytest.approx(1 / math.sqrt(2), rel=0.1)


def test_sigmoid_with_lecun_init_loses_more_than_3x_per_layer():
    _, factor = profile_at_init(10, "sigmoid", "lecun_normal")
    assert factor < 1 / 3


@pytest.mark.parametrize("activation", ["relu", "elu", "tanh"])
def test_orthogonal_and_xavier_with_auto_gain_build(activation):
    cfg = validate({"model": {"depth": 3, "width": 64, "activation": activation,
                              "init": {"weight": {"name": "orthogonal", "gain": "auto"}}}})  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model, (64,), 10)
    gain = activations.gain(cfg.model.activation)
    w = model.blocks[1].linear.weight.detach().double()
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(64, dtype=torch.float64), atol=1e-5, rtol=0)
    cfg = validate({"model": {"depth": 3, "width": 512, "activation": activation,
                              "init": {"weight": {"name": "xavier_normal", "gain": "auto"}}}})  # fmt: skip
    model = build_model(cfg.model, (512,), 10)
    std = model.blocks[1].linear.weight.detach().std().item()
    assert std == pytest.approx(gain * math.sqrt(2 / (512 + 512)), rel=0.01)
