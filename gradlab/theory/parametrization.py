"""What `model.parametrization` does to each layer, from the config alone (numpy only): the factor
a drawn weight or bias is multiplied by, the variances and σw² that result, the head's multiplier
and each layer's learning-rate factor. The table is vocab/parametrizations.py; build/parametrization.py
applies these same factors to the tensors, and `gradlab theory` prints `layer_table`.

σw² is fan_in times the variance of one entry (the mean-field convention, theory/mean_field.py);
for the head under mup it is stated for the effective weight W / m that the head applies to its input.
"""

from __future__ import annotations

import math
from typing import Any

from gradlab.theory import initializers
from gradlab.vocab.datasets import known_input_shape
from gradlab.vocab.parametrizations import lr_exponent, optimizers_defined, scaling

# Which dimensions of a weight of each role are the width (the rest stay as they are at any width).
WIDTH_DIMS = {"input": (0,), "hidden": (0, 1), "output": (1,)}


def fans(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """PyTorch's fan_in and fan_out of a weight of `shape`, and its receptive field."""
    field = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * field, shape[0] * field, field


def base_shape(shape: tuple[int, ...], role: str, base_width: int) -> tuple[int, ...]:
    """The shape the weight of `role` has at the base width."""
    return tuple(base_width if k in WIDTH_DIMS[role] else size for k, size in enumerate(shape))


def variance_factor(spec: Any, shape: tuple[int, ...], role: str, width: int, base_width: int, activation: Any, exponent: float) -> float:
    """What an entry drawn by `spec` for a weight (or, with the weight's shape, its bias) of `shape`
    is multiplied by so that its variance is the initializer's at the base width times m^exponent,
    m = width / base_width (1 where the initializer's variance is 0: zeros, a constant)."""

    def var(of: tuple[int, ...]) -> float:
        fan_in, fan_out, field = fans(of)
        return initializers.variance(spec, fan_in, fan_out, activation, receptive_field=field)

    drawn = var(shape)
    if drawn == 0:
        return 1.0
    return math.sqrt(var(base_shape(shape, role, base_width)) * (width / base_width) ** exponent / drawn)


def weight_shapes(exp: Any) -> dict[str, tuple[int, ...]]:
    """The weight shape of one layer of each role (the first block, a hidden block, the head); the
    first block's is left out where the data's shape is known only from its file (npz, csv)."""
    model, k = exp.model, (exp.model.kernel_size,) * 2 if exp.model.kind == "cnn" else ()
    shapes = {}
    known = known_input_shape(exp.data)
    if known is not None:
        shapes["input"] = (model.width, math.prod(known) if model.kind == "mlp" else known[0], *k)
    if model.depth > 1:
        shapes["hidden"] = (model.width, model.width, *k)
    shapes["output"] = (exp.data.classes, model.width)
    return shapes


def init_factor(exp: Any, role: str, shape: tuple[int, ...], bias: bool = False) -> float:
    """The factor the parametrization multiplies a drawn weight of `role` and `shape` (or, `bias`,
    that layer's bias) by; 1 for standard."""
    model = exp.model
    if model.parametrization == "standard":
        return 1.0
    spec = model.init.bias if bias else (model.init.head if role == "output" and model.init.head is not None else model.init.weight)
    exponent = 0.0 if bias else scaling(model.parametrization, role).var
    return variance_factor(spec, shape, role, model.width, model.base_width, model.activation, exponent)


def layer_table(exp: Any) -> list[dict[str, Any]]:
    """One row per layer role of an MLP or CNN: what the parametrization does to it (for
    `gradlab theory`): the variance factor of its draw, its σw² (with the head's multiplier), the
    multiplier, and the lr factor for the config's optimizer."""
    model = exp.model
    m = model.width / model.base_width
    optimizer = exp.optim["name"]
    rows = []
    for role, shape in weight_shapes(exp).items():
        fan_in, fan_out, field = fans(shape)
        spec = model.init.head if role == "output" and model.init.head is not None else model.init.weight
        drawn = initializers.variance(spec, fan_in, fan_out, model.activation, receptive_field=field)
        factor = init_factor(exp, role, shape)
        rule = scaling(model.parametrization, role)
        multiplier = m**rule.multiplier if model.parametrization != "standard" else 1.0
        defined = model.parametrization == "standard" or optimizer in optimizers_defined(model.parametrization)
        rows.append({
            "role": role, "fan_in": fan_in, "fan_out": fan_out,
            "variance_standard": drawn, "variance": drawn * factor**2, "multiplier": multiplier,
            "sigma_w2_standard": fan_in * drawn, "sigma_w2": fan_in * drawn * factor**2 * multiplier**2,
            "var_exponent": rule.var, "lr_factor": m ** lr_exponent(model.parametrization, role, optimizer) if defined else None,
        })  # fmt: skip
    for role in ("vector", "fixed"):
        rows.append({"role": role, "lr_factor": m ** lr_exponent(model.parametrization, role, optimizer) if model.parametrization != "standard" else 1.0})
    return rows


