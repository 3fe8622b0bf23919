"""The definitions of the measured unit quantities, each against a hand count or an independent
computation: inactive, saturated and dead units per activation family, delta_rms and its
invariances, the pre-activation statistics, dact_mean and dact_factor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradlab.theory import activations
from gradlab.config.experiment import validate
from gradlab.build.models import build_model
from gradlab.measure.probe import Probe
from probing import probed_rows

LOSS = torch.nn.functional.cross_entropy


def measure(model, x, y, groups=("weights", "deltas", "activations"), threshold=0.05):
    probe = Probe(model, groups, threshold)
    return probed_rows(probe, model, x, y)


def identity_block(activation, width=4):
    """depth 1: the linear map is the identity, so the activation's input u is x exactly."""
    cfg = validate({"model": {"depth": 1, "width": width, "activation": activation}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (width,), 3)
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(torch.eye(width))
        model.blocks[0].linear.bias.zero_()
    return model


def row_for(activation, x, **kwargs):
    model = identity_block(activation, x.shape[1])
    return measure(model, x, torch.zeros(x.shape[0], dtype=torch.long), ("activations",), **kwargs)[0]


def test_leaky_relu_001_is_inactive_but_never_dead():
    # the old rule (|f'| < 5% of its maximum) counted every negative pair saturated and every unit
    # negative on the whole batch dead: here 3 of 4 units. Leaky ReLU passes 0.01 of the gradient.
    x = torch.tensor([[-1.0, -2.0, 3.0, -0.5], [-4.0, -1.0, -1.0, -0.1]])
    row = row_for({"name": "leaky_relu", "negative_slope": 0.01}, x)
    assert row["inactive_frac"] == pytest.approx(7 / 8)
    assert row["saturated_frac"] is None
    assert row["dead_frac"] == 0.0
    assert row["dact_mean"] == pytest.approx((1 + 7 * 0.01) / 8, rel=1e-6)


def test_relu_is_dead_where_off_on_the_whole_batch():
    x = torch.tensor([[-1.0, -2.0, 3.0, 0.0], [-4.0, 1.0, -1.0, 0.0]])
    row = row_for("relu", x)
    assert row["inactive_frac"] == pytest.approx(6 / 8)  # u <= 0, zero included
    assert row["dead_frac"] == pytest.approx(2 / 4)  # units 0 and 3
    assert row["dact_mean"] == pytest.approx(2 / 8)


def test_gelu_near_its_zero_crossing_is_not_saturated():
    # GELU'(u) crosses 0 at u = -0.7518: the old rule marked -0.9 < u < -0.63 saturated
    band = [-0.9, -0.8, -0.75, -0.7518, -0.7, -0.63, -1.5, -2.0]
    tail = [-2.4, -3.0, -5.0, -9.0]  # beyond -sqrt 2 and |GELU'| < 0.05 * 1.1289 (u < -2.2786)
    x = torch.tensor([band + tail])
    row = row_for("gelu", x)
    assert row["saturated_frac"] == pytest.approx(len(tail) / 12)
    assert row["inactive_frac"] == 1.0
    assert row["dead_frac"] == 0.0  # GELU' is zero only at isolated points
    # the hand count, from the closed form: in the tail region and below the threshold
    u = np.array(band + tail)
    df = activations.derivative("gelu", u)
    assert np.sum((u < -math.sqrt(2)) & (np.abs(df) < 0.05 * activations.max_derivative("gelu"))) == len(tail)


def test_silu_tail_starts_beyond_the_bottom_of_its_negative_lobe():
    # SiLU' crosses 0 at u = -1.2785 (not a tail); its tail at t = 0.05 is u < -3.9299
    x = torch.tensor([[-1.28, -1.0, -1.5, -2.4, -3.9, -4.0, -6.0, 0.5]])
    row = row_for("silu", x)
    assert row["saturated_frac"] == pytest.approx(2 / 8)
    assert row["inactive_frac"] == pytest.approx(7 / 8)


@pytest.mark.parametrize(
    "activation, x, saturated, inactive",
    [
        ("sigmoid", [5.0, 0.0, -4.0, -6.0, 4.5, 1.0, -4.5, 10.0], 5, None),  # |u| > 4.3605
        ("tanh", [2.2, -2.2, 2.1, -2.1, 0.0, 5.0, -0.5, 1.0], 3, None),  # |u| > 2.1783
        ("hardtanh", [1.0, -1.0, 0.99, -0.99, 2.0, 0.0, 0.5, -3.0], 4, None),  # u <= -1 or u >= 1
        ("softplus", [-3.0, -2.9, -2.95, 3.0, -10.0, 0.0, 1.0, -1.0], 3, 6),  # sigmoid(u) < 0.05: u < -2.944
        ("elu", [-3.0, -2.9, -3.1, 3.0, -10.0, 0.0, 1.0, -1.0], 3, 6),  # e^u < 0.05: u < -2.9957
        ("selu", [-3.0, -2.9, -3.1, 3.0, -10.0, 0.0, 1.0, -1.0], 3, 6),  # the same tail
    ],
)
def test_saturated_and_inactive_by_hand_count(activation, x, saturated, inactive):
    row = row_for(activation, torch.tensor([x]))
    assert row["saturated_frac"] == pytest.approx(saturated / 8)
    if inactive is None:
        assert row["inactive_frac"] is None
    else:
        assert row["inactive_frac"] == pytest.approx(inactive / 8)


def test_the_threshold_is_settable():
    x = torch.tensor([[2.0, 3.0, -3.0, 0.0]])  # sigmoid'(2) = 0.105 = 0.42 of 1/4; sigmoid'(3) = 0.045 = 0.18
    assert row_for("sigmoid", x)["saturated_frac"] == 0.0
    assert row_for("sigmoid", x, threshold=0.2)["saturated_frac"] == pytest.approx(2 / 4)
    assert row_for("sigmoid", x, threshold=0.5)["saturated_frac"] == pytest.approx(3 / 4)
    assert validate({"log": {"saturation_threshold": 0.2}}).log.saturation_threshold == 0.2
    assert "saturation_threshold" not in validate({}).to_yaml()  # the default is not written
    assert "saturation_threshold: 0.2" in validate({"log": {"saturation_threshold": 0.2}}).to_yaml()


def test_hardtanh_and_sigmoid_are_dead_only_where_no_gradient_passes():
    # hardtanh' = 0 outside (-1, 1): unit 0 is outside on both examples; sigmoid' = y(1 - y) is 0 in
    # float32 once y rounds to 1 (u = 20): that unit passes no gradient
    x = torch.tensor([[3.0, 0.0, 2.0, -20.0], [-3.0, 5.0, 0.5, 20.0]])
    assert row_for("hardtanh", x)["dead_frac"] == pytest.approx(2 / 4)  # units 0 and 3
    u = torch.tensor([[20.0, 0.0, 5.0], [30.0, 0.0, 6.0]])
    assert row_for("sigmoid", u)["dead_frac"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", {"name": "leaky_relu", "negative_slope": 0.1}, "selu", "softplus"], ids=str)
@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_preactivation_statistics_and_dact_against_autograd(activation, norm):
    cfg = validate({"model": {"depth": 3, "width": 16, "activation": activation, "norm": norm}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (6,), 3)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    rows = measure(model, x, y)
    # independent: run the blocks by hand, keep u, and differentiate the activation with autograd
    h = x
    for row, block, following in zip(rows, model.blocks, [*(b.linear for b in model.blocks[1:]), model.head]):
        z = block.linear(h)
        u = block.norm(z) if block.norm is not None else z
        leaf = u.detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(block.act(leaf).sum(), leaf)
        un = u.detach().double().numpy()
        assert row["preact_mean"] == pytest.approx(un.mean(), rel=1e-5, abs=1e-7)
        assert row["preact_std"] == pytest.approx(un.std(), rel=1e-5)
        assert row["dact_mean"] == pytest.approx(slope.abs().double().mean().item(), rel=1e-5)
        weight = following.weight.detach().double()
        rms_slope = slope.double().pow(2).mean().sqrt().item()
        assert row["dact_factor"] == pytest.approx(rms_slope * weight.norm().item() / weight.shape[0] ** 0.5, rel=1e-5)
        h = block(h)
    head = rows[-1]
    assert head["kind"] == "head" and head["dact_factor"] is None and head["preact_mean"] is None


# --------------------------------------------------------------------------------------------
# delta_rms
# --------------------------------------------------------------------------------------------


def test_delta_rms_of_an_mlp_is_delta_norm_times_sqrt_b_and_does_not_see_the_batch_size():
    cfg = validate({"model": {"depth": 3, "width": 16, "activation": "tanh"}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (6,), 3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    rows = measure(model, x, y, ("deltas",))
    for row in rows:
        assert row["delta_rms"] == pytest.approx(row["delta_norm"] * math.sqrt(8), rel=1e-6)
    # the same examples twice: the mean loss is the same, each example's share halves, so
    # delta_norm falls by sqrt 2 and delta_rms stays
    doubled = measure(model, x.repeat(2, 1), y.repeat(2), ("deltas",))
    for once, twice in zip(rows, doubled):
        assert twice["delta_rms"] == pytest.approx(once["delta_rms"], rel=1e-5)
        assert twice["delta_norm"] == pytest.approx(once["delta_norm"] / math.sqrt(2), rel=1e-5)


def test_delta_rms_does_not_see_the_image_size_under_global_average_pooling():
    # 1x1 convolutions on images constant over positions: every position holds the same values,
    # so the logits do not depend on the image size; each position's gradient is 1/P of the total
    cfg = validate({"data": {"name": "images"}, "model": {"kind": "cnn", "depth": 2, "width": 4, "kernel_size": 1, "activation": "tanh"}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 4, 4), 3)
    pixel, y = torch.randn(6, 1, 1, 1), torch.randint(0, 3, (6,))
    small = measure(model, pixel.expand(6, 1, 4, 4).contiguous(), y, ("deltas",))
    large = measure(model, pixel.expand(6, 1, 8, 8).contiguous(), y, ("deltas",))
    for a, b in zip(small, large):
        assert b["delta_rms"] == pytest.approx(a["delta_rms"], rel=1e-5)
    assert large[0]["delta_norm"] == pytest.approx(small[0]["delta_norm"] / 2, rel=1e-5)  # 1/sqrt(P)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_delta_rms_is_unchanged_by_2x2_pooling(pool):
    # identity activation: the gradient at z is the gradient at the pool's input; delta_rms of z
    # equals the same formula applied to the gradient of the pool's output (retain_grad)
    cfg = validate({"data": {"name": "images"}, "model": {"kind": "cnn", "depth": 2, "width": 4, "activation": "identity", "pool_every": 1, "pool": pool}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8), 3)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    rows = measure(model, x, y, ("deltas",))
    pooled = model.blocks[0](x)
    pooled.retain_grad()
    LOSS(model.head(model.blocks[1](pooled).mean(dim=(2, 3))), y).backward()
    g = pooled.grad.double()
    expected = math.sqrt(5) * g.abs().sum(dim=(2, 3)).norm().item()
    assert rows[0]["delta_rms"] == pytest.approx(expected, rel=1e-5)
    if pool == "avg":  # while delta_norm halves
        assert rows[0]["delta_norm"] == pytest.approx(g.norm().item() / 2, rel=1e-5)


def test_the_records_reference_states_each_activations_rule():
    from pathlib import Path

    # docs/records.md is generated from these (docs/hooks/records_reference.py); a stale copy fails here
    reference = (Path(__file__).resolve().parent.parent / "docs" / "records.md").read_text(encoding="utf-8")
    assert activations.regions_table() in reference
    assert activations.DEAD_RULE in reference
