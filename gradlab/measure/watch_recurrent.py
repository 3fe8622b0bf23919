"""Time steps inside the user's nn.RNN, nn.LSTM and nn.GRU: `gradlab.watch(model, time=True)`.

On a measured step, the call a recurrent module makes to its fused kernel (torch.lstm, torch.gru,
torch.rnn_tanh, torch.rnn_relu; ops.OpTap hands it over) is run through gradlab's unrolled cells
(build/recurrent.py's RecurrentLayer.step) with the module's own Parameters, layer by layer and
direction by direction, as PyTorch's CPU kernel runs it (aten/src/ATen/native/RNN.cpp: the input
projection of every step at once, then the cell loop; a reverse direction over the reversed steps;
dropout between layers; the initial states the module was given). The cells are PyTorch's cell
operations in PyTorch's order, so outputs, final states and every gradient are the fused call's bit
for bit, and training is unchanged (tests/test_watch_recurrent.py trains watched and unwatched
copies and compares parameters with torch.equal). Each layer and direction is its own site,
`lstm.l0`, `lstm.l0_reverse`, `lstm.l1`, named after PyTorch's parameter suffixes, and its time
steps are measured by the recurrent probe's own code (TimeSteps below), as `gradlab run` measures its
recurrent stacks: timesteps.csv gets the same columns from the same kernels.

Where the unrolled cells would not compute what the module computes, they are not run, and the
module's fused call runs as it always does (`exact_unavailable` says why, and config.yaml's
`model.time` records it):

- not on the CPU (CUDA's cuDNN and native kernels round differently),
- an nn.LSTM on the CPU while oneDNN is on (its default) for float32 or bfloat16: nn.LSTM then runs
  oneDNN's fused kernel; `torch.backends.mkldnn.enabled = False` for the whole loop runs the cell
  loop the unrolled cells reproduce,
- packed sequences, and an nn.LSTM with proj_size (the unrolled cells have neither).

There, and everywhere else too, the input gradient per time step, input_delta_norm = ||dL/dx_t||, is
taken by a tensor hook on (an alias of) the module's input: it carries the gradient through the
module's whole recurrence, and it is the only time-step column the fused call allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.build.recurrent import RecurrentLayer
from gradlab.build.sites import Site
from gradlab.measure.pending import PendingMeasurement
from gradlab.measure.recurrent_probe import RecurrentProbe
from gradlab.vocab.quantities import SATURATION_THRESHOLD

EXACT = "exact: gradlab's unrolled cells with the module's own parameters (bit for bit the module's CPU kernel)"


@dataclass(frozen=True)
class RecurrentCall:
    """The arguments of one fused recurrent call, as nn.RNNBase.forward passes them (positionally):
    (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first), or for
    a packed sequence (data, batch_sizes, hx, weights, has_biases, num_layers, dropout, train, bidirectional)."""

    kind: str
    input: torch.Tensor
    batch_sizes: torch.Tensor | None
    hx: object
    weights: list[torch.Tensor]
    has_biases: bool
    num_layers: int
    dropout: float
    train: bool
    bidirectional: bool
    batch_first: bool

    @classmethod
    def parse(cls, kind: str, args: tuple, kwargs: dict) -> RecurrentCall | None:
        if kwargs or len(args) != 9:
            return None
        if isinstance(args[3], bool):  # padded: (input, hx, weights, has_biases, ...)
            return cls(kind, args[0], None, args[1], list(args[2]), *args[3:9])
        return cls(kind, args[0], args[1], args[2], list(args[3]), *args[4:9], False)

    def arguments(self) -> tuple:
        """The call's positional arguments (with this call's input)."""
        if self.batch_sizes is None:
            return (self.input, self.hx, self.weights, self.has_biases, self.num_layers, self.dropout, self.train, self.bidirectional, self.batch_first)
        return (self.input, self.batch_sizes, self.hx, self.weights, self.has_biases, self.num_layers, self.dropout, self.train, self.bidirectional)

    def with_input(self, value: torch.Tensor) -> RecurrentCall:
        return replace(self, input=value)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def steps(self) -> int:
        """T, the number of time steps."""
        if self.batch_sizes is not None:
            return len(self.batch_sizes)
        return self.input.shape[1] if self.batch_first else self.input.shape[0]


def layer_suffixes(module: nn.RNNBase) -> list[str]:
    """`l0`, `l0_reverse`, `l1`, ...: one per layer and direction, in the order of the module's
    weights (and of its states in hx), as PyTorch names its parameters."""
    directions = 2 if module.bidirectional else 1
    return [f"l{layer}" + ("_reverse" if d else "") for layer in range(module.num_layers) for d in range(directions)]


def kind_of(module: nn.RNNBase) -> str:
    return {"LSTM": "lstm", "GRU": "gru"}.get(module.mode, "rnn")


def exact_unavailable(call: RecurrentCall, module: nn.RNNBase) -> str | None:
    """Why the unrolled cells would not compute what this call computes (None: they would)."""
    x = call.input
    if x.device.type != "cpu":
        return (f"input gradient only: on {x.device.type} the module runs a fused kernel (cuDNN on CUDA) whose rounding the unrolled "
                "cells do not reproduce, so running them would change training")  # fmt: skip
    if call.batch_sizes is not None:
        return "input gradient only: a packed sequence (the unrolled cells run padded sequences only)"
    if getattr(module, "proj_size", 0):
        return f"input gradient only: proj_size={module.proj_size} (the unrolled cells have no projection)"
    if call.kind == "lstm" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
        return ("input gradient only: on the CPU nn.LSTM runs oneDNN's fused kernel for float32 and bfloat16, whose rounding the unrolled "
                "cells do not reproduce; set torch.backends.mkldnn.enabled = False for the whole loop to measure every time step exactly")  # fmt: skip
    if any(not isinstance(w, nn.Parameter) for w in call.weights):
        return "input gradient only: the module's weights are not its Parameters"
    return None


def cells(module: nn.RNNBase) -> list[RecurrentLayer]:
    """One gradlab cell per layer and direction whose Parameters are the module's own (the same
    objects: their gradients are the module's). Built on the meta device: no memory, no random draw."""
    kind = kind_of(module)
    activation = {"name": "relu" if module.mode == "RNN_RELU" else "tanh"} if kind == "rnn" else None
    directions = 2 if module.bidirectional else 1
    made = []
    for k, suffix in enumerate(layer_suffixes(module)):
        size = module.input_size if k < directions else module.hidden_size * directions
        with torch.device("meta"):
            cell = RecurrentLayer(kind, k, size, module.hidden_size, module.bias, activation)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if name.startswith("weight") or module.bias:
                setattr(cell, name, getattr(module, f"{name}_{suffix}"))
        made.append(cell)
    return made


def run_unrolled(call: RecurrentCall, layers: list[RecurrentLayer], sites: list[Site], tap) -> tuple:
    """The fused call's result (output, h_n[, c_n]) computed by the cells, tapping each layer's time
    steps at its site into `tap` (RNN.cpp's CPU path, step for step)."""
    directions = call.directions
    sequence = call.input.transpose(0, 1) if call.batch_first else call.input  # (T, B, features)
    if call.kind == "lstm":
        h0, c0 = call.hx[0].unbind(0), call.hx[1].unbind(0)
    else:
        h0, c0 = call.hx.unbind(0), [None] * len(layers)
    final_h, final_c = [], []
    for layer in range(call.num_layers):
        outputs = []
        for d in range(directions):
            k = layer * directions + d
            cell, site = layers[k], sites[k]
            cell.index, cell.site = site.layer, site
            projected = F.linear(sequence, cell.weight_ih, cell.bias_ih).unbind(0)  # W_ih x_t + b_ih for every t
            steps = len(projected)
            h, c = h0[k], c0[k]
            hidden: list[torch.Tensor] = [None] * steps  # type: ignore[list-item]
            for t in range(steps) if d == 0 else range(steps - 1, -1, -1):
                h, c = cell.step(projected[t], h, c, tap, t)
                hidden[t] = h
            out = torch.stack(hidden, 0)
            if tap is not None:
                tap.tensor(site, "output", f"{site.name} output", out)
            outputs.append(out)
            final_h.append(h)
            final_c.append(c)
        sequence = outputs[0] if directions == 1 else torch.cat(outputs, 2)
        if call.dropout and call.train and layer < call.num_layers - 1:
            sequence = torch.dropout(sequence, call.dropout, True)
    output = sequence.transpose(0, 1) if call.batch_first else sequence
    if call.kind == "lstm":
        return output, torch.stack(final_h, 0), torch.stack(final_c, 0)
    return output, torch.stack(final_h, 0)


class TimeSteps(RecurrentProbe):
    """The recurrent probe's time-step measurement (its Tap methods and its reductions, the same
    kernels), for the unrolled cells of the user's modules instead of a gradlab model's layers.

    RecurrentProbe's own constructor reads a gradlab model's declared layers; here the layers are
    declared as the measured forward pass meets them (`declare`), keyed by their layers.csv row, and
    the step's values go into the watch's PendingMeasurement (`begin`)."""

    def __init__(self, groups, saturation_threshold: float = SATURATION_THRESHOLD):
        self.groups = set(groups) & {"deltas", "activations"}
        self.saturation_threshold = saturation_threshold
        self.sites: dict[int, Site] = {}  # layer -> its site (RecurrentProbe indexes self.sites by layer)
        self._pending = PendingMeasurement()
        self._reset_step()

    def begin(self, pending: PendingMeasurement) -> None:
        """A new measured forward pass, whose values go into `pending`."""
        self._pending = pending
        self.sites = {}
        self._reset_step()

    def declare(self, site: Site) -> None:
        """A layer (one direction of one layer of a module) met in this pass."""
        self.sites[site.layer] = site

    def declare_time_site(self, site: Site) -> None:
        """A time step with a row in timesteps.csv even where no cell taps it (input gradient only)."""
        self._time_sites.setdefault(site.key, site)

    @property
    def tapped(self) -> bool:
        return bool(self._time_sites)

    def measure(self, pending: PendingMeasurement) -> None:
        """Reduce what forward and backward kept into `pending` (after the backward pass)."""
        if self._time_sites:
            self._measure_more(pending)
