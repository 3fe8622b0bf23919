"""The gradient's noise across the examples of a batch, per layer: pe_grad_norm, grad_noise_scale
and gsnr (quantities.NOISE_QUANTITIES has their exact meanings).

Every one of them is a function of three sums over the B per-example gradients g_n = dl_n/dW of a
layer's weight: the norms ||g_n||, the coordinate-wise sums sum_n g_nj^2, and their mean g_bar (the
layer's gradient dL/dW, since L is the batch mean: g_n = B * a_n delta_n^T with delta = dL/dz).
How the sums are taken depends on how often the weight is applied per example:

- once (a Linear on (B, features)): g_n is never formed. ||g_n|| = B ||a_n|| ||delta_n||
  (Goodfellow 2015) from the rows' norms, and sum_n g_nj^2 = B^2 (delta^2)^T (a^2), one matmul of
  the weight gradient's size (BackPACK's SumGradSquared). g_bar is the weight's own gradient, read
  after the backward pass, so the group costs that one matmul per layer and about a dozen
  element-wise passes over the weight's entries.
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

Layers. Every function works on L layers at once (a leading dimension): the probe stacks the
Linear layers of one shape (the hidden layers of an MLP) and computes their sums and columns in a
dozen operations instead of a dozen per layer; a site alone is L = 1. Like every kernel these
return device tensors and read nothing; the probe hands them to the step's pending measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gradlab.build.memory import NOISE_CHUNK_ENTRIES, NOISE_STACK_ENTRIES
from gradlab.measure.norms import norm_rows, norms as norms_of

CHUNK_ENTRIES = NOISE_CHUNK_ENTRIES  # the most per-example gradient entries formed at once (64 MiB in float32)
STACK_ENTRIES = NOISE_STACK_ENTRIES  # the most weight entries of stacked Linear layers done at once


@dataclass
class NoiseSums:
    """The sums over the B per-example gradients of L layers (dimension 0 of every field), in units
    of `scale` (L,), a power of two times B: `norms` (L, B) the true ||g_n|| in float64;
    `mean_square` (L, *weight) (1/B) sum_n (g_nj / scale)^2 (the one-pass form, in the inputs'
    dtype, whose `unit_roundoff` it has), or `variance` (L, coordinates) the centered
    (1/B) sum_n ((g_nj - g_bar_j) / scale)^2 with `mean` g_bar / scale (the materialized form, float64)."""

    examples: int
    norms: torch.Tensor
    scale: torch.Tensor
    mean_square: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    unit_roundoff: float = 2.0**-24
    delta_scale: torch.Tensor | None = None  # the one-pass form: sd of scale = B sa sd


class Buffers(dict):
    """Tensors kept from one logged step to the next, by purpose and shape: on the CPU a fresh
    tensor of the weights' size costs more than the arithmetic done in it (the memory is mapped and
    faulted in anew each time)."""

    def get_like(self, purpose: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (purpose, tuple(shape), like.dtype, like.device)
        buffer = self.get(key)
        if buffer is None:
            buffer = self[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buffer


def _stack(tensors: Sequence[torch.Tensor], purpose: str, buffers: Buffers | None) -> torch.Tensor:
    """The tensors stacked on a new dimension 0, into a kept buffer when there are `buffers`."""
    if buffers is None:
        return torch.stack(tensors)
    out = buffers.get_like(purpose, (len(tensors), *tensors[0].shape), tensors[0])
    return torch.stack(tensors, out=out)


def _power_of_two(value: torch.Tensor) -> torch.Tensor:
    """Per layer (dimension 0), the power of two at or above the binade of |value|'s largest entry
    (1 for a zero layer), float64: dividing by it is exact and leaves every entry below 1 in magnitude."""
    dims = tuple(range(1, value.dim()))
    return _above(torch.maximum(value.amax(dim=dims), value.amin(dim=dims).neg()).double())  # (no |value| formed)


def _above(largest: torch.Tensor) -> torch.Tensor:
    """The power of two at or above the binade of each of `largest` (float64, >= 0; 1 for 0)."""
    _, exponent = torch.frexp(largest)
    return torch.where(largest > 0, torch.ldexp(torch.ones_like(largest), exponent), torch.ones_like(largest))


def _per_layer(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(L,) factors shaped to multiply an (L, ...) tensor, in its dtype."""
    return scale.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def working(value: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (their squares would lose digits), else as it is."""
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def linear_sums(a: torch.Tensor, delta: torch.Tensor) -> NoiseSums:
    """The sums of a weight applied as z = a W^T (+ b), one layer: `a` its input (B, *positions, in),
    `delta` dL/dz (B, *positions, out), examples in dimension 0. One position: the one-pass form
    (stacked_linear_sums with L = 1); several: the per-example gradients, formed in chunks."""
    if a.dim() == 2:
        return stacked_linear_sums([a], [delta])
    a, delta = working(a.detach()), working(delta)
    batch = a.shape[0]
    a = a.reshape(batch, -1, a.shape[-1])  # (B, P, in)
    delta = delta.reshape(batch, -1, delta.shape[-1])  # (B, P, out)
    return _materialized(a, delta, lambda x, d: torch.bmm(d.transpose(1, 2), x), a.shape[-1] * delta.shape[-1])


def stacked_linear_sums(a: Sequence[torch.Tensor], delta: Sequence[torch.Tensor], buffers: Buffers | None = None) -> NoiseSums:
    """The one-pass sums of L Linear layers of one shape applied once per example: `a` their
    inputs (B, in) each, `delta` their output gradients (B, out) each. ||g_n|| = B ||a_n|| ||delta_n||
    from the rows' exact norms; (1/B) sum_n g_nj^2 = B^2 (delta^2)^T (a^2) / B, one batched matmul.
    With `buffers`, the stacks and the matmul's result are kept tensors, overwritten next time."""
    a = _stack([working(x.detach()) for x in a], "a", buffers)  # (L, B, in), this function's own
    delta = _stack([working(d) for d in delta], "delta", buffers)  # (L, B, out)
    layers, batch = a.shape[0], a.shape[1]
    a_norms = norm_rows(a.reshape(layers * batch, -1)).reshape(layers, batch)
    d_norms = norm_rows(delta.reshape(layers * batch, -1)).reshape(layers, batch)
    norms = batch * a_norms * d_norms
    # the largest row norm bounds every entry: scaled by it, no entry exceeds 1 (and no pass over
    # the entries is needed to find their largest)
    sa, sd = _above(a_norms.amax(dim=1)), _above(d_norms.amax(dim=1))
    # g_n = c a_s delta_s^T with c = B sa sd, so (1/B) sum_n (g_nj / c)^2 = sum_n a_s^2 delta_s^2 / B
    a_square = a.mul_(_per_layer(1 / sa, a)).square_()
    d_square = delta.mul_(_per_layer(1 / sd, delta)).square_().mul_(1 / batch)
    shape = (layers, delta.shape[2], a.shape[2])
    out = None if buffers is None else buffers.get_like("mean_square", shape, a)
    mean_square = torch.bmm(d_square.transpose(1, 2), a_square, out=out)  # (L, out, in)
    roundoff = torch.finfo(mean_square.dtype).eps / 2
    return NoiseSums(batch, norms, batch * sa * sd, mean_square=mean_square, unit_roundoff=roundoff, delta_scale=sd)


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
    """One layer's sums from the per-example gradients themselves: per_example(a[chunk], delta[chunk])
    is the sum over positions of a delta^T of each example of the chunk, `size` entries per example
    (the weight's). Two passes when there are several chunks (the mean first, then the variance
    about it); one when the whole batch fits in a chunk."""
    batch = a.shape[0]
    sa, sd = _power_of_two(a.reshape(1, -1)), _power_of_two(delta.reshape(1, -1))
    a_s, d_s = a * (1 / sa).to(a.dtype), delta * (1 / sd).to(delta.dtype)
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
    per_example_norms = (torch.cat(norms) * scale).unsqueeze(0)
    return NoiseSums(batch, per_example_norms, scale, variance=(square / batch).unsqueeze(0), mean=mean.unsqueeze(0))


def noise(sums: NoiseSums, grads: Sequence[torch.Tensor] | torch.Tensor | None = None, buffers: Buffers | None = None) -> dict[str, torch.Tensor]:
    """pe_grad_norm, grad_noise_scale and gsnr of each of the L layers of `sums`, as (L,) float64
    device tensors. `grads`: the layers' gradients dL/dW, needed by the one-pass form, whose sums do
    not hold g_bar (a list of L tensors, or one tensor for L = 1); that form's mean square is
    consumed (overwritten in place). NaN (an empty cell) where a quantity does not exist: B < 2,
    g_bar = 0, no coordinate with a variance."""
    batch, scale = sums.examples, sums.scale
    if sums.mean is not None:
        g_bar = sums.mean  # (L, coordinates), float64
        g_bar_square = torch.linalg.vector_norm(g_bar, dim=1) ** 2 * scale * scale
        variance = sums.variance
        resolved = variance > 0
        signal = g_bar * g_bar
        ratio = torch.where(resolved, signal / torch.where(resolved, variance, 1.0), 0.0)
        gsnr = ratio.sum(dim=1) / resolved.sum(dim=1)  # 0 / 0: NaN, an empty cell, when nothing is counted
        excess = batch * variance.sum(dim=1) * scale * scale  # sum_n ||g_n||^2 - B ||g_bar||^2, with no cancellation
    else:
        assert grads is not None, "the one-pass sums need the layers' gradients"
        grads = [grads] if isinstance(grads, torch.Tensor) else list(grads)
        mean_square = sums.mean_square
        g_bar_square = norms_of([g.detach() for g in grads]) ** 2
        # g_bar in units of the scale B sa sd, in the sums' dtype, by two factors, 1 / (B sa) and
        # 1 / sd: |g_bar_j| <= B sa sd, so neither product overflows (their product as one factor
        # could, where the gradient vanishes) and every entry ends at most 1. The work is in place on the tensors this function owns (the stacked gradients, the sums'
        # mean square, which it consumes): on the CPU a fresh tensor of this size costs more than
        # the arithmetic on it. Masks are arithmetic (0 or 1), not torch.where, an order of
        # magnitude slower on the CPU at these sizes.
        signal = _stack([working(g.detach()) for g in grads], "signal", buffers).reshape(mean_square.shape)
        signal.mul_(_per_layer(1 / (scale / sums.delta_scale), signal)).mul_(_per_layer(1 / sums.delta_scale, signal)).square_()
        roundoff = sums.unit_roundoff
        k = 3 * batch * roundoff
        variance = mean_square.sub_(signal)
        sums.mean_square = None  # consumed
        # Within the rounding of the float32 sums (k = 3 B u of the mean square, Var_j + g_bar_j^2) a
        # variance is indistinguishable from 0 and the coordinate is left out:
        # kept where Var_j (1 - k) - k g_bar_j^2 > 0
        out = None if buffers is None else buffers.get_like("kept", tuple(variance.shape), variance)
        kept = torch.add(variance, signal, alpha=-k / (1 - k), out=out).clamp_(min=0).sign_()
        dims = tuple(range(1, kept.dim()))
        counted = kept.sum(dim=dims, dtype=torch.float64 if kept[0].numel() >= 2**24 else None).double()
        # a left-out coordinate is 0 / Var_j: 0, -0 or (Var_j = 0) NaN, which nansum skips
        gsnr = torch.nansum(signal.mul_(kept).div_(variance), dim=dims).double() / counted
        square_norms = (sums.norms * sums.norms).sum(dim=1)
        excess = square_norms - batch * g_bar_square
        excess = torch.where(excess > 3 * batch * roundoff * square_norms, excess, 0.0)
    if batch < 2:
        noise_scale = torch.full_like(excess, float("nan"))
    else:
        noise_scale = torch.where(g_bar_square > 0, excess / (batch - 1) / torch.where(g_bar_square > 0, g_bar_square, 1.0), float("nan"))
    return {"pe_grad_norm": sums.norms.mean(dim=1), "grad_noise_scale": noise_scale, "gsnr": gsnr}
