"""One kernel per quantity: the functions that compute what `gradlab.vocab.quantities` declares.

gradlab's probe (feed-forward layers), the recurrent probe (recurrent layers and their time steps)
and `watch` (the Linear and convolution calls of anyone's model) call these and nothing else, so the
same tensor gives the same number whoever measures it. `KERNELS` maps every measured quantity to
the kernel that computes it; `tests/test_measure_kernels.py` checks that each declared quantity has
one and that each kernel agrees with an independent computation.

A kernel returns tensors on the device and never reads them: the probe gathers a step's values
(pending.py) and moves them to the host in one transfer, where a value is divided by its divisor.
Every norm goes through norms.py, so none underflows or overflows while the entries are finite.

Shapes. Dimension 0 of an activation or of its gradient holds the B examples. Units are
dimension 1 for gradlab's own blocks and for convolutions (B, C, *positions), the last dimension for
a Linear applied to a sequence (B, *positions, features); every other dimension is a position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from gradlab.build.recurrent import GATE_ACTIVATION
from gradlab.measure import jacobian, noise, spectrum
from gradlab.measure.norms import float32_held, norm, norm_of, norm_rows, norms
from gradlab.theory.activations import region_counts, saturation_mask

UNITS_FIRST, UNITS_LAST = 1, -1  # where the units are in a (B, ...) tensor
DACT_SQUARE_MEAN = "dact_square_mean"  # not a column: mean f'(u)^2, the square of dact_factor's rms(f')


class Measured(NamedTuple):
    """One site's value of one quantity, as the probe hands it to the step's pending measurement:
    the host reports value / divisor, or (divisor - value) / divisor for a `complement` (a count of
    what is active, reported as the share that is not); `positives`: value is a vector whose
    entries > 0 are counted (counted for all sites of the step at once). A tuple: a logged step
    makes hundreds, and a frozen dataclass costs several times more to make."""

    quantity: str
    value: torch.Tensor
    divisor: float = 1.0
    complement: bool = False
    positives: bool = False


# -- the back-propagated signal ------------------------------------------------------------------


def delta(grad: torch.Tensor, units: int = UNITS_FIRST) -> list[Measured]:
    """delta_norm = ||g|| and delta_rms = sqrt(B) * || sum over positions of |g| || of a
    pre-activation's gradient g = dL/dz (B examples; `units`: which dimension holds the units). With
    one position (an MLP, the logits) the second norm is the first."""
    total = norm(grad)
    measured = [Measured("delta_norm", total)]
    if grad.dim() < 2:
        return measured
    per_unit = total
    if grad.dim() > 2:
        unit_dim = units % grad.dim()
        positions = tuple(d for d in range(1, grad.dim()) if d != unit_dim)
        per_unit = norm(grad.abs().sum(dim=positions))
    return measured + [Measured("delta_rms", per_unit, 1 / math.sqrt(grad.shape[0]))]


def step_delta(part_norms: torch.Tensor) -> torch.Tensor:
    """delta_norm at one time step, ||dL/da_t||, from the norms of the parts a_t is tapped in (one;
    gru: its reset and update gates (B, 2H) and its new gate (B, H), disjoint units)."""
    return norm_of(part_norms)


def delta_through_time(step_norms: torch.Tensor, steps: Sequence[Sequence[torch.Tensor]]) -> list[Measured]:
    """A recurrent layer's delta_norm and delta_rms in layers.csv, over its T time steps, which are
    its positions: delta_norm = sqrt(sum_t ||dL/da_t||^2) from the steps' norms, and delta_rms =
    sqrt(B) * || sum_t |dL/da_t| || from the gradients themselves (`steps`: the parts at each t)."""
    total = norm_of(step_norms)
    per_part = [torch.stack([parts[j].abs() for parts in steps]).sum(dim=0) for j in range(len(steps[0]))]
    per_unit = norm_of(norms(per_part))
    return [Measured("delta_norm", total), Measured("delta_rms", per_unit, 1 / math.sqrt(steps[0][0].shape[0]))]


def input_delta_norms(grad: torch.Tensor, batch_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """input_delta_norm, ||dL/dx_t|| over the batch, of each t at once: `grad` is dL/dx time-major
    (T, B, features), or a packed sequence's (sum_t B_t, features) with its `batch_sizes` B_t."""
    if batch_sizes is None:
        return norm_rows(grad)
    return norms(list(grad.split(list(batch_sizes))))


def hidden_norms(stacked: torch.Tensor) -> torch.Tensor:
    """hidden_norm, ||h_t|| over the batch, of each (layer, t) at once: `stacked` is (steps, B, H)."""
    return norm_rows(stacked)


def gate_statistics(gate: str, stacked: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """<gate>_mean and the count behind <gate>_saturated_frac of each (layer, t) at once, from a gate's
    values stacked (steps, B, H): the mean, and how many (example, unit) pairs have a derivative
    below `threshold` times its largest (divided by B * H on the host)."""
    saturated = saturation_mask(GATE_ACTIVATION[gate], None, stacked, stacked, threshold)
    return stacked.mean(dim=(1, 2)), saturated.sum(dim=(1, 2))


# -- activations -----------------------------------------------------------------------------------


def moments(value: torch.Tensor, mean_name: str, std_name: str) -> list[Measured]:
    """The mean and population standard deviation of `value` over every entry (act_mean/act_std
    of a block's output, preact_mean/preact_std of an activation's input). Two passes, the mean and
    then the norm of the deviations: as stable as torch.std_mean and much faster on the CPU."""
    mean = value.mean()
    return [Measured(mean_name, mean), Measured(std_name, norm(value - mean), math.sqrt(value.numel()))]


def coordinate_sizes(value: torch.Tensor) -> list[Measured]:
    """act_l1 and act_rms of a block's output (or the logits): mean |x| and sqrt(mean x^2) over
    every entry, the coordinate sizes of a coordinate check (mup's `l1` is the first)."""
    n = value.numel()
    return [Measured("act_l1", value.abs().sum(), n), Measured("act_rms", norm(value), math.sqrt(n))]


def update_rms(change_norms: torch.Tensor, groups: Sequence[Sequence[int]], entries: Sequence[int]) -> tuple[torch.Tensor, list[float]]:
    """update_rms of each layer, as (norms, divisors): the norm of its weights' change together
    (`combined`) over sqrt of their entries."""
    sizes = [math.sqrt(sum(entries[k] for k in group)) for group in groups]
    return combined(change_norms, groups), sizes


def activation_regions(activation: str, act: nn.Module, u: torch.Tensor, y: torch.Tensor, threshold: float) -> list[Measured]:
    """dact_mean, inactive_frac, saturated_frac and dead_frac of an activation y = act(u) (units in
    dimension 1): counts over its (example, unit) pairs, or units for dead_frac, in one pass. The
    rules of each activation are its Regions (gradlab.theory.activations)."""
    n = u.numel()
    if activation == "relu":
        # relu' is 1 exactly where y > 0, else 0. Count those as the sum of sign(y) (0 or 1; a float
        # sum of ones is exact below 2^24): 4x cheaper than (y > 0).sum(), which converts the mask
        # to int64 first; it is also the sum of |relu'|. A unit is alive where its largest y is > 0;
        # those maxima are counted for all layers at once when the step is fetched.
        active = y.sign().sum() if y.numel() < 2**24 else (y > 0).sum()
        unit_maxima = y.amax(dim=(0, *range(2, y.dim())))  # (C,): a unit is a channel in a CNN
        return [
            Measured("inactive_frac", active, n, complement=True),
            Measured("dact_mean", active, n),
            Measured(DACT_SQUARE_MEAN, active, n),  # relu'^2 = relu'
            Measured("dead_frac", unit_maxima, u.shape[1], complement=True, positives=True),
        ]
    counts = region_counts(activation, act, u, y, threshold)
    measured = [Measured("dact_mean", counts["dact"], n), Measured(DACT_SQUARE_MEAN, counts["dact_sq"], n)]
    if "inactive" in counts:
        measured.append(Measured("inactive_frac", counts["inactive"], n))
    if "saturated" in counts:
        measured.append(Measured("saturated_frac", counts["saturated"], n))
    return measured + [Measured("dead_frac", counts["alive"], u.shape[1], complement=True)]


def bn_stat_distance(module: nn.Module, x: torch.Tensor) -> list[Measured]:
    """BatchNorm's x_batch - x_running before gamma and beta, as a root mean square over (example,
    channel, position), from the batch's and the running statistics (the closed form in quantities)."""
    var, mean = torch.var_mean(x, dim=(0, *range(2, x.dim())), correction=0)  # what training normalizes with
    batch = torch.rsqrt(var + module.eps)
    running = torch.rsqrt(module.running_var + module.eps)
    square = var * (batch - running) ** 2 + (mean - module.running_mean) ** 2 * running**2
    return [Measured("bn_stat_distance", square.mean().sqrt())]


def signal_propagation(value: torch.Tensor, role: str) -> list[Measured]:
    """The Signal Propagation Plot statistics (Brock, De & Smith 2021) of a residual stream x_(l+1)
    (spp_sq_mean, spp_var) or branch output (spp_branch_var): per-channel mean and population
    variance over the batch and positions, averaged over channels."""
    var, mean = torch.var_mean(value, dim=(0, *range(2, value.dim())), correction=0)  # (channels,)
    if role == "stream":
        return [Measured("spp_sq_mean", (mean * mean).mean()), Measured("spp_var", var.mean())]
    return [Measured("spp_branch_var", var.mean())]


# -- parameters ------------------------------------------------------------------------------------


def combined(per_tensor: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """The norm of each group of tensors together (a layer's weights: W_ih and W_hh of a recurrent
    layer, the Frobenius norm of [W_ih W_hh]) from the tensors' norms; a group of one is its norm
    (a feed-forward stack's layers: one indexing for all of them)."""
    groups = [list(group) for group in groups]
    if all(len(group) == 1 for group in groups):
        return per_tensor[[group[0] for group in groups]]
    return torch.stack([norm_of(per_tensor[group]) for group in groups])


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator of norms (update_ratio = ||W_after - W_before|| / ||W_before||): in
    float32 where both are float32 norms in the safe range, as float32 always computed it, else in
    float64 (a norm that float32 could not hold, or of float64 tensors)."""
    narrow = (numerator.float() / denominator.float()).double()
    wide = numerator.double() / denominator.double()
    return torch.where(float32_held(numerator) & float32_held(denominator), narrow, wide)


def weight_scale(weights: Sequence[torch.Tensor], known_norms: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """||W||_F / sqrt(n_out) of each weight, n_out its rows (a Linear's outputs, a convolution's
    output channels), as (norms, divisors): sqrt(fan_in * var(w)), the factor by which W^T scales a
    random vector's norm (E||W^T d||^2 = ||W||_F^2 / n_out * ||d||^2 for W with i.i.d. entries).
    `known_norms`: the weights' `norms`, where the step has measured them already."""
    measured = known_norms if known_norms is not None else norms([w.detach() for w in weights])
    return measured, [math.sqrt(w.shape[0]) for w in weights]


def dact_factor(dact_square_mean: float, next_weight_scale: float) -> float:
    """dact_factor of a layer (on the host): rms(f'(u)) times the next layer's weight_scale, the
    factor by which the back-propagated signal changes from layer l+1 to layer l in a wide random
    network (||d_l||^2 = mean f'^2 * ||W_(l+1)^T d_(l+1)||^2); for one unit and one example exactly
    |w| |f'(u)|."""
    return math.sqrt(dact_square_mean) * next_weight_scale


# -- the index -------------------------------------------------------------------------------------

Kernel = Callable[..., object]

# Every measured quantity -> the kernel that computes it. The parameter norms (weight_norm and the
# gradient norms, by family, and the normalization layer's gamma and beta) are `norms` over the
# tensors, combined per layer by `combined`; update ratios are `ratio` of two such norms.
KERNELS: dict[str, Kernel] = {
    "weight_norm": norms, "weight_grad_norm": norms, "bias_grad_norm": norms,
    "norm_weight_norm": norms, "norm_bias_norm": norms, "norm_weight_grad_norm": norms, "norm_bias_grad_norm": norms,
    "ih_weight_norm": norms, "ih_weight_grad_norm": norms, "ih_bias_grad_norm": norms,
    "hh_weight_norm": norms, "hh_weight_grad_norm": norms, "hh_bias_grad_norm": norms,
    "update_ratio": ratio, "ih_update_ratio": ratio, "hh_update_ratio": ratio,
    "prelu_slope_mean": torch.mean,
    "delta_norm": delta, "delta_rms": delta,  # a recurrent layer's: delta_through_time
    "stream_delta_norm": norm,
    "act_mean": moments, "act_std": moments, "preact_mean": moments, "preact_std": moments,
    "act_l1": coordinate_sizes, "act_rms": coordinate_sizes, "update_rms": update_rms,
    "dact_mean": activation_regions, "inactive_frac": activation_regions, "saturated_frac": activation_regions,
    "dead_frac": activation_regions,
    "dact_factor": dact_factor,
    "bn_stat_distance": bn_stat_distance,
    "spp_sq_mean": signal_propagation, "spp_var": signal_propagation, "spp_branch_var": signal_propagation,
    # the noise group: sums over the examples' gradients (noise.py: stacked_linear_sums, linear_sums,
    # conv2d_sums, call_sums), then their columns, for L layers at once
    "pe_grad_norm": noise.noise, "grad_noise_scale": noise.noise, "gsnr": noise.noise,
    # the spectrum group, of each layer's weight matrix (spectrum.py; LayerSpectra batches them per step)
    "weight_sv_max": spectrum.sv_max, "weight_stable_rank": spectrum.stable_rank, "weight_alpha": spectrum.weight_alpha,
}  # fmt: skip

# timesteps.csv's quantities, at a recurrent layer's time step t.
TIME_STEP_KERNELS: dict[str, Kernel] = {
    "delta_norm": step_delta, "hidden_delta_norm": norms, "cell_delta_norm": norms, "hidden_norm": hidden_norms,
    "input_delta_norm": input_delta_norms,
    "saturated_frac": activation_regions,
    **{f"{gate}_{stat}": gate_statistics for gate in GATE_ACTIVATION for stat in ("mean", "saturated_frac")},
}  # fmt: skip

# jacobian.csv's quantities (log.jacobian): one pass of forward- and reverse-mode products gives them
# together, for every hidden block of a stack (jacobian.py).
JACOBIAN_KERNELS: dict[str, Kernel] = {q: jacobian.jacobian_spectrum for q in ("m1", "m2", "s2", "sv_max", "probes")}
