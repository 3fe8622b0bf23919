"""Measurement sites: the places a model can be measured, declared by the model itself.

A model does not hand the probe a fixed tuple of tensors. It declares its measured layers — one
`Layer` per row of layers.csv, each with a `Site` (its row index, module name and kind) and the
weights and biases that belong to it — and during a forward pass it *taps* tensors at those sites
through the `Tap` protocol, naming each tensor's role:

    role            tensor                                         what a probe does with it
    preactivation   z, the linear/conv output                     delta_norm = ||dL/dz|| (a gradient hook)
    normalized      the norm's output (before or after the act)   nothing: located when non-finite
    activation      y = act(u), with u the activation's input     saturated / dead counts (see `activation`)
    output          what the block passes on (after pooling)      act_mean, act_std
    logits          the head's output                             delta_norm of the head
    branch          a residual block's branch output r (before α)  spp_branch_var
    stream          a residual block's stream x + α r (before      stream_delta_norm (a gradient hook),
                    pooling)                                       spp_sq_mean, spp_var

and, in recurrent layers (recurrent.py), at the site of each time step t:
    preactivation   a_t (lstm, gru: the gates' pre-activations;   delta_norm = ||dL/da_t|| (gru taps two
                    see recurrent.py)                              parts; their squared norms add)
    hidden          h_t, the hidden state after step t            hidden_delta_norm, hidden_norm
    cell            c_t, the lstm's cell state after step t       cell_delta_norm
    <gate>_gate     a gate's value (input_gate, forget_gate, ...)  <gate>_mean, <gate>_saturated_frac

A site is tapped at most once per forward pass; the probe refuses a second tap of the same site
and role instead of letting the last one win, so rows are never merged silently. Recurrent layers
tap the same roles once per time step, at sites that carry their step `t`.

Models tap nothing unless a tap is attached to their `TapSlot` (logged steps only), so a plain
step pays one attribute read per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

Role = Literal[
    "preactivation", "normalized", "activation", "output", "logits",
    # residual blocks (models.ResidualBlock)
    "branch", "stream",
    # recurrent layers, at the sites of their time steps (recurrent.py)
    "hidden", "cell", "input_gate", "forget_gate", "cell_gate", "output_gate", "reset_gate", "update_gate", "new_gate",
]  # fmt: skip


@dataclass(frozen=True)
class Site:
    """Where a measurement is taken: one row of layers.csv (and, with `t`, of timesteps.csv)."""

    layer: int  # 0 for the layer nearest the input, counting up; the head is last
    name: str  # module name: blocks.3, head
    kind: str  # hidden | head
    t: int | None = None  # time step of a recurrent layer; None for a feed-forward layer

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.layer, self.t)


@dataclass
class Layer:
    """A weight-bearing layer the model declares: its site, the module that owns its parameters, and
    its weight and bias by role ('' for a layer with one weight; a recurrent layer has 'ih' and 'hh')."""

    site: Site
    module: nn.Module  # every parameter below it belongs to this layer (norm and PReLU slopes too)
    weights: dict[str, nn.Parameter]
    biases: dict[str, nn.Parameter | None] = field(default_factory=dict)
    prefix: str = ""  # the module's path in the model: its parameters are named prefix.<name>

    @property
    def weight(self) -> nn.Parameter:
        return self.weights[""]

    @property
    def bias(self) -> nn.Parameter | None:
        return self.biases.get("")


class Tap(Protocol):
    """What a model calls while a probe (or the divergence locator) is attached."""

    def tensor(self, site: Site, role: Role, label: str, value: torch.Tensor) -> None:
        """`value` at `site` in `role`; `label` names it for a person (`blocks.3.linear output`)."""

    def activation(self, site: Site, act: nn.Module, activation: str, u: torch.Tensor, y: torch.Tensor) -> None:
        """The activation `act` (registered as `activation`) at `site` mapped u to y; units are dim 1."""


class TapSlot:
    """Where a model's blocks look for the tap of this step: one object shared by all blocks, so
    attaching is one attribute write, not one nn.Module.__setattr__ per block."""

    def __init__(self):
        self.tap: Tap | None = None
