"""What theory predicts for recurrent networks (Pascanu, Mikolov & Bengio 2013): the per-step factor
of the gradient going back in time, bounded by sup |φ'| times the recurrent matrix's top singular
value; and an LSTM's cell path. Numpy only."""

from __future__ import annotations

import math

import numpy as np

from gradlab.theory.mean_field import Activation


def max_abs_derivative(act: Activation, lo: float = -30.0, hi: float = 30.0, points: int = 600001) -> float:
    """γ = sup |φ'(x)|, read off a fine grid on [lo, hi] that includes 0 (tanh: 1, sigmoid: 1/4).

    Use an activation record's stated maximum where it has one; this is the fallback and the check.
    """
    grid = np.linspace(lo, hi, points)
    return float(np.max(np.abs(act.df(grid))))


def top_singular_value(init: str, n: int, gain: float = 1.0, std: float | None = None) -> float:
    """λ₁, the largest singular value of an n × n recurrent matrix as initialized.

    orthogonal (scaled by gain): every singular value is the gain, λ₁ = gain. identity (scaled):
    λ₁ = gain. normal with entry std s: λ₁ → 2 s √n as n grows (the edge of the quarter-circle law,
    Bai & Yin 1988); a prediction for large n, a few percent off for n ~ 100.
    """
    if init in ("orthogonal", "identity", "eye"):
        return float(abs(gain))
    if init == "normal":
        if std is None:
            raise ValueError("the normal init needs its std")
        return 2.0 * float(std) * math.sqrt(n)
    raise ValueError(f"no singular-value prediction for init {init!r}; known: orthogonal, identity, normal")


def recurrent_step_bound(gamma: float, lambda1: float) -> float:
    """Pascanu, Mikolov & Bengio 2013 (eq. 7): ‖∂h_t/∂h_{t−1}‖ ≤ ‖W_recᵀ‖ ‖diag φ'(·)‖ ≤ γ · λ₁.

    An upper bound on the per-step factor of the gradient going back in time: below 1 the gradient
    must vanish (λ₁ < 1/γ is their sufficient condition); above 1 it may, but need not, explode.
    """
    return float(gamma) * float(lambda1)


def log_sigmoid(x: float) -> float:
    """log σ(x) = −log(1 + e^−x), in a form that cannot overflow for any finite x: for x < 0,
    x − log(1 + e^x) (e^x ≤ 1), for x ≥ 0, −log(1 + e^−x) (e^−x ≤ 1). Exact where σ(x) itself
    underflows (x = −1000: −1000, while σ(−1000) = e^−1000 is below the smallest double)."""
    x = float(x)
    if x < 0:
        return x - math.log1p(math.exp(x))
    return -math.log1p(math.exp(-x))


def lstm_cell_log_factor(forget_bias: float) -> float:
    """log σ(forget_bias): the log of `lstm_cell_factor`, finite for every finite forget bias."""
    return log_sigmoid(forget_bias)


def lstm_cell_factor(forget_bias: float) -> float:
    """The per-step factor along an LSTM's cell path, ∂c_t/∂c_{t−1} = diag(f_t), with small weights.

    c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t and f_t = σ(W_f x_t + U_f h_{t−1} + b_f); when the weights are
    small f_t ≈ σ(b_f), so the cell gradient decays (or is kept) by σ(forget_bias) per step
    (Gers et al. 2000; Jozefowicz et al. 2015 for the forget-bias-of-1 recommendation).
    Computed as exp(log σ(b)), which never overflows; below b ≈ −745 it underflows to 0.0 (use
    `lstm_cell_log_factor` for the exact value there).
    """
    return math.exp(log_sigmoid(forget_bias))
