"""The kernels of gradlab.measure.kernels: one for every declared quantity, each against a hand
computation."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.measure import kernels
from gradlab.vocab import quantities


def test_every_measured_quantity_has_one_kernel_and_every_kernel_a_quantity():
    layer = [q.name for q in (*quantities.LAYER_QUANTITIES, *quantities.RESIDUAL_QUANTITIES, *quantities.NORM_QUANTITIES,
                              *quantities.RECURRENT_LAYER_QUANTITIES, *quantities.NOISE_QUANTITIES, *quantities.SPECTRUM_QUANTITIES,
                              *quantities.COORDINATE_QUANTITIES)]  # fmt: skip
    assert sorted(kernels.KERNELS) == sorted(layer)
    assert sorted(kernels.TIME_STEP_KERNELS) == sorted(q.name for q in quantities.TIMESTEP_QUANTITIES)
    assert sorted(kernels.JACOBIAN_KERNELS) == sorted(q.name for q in quantities.JACOBIAN_QUANTITIES)


def as_dict(measured):
    return {m.quantity: m.value.item() / m.divisor for m in measured}


def test_delta_of_an_mlp_a_convolution_and_a_sequence():
    g = torch.Generator().manual_seed(0)
    mlp = torch.randn(8, 5, generator=g)
    values = as_dict(kernels.delta(mlp))
    assert values["delta_norm"] == pytest.approx(mlp.double().norm().item(), rel=1e-6)
    assert values["delta_rms"] == pytest.approx(values["delta_norm"] * math.sqrt(8), rel=1e-12)
    conv = torch.randn(4, 3, 5, 5, generator=g)  # (B, C, H, W): units are channels
    per_example = [math.sqrt(sum(conv[b, c].abs().sum().item() ** 2 for c in range(3))) for b in range(4)]
    # per example b its own loss l_b = B * (its share of L): its gradient is B times L's
    rms = math.sqrt(sum((4 * v) ** 2 for v in per_example) / 4)
    assert as_dict(kernels.delta(conv, kernels.UNITS_FIRST))["delta_rms"] == pytest.approx(rms, rel=1e-6)
    seq = conv.permute(0, 2, 3, 1)  # (B, positions, positions, features): units last
    assert as_dict(kernels.delta(seq, kernels.UNITS_LAST))["delta_rms"] == pytest.approx(rms, rel=1e-6)


def test_delta_through_time_counts_the_time_steps_as_positions():
    g = torch.Generator().manual_seed(2)
    steps = [[torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)] for _ in range(5)]  # gru-like: two parts
    step_norms = torch.stack([kernels.step_delta(torch.stack([p.double().norm() for p in parts])) for parts in steps])
    values = as_dict(kernels.delta_through_time(step_norms, steps))
    whole = torch.stack([torch.cat(parts, dim=1) for parts in steps])  # (T, B, units)
    assert values["delta_norm"] == pytest.approx(whole.double().norm().item(), rel=1e-6)
    per_example = 6 * whole.abs().sum(dim=0).double().norm(dim=1)  # (B,): sum over t, then over units; l_b = B * L's share
    assert values["delta_rms"] == pytest.approx(per_example.pow(2).mean().sqrt().item(), rel=1e-6)


def test_update_ratio_and_combined_norms():
    a, b = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert kernels.combined(a, [[0, 1]]).tolist() == [5.0]
    assert kernels.ratio(a, b).tolist() == [3.0, 4.0]
    tiny = torch.tensor([3e-30], dtype=torch.float64)
    assert kernels.ratio(tiny, torch.tensor([1e-30], dtype=torch.float64)).item() == pytest.approx(3.0, rel=1e-12)
