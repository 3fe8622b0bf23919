"""Every use of a parameter is a site: the operations `watch` sees during a measured forward pass.

`OpTap` is a `torch.overrides.TorchFunctionMode`, entered when a measured forward pass starts and
left when it ends (steps that are not measured never enter it: they pay nothing). While it is active
every torch function call of the pass goes through `__torch_function__`, which lets it run and, for
the calls below whose weight is one of the model's parameters, hands a `Use` to the watch:

    linear      F.linear (nn.Linear, nn.MultiheadAttention's projections)      units: last dim
    bilinear    F.bilinear (nn.Bilinear)                                       units: last dim
    conv        F.conv1d/2d/3d (nn.Conv*d)                                     units: dim 1
    conv_transpose  F.conv_transpose1d/2d/3d (nn.ConvTranspose*d)              units: dim 1
    embedding   F.embedding, F.embedding_bag (nn.Embedding, nn.EmbeddingBag)   units: last dim
    matmul      torch.matmul / mm / bmm / addmm and `@`, with a parameter operand   units: last dim

A parameter reached through a view or cast made in the same pass (`W.T`, `W.t()`, `W.split(...)`,
`W.to(torch.bfloat16)`, ...) counts as the parameter: `x @ self.wte.weight.T` is a use of
`wte.weight`. Calls of the recurrent kernels (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu,
what nn.LSTM, nn.GRU and nn.RNN call) are handed over whole (`on_recurrent`), to be run by the watch.

Composite functions. A torch function written in Python that accepts a torch function override
(`F.multi_head_attention_forward`, what nn.MultiheadAttention calls) is handed to the mode as one
call, and its body runs with the mode off: the projections inside would be invisible. For the
composites listed in `_OPENED` the body is run with the mode on instead, from a copy of the
function whose own override check answers no (same code, same operations: the numbers are the
same); the projections inside are then uses like any other. Inside F.multi_head_attention_forward
the batch is dimension 1 of (L, N, E) and the output projection reads (L * N, E): `Use.examples`
says how to find the examples in each output.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

UNITS_FIRST, UNITS_LAST = 1, -1


@dataclass(frozen=True)
class Op:
    """One kind of call: where its weight and bias are (positional index, keyword name)."""

    kind: str
    weight: tuple[int, str]
    bias: tuple[int, str] | None
    units: int


_LINEAR = Op("linear", (1, "weight"), (2, "bias"), UNITS_LAST)
_CONV = Op("conv", (1, "weight"), (2, "bias"), UNITS_FIRST)
_CONV_T = Op("conv_transpose", (1, "weight"), (2, "bias"), UNITS_FIRST)
_EMBEDDING = Op("embedding", (1, "weight"), None, UNITS_LAST)
OPS: dict[Callable, Op] = {
    F.linear: _LINEAR,
    torch.bilinear: Op("bilinear", (2, "weight"), (3, "bias"), UNITS_LAST),
    torch.conv1d: _CONV, torch.conv2d: _CONV, torch.conv3d: _CONV,
    torch.conv_transpose1d: _CONV_T, torch.conv_transpose2d: _CONV_T, torch.conv_transpose3d: _CONV_T,
    F.embedding: _EMBEDDING, F.embedding_bag: _EMBEDDING,
}  # fmt: skip

# matrix products: any parameter operand is the weight; addmm's first operand is added (a bias)
MATMULS: dict[Callable, tuple[tuple[int, ...], int | None]] = {
    torch.matmul: ((0, 1), None), torch.Tensor.matmul: ((0, 1), None), torch.Tensor.__matmul__: ((0, 1), None),
    torch.Tensor.__rmatmul__: ((0, 1), None), torch.mm: ((0, 1), None), torch.Tensor.mm: ((0, 1), None),
    torch.bmm: ((0, 1), None), torch.Tensor.bmm: ((0, 1), None),
    torch.addmm: ((1, 2), 0), torch.Tensor.addmm: ((1, 2), 0),
}  # fmt: skip

# calls whose result is the first argument seen another way (a view, a reshape, a cast, pieces)
VIEWS: frozenset[Callable] = frozenset({
    torch.Tensor.T.__get__, torch.Tensor.mT.__get__, torch.Tensor.H.__get__, torch.Tensor.mH.__get__,
    torch.t, torch.Tensor.t, torch.transpose, torch.Tensor.transpose, torch.permute, torch.Tensor.permute,
    torch.Tensor.view, torch.Tensor.view_as, torch.reshape, torch.Tensor.reshape, torch.Tensor.reshape_as,
    torch.flatten, torch.Tensor.flatten, torch.Tensor.unflatten, torch.Tensor.contiguous,
    torch.squeeze, torch.Tensor.squeeze, torch.unsqueeze, torch.Tensor.unsqueeze, torch.Tensor.expand,
    torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk, torch.unbind, torch.Tensor.unbind,
    torch.narrow, torch.Tensor.narrow, torch.Tensor.__getitem__,
    torch.Tensor.to, torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.double, torch.Tensor.type_as,
})  # fmt: skip

RECURRENT: dict[Callable, str] = {torch.lstm: "lstm", torch.gru: "gru", torch.rnn_tanh: "rnn", torch.rnn_relu: "rnn"}


@dataclass
class Use:
    """One call that used a parameter as its weight: what the watch makes a site of.

    `examples`: how to see the output with its examples first, (dim, shape) with dim the batch's
    dimension of `output.view(shape)` (shape None: as it is); None where the examples cannot be
    told apart from positions (delta_rms is left empty there). `call`: the function called and its
    arguments, (func, args, kwargs), for the calls of OPS (the noise group recomputes a
    convolution's per-example weight gradients from them); None for the matrix products."""

    kind: str
    weights: list[torch.nn.Parameter]
    bias: torch.nn.Parameter | None
    output: torch.Tensor
    units: int
    examples: tuple[int, tuple[int, ...] | None] | None
    call: tuple | None = None


def _argument(args: tuple, kwargs: dict, where: tuple[int, str]):
    index, name = where
    if index < len(args):
        return args[index]
    return kwargs.get(name)


class OpTap(TorchFunctionMode):
    """The mode of one measured forward pass (see the module docstring).

    parameters: id -> the model's parameters. on_use(Use) is called after each use ran;
    on_recurrent(kind, func, args, kwargs) runs a recurrent kernel's call and returns its result.
    batch: the size of the examples' dimension, dim 0 of the model's input (None: unknown)."""

    def __init__(self, parameters: dict[int, torch.nn.Parameter], on_use: Callable[[Use], None],
                 on_recurrent: Callable[..., object] | None, batch: int | None):  # fmt: skip
        super().__init__()
        self.parameters = parameters
        self.on_use = on_use
        self.on_recurrent = on_recurrent
        self.batch = batch
        self._derived: dict[int, tuple[weakref.ref, torch.nn.Parameter]] = {}  # a view of a parameter -> it
        self._composite: list[tuple[int, int]] = []  # (L, N) of the F.multi_head_attention_forward calls running

    def parameter(self, value) -> torch.nn.Parameter | None:
        """The model's parameter that `value` is, or is a view or cast of (made in this pass)."""
        if not isinstance(value, torch.Tensor):
            return None
        key = id(value)
        param = self.parameters.get(key)
        if param is value:
            return param
        entry = self._derived.get(key)
        if entry is not None and entry[0]() is value:
            return entry[1]
        return None

    def _derive(self, result, param: torch.nn.Parameter) -> None:
        if isinstance(result, torch.Tensor):
            self._derived[id(result)] = (weakref.ref(result), param)
        elif isinstance(result, (tuple, list)):
            for piece in result:
                self._derive(piece, param)

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = OPS.get(func)
        if op is not None:
            out = func(*args, **kwargs)
            weight = self.parameter(_argument(args, kwargs, op.weight))
            if weight is not None and isinstance(out, torch.Tensor):
                bias = self.parameter(_argument(args, kwargs, op.bias)) if op.bias is not None else None
                self.on_use(Use(op.kind, [weight], bias, out, op.units, self._examples(out), (func, args, kwargs)))
            return out
        matmul = MATMULS.get(func)
        if matmul is not None:
            out = func(*args, **kwargs)
            operands, added = matmul
            weights = [p for p in (self.parameter(args[k]) for k in operands if k < len(args)) if p is not None]
            if weights and isinstance(out, torch.Tensor):
                bias = self.parameter(args[added]) if added is not None and added < len(args) else None
                self.on_use(Use("matmul", list({id(w): w for w in weights}.values()), bias, out, UNITS_LAST, self._examples(out)))
            return out
        if func in VIEWS:
            out = func(*args, **kwargs)
            if args:
                param = self.parameter(args[0])
                if param is not None:
                    self._derive(out, param)
            return out
        kind = RECURRENT.get(func)
        if kind is not None and self.on_recurrent is not None:
            return self.on_recurrent(kind, func, args, kwargs)
        opened = _OPENED.get(func)
        if opened is not None:
            return self._run_opened(func, opened, args, kwargs)
        return func(*args, **kwargs)

    # -- composites ---------------------------------------------------------------------------

    def _run_opened(self, func, opened, args, kwargs):
        query = args[0] if args else kwargs.get("query")
        shape = (query.shape[0], query.shape[1]) if isinstance(query, torch.Tensor) and query.dim() == 3 else (0, 0)
        self._composite.append(shape)
        try:
            with self:  # the body with the mode on (its own override check is off: see _open)
                return opened(*args, **kwargs)
        finally:
            self._composite.pop()

    def _examples(self, out: torch.Tensor) -> tuple[int, tuple[int, ...] | None] | None:
        """Where the examples are in a use's output (see Use.examples)."""
        if self._composite:  # inside F.multi_head_attention_forward: (L, N, E) and (L * N, E)
            length, batch = self._composite[-1]
            if batch == 0:
                return None  # an unbatched query: no examples' dimension
            if out.dim() == 3 and out.shape[1] == batch:
                return (1, None)  # (L or S, N, features): key and value may have their own length S
            if out.dim() == 2 and out.shape[0] == length * batch:
                return (1, (length, batch, out.shape[1]))  # the output projection of (L * N, E)
            return None
        if self.batch is not None and out.dim() >= 2 and out.shape[0] == self.batch:
            return (0, None)
        return None


def _open(func: types.FunctionType) -> types.FunctionType:
    """A copy of a Python torch function whose own torch-function-override check answers no, so
    that its body runs under the active mode (the same code object: the same operations)."""
    names = dict(func.__globals__)
    for check in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
        names[check] = lambda *args, **kwargs: False
    opened = types.FunctionType(func.__code__, names, func.__name__, func.__defaults__, func.__closure__)
    opened.__kwdefaults__ = func.__kwdefaults__
    return opened


_OPENED: dict[Callable, Callable] = {F.multi_head_attention_forward: _open(F.multi_head_attention_forward)}
