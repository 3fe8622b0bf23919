"""What theory predicts for residual networks, x_{l+1} = x_l + α · branch(x_l): the stream's moments
block by block, the gradient's factor along the stream, and how much of it reaches a branch (De &
Smith 2020 for BatchNorm branches). Numpy only; the conventions are theory/mean_field.py's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from gradlab.theory.mean_field import Activation, chi1, expect


@dataclass(frozen=True)
class BranchLayer:
    """One layer of a residual branch: linear (σw² = Var W · fan_in, σb²), then BatchNorm if
    `batchnorm` (pre placement; the linear bias is then irrelevant), then `activation` (None: none)."""

    sigma_w2: float
    sigma_b2: float = 0.0
    activation: Activation | None = None
    batchnorm: bool = False


@dataclass(frozen=True)
class StreamMoments:
    """Moments of the residual stream x_l, pooled over units (and examples).

    second_moment q_l = mean(x²); mean m_l = mean(x); variance v_l = q_l − m_l²; batch_variance: the
    per-unit variance over the batch averaged over units (what a BatchNorm in the next branch
    divides by), None when it is not predicted (branches without BatchNorm).
    """

    second_moment: float
    mean: float
    variance: float
    batch_variance: float | None = None


def _branch_output(branch: Sequence[BranchLayer], q_in: float, n: int) -> tuple[float, float]:
    """Mean and second moment of one unit of branch(x) for a stream of second moment q_in."""
    q = q_in
    mean = 0.0
    for layer in branch:
        pre = 1.0 if layer.batchnorm else layer.sigma_w2 * q + layer.sigma_b2
        if layer.activation is None:
            mean, q = 0.0, pre
        else:
            act = layer.activation
            mean = expect(act, act.f, pre, n)
            q = expect(act, lambda u: act.f(u) ** 2, pre, n)
    return mean, q


def _check_branch(branch: Sequence[BranchLayer]) -> bool:
    if len(branch) == 0:
        raise ValueError("a residual branch needs at least one layer")
    uses_bn = [layer.batchnorm for layer in branch]
    if any(uses_bn) and not all(uses_bn):
        raise ValueError("no prediction for a branch that normalizes some layers and not others")
    return all(uses_bn)


def residual_moments(
    branch: Sequence[BranchLayer],
    depth: int,
    alpha: float,
    x_second_moment: float,
    x_mean: float = 0.0,
    x_batch_variance: float | None = None,
    n: int | None = None,
) -> list[StreamMoments]:
    """The stream's moments before block 0 and after each of `depth` residual blocks (depth+1 entries).

    Mean field, wide layers: the branch's last W is fresh, so each unit of branch(x_l) is
    independent of the same unit of x_l, with mean μ_l and second moment s_l (`_branch_output`: a
    layer without BatchNorm sees a pre-activation of variance σw² · (its input's second moment) + σb²;
    with BatchNorm it sees N(0, 1) whatever the stream's scale). Hence, exactly in that limit,

        m_{l+1} = m_l + α μ_l,   q_{l+1} = q_l + 2 α m_l μ_l + α² s_l,
        Var(x_{l+1}) = Var(x_l) + α² (s_l − μ_l²).

    Unnormalized ReLU, one-layer branch φ(W x), He init (σw² = 2): s_l = q_l, μ_l = √(q_l/π), so the
    second moment grows by (1 + α²) plus the cross term 2α m_l μ_l (zero only while the stream is
    centred: exactly doubling at α = 1 for the branch relu(W₁ ·) then a linear W₂ with σw² = 1,
    whose output has mean 0 and second moment q_l; faster than doubling for a branch ending in ReLU,
    whose output mean accumulates in the stream); the variance grows by α²(1 − 1/π) q_l. Both grow
    exponentially in depth.
    With BatchNorm in the branch (De & Smith 2020), s and μ are constants, so the variance grows
    linearly: Var(x_l) = Var(x_0) + l α² (s − μ²) (= Var(x_0) + l α² when the branch's output has
    unit variance, De & Smith's statement), and the second moment quadratically once a nonzero
    branch mean accumulates.
    x_batch_variance (the input's per-feature batch variance averaged over features) is needed only
    for the gradient prediction of BatchNorm branches; it defaults to Var(x_0) = q_0 − m_0².
    """
    batchnorm = _check_branch(branch)
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    q, m = float(x_second_moment), float(x_mean)
    v_batch = None
    if batchnorm:
        v_batch = float(x_batch_variance) if x_batch_variance is not None else q - m * m
    out = [StreamMoments(q, m, q - m * m, v_batch)]
    for _ in range(depth):
        mu, s = _branch_output(branch, q, n)
        q = q + 2.0 * alpha * m * mu + alpha * alpha * s
        m = m + alpha * mu
        if v_batch is not None:
            v_batch = v_batch + alpha * alpha * (s - mu * mu)
        out.append(StreamMoments(q, m, q - m * m, v_batch))
    return out


def residual_gradient_factors(
    branch: Sequence[BranchLayer],
    alpha: float,
    moments: Sequence[StreamMoments],
    n: int | None = None,
) -> list[float]:
    """Per-block factors ‖∂L/∂x_l‖ / ‖∂L/∂x_{l+1}‖ on the residual stream (toward the input), one per
    block, from `residual_moments` (the factor of block l uses moments[l], the stream entering it).

    ∂L/∂x_l = (I + α J_l)ᵀ ∂L/∂x_{l+1} with J_l the branch's Jacobian; the cross term has mean 0 (the
    branch's W is independent of the signal), so in mean field
        factor_l² = 1 + α² · Π_k χ_k,
    one χ per branch layer k: without BatchNorm χ_k = σw²_k · E[φ'(√pre_k z)²] (1 without an
    activation), the `chi1` of that layer at its pre-activation variance; with BatchNorm the batch
    std s_k = √(σw²_k · v_k) divides the signal and σw²_k cancels: χ_k = E[φ'(z)²] / v_k, where v_k is
    the per-unit batch variance of layer k's input (the stream's `batch_variance` for k = 0, the
    previous layer's output variance after). For ReLU with He init (no norm, one layer): 1 + α², a
    factor √2 per block at α = 1 — the same (1 + α²) as the forward variance of a centred stream.
    With BatchNorm the factor tends to 1 as the stream's variance grows linearly, so the gradient grows
    toward the input only as a power of depth (De & Smith 2020).
    """
    batchnorm = _check_branch(branch)
    factors = []
    for moment in moments[:-1]:
        q_in = moment.second_moment
        v_in = moment.batch_variance
        if batchnorm and v_in is None:
            raise ValueError("a BatchNorm branch needs the stream's batch_variance (see residual_moments)")
        product = 1.0
        for layer in branch:
            act = layer.activation
            if batchnorm:
                slope2 = 1.0 if act is None else expect(act, lambda u: act.df(u) ** 2, 1.0, n)
                product *= slope2 / v_in
                if act is None:
                    q_in, v_in = 1.0, 1.0
                else:
                    mean = expect(act, act.f, 1.0, n)
                    q_in = expect(act, lambda u: act.f(u) ** 2, 1.0, n)
                    v_in = q_in - mean * mean
            else:
                pre = layer.sigma_w2 * q_in + layer.sigma_b2
                if act is None:
                    product *= layer.sigma_w2
                    q_in = pre
                else:
                    product *= chi1(act, pre, layer.sigma_w2, n)
                    q_in = expect(act, lambda u: act.f(u) ** 2, pre, n)
        factors.append(math.sqrt(1.0 + alpha * alpha * product))
    return factors


def branch_delta_gain(branch: Sequence[BranchLayer], moment: StreamMoments) -> float:
    """‖∂L/∂z‖² / ‖∂L/∂(α·branch(x))‖² for one block, z its branch's first linear output: how much of
    the stream's gradient reaches the branch's first layer, in mean field.

    Going back from the branch's output: through each layer's φ a factor E[φ'(u)²] (u its input:
    N(0, pre) without BatchNorm, N(0, 1) with it), through BatchNorm 1/(σw²_k · v_k) (it divides by
    the batch std of its input, whose variance is σw²_k times the per-unit batch variance v_k of the
    layer's input), and through the weights of every layer but the first σw²_k (‖Wᵀg‖² = σw² ‖g‖²).
    A layer without an activation contributes its BatchNorm and weights only. gradlab's
    `layer_factor` of a residual stack follows: ‖δ_l‖ = α √gain_l ‖∂L/∂x_{l+1}‖ (predict.py).
    """
    batchnorm = _check_branch(branch)
    if batchnorm and moment.batch_variance is None:
        raise ValueError("a BatchNorm branch needs the stream's batch_variance (see residual_moments)")
    q_in, v_in = moment.second_moment, moment.batch_variance
    gain = 1.0
    for k, layer in enumerate(branch):
        act = layer.activation
        if act is None:
            gain /= layer.sigma_w2 * v_in if layer.batchnorm else 1.0
            q_in, v_in = (1.0, 1.0) if layer.batchnorm else (layer.sigma_w2 * q_in + layer.sigma_b2, v_in)
        elif layer.batchnorm:
            slope2 = expect(act, lambda u: act.df(u) ** 2, 1.0)
            gain *= slope2 / (layer.sigma_w2 * v_in)
            mean = expect(act, act.f, 1.0)
            q_in = expect(act, lambda u: act.f(u) ** 2, 1.0)
            v_in = q_in - mean * mean
        else:
            pre = layer.sigma_w2 * q_in + layer.sigma_b2
            gain *= expect(act, lambda u: act.df(u) ** 2, pre)
            q_in = expect(act, lambda u: act.f(u) ** 2, pre)
        if k > 0:
            gain *= layer.sigma_w2
    return gain
