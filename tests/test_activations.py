"""gradlab.theory.activations: one record per activation, each fact against an independent computation
(autograd, PyTorch's own modules and calculate_gain, closed forms, mpmath quadrature, Monte Carlo)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss

from gradlab.theory import activations, gaussian
from gradlab.vocab import specs
from gradlab.theory.activations import ACTIVATIONS, gaussian_moments

# Every activation, plus non-default parameters where they change the function.
SPECS = [
    *specs.activations.names(),
    {"name": "leaky_relu", "negative_slope": 0.2},
    {"name": "prelu", "init": -0.375, "shared": False},  # (a slope a float32 parameter holds exactly)
    {"name": "rrelu", "lower": 0.05, "upper": 0.4},
    {"name": "elu", "alpha": 0.5},
    {"name": "elu", "alpha": 2.0},
    {"name": "gelu", "approximate": "tanh"},
    {"name": "softplus", "beta": 2.0, "threshold": 5.0},
    {"name": "hardtanh", "min_val": -2.0, "max_val": 0.5},
]


def module(spec, width=5):
    return activations.build(specs.activations.resolve(spec), width).double().eval()  # eval: rrelu's mean slope


def test_every_activation_has_one_record():
    assert set(ACTIVATIONS) == set(specs.activations.names())
    assert all(record.name == name for name, record in ACTIVATIONS.items())


# -- the torch side -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", specs.activations.names())
def test_closed_form_derivatives_match_autograd(name):
    act = module(name)
    u = torch.linspace(-8, 8, 2000, dtype=torch.float64).reshape(-1, 5)  # an even count skips the kink at 0
    leaf = u.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(act(leaf).sum(), leaf)
    record = ACTIVATIONS[name]
    with torch.no_grad():
        got = record.derivative(act, u, act(u))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    # the stated maximum is attained (up to the grid) and never exceeded
    dense = torch.linspace(-8, 8, 160001, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(act(dense.expand(-1, 5)).sum(), dense)
    maximum = record.maximum(act)
    maximum = float(maximum.max()) if isinstance(maximum, torch.Tensor) else maximum
    assert float(grad.abs().max()) / 5 == pytest.approx(maximum, rel=1e-3)


def test_rrelu_training_derivative_is_the_drawn_slope():
    act = activations.build(specs.activations.resolve("rrelu"), 4).train()
    u = -torch.rand(64, 4) - 0.1
    leaf = u.clone().requires_grad_(True)
    torch.manual_seed(3)
    y = act(leaf)
    (expected,) = torch.autograd.grad(y.sum(), leaf)
    torch.testing.assert_close(ACTIVATIONS["rrelu"].derivative(act, u, y.detach()), expected)


# -- the numpy side against the torch modules ---------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_numpy_forms_match_the_torch_module_and_autograd(spec):
    x = np.linspace(-30, 30, 6001) + 1e-3  # off the kinks at 0, the hardtanh corners and softplus' threshold
    act = module(spec, width=1)
    t = torch.from_numpy(x).reshape(-1, 1).requires_grad_(True)
    y = act(t)
    (grad,) = torch.autograd.grad(y.sum(), t)
    np.testing.assert_allclose(activations.forward(spec, x), y.detach().numpy().ravel(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(activations.derivative(spec, x), grad.numpy().ravel(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_max_derivative_from_the_spec_is_the_modules_and_the_grids(spec):
    act = module(spec, width=3)
    maximum = ACTIVATIONS[specs.activations.resolve(spec)["name"]].maximum(act)
    maximum = float(maximum.max()) if isinstance(maximum, torch.Tensor) else maximum
    assert activations.max_derivative(spec) == maximum
    # (rrelu's bound is the largest slope training may draw; below 1 the grid's 1 is attained too)
    grid = np.abs(activations.derivative(spec, np.linspace(-10, 10, 2_000_001))).max()
    assert grid == pytest.approx(activations.max_derivative(spec), rel=1e-4)


def test_silu_and_gelu_maxima_against_their_exact_values():
    silu = lambda t: t / (1 + mpmath.exp(-t))  # noqa: E731
    root = mpmath.findroot(lambda t: mpmath.diff(silu, t, 2), 2.4)
    assert activations.max_derivative("silu") == pytest.approx(float(mpmath.diff(silu, root)), rel=1e-9)
    u = math.sqrt(2)  # GELU'' = phi(u)(2 - u^2) vanishes at sqrt 2
    assert activations.max_derivative("gelu") == pytest.approx(0.5 * (1 + math.erf(1)) + u * math.exp(-1) / math.sqrt(2 * math.pi), rel=1e-15)
    tanh_gelu = lambda t: 0.5 * t * (1 + mpmath.tanh(mpmath.sqrt(2 / mpmath.pi) * (t + 0.044715 * t**3)))  # noqa: E731
    exact = float(mpmath.diff(tanh_gelu, mpmath.findroot(lambda t: mpmath.diff(tanh_gelu, t, 2), 1.4)))
    assert activations.max_derivative({"name": "gelu", "approximate": "tanh"}) == pytest.approx(exact, rel=1e-4)  # rounded: 1.1289


# -- gains ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, torch_name, param",
    [("relu", "relu", None), ("tanh", "tanh", None), ("selu", "selu", None), ("sigmoid", "sigmoid", None),
     ("identity", "linear", None), ({"name": "leaky_relu", "negative_slope": 0.2}, "leaky_relu", 0.2),
     ({"name": "prelu", "init": 0.1}, "leaky_relu", 0.1), ({"name": "rrelu", "lower": 0.1, "upper": 0.3}, "leaky_relu", 0.2)],  # fmt: skip
    ids=str,
)
def test_auto_gain_is_pytorchs_where_it_has_one(spec, torch_name, param):
    expected = torch.nn.init.calculate_gain(torch_name, param)
    assert activations.gain(spec) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["elu", "gelu", "silu", "softplus", "hardtanh", "relu", "tanh"])
def test_variance_preserving_gain_against_monte_carlo_and_the_moments(name):
    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = 1 / module(name)(z).pow(2).mean().sqrt().item()
    gain = activations.variance_preserving_gain(name)
    assert gain == pytest.approx(expected, rel=2e-3)
    assert gain == pytest.approx(1 / math.sqrt(gaussian_moments(name, 1.0).second_moment), rel=1e-8)
    if name == "relu":
        assert gain == pytest.approx(math.sqrt(2), rel=1e-6)


def test_the_gain_auto_uses_is_the_variance_preserving_one_where_pytorch_has_none():
    for name in ["elu", "gelu", "silu", "softplus", "hardtanh"]:
        assert ACTIVATIONS[name].gain is None
        assert activations.gain(name) == activations.variance_preserving_gain(name)


# -- Gaussian moments -----------------------------------------------------------------------------

QS = [0.01, 0.5, 1.0, 3.7, 100.0]


@pytest.mark.parametrize("q", QS)
def test_moments_of_the_relu_family_and_identity_in_closed_form(q):
    assert gaussian_moments("relu", q) == pytest.approx((q / 2, 0.5), rel=1e-13)
    assert gaussian_moments("identity", q) == pytest.approx((q, 1.0), rel=1e-13)
    a = 0.2
    leaky = gaussian_moments({"name": "leaky_relu", "negative_slope": a}, q)
    assert leaky == pytest.approx(((1 + a * a) * q / 2, (1 + a * a) / 2), rel=1e-13)
    # hardtanh: E[clip(x)^2] = q P(|x|<1) - 2 sqrt(q) phi(c) ... with c = 1/sqrt(q); f'^2 = P(|x| < 1)
    c = 1 / math.sqrt(q)
    inside = math.erf(c / math.sqrt(2))
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    second = q * (inside - 2 * c * phi) + (1 - inside)
    assert gaussian_moments("hardtanh", q) == pytest.approx((second, inside), rel=1e-12)


def _mpmath_moments(spec, q):
    """The same two integrals by mpmath's tanh-sinh quadrature, split at the kinks, at 20 digits."""
    resolved = specs.activations.resolve(spec)
    name = resolved["name"]
    record, p = activations.get(name), specs.activations.params_of(resolved)
    mpmath.mp.dps = 20
    root = mpmath.sqrt(q)
    # (0 is always a cut: tanh-sinh on a half-line far from the mass at 0 would miss it)
    cuts = [-mpmath.inf, *sorted({mpmath.mpf(0), *(mpmath.mpf(k) / root for k in record.kinks(p))}), mpmath.inf]

    def integral(g):
        return float(mpmath.quad(lambda z: g(root * z) ** 2 * mpmath.exp(-z * z / 2) / mpmath.sqrt(2 * mpmath.pi), cuts))

    def numeric(fn):  # the record's numpy form at one point, in float64 (mpmath integrates it)
        return lambda x: mpmath.mpf(float(fn(p, np.array([float(x)]))[0]))

    if name in ("tanh", "sigmoid", "silu", "gelu") and getattr(p, "approximate", "none") == "none":
        exact = {
            "tanh": (mpmath.tanh, lambda x: 1 - mpmath.tanh(x) ** 2),
            "sigmoid": (lambda x: 1 / (1 + mpmath.exp(-x)), lambda x: mpmath.exp(-x) / (1 + mpmath.exp(-x)) ** 2),
            "silu": (lambda x: x / (1 + mpmath.exp(-x)), lambda x: mpmath.diff(lambda t: t / (1 + mpmath.exp(-t)), x)),
            "gelu": (lambda x: x * mpmath.ncdf(x), lambda x: mpmath.ncdf(x) + x * mpmath.npdf(x)),
        }[name]
        return integral(exact[0]), integral(exact[1])
    return integral(numeric(record.f)), integral(numeric(record.df))


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("q", [0.1, 1.0, 4.0, 50.0])
def test_moments_against_mpmath(spec, q):
    assert gaussian_moments(spec, q) == pytest.approx(_mpmath_moments(spec, q), rel=1e-10, abs=1e-300)


def test_tanh_moments_against_monte_carlo():
    z = np.random.default_rng(0).standard_normal(4_000_000)
    for q in (0.5, 2.0):
        t = np.tanh(math.sqrt(q) * z)
        m2, d2 = gaussian_moments("tanh", q)
        assert m2 == pytest.approx(np.mean(t**2), rel=3e-3)
        assert d2 == pytest.approx(np.mean((1 - t**2) ** 2), rel=3e-3)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "gelu", "silu", "identity"])
def test_smooth_moments_agree_with_gauss_hermite_where_it_converges(name):
    nodes, weights = hermegauss(150)
    weights = weights / math.sqrt(2 * math.pi)
    for q in (0.25, 1.0):
        x = math.sqrt(q) * nodes
        expected = (weights @ activations.forward(name, x) ** 2, weights @ activations.derivative(name, x) ** 2)
        assert gaussian_moments(name, q) == pytest.approx(expected, rel=1e-11)


def test_moments_at_zero_variance_are_the_values_at_zero():
    assert gaussian_moments("sigmoid", 0.0) == (0.25, 0.0625)
    with pytest.raises(ValueError):
        gaussian_moments("tanh", -1.0)


@pytest.mark.parametrize("q", [1e6, 1e12, 1e30])
def test_moments_at_exploding_variances_against_their_asymptotic_forms(q):
    """For integrable g, E[g(sqrt(q) z)] = (1 / sqrt(2 pi q)) (integral of g) (1 + O(1/q)): what the
    quadrature must still resolve when f's bends occupy a sliver of the Gaussian."""
    density = 1 / math.sqrt(2 * math.pi * q)
    rel = max(1e-9, 10 / q)  # the O(1/q) term of the asymptotic form
    m2, d2 = gaussian_moments("tanh", q)  # 1 - tanh^2 integrates to 2, sech^4 to 4/3
    assert (1 - m2, d2) == pytest.approx((2 * density, 4 / 3 * density), rel=rel)
    m2, d2 = gaussian_moments("sigmoid", q)  # s^2 - step integrates to -1, s'^2 to 1/6
    assert (0.5 - m2, d2) == pytest.approx((density, density / 6), rel=rel)
    assert gaussian_moments("relu", q) == pytest.approx((q / 2, 0.5), rel=1e-13)
    if q >= 1e12:  # softplus bends over 1/beta = 100: a ReLU once sqrt(q) is far beyond that
        m2, d2 = gaussian_moments({"name": "softplus", "beta": 0.01}, q)
        assert (m2 / q, d2) == pytest.approx((0.5, 0.5), rel=1e-4)


@pytest.mark.parametrize("spec", [{"name": "softplus", "beta": 0.01}, "gelu", "elu", {"name": "hardtanh", "min_val": -30.0, "max_val": 5.0}], ids=str)
def test_moments_at_a_large_variance_against_mpmath(spec):
    assert gaussian_moments(spec, 1e6) == pytest.approx(_mpmath_moments(spec, 1e6), rel=1e-10)


def test_the_quadrature_stays_small_for_any_variance():
    calls = []
    gaussian_moments("gelu", 1e30)
    gaussian.expectation(lambda x: calls.append(x.size) or np.ones_like(x), 1e30, (0.0,))
    assert calls[0] <= 200 * 20
