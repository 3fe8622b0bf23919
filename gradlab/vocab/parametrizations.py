"""How a network's initialization, output multiplier and learning rates scale with its width, per
parametrization (`model.parametrization`): the one table that the model builder, the optimizer's
parameter groups and `gradlab theory` all read.

Every non-standard parametrization is stated relative to a base width (`model.base_width`): with
m = width / base_width, a layer's initializer variance is the variance the configured initializer
gives the layer *at the base width* times m^var, the head's input is multiplied by m^multiplier,
and the layer's learning rate is the configured lr times m^lr (its weight decay divided by the
same factor, so lr * weight_decay stays put, as microsoft/mup's optimizers do). At the base width
every parametrization is the standard one. `standard` touches nothing: the initializer draws at the
actual width and every layer takes the configured lr.

The layer roles (Yang & Hu 2021, "Tensor Programs IV", Table 3 and Table 8):
    input     the first block's weight: fan-in the input's size (fixed), fan-out the width
    hidden    every other block's weight: fan-in and fan-out both the width (times k*k for a conv)
    output    the head's weight: fan-in the width, fan-out the classes (fixed)
    vector    a parameter with one width dimension: the blocks' biases, a norm's gamma and beta,
              per-unit PReLU slopes
    fixed     a parameter without a width dimension: the head's bias, a single PReLU slope

`mup` is Table 8, the MuReadout form microsoft/mup implements (`MuReadout`, `set_base_shapes`,
`MuSGD`, `MuAdam`): the head's weight is drawn as at the base width and its input divided by m;
hidden weights have variance proportional to 1 / fan-in; Adam's lr is divided by m on hidden weights
only; SGD's lr is multiplied by m on input weights, vectors and the head's weight. `ntk` is the
neural tangent parametrization (W = omega / sqrt(fan_in), omega ~ N(0, sigma^2), lr on omega fixed)
written in the standard form the rows of layers.csv measure: variance proportional to 1 / fan-in
for hidden and output weights, SGD's lr divided by m there (dL/dW = dL/domega / sqrt(n) twice) and
Adam's by sqrt(m) (Adam's step on omega is lr-sized whatever the gradient's scale).

No torch, no pandas: the vocabulary floor.
"""

from __future__ import annotations

from dataclasses import dataclass

PARAMETRIZATIONS = ("standard", "ntk", "mup")
BASE_WIDTH = 64  # the default model.base_width: a width every shipped coordinate check starts at
WIDTH_SCALED_KINDS = ("mlp", "cnn")  # the kinds whose layers the roles below describe
ROLES = ("input", "hidden", "output", "vector", "fixed")


@dataclass(frozen=True)
class Scaling:
    """The exponents of m = width / base_width for one layer role under one parametrization."""

    var: float  # initializer variance: the configured initializer's at the base width, times m^var
    sgd_lr: float  # SGD's lr times m^sgd_lr
    adam_lr: float  # Adam's (and AdamW's) lr times m^adam_lr
    multiplier: float = 0.0  # the layer's input times m^multiplier in the forward pass (mup's head: -1)


_SAME = Scaling(0.0, 0.0, 0.0)
SCALINGS: dict[str, dict[str, Scaling]] = {
    "mup": {
        "input": Scaling(0.0, 1.0, 0.0),
        "hidden": Scaling(-1.0, 0.0, -1.0),
        "output": Scaling(0.0, 1.0, 0.0, multiplier=-1.0),
        "vector": Scaling(0.0, 1.0, 0.0),
        "fixed": _SAME,
    },
    "ntk": {
        "input": _SAME,
        "hidden": Scaling(-1.0, -1.0, -0.5),
        "output": Scaling(-1.0, -1.0, -0.5),
        "vector": _SAME,
        "fixed": _SAME,
    },
}

# The optimizers each parametrization defines a learning-rate rule for (adamw scales as adam).
OPTIMIZER_RULES = {"sgd": "sgd_lr", "adam": "adam_lr", "adamw": "adam_lr"}


def optimizers_defined(parametrization: str) -> tuple[str, ...]:
    """The optimizer names `parametrization` has a learning-rate rule for (every one for standard)."""
    return tuple(OPTIMIZER_RULES) if parametrization != "standard" else ()


def lr_exponent(parametrization: str, role: str, optimizer: str) -> float:
    """The exponent of m in the lr factor of a layer of `role` (0 for standard)."""
    if parametrization == "standard":
        return 0.0
    return getattr(SCALINGS[parametrization][role], OPTIMIZER_RULES[optimizer])


def scaling(parametrization: str, role: str) -> Scaling:
    return SCALINGS[parametrization][role] if parametrization != "standard" else _SAME
