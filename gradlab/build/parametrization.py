"""`model.parametrization` in torch: the initializer variances, the head's multiplier and the
optimizer's per-layer learning rates of an MLP or CNN, as the table of vocab/parametrizations.py says.

    apply_parametrization(model, cfg)      after model.initialize: each weight and bias rescaled to
                                           the variance its role asks for; the head's input divisor
    parameter_groups(model, cfg, optim)    the optimizer's parameter groups, lr and weight decay
                                           scaled per role (model.parameters() for standard)

A weight's target variance is the configured initializer's variance at the base width
(theory/parametrization.py's variance_factor, from the initializers' stated variances) times m^var, m = width /
base_width; the drawn tensor is multiplied by sqrt(target / drawn variance), so the draw itself (and
the random stream) is the standard one. With PyTorch's default init this is exactly what
microsoft/mup's `set_base_shapes` does to a model with a `MuReadout` head: hidden weights unchanged
(their variance is already 1/(3 fan_in)), every bias and the head's weight multiplied by
sqrt(fan-in multiplier).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gradlab.config.experiment import ModelConfig
from gradlab.theory.parametrization import variance_factor
from gradlab.vocab.parametrizations import lr_exponent, scaling


def width_mult(cfg: ModelConfig) -> float:
    return cfg.width / cfg.base_width


def weight_roles(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(role, linear or conv module) of every weight-bearing layer, input side first: the first
    block's is `input`, the other blocks' `hidden`, the head's `output`."""
    blocks = [block.linear for block in model.blocks]
    return [("input" if k == 0 else "hidden", module) for k, module in enumerate(blocks)] + [("output", model.head)]


def apply_parametrization(model: nn.Module, cfg: ModelConfig) -> None:
    """Rescale the initialized weights and biases of an MLP or CNN to `cfg.parametrization`."""
    if cfg.parametrization == "standard":
        return
    with torch.no_grad():
        for role, module in weight_roles(model):
            spec = cfg.init.head if module is model.head and cfg.init.head is not None else cfg.init.weight
            shape = tuple(module.weight.shape)
            factor = variance_factor(spec, shape, role, cfg.width, cfg.base_width, cfg.activation, scaling(cfg.parametrization, role).var)
            if factor != 1.0:
                module.weight.mul_(factor)
            if module.bias is not None:  # a bias's variance is its init's at the base width (PyTorch's default reads the weight's fan-in)
                factor = variance_factor(cfg.init.bias, shape, role, cfg.width, cfg.base_width, cfg.activation, 0.0)
                if factor != 1.0:
                    module.bias.mul_(factor)


def head_divisor(cfg: ModelConfig) -> float | None:
    """What the head's input is divided by (mup: m, MuReadout's 1/width_mult), None for none."""
    exponent = scaling(cfg.parametrization, "output").multiplier
    return width_mult(cfg) ** -exponent if exponent else None


def parameter_roles(model: nn.Module, cfg: ModelConfig) -> list[tuple[str, nn.Parameter]]:
    """(role, parameter) for every parameter of the model, in model.parameters() order."""
    roles: dict[int, str] = {}
    for role, module in weight_roles(model):
        roles[id(module.weight)] = role
        if module.bias is not None:
            roles[id(module.bias)] = "fixed" if role == "output" else "vector"
    out = []
    for p in model.parameters():
        role = roles.get(id(p))
        if role is None:  # a norm's gamma and beta, PReLU slopes: one entry per unit is a vector, else fixed
            role = "vector" if p.dim() == 1 and p.numel() == cfg.width else "fixed"
        out.append((role, p))
    return out


def parameter_groups(model: nn.Module, cfg: ModelConfig, optim: dict) -> Iterable:
    """The optimizer's parameters: model.parameters() for standard, else one group per learning-rate
    factor m^exponent (lr times it, weight_decay divided by it), the group of factor 1 first."""
    if cfg.parametrization == "standard":
        return model.parameters()
    m = width_mult(cfg)
    by_exponent: dict[float, list[nn.Parameter]] = {}
    for role, p in parameter_roles(model, cfg):
        by_exponent.setdefault(lr_exponent(cfg.parametrization, role, optim["name"]), []).append(p)
    groups = []
    for exponent in sorted(by_exponent, key=lambda e: (e != 0, e)):
        # divided where the factor is below 1, as mup's optimizers divide (the same float)
        up, down = (m**exponent, 1.0) if exponent >= 0 else (1.0, m**-exponent)
        group = {"params": by_exponent[exponent], "lr": optim["lr"] * up / down}
        if optim.get("weight_decay"):
            group["weight_decay"] = optim["weight_decay"] * down / up
        groups.append(group)
    return groups
