"""theory/jacobian.py: the free-probability m1 and s2 of the input-output Jacobian against their
closed forms (Pennington et al. 2017) and against a numpy Monte Carlo of wide random products
(exact traces of the product matrix: no estimator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradlab.theory import jacobian as theory
from gradlab.theory.predict import NumpyActivation

RELU = NumpyActivation("relu")
LINEAR = NumpyActivation("identity")
TANH = NumpyActivation("tanh")


def draw(rows: int, cols: int, family: str, sigma_w2: float, rng: np.random.Generator) -> np.ndarray:
    """A weight with entry variance sigma_w2 / cols: i.i.d. Gaussian, or a Haar orthogonal matrix scaled."""
    if family == "iid":
        return rng.standard_normal((rows, cols)) * math.sqrt(sigma_w2 / cols)
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))  # Haar: entries of variance 1 / max(rows, cols)
    return (q if rows >= cols else q.T) * math.sqrt(sigma_w2 * max(rows, cols) / cols)


def monte_carlo(depth, width, n_in, family, sigma_w2, derivative, seed=0, samples=2):
    """m1 and s2 of every block's J_l = D_l W_l ... D_0 W_0 of random products (no biases,
    x ~ N(0, I)): m1 = ||J||_F^2 / n_in and m2 = ||J^T J||_F^2 / n_in exactly, averaged over
    `samples` draws, then s2 = m2 / m1^2 - 1."""
    rng = np.random.default_rng(seed)
    m1, m2 = np.zeros(depth), np.zeros(depth)
    for _ in range(samples):
        x, jac, fan_in = rng.standard_normal(n_in), np.eye(n_in), n_in
        for layer in range(depth):
            w = draw(width, fan_in, family, sigma_w2, rng)
            h = w @ x
            slope, x = derivative(h)
            jac = slope[:, None] * (w @ jac)
            m1[layer] += np.square(jac).sum() / n_in
            m2[layer] += np.square(jac.T @ jac).sum() / n_in
            fan_in = width
    m1, m2 = m1 / samples, m2 / samples
    return m1, m2 / m1**2 - 1


def relu(h):
    return (h > 0).astype(float), np.maximum(h, 0)


def linear(h):
    return np.ones_like(h), h


def tanh(h):
    y = np.tanh(h)
    return 1 - y * y, y


@pytest.mark.parametrize(
    "act, family, sigma_w2, per_layer",
    [(RELU, "iid", 2.0, 2.0), (RELU, "orthogonal", 2.0, 1.0), (LINEAR, "iid", 1.0, 1.0), (LINEAR, "orthogonal", 1.0, 0.0)],
    ids=["relu-gaussian-2L", "relu-orthogonal-L", "linear-gaussian-L", "linear-orthogonal-0"],
)
def test_the_closed_forms_of_pennington_et_al(act, family, sigma_w2, per_layer):
    depth = 32
    qs = [1.0 * sigma_w2] * depth  # homogeneous activations: mu_1, mu_2 do not depend on q
    got = theory.spectrum(act, qs, [sigma_w2] * depth, family, n_in=100, width=100)
    assert got.s2 == pytest.approx([per_layer * (l + 1) for l in range(depth)], abs=1e-9)
    expected_m1 = 1.0 if act is LINEAR or sigma_w2 == 2.0 else None
    assert got.m1 == pytest.approx([expected_m1] * depth, rel=1e-9)


@pytest.mark.parametrize(
    "act, derivative, family, sigma_w2",
    [(RELU, relu, "iid", 2.0), (RELU, relu, "orthogonal", 2.0), (LINEAR, linear, "iid", 1.0),
     (LINEAR, linear, "orthogonal", 1.0), (TANH, tanh, "orthogonal", 1.05), (TANH, tanh, "iid", 1.5)],
    ids=["relu-gaussian", "relu-orthogonal", "linear-gaussian", "linear-orthogonal", "tanh-orthogonal", "tanh-gaussian"],
)  # fmt: skip
def test_the_theory_matches_a_monte_carlo_of_wide_products(act, derivative, family, sigma_w2):
    depth, width = 6, 300
    m1_mc, s2_mc = monte_carlo(depth, width, width, family, sigma_w2, derivative, samples=12)
    # the q-map from x ~ N(0, I) (q0 = 1), no biases: the blocks' pre-activation variances
    z = np.random.default_rng(1).standard_normal(400_000)
    qs = [sigma_w2]
    for _ in range(depth - 1):
        qs.append(sigma_w2 * float(np.mean(act.f(np.sqrt(qs[-1]) * z) ** 2)))
    got = theory.spectrum(act, qs, [sigma_w2] * depth, family, width, width)
    # a ReLU layer's share of active units scatters by 1/sqrt(width) per draw: m1 by ~3% over 12
    # draws at depth 6; s2 differs at finite width by O(L^2 / width) besides
    assert np.allclose(got.m1, m1_mc, rtol=0.08), (got.m1, m1_mc)
    assert np.allclose(got.s2, s2_mc, rtol=0.12, atol=0.05), (got.s2, s2_mc)


@pytest.mark.parametrize("family", ["iid", "orthogonal"])
@pytest.mark.parametrize("n_in, width", [(200, 400), (400, 200)])
def test_the_first_layer_that_is_not_square(family, n_in, width):
    depth = 4
    m1_mc, s2_mc = monte_carlo(depth, width, n_in, family, 2.0, relu, samples=12)
    got = theory.spectrum(RELU, [2.0] * depth, [2.0] * depth, family, n_in, width)
    assert np.allclose(got.m1, m1_mc, rtol=0.06), (got.m1, m1_mc)
    assert np.allclose(got.s2, s2_mc, rtol=0.1, atol=0.05), (got.s2, s2_mc)


def test_tanh_orthogonal_approaches_isometry_as_q_star_shrinks():
    # sigma_w^2 = 1 + small, no bias: q* -> 0 and mu_2 / mu_1^2 -> 1, so s2 -> 0 with orthogonal weights
    small = theory.spectrum(TANH, [1e-4] * 16, [1.0] * 16, "orthogonal", 64, 64).s2[-1]
    large = theory.spectrum(TANH, [1.0] * 16, [1.0] * 16, "orthogonal", 64, 64).s2[-1]
    assert small < 1e-3 < large


def test_where_the_formula_does_not_apply_it_says_why():
    from gradlab.config.experiment import ModelConfig

    assert "convolution" in theory.not_applicable(ModelConfig(kind="cnn"))
    assert "residual" in theory.not_applicable(ModelConfig(residual=True))
    assert "batchnorm" in theory.not_applicable(ModelConfig(norm="batchnorm"))
    assert "identity" in theory.not_applicable(ModelConfig(init={"weight": "identity"}))
    assert theory.not_applicable(ModelConfig(init={"weight": "orthogonal"})) == ""
