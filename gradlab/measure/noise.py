"""The gradient's noise across the examples of a batch, per layer: pe_grad_norm, grad_noise_scale
and gsnr (quantities.NOISE_QUANTITIES has their exact meanings).

Every one of them is a function of three sums over the B per-example gradients g_n = dl_n/dW of a
layer's weight: the norms ||g_n||, the coordinate-wise sums sum_n g_nj^2, and their mean g_bar (the
layer's gradient dL/dW, since L is the batch mean: g_n = B * a_n delta_n^T with delta = dL/dz).
How the sums are taken depends on how often the weight is applied per example:

- once (a Linear on (B, features)): g_n is never formed. ||g_n|| = B ||a_n|| ||delta_n||
  (Goodfellow 2015) from the rows' norms, and sum_n g_nj^2 = B^2 (delta^2)^T (a^2), one matmul of
  the weight gradient's size (BackPACK's SumGradSquared). g_bar is the weight's own gradient, read
  after the backward pass, so the group costs that one matmul per layer and a few operations of
  the weight's size.
- at P positions (a convolution, a Linear on (B, T, features)): sum_n g_nj^2 is not a function of
  the positions' sums, so g_n has to be formed: g_n = B * Delta_n A_n^T, with A_n the (unfolded)
  inputs (P, D) and Delta_n the output gradients (P, C_out), a batched matmul of B * P * C_out * D
  multiply-adds, the same count as the weight gradient itself. The ghost-norm identity ||g_n||^2 =
  <A_n A_n^T, Delta_n Delta_n^T> would give the norms alone for B * P^2 * (D + C_out), but the
  coordinates' variances need g_n anyway, so it would only add to that count: the unfolded
  per-example gradients are used at every shape. They are formed a chunk of examples at a time
  (at most CHUNK_ENTRIES entries), and the variance is taken about their own mean, exactly.
- anything else (a convolution with groups, strides or padding of any kind, in 1, 2 or 3
  dimensions, a transposed one): g_n by torch.func.vmap over the examples of the vjp of the call
  itself with respect to its weight, the general fallback.

Scale. The sums are taken on inputs and output gradients divided by powers of two (exact), so a
vanishing gradient's squares neither underflow nor lose digits; the three quantities are ratios
(or norms computed exactly by norms.py) and the scale cancels.

Like every kernel these return device tensors and read nothing; the probe hands them to the step's
pending measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gradlab.measure.norms import norm, norm_rows

CHUNK_ENTRIES = 2**24  # the most per-example gradient entries formed at once (64 MiB in float32)


@dataclass
class NoiseSums:
    """One site's sums over its B per-example gradients, in units of `scale` (a power of two):
    `norms` the true ||g_n|| (float64); `mean_square` (1/B) sum_n (g_nj / scale)^2 (the one-pass
    form), or `variance` the centered (1/B) sum_n ((g_nj - g_bar_j) / scale)^2 with `mean` g_bar /
    scale (the materialized form). `unit_roundoff` is that of the arithmetic of mean_square."""

    examples: int
    norms: torch.Tensor
    scale: torch.Tensor
    mean_square: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    unit_roundoff: float = 2.0**-24


def _power_of_two(value: torch.Tensor) -> torch.Tensor:
    """The power of two at or above |value|'s largest entry's binade (1 for a zero tensor): dividing
    by it is exact and leaves every entry below 1 in magnitude."""
    largest = value.abs().amax().double()
    _, exponent = torch.frexp(largest)
    return torch.where(largest > 0, torch.ldexp(torch.ones_like(largest), exponent), torch.ones_like(largest))


def working(value: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (their squares would lose digits), else as it is."""
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def linear_sums(a: torch.Tensor, delta: torch.Tensor) -> NoiseSums:
    """The sums of a weight applied as z = a W^T (+ b): `a` its input (B, *positions, in), `delta`
    dL/dz (B, *positions, out), examples in dimension 0. One position: the one-pass form from the
    rows' norms and one matmul; several: the per-example gradients, formed in chunks."""
    a, delta = working(a.detach()), working(delta)
    batch = a.shape[0]
    if a.dim() == 2:
        norms = batch * norm_rows(a) * norm_rows(delta)  # ||g_n|| = B ||a_n|| ||delta_n||, exact
        sa, sd = _power_of_two(a), _power_of_two(delta)
        a_s, d_s = a / sa.to(a.dtype), delta / sd.to(delta.dtype)
        squares = (d_s * d_s).T @ (a_s * a_s)  # sum_n (a_s delta_s)^2: (out, in)
        roundoff = torch.finfo(squares.dtype).eps / 2
        # g_n = c a_s delta_s^T with c = B sa sd, so (1/B) sum_n (g_nj / c)^2 = squares / B
        return NoiseSums(batch, norms, batch * sa * sd, mean_square=squares.double() / batch, unit_roundoff=roundoff)
    a = a.reshape(batch, -1, a.shape[-1])  # (B, P, in)
    delta = delta.reshape(batch, -1, delta.shape[-1])  # (B, P, out)
    return _materialized(a, delta, lambda x, d: torch.bmm(d.transpose(1, 2), x), a.shape[-1] * delta.shape[-1])


def conv2d_sums(x: torch.Tensor, delta: torch.Tensor, module: torch.nn.Conv2d) -> NoiseSums:
    """The sums of an nn.Conv2d's weight (groups 1, numeric padding, zeros padding mode), from its
    input x (B, C_in, H, W) and delta = dL/dz (B, C_out, H', W'): the unfolded input A_n (P, C_in k k)
    and the per-example gradient Delta_n A_n, reshaped as the weight."""
    x, delta = working(x.detach()), working(delta)
    batch = x.shape[0]
    unfolded = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, D, P)
    flat = delta.reshape(batch, delta.shape[1], -1)  # (B, C_out, P)
    size = unfolded.shape[1] * flat.shape[1]
    return _materialized(unfolded.transpose(1, 2), flat.transpose(1, 2), lambda u, d: torch.bmm(d.transpose(1, 2), u), size)


def conv2d_unfoldable(module: torch.nn.Module) -> bool:
    """Whether conv2d_sums applies to `module` (else the call's vjp does: call_sums)."""
    return (
        isinstance(module, torch.nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def call_sums(func: Callable, x: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor, rest: tuple, kwargs: dict) -> NoiseSums:
    """The general fallback: g_n as torch.func.vmap over the examples of the vjp of
    func(x_n, W, None, *rest, **kwargs) with respect to W (any convolution or transposed one)."""
    x, delta, weight = x.detach(), delta.detach(), weight.detach()

    def one(x_n: torch.Tensor, d_n: torch.Tensor) -> torch.Tensor:
        _, pull = torch.func.vjp(lambda w: func(x_n.unsqueeze(0), w, None, *rest, **kwargs), weight)
        return pull(d_n.unsqueeze(0))[0]

    return _materialized(x, delta, lambda xs, ds: torch.func.vmap(one)(xs, ds).flatten(1), weight.numel())


def _materialized(a: torch.Tensor, delta: torch.Tensor, per_example: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], size: int) -> NoiseSums:
    """The sums from the per-example gradients themselves: per_example(a[chunk], delta_s[chunk]) is
    sum over positions of a delta^T for each example of the chunk, (n, ...) flattened or not, `size`
    entries per example (the weight's).
    Two passes when there are several chunks (the mean first, then the variance about it); one when
    the whole batch fits in a chunk."""
    batch = a.shape[0]
    sa, sd = _power_of_two(a), _power_of_two(delta)
    a_s, d_s = a / sa.to(a.dtype), delta / sd.to(delta.dtype)
    step = max(1, CHUNK_ENTRIES // max(1, size))
    chunks = [(start, min(batch, start + step)) for start in range(0, batch, step)]
    scale = batch * sa * sd  # g_n = B * sa * sd * per_example(a_s_n, d_s_n)

    def grads(start: int, end: int) -> torch.Tensor:
        return per_example(a_s[start:end], d_s[start:end]).reshape(end - start, -1).double()

    first = grads(*chunks[0]) if len(chunks) == 1 else None
    total = torch.zeros(size, dtype=torch.float64, device=a.device)
    norms = []
    for start, end in chunks:
        g = first if first is not None else grads(start, end)
        total += g.sum(dim=0)
        norms.append(norm_rows(g))
    mean = total / batch
    square = torch.zeros_like(total)
    for start, end in chunks:
        g = first if first is not None else grads(start, end)
        square += (g - mean).square().sum(dim=0)
    per_example_norms = torch.cat(norms) * scale
    return NoiseSums(batch, per_example_norms, scale, variance=square / batch, mean=mean)


def noise(sums: NoiseSums, grad: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """pe_grad_norm, grad_noise_scale and gsnr from a site's sums, as 0-d device tensors; `grad` is
    the layer's gradient dL/dW (needed by the one-pass form, whose sums do not hold g_bar). NaN (an
    empty cell) where a quantity does not exist: B < 2, g_bar = 0, every coordinate's variance 0.
    kernels.noise_columns hands them to a probe."""
    batch, scale = sums.examples, sums.scale
    if sums.mean is not None:
        g_bar = sums.mean
        g_bar_square = (norm(g_bar).double() * scale) ** 2
        variance = sums.variance
        resolved = variance > 0
    else:
        assert grad is not None, "the one-pass sums need the layer's gradient"
        g_bar = grad.detach().double().reshape(sums.mean_square.shape) / scale
        g_bar_square = norm(grad.detach()).double() ** 2
        mean_square = sums.mean_square
        variance = mean_square - g_bar * g_bar
        roundoff = sums.unit_roundoff
        # within the rounding of the float32 sums, a variance is indistinguishable from 0
        resolved = variance > 3 * batch * roundoff * mean_square
    ratio = torch.where(resolved, g_bar * g_bar / torch.where(resolved, variance, 1.0), 0.0)
    counted = resolved.sum()
    gsnr = ratio.sum() / counted  # 0 / 0: NaN, an empty cell, when nothing is counted
    if sums.variance is not None:  # sum_n ||g_n||^2 - B ||g_bar||^2 = B sum_j Var_j, with no cancellation
        excess = batch * sums.variance.sum() * scale * scale
    else:
        square_norms = (sums.norms * sums.norms).sum()
        excess = square_norms - batch * g_bar_square
        excess = torch.where(excess > 3 * batch * roundoff * square_norms, excess, 0.0)
    nan = torch.full((), float("nan"), dtype=torch.float64, device=excess.device)
    if batch < 2:
        noise_scale = nan
    else:
        noise_scale = torch.where(g_bar_square > 0, excess / (batch - 1) / torch.where(g_bar_square > 0, g_bar_square, 1.0), nan)
    return {"pe_grad_norm": sums.norms.mean(), "grad_noise_scale": noise_scale, "gsnr": gsnr}
