"""What the component names of specs.py build, in torch: initializers that fill a tensor,
normalization layers, losses and optimizers, each a function looked up by its registered name.

The vocabulary (names, parameters, defaults, descriptions) is specs.py, which imports no torch;
activations have one record each in activations.py; what an initializer draws from (its variance
and mean, for the theory) is initializers.py. `implementations` checks at import that every name
of the vocabulary has exactly one function here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradlab.theory import activations as _activations
from gradlab.vocab import specs
from gradlab.vocab.registry import NoParams, SpecError, implementations
from gradlab.vocab.specs import (
    AdamParams, AdamWParams, BatchNormParams, ConstantParams, GainParams, GroupNormParams, KaimingParams, LayerNormParams,
    LRNParams, NormalParams, RMSpropParams, SGDParams, UniformParams, VarianceScalingParams,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------------


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(tensor)


def _needs_matrix(name: str):
    def check(tensor: torch.Tensor) -> None:
        if tensor.dim() < 2:
            raise SpecError(f"{name} needs a weight matrix (it uses fan-in/fan-out); for biases use zeros, constant, normal, uniform or default")

    return check


def _init_normal(p: NormalParams, t: torch.Tensor, act: dict) -> None:
    nn.init.normal_(t, p.mean, p.std)


def _init_uniform(p: UniformParams, t: torch.Tensor, act: dict) -> None:
    nn.init.uniform_(t, p.a, p.b)


def _gain(p: GainParams, act: dict) -> float:
    return _activations.gain(act) if p.gain == "auto" else float(p.gain)


def _init_xavier_normal(p: GainParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("xavier_normal")(t)
    nn.init.xavier_normal_(t, gain=_gain(p, act))


def _init_xavier_uniform(p: GainParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("xavier_uniform")(t)
    nn.init.xavier_uniform_(t, gain=_gain(p, act))


def _init_kaiming_normal(p: KaimingParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("kaiming_normal")(t)
    nn.init.kaiming_normal_(t, a=p.a, mode=p.mode, nonlinearity=p.nonlinearity)


def _init_kaiming_uniform(p: KaimingParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("kaiming_uniform")(t)
    nn.init.kaiming_uniform_(t, a=p.a, mode=p.mode, nonlinearity=p.nonlinearity)


def _init_lecun_normal(p: NoParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("lecun_normal")(t)
    fan_in, _ = _fans(t)
    nn.init.normal_(t, 0.0, 1.0 / math.sqrt(fan_in))


def _init_orthogonal(p: GainParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("orthogonal")(t)
    nn.init.orthogonal_(t, gain=_gain(p, act))


def _init_identity(p: GainParams, t: torch.Tensor, act: dict) -> None:
    if t.dim() != 2:
        raise SpecError("identity needs a weight matrix (for a recurrent layer's hidden-to-hidden weights: init.recurrent)")
    nn.init.eye_(t)
    t.mul_(_gain(p, act))


# Truncated N(0, 1) at +-2 has std 0.87962566103423978; dividing by it keeps the variance asked for
# (the constant JAX and Keras use for variance_scaling).
_TRUNC_STD = 0.87962566103423978


def _init_variance_scaling(p: VarianceScalingParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("variance_scaling")(t)
    fan_in, fan_out = _fans(t)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[p.mode]
    variance = p.scale / n
    if p.distribution == "normal":
        nn.init.normal_(t, 0.0, math.sqrt(variance))
    elif p.distribution == "uniform":
        limit = math.sqrt(3 * variance)
        nn.init.uniform_(t, -limit, limit)
    else:
        std = math.sqrt(variance) / _TRUNC_STD
        nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)


def _init_constant(p: ConstantParams, t: torch.Tensor, act: dict) -> None:
    nn.init.constant_(t, p.value)


def _init_zeros(p: NoParams, t: torch.Tensor, act: dict) -> None:
    nn.init.zeros_(t)


def _init_default(p: NoParams, t: torch.Tensor, act: dict) -> None:
    pass


def _init_fixup(p: NoParams, t: torch.Tensor, act: dict) -> None:
    # Fixup's "standard initialization" (He normal with the activation's gain); the model then
    # scales each branch's layers and zeroes their last and the head (models.Stack.initialize)
    _needs_matrix("fixup")(t)
    fan_in, _ = _fans(t)
    nn.init.normal_(t, 0.0, _activations.gain(act) / math.sqrt(fan_in))


# An initializer is `init(params, tensor, activation_spec)`: it fills `tensor` in place.
INITIALIZERS = implementations(specs.initializers, {
    "normal": _init_normal,
    "uniform": _init_uniform,
    "xavier_normal": _init_xavier_normal,
    "xavier_uniform": _init_xavier_uniform,
    "kaiming_normal": _init_kaiming_normal,
    "kaiming_uniform": _init_kaiming_uniform,
    "lecun_normal": _init_lecun_normal,
    "orthogonal": _init_orthogonal,
    "identity": _init_identity,
    "variance_scaling": _init_variance_scaling,
    "constant": _init_constant,
    "zeros": _init_zeros,
    "default": _init_default,
    "fixup": _init_fixup,
})


def apply_init(spec: dict[str, Any], tensor: torch.Tensor, activation: dict[str, Any]) -> None:
    with torch.no_grad():
        INITIALIZERS[specs.initializers.get(spec["name"]).name](specs.initializers.params_of(spec), tensor, activation)


# --------------------------------------------------------------------------------------------
# Normalizations
# --------------------------------------------------------------------------------------------


class _UnitsAsChannels(nn.Module):
    """Lets a channel-wise norm run on (batch, units) by treating units as channels of length 1."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.inner(x.unsqueeze(-1)).squeeze(-1)
        return self.inner(x)


def _norm_none(p: NoParams, width: int, conv: bool) -> nn.Module | None:
    return None


def _norm_batch(p: BatchNormParams, width: int, conv: bool) -> nn.Module:
    cls = nn.BatchNorm2d if conv else nn.BatchNorm1d
    return cls(width, eps=p.eps, momentum=p.momentum, affine=p.affine)


def _norm_layer(p: LayerNormParams, width: int, conv: bool) -> nn.Module:
    if conv:
        # GroupNorm with one group normalizes each example over (C, H, W) without fixing H and W.
        return nn.GroupNorm(1, width, eps=p.eps, affine=p.affine)
    return nn.LayerNorm(width, eps=p.eps, elementwise_affine=p.affine)


def _norm_group(p: GroupNormParams, width: int, conv: bool) -> nn.Module:
    if width % p.groups:
        raise SpecError(f"groups={p.groups} does not divide width={width}", "groups")
    return _UnitsAsChannels(nn.GroupNorm(p.groups, width, eps=p.eps, affine=p.affine))


def _norm_lrn(p: LRNParams, width: int, conv: bool) -> nn.Module:
    return _UnitsAsChannels(nn.LocalResponseNorm(p.size, alpha=p.alpha, beta=p.beta, k=p.k))


# A normalization is `norm(params, width, conv) -> module or None`.
NORMS = implementations(specs.norms, {
    "none": _norm_none,
    "batchnorm": _norm_batch,
    "layernorm": _norm_layer,
    "groupnorm": _norm_group,
    "lrn": _norm_lrn,
})


def build_norm(spec: dict[str, Any], width: int, conv: bool) -> nn.Module | None:
    return NORMS[specs.norms.get(spec["name"]).name](specs.norms.params_of(spec), width, conv)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _one_hot(y: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    return nn.functional.one_hot(y, classes).to(dtype)


# A loss is `loss(logits (B, C), labels (B,)) -> scalar`, the batch mean that is back-propagated.


def _loss_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y)


def _loss_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    target = _one_hot(y, logits.shape[1], logits.dtype)
    per_unit = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_unit.sum(dim=1).mean()


def _loss_mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.is_floating_point():  # a regression target per example (adding): one output per target
        return ((logits - y.reshape(logits.shape).to(logits.dtype)) ** 2).sum(dim=1).mean()
    target = _one_hot(y, logits.shape[1], logits.dtype)
    return ((logits - target) ** 2).sum(dim=1).mean()


LOSSES = implementations(specs.losses, {
    "cross_entropy": _loss_ce,
    "bce": _loss_bce,
    "mse": _loss_mse,
})


def get_loss(name: str):
    return LOSSES[specs.losses.get(name).name]


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def _opt_sgd(p: SGDParams, params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay)


def _opt_adam(p: AdamParams, params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay)


def _opt_adamw(p: AdamWParams, params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay)


def _opt_rmsprop(p: RMSpropParams, params) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=p.lr, alpha=p.alpha, eps=p.eps, momentum=p.momentum, weight_decay=p.weight_decay)


OPTIMIZERS = implementations(specs.optimizers, {
    "sgd": _opt_sgd,
    "adam": _opt_adam,
    "adamw": _opt_adamw,
    "rmsprop": _opt_rmsprop,
})


def build_optimizer(spec: dict[str, Any], params) -> torch.optim.Optimizer:
    return OPTIMIZERS[specs.optimizers.get(spec["name"]).name](specs.optimizers.params_of(spec), params)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules (optim.schedule)
# --------------------------------------------------------------------------------------------


def _schedule_step(p, k: int, total: int) -> float:
    return p.gamma ** (k // p.step_size)


def _schedule_exponential(p, k: int, total: int) -> float:
    return p.gamma**k


def _schedule_cosine(p, k: int, total: int) -> float:
    steps = p.steps or max(total, 1)
    return p.min_factor + (1 - p.min_factor) * (1 + math.cos(math.pi * min(k, steps) / steps)) / 2


def _schedule_warmup(p, k: int, total: int) -> float:
    return min(1.0, (k + 1) / p.warmup_steps)


# A schedule is `factor(params, k, total_steps)`: the lr of update k (0 for the first) over the configured lr.
SCHEDULES = implementations(specs.schedules, {
    "step": _schedule_step,
    "exponential": _schedule_exponential,
    "cosine": _schedule_cosine,
    "warmup": _schedule_warmup,
})


def schedule_factor(spec: dict[str, Any] | None, k: int, total_steps: int) -> float:
    """The factor the configured lr is multiplied by for update k (0-based); 1 without a schedule."""
    if spec is None:
        return 1.0
    return SCHEDULES[specs.schedules.get(spec["name"]).name](specs.schedules.params_of(spec), k, total_steps)
