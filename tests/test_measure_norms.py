"""Exact norms (gradlab.measure.norms) against float64 references, and what they change end to end:
a vanishing gradient is measured as far down as float32 holds it, never as 0."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch

import gradlab
from gradlab.measure.norms import norm, norm_of, norm_rows, norms

SCALES = (1e-35, 1e-20, 1.0, 1e20)


def reference(t: torch.Tensor) -> float:
    return math.sqrt(sum(float(v) ** 2 for v in t.reshape(-1).tolist()))  # Python floats: float64


def relative_error(value: float, expected: float) -> float:
    return abs(value - expected) / expected


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cases = {f"entries {s:g}": torch.randn(2000, generator=g) * s for s in SCALES}
    cases["mixed 1e-30 .. 1e-20"] = torch.cat([torch.randn(500, generator=g) * 1e-30, torch.randn(50, generator=g) * 1e-20])
    cases["mixed 1 and 1e25"] = torch.cat([torch.randn(500, generator=g), torch.randn(3, generator=g) * 1e25])
    cases["subnormal entries"] = torch.full((100,), 1e-40)
    return cases


@pytest.mark.parametrize("name", list(tensors()))
def test_norm_matches_float64_at_every_scale(name):
    t = tensors()[name]
    expected = reference(t)
    assert relative_error(norm(t).item(), expected) <= 1e-6
    assert relative_error(norms([t, t.reshape(40, -1) if t.numel() % 40 == 0 else t])[0].item(), expected) <= 1e-6
    assert relative_error(norm_rows(torch.stack([t, 2 * t]))[1].item(), 2 * expected) <= 1e-6


def test_plain_float32_loses_what_the_kernel_keeps():
    small, large = torch.full((1000,), 1e-34), torch.full((1000,), 1e20)
    assert torch.linalg.vector_norm(small).item() == 0.0 and math.isinf(torch.linalg.vector_norm(large).item())
    assert relative_error(norm(small).item(), reference(small)) <= 1e-6
    assert relative_error(norm(large).item(), reference(large)) <= 1e-6


def test_a_norm_float32_holds_is_float32s_to_the_bit():
    """Where float32 is safe the kernel returns its number, so records that were right stay the same."""
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(64, 32, generator=g) * s for s in (1e-3, 1.0, 1e6)]
    assert [norm(t).item() for t in ts] == [torch.linalg.vector_norm(t).item() for t in ts]
    assert norms(ts).tolist() == [n.item() for n in torch._foreach_norm(ts)]
    parts = torch.stack(torch._foreach_norm(ts))
    assert norm_of(parts.double()).item() == torch.linalg.vector_norm(parts).item()


def test_zero_stays_zero_and_non_finite_stays_non_finite():
    assert norm(torch.zeros(10)).item() == 0.0
    assert norms([torch.zeros(3, 3), torch.ones(2)]).tolist() == [0.0, torch.tensor(2.0).sqrt().item()]
    assert math.isnan(norm(torch.tensor([1.0, math.nan])).item())
    assert math.isinf(norm(torch.tensor([1.0, math.inf])).item())


def test_half_precision():
    h = torch.full((1000,), 60000.0, dtype=torch.float16)  # a norm past float16's largest value
    assert relative_error(norm(h).item(), reference(h)) <= 1e-6
    b = torch.full((1000,), 1e-30, dtype=torch.bfloat16)  # float32's range: its squares underflow there
    assert relative_error(norms([b])[0].item(), reference(b)) <= 1e-6


def test_combined_norms_of_rescued_parts_are_float64():
    parts = torch.tensor([3e-30, 4e-30], dtype=torch.float64)
    assert relative_error(norm_of(parts).item(), 5e-30) <= 1e-12


# --------------------------------------------------------------------------------------------
# end to end: the 50-layer sigmoid network of configs/example.yaml
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_sigmoid(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep")
    return gradlab.run("configs/example.yaml", {"model.depth": 50, "train.steps": 1, "log.out": str(out), "device": "cpu"})


def test_a_vanishing_gradient_is_never_recorded_as_zero(deep_sigmoid):
    layers = deep_sigmoid.layers
    first = layers[layers["step"] == 0]
    assert (first["delta_norm"] > 0).all() and (first["weight_grad_norm"] > 0).all()
    assert first["delta_norm"].iloc[0] < 1e-25  # far below where float32 squares underflow (~1e-19)


def test_the_deep_sigmoid_follows_mean_field_theory(deep_sigmoid, invoke):
    result = invoke("compare", deep_sigmoid.dir, "--theory", "--step", "0", "--format", "csv")
    assert result.exit_code == 0, result.output
    [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    predicted = float(row["predicted_factor"])
    assert predicted == pytest.approx(0.235, abs=0.001)
    assert float(row["layer_factor@0"]) == pytest.approx(predicted, rel=0.01)
    assert row["departs"] == "no"


def test_a_dead_layer_stays_exactly_zero(tmp_path):
    run = gradlab.run("configs/example.yaml", {
        "model.depth": 4, "model.activation": "relu", "model.init.bias": {"name": "constant", "value": -100.0},
        "train.steps": 1, "log.out": str(tmp_path), "device": "cpu",
    })  # fmt: skip
    hidden = run.layers[(run.layers["step"] == 0) & (run.layers["kind"] == "hidden")]
    assert (hidden["weight_grad_norm"] == 0).all() and (hidden["delta_norm"] == 0).all()
