"""Recurrent stacks: `rnn`, `lstm` and `gru`, unrolled one time step at a time so that every step's
tensors can be measured.

`depth` recurrent layers of `width` units read a sequence x of shape (B, T, features), batch first;
layer k > 0 reads layer k-1's hidden states. A linear `head` reads the last layer's hidden state at
the last step (`readout: last`, logits (B, classes)) or at every step (`readout: every`, logits
(B, classes, T): the layout PyTorch's cross_entropy takes for a label per step). The initial states
h_{-1} and c_{-1} are zero, as in PyTorch.

The equations, gate order and parameter names are PyTorch's, so a layer's state_dict is that of
nn.RNNCell / nn.LSTMCell / nn.GRUCell, and `layers.k.weight_ih` is nn.LSTM's `weight_ih_l{k}`
(`load_torch_state` / `torch_state` convert; tests/test_recurrent.py proves outputs and gradients
equal nn.RNN, nn.LSTM and nn.GRU with the same weights). With W_ih x_t + b_ih computed for all t
at once (as PyTorch does):

    rnn   a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh                 h_t = f(a_t)
    lstm  a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh  (4H: i, f, g, o)
          i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
          c_t = f * c_{t-1} + i * g                               h_t = o * tanh(c_t)
    gru   (r, z, n parts of W_ih x_t + b_ih and of W_hh h_{t-1} + b_hh: gi, gh)
          a_r = gi_r + gh_r;  a_z = gi_z + gh_z;  a_n = gi_n + r * gh_n
          r, z = sigmoid(a_r), sigmoid(a_z);  n = tanh(a_n)       h_t = (1 - z) * n + z * h_{t-1}

The pre-activation a_t of a time step, whose gradient is its `delta_norm`, is what the layer's
nonlinearities read: for rnn the activation's input; for lstm all four gates' pre-activations
(i, f, g, o; 4H per example); for gru the three gates' pre-activations (a_r, a_z, a_n; 3H), with
a_n read *after* the reset gate scales gh_n (it is what tanh reads). The GRU's a_n depends on r,
so its a_t is tapped in two parts (a_r and a_z together, then a_n), and
||dL/da_t||^2 = ||dL/d(a_r, a_z)||^2 + ||dL/da_n||^2.

Initialization (see `initialize`): `init.weight` fills the input-to-hidden weights and the head's,
`init.recurrent` the hidden-to-hidden weights, `init.bias` every bias; every initializer is
applied to each gate's own block (H x features, H x H), so `orthogonal` makes each gate's
recurrent matrix orthogonal and `identity` each one the identity. `forget_bias` (lstm) then sets
the forget gate's *total* bias: bias_ih's forget slice is set to the value and bias_hh's forget
slice to 0 (only their sum ever acts). Its default, null, sets nothing, as nn.LSTM has no such
setting: the forget slices keep init.bias's values (a total of exactly 0 with `zeros`; with
`default`, PyTorch's two U(-1/sqrt(H), 1/sqrt(H)) draws per unit, mean 0). Not 0 by default: that
would overwrite what init.bias made of one gate of every lstm, and so not be PyTorch's init.

Measuring (sites.py): each layer taps, at Site(layer, name, 'hidden', t) for every t, the
pre-activation a_t ('preactivation'), h_t ('hidden'), c_t ('cell', lstm), each gate's value
('<gate>_gate'), and for rnn the activation (u = a_t, y = h_t). At its own layer site (t None) it
taps the whole output sequence ('output'). Nothing is tapped on a plain step, and on the CPU a plain
step runs the whole stack through PyTorch's fused call instead (Recurrent._fused_forward), which
computes the unrolled steps' numbers bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.theory.activations import build as build_activation
from gradlab.build.components import apply_init
from gradlab.vocab.quantities import GATES
from gradlab.build.sites import Layer, Site, TapSlot

# The gates of each kind in PyTorch's order (the row blocks of weight_ih / weight_hh) are
# quantities.GATES (their columns are declared there); here, the nonlinearity each gate's value
# comes from (which decides what "saturated" means for it).
GATE_ACTIVATION: dict[str, str] = {
    "input": "sigmoid", "forget": "sigmoid", "cell": "tanh", "output": "sigmoid",
    "reset": "sigmoid", "update": "sigmoid", "new": "tanh",
}  # fmt: skip
BLOCKS: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}  # row blocks of the weight matrices
DEFAULT_INIT = "default"


class RecurrentLayer(nn.Module):
    """One unrolled recurrent layer; its parameters are named as nn.RNNCell/LSTMCell/GRUCell's."""

    def __init__(self, kind: str, index: int, input_size: int, width: int, bias: bool, activation: dict[str, Any] | None):
        super().__init__()
        self.kind, self.index, self.width = kind, index, width
        rows = BLOCKS[kind] * width
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, width))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if kind == "rnn":
            self.act = build_activation(activation, width)
            self.activation = activation["name"]
        self.site = Site(index, f"layers.{index}", "hidden")
        self.slot = TapSlot()  # replaced by the model's shared slot
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's own initialization of its recurrent modules: every weight and bias U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.width)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def time_site(self, t: int) -> Site:
        return Site(self.index, self.site.name, "hidden", t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, input_size) -> hidden states (B, T, width): a view of the time-major (T, B, width)
        stack of h_t, the layout PyTorch's fused call returns (the next layer reads it time-major)."""
        batch = x.shape[0]
        # Time-major, and F.linear on the transposed view, as PyTorch's CPU stack computes W_ih x_t + b_ih
        # for every t (the same kernels, so the same rounding; see Recurrent.forward)
        projected = F.linear(x.transpose(0, 1), self.weight_ih, self.bias_ih)  # (T, B, blocks * H)
        h = x.new_zeros(batch, self.width)
        tap = self.slot.tap
        step = {"rnn": self._rnn_step, "lstm": self._lstm_step, "gru": self._gru_step}[self.kind]
        c = x.new_zeros(batch, self.width) if self.kind == "lstm" else None
        hiddens = []
        # unbind, not projected[t]: the backward of T slices would build T zero tensors of the
        # whole sequence's size; unbind's backward is one stack
        for t, gi in enumerate(projected.unbind(0)):
            h, c = step(gi, h, c, tap, t)
            hiddens.append(h)
        out = torch.stack(hiddens, dim=0).transpose(0, 1)  # (T, B, H) viewed as (B, T, H)
        if tap is not None:
            tap.tensor(self.site, "output", f"{self.site.name} output", out)
        return out

    def step(self, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, tap, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One time step, as `forward` takes it: (h_t, c_t) from gi = W_ih x_t + b_ih (B, blocks * H)
        and (h_{t-1}, c_{t-1}) (c None but for lstm), tapping at `time_site(t)` when `tap` is given.
        For callers that run the steps themselves (gradlab.watch runs nn.LSTM's through it)."""
        return {"rnn": self._rnn_step, "lstm": self._lstm_step, "gru": self._gru_step}[self.kind](gi, h, c, tap, t)

    # Each step does PyTorch's CPU cell (aten/src/ATen/native/RNN.cpp: SimpleCell, LSTMCell, GRUCell)
    # operation for operation, in its order, out of place (the taps need the tensors the in-place
    # versions overwrite; an in-place op computes the same values): W_hh h_{t-1} + b_hh is one
    # F.linear, and the projected input is added to it, never folded into it.

    def _rnn_step(self, gi, h, c, tap, t):
        a = F.linear(h, self.weight_hh, self.bias_hh) + gi  # (B, H)
        h = self.act(a)
        if tap is not None:
            site, name = self.time_site(t), self.site.name
            tap.tensor(site, "preactivation", f"{name} pre-activation (t={t})", a)
            tap.activation(site, self.act, self.activation, a, h)
            tap.tensor(site, "hidden", f"{name} hidden state (t={t})", h)
        return h, None

    def _lstm_step(self, gi, h, c, tap, t):
        a = F.linear(h, self.weight_hh, self.bias_hh) + gi  # (B, 4H): i, f, g, o
        i, f, g, o = a.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g  # two products, then their sum (no fused multiply-add: addcmul rounds differently)
        h = o * torch.tanh(c)
        if tap is not None:
            site, name = self.time_site(t), self.site.name
            tap.tensor(site, "preactivation", f"{name} gate pre-activations (t={t})", a)
            for gate, value in zip(GATES["lstm"], (i, f, g, o)):
                tap.tensor(site, f"{gate}_gate", f"{name} {gate} gate (t={t})", value)
            tap.tensor(site, "cell", f"{name} cell state (t={t})", c)
            tap.tensor(site, "hidden", f"{name} hidden state (t={t})", h)
        return h, c

    def _gru_step(self, gi, h, c, tap, t):
        H = self.width
        gh = F.linear(h, self.weight_hh, self.bias_hh)  # (B, 3H): r, z, n
        # a_r and a_z in one addition (an addition rounds alike in any layout), tapped as one part; the
        # sigmoids read their (B, H) halves as PyTorch's read its gates: rows of H within a wider row
        # (a transcendental kernel's vectorized loop and scalar tail split a row by its length)
        a_rz = gh[:, : 2 * H] + gi[:, : 2 * H]
        a_r, a_z = a_rz.chunk(2, dim=1)
        r, z = torch.sigmoid(a_r), torch.sigmoid(a_z)
        a_n = gi[:, 2 * H :] + gh[:, 2 * H :] * r
        n = torch.tanh(a_n)
        h_new = (h - n) * z + n  # = (1 - z) * n + z * h_{t-1}, rounded as PyTorch rounds it
        if tap is not None:
            site, name = self.time_site(t), self.site.name
            # a_t in two parts (a_n depends on r): the probe adds their squared gradient norms
            tap.tensor(site, "preactivation", f"{name} reset and update gate pre-activations (t={t})", a_rz)
            tap.tensor(site, "preactivation", f"{name} new gate pre-activation (t={t})", a_n)
            for gate, value in zip(GATES["gru"], (r, z, n)):
                tap.tensor(site, f"{gate}_gate", f"{name} {gate} gate (t={t})", value)
            tap.tensor(site, "hidden", f"{name} hidden state (t={t})", h_new)
        return h_new, None

    def gate_blocks(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The per-gate row blocks of a weight or bias (views: filling one fills the parameter)."""
        return list(weight.chunk(BLOCKS[self.kind], dim=0))


def chrono_init(layer: RecurrentLayer, max_timescale: float) -> None:
    """Chrono initialization (Tallec & Ollivier 2018): each unit's memory gate gets the total bias
    b = log u, u ~ U(1, max_timescale - 1), so σ(b) = u / (1 + u) keeps a fraction 1 - 1/(1 + u) per
    step, a memory of about 1 + u steps: the units' timescales spread from 2 to max_timescale.
    lstm: the forget gate's bias is b and the input gate's -b (what stays is not overwritten);
    gru: the update gate's bias is +b, since PyTorch's h_t = (1 - z) * n + z * h_{t-1} keeps h_{t-1}
    through z. As forget_bias does, the total goes to bias_ih and bias_hh's slice is 0."""
    H = layer.width
    with torch.no_grad():
        b = torch.empty(H, dtype=layer.bias_ih.dtype).uniform_(1.0, max_timescale - 1.0).log_()
        memory = slice(H, 2 * H)  # lstm (i, f, g, o): f; gru (r, z, n): z
        layer.bias_ih[memory] = b
        layer.bias_hh[memory] = 0.0
        if layer.kind == "lstm":
            layer.bias_ih[:H] = -b
            layer.bias_hh[:H] = 0.0


class Recurrent(nn.Module):
    """`depth` recurrent layers of one kind and a linear head, built from the `model:` section."""

    kind = "rnn"

    def __init__(self, cfg, input_shape: tuple[int, ...], classes: int):
        super().__init__()
        if len(input_shape) != 2:
            from gradlab.vocab.errors import DataError

            raise DataError(f"model.kind {self.kind} needs sequences (time steps, features); the data has shape {tuple(input_shape)}")
        steps, features = input_shape
        self.readout = getattr(cfg, "readout", "last")
        activation = cfg.activation if self.kind == "rnn" else None
        sizes = [features] + [cfg.width] * cfg.depth
        self.layers = nn.ModuleList(RecurrentLayer(self.kind, k, sizes[k], cfg.width, cfg.bias, activation) for k in range(cfg.depth))
        self.head = nn.Linear(cfg.width, classes, bias=cfg.bias)
        self.slot = TapSlot()
        for layer in self.layers:
            layer.slot = self.slot
        self.head_site = Site(cfg.depth, "head", "head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, features) -> logits (B, classes) for readout last, (B, classes, T) for every."""
        if self.slot.tap is None and self.fused_plain_steps and self._fused_call(x) is not None:
            x = self._fused_forward(x)  # (B, T, H)
        else:
            for layer in self.layers:
                x = layer(x)  # (B, T, H)
        if self.readout == "last":
            logits = self.head(x[:, -1])  # (B, classes)
        else:
            logits = self.head(x).transpose(1, 2)  # (B, T, classes) -> (B, classes, T)
        tap = self.slot.tap
        if tap is not None:
            tap.tensor(self.head_site, "logits", "head output (logits)", logits)
        return logits

    # -- the fused call on plain steps -------------------------------------------------------
    #
    # A step with no tap attached (not logged) runs the whole stack through the call nn.RNN / nn.LSTM /
    # nn.GRU make (torch.rnn_tanh, torch.rnn_relu, torch.lstm, torch.gru) with the layers' own
    # Parameters. On the CPU that call is a loop of the very operations the unrolled steps do (RNN.cpp's
    # FullLayer and cells), so it computes the same numbers bit for bit, forward and backward
    # (tests/test_recurrent_fused.py trains both ways and compares every parameter with torch.equal);
    # it only saves Python's per-operation overhead. Elsewhere the unrolled code runs on every step:
    # on CUDA the fused call is cuDNN's kernel (other rounding, so logged and plain steps would
    # disagree), on the meta device (memory.py counts what a logged step keeps) it is not
    # implemented, and rnn activations other than tanh and relu have no fused call.

    fused_plain_steps = True  # False: every step unrolled (benchmarks compare the two)

    def _fused_call(self, x: torch.Tensor):
        if x.device.type != "cpu" or torch.backends.flags_frozen():
            return None
        if self.kind == "rnn":
            return {"tanh": torch.rnn_tanh, "relu": torch.rnn_relu}.get(self.layers[0].activation)
        return {"lstm": torch.lstm, "gru": torch.gru}[self.kind]

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stack's hidden states (B, T, H) from one fused call, without oneDNN: on the CPU, torch.lstm
        in float32 would otherwise run oneDNN's LSTM kernel, whose rounding differs from the cell's
        operations. The switch is process-wide and restored at once (gradlab's parallel runs are
        processes, never threads of one process)."""
        layer0 = self.layers[0]
        bias = layer0.bias_ih is not None
        weights = [p for layer in self.layers for p in ((layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh) if bias else (layer.weight_ih, layer.weight_hh))]
        zeros = x.new_zeros(len(self.layers), x.shape[0], layer0.width)
        hidden = (zeros, torch.zeros_like(zeros)) if self.kind == "lstm" else zeros
        onednn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:  # input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first
            out = self._fused_call(x)(x, hidden, weights, bias, len(self.layers), 0.0, self.training, False, True)[0]
        finally:
            torch.backends.mkldnn.enabled = onednn
        return out

    def measured_layers(self) -> list[Layer]:
        """One Layer per row of layers.csv: each recurrent layer (weights and biases by family 'ih'
        and 'hh'), then the head."""
        layers = [
            Layer(l.site, l, {"ih": l.weight_ih, "hh": l.weight_hh}, {"ih": l.bias_ih, "hh": l.bias_hh}, prefix=l.site.name)
            for l in self.layers
        ]
        return layers + [Layer(self.head_site, self.head, {"": self.head.weight}, {"": self.head.bias}, prefix="head")]

    def initialize(self, cfg) -> None:
        """init.weight: input-to-hidden and head weights (init.head, where set, the head's);
        init.recurrent: hidden-to-hidden weights;
        init.bias: every bias; each applied per gate block. Then forget_bias, if set: lstm's forget
        gate's total bias, or chrono's biases (`chrono_init`)."""
        init = cfg.init
        recurrent = getattr(init, "recurrent", {"name": DEFAULT_INIT})
        activation = cfg.activation
        for layer in self.layers:
            for spec, weight in ((init.weight, layer.weight_ih), (recurrent, layer.weight_hh)):
                for block in layer.gate_blocks(weight.data):
                    apply_init(spec, block, activation)
            for bias in (layer.bias_ih, layer.bias_hh):
                if bias is not None:
                    for block in layer.gate_blocks(bias.data):
                        apply_init(init.bias, block, activation)
            forget_bias = getattr(cfg, "forget_bias", None)
            if isinstance(forget_bias, dict) and layer.bias_ih is not None:
                chrono_init(layer, forget_bias["max_timescale"])
            elif self.kind == "lstm" and forget_bias is not None and layer.bias_ih is not None:
                H = layer.width
                with torch.no_grad():
                    layer.bias_ih[H : 2 * H] = forget_bias
                    layer.bias_hh[H : 2 * H] = 0.0
        apply_init(getattr(init, "head", None) or init.weight, self.head.weight, activation)  # init.head, where set
        if self.head.bias is not None:
            apply_init(init.bias, self.head.bias, activation)

    @classmethod
    def saved_activation_elements(cls, cfg, input_shape: tuple[int, ...]) -> int:
        """Elements per example that autograd keeps for the backward pass: per layer and time step,
        the tensors of a step (rnn 2H: a_t, h_t; lstm 10H: a_t, four gates, c_t, tanh(c_t), h_t and
        products; gru 9H), counted generously."""
        steps = input_shape[0]
        per_step = {"rnn": 2, "lstm": 10, "gru": 9}[cls.kind] * cfg.width
        return cfg.depth * steps * (per_step + BLOCKS[cls.kind] * cfg.width)

    # -- PyTorch's fused modules, for tests and benchmarks --------------------------------------

    def torch_state(self) -> dict[str, torch.Tensor]:
        """This stack's recurrent weights under nn.RNN/nn.LSTM/nn.GRU's names (weight_ih_l0, ...)."""
        return {f"{name}_l{k}": p for k, layer in enumerate(self.layers) for name, p in layer.named_parameters() if name.startswith(("weight_", "bias_"))}

    def load_torch_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy nn.RNN/nn.LSTM/nn.GRU weights (names weight_ih_l0, ...) into this stack."""
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                for name, p in layer.named_parameters():
                    if name.startswith(("weight_", "bias_")):
                        p.copy_(state[f"{name}_l{k}"])


class RNN(Recurrent):
    kind = "rnn"


class LSTM(Recurrent):
    kind = "lstm"


class GRU(Recurrent):
    kind = "gru"


RECURRENT_KINDS: dict[str, type[Recurrent]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
