"""Recurrent stacks (gradlab/recurrent.py) against PyTorch's fused modules and hand computations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gradlab.recurrent import GATES, RECURRENT_KINDS

TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def model_cfg(kind="lstm", depth=2, width=6, activation="tanh", readout="last", bias=True, forget_bias=None,
              weight="default", recurrent="default", bias_init="default"):  # fmt: skip
    init = SimpleNamespace(weight={"name": weight} if isinstance(weight, str) else weight,
                           recurrent={"name": recurrent} if isinstance(recurrent, str) else recurrent,
                           bias={"name": bias_init} if isinstance(bias_init, str) else bias_init)  # fmt: skip
    return SimpleNamespace(kind=kind, depth=depth, width=width, activation={"name": activation}, readout=readout,
                           bias=bias, forget_bias=forget_bias, init=init)  # fmt: skip


def build(cfg, steps=7, features=3, classes=4, seed=0):
    torch.manual_seed(seed)
    model = RECURRENT_KINDS[cfg.kind](cfg, (steps, features), classes)
    model.initialize(cfg)
    return model.double()


@pytest.mark.parametrize(
    "kind,activation,bias,depth",
    [("rnn", "tanh", True, 2), ("rnn", "relu", True, 3), ("rnn", "tanh", False, 1), ("lstm", "tanh", True, 2),
     ("lstm", "tanh", False, 1), ("gru", "tanh", True, 2), ("gru", "tanh", False, 3)],
)  # fmt: skip
def test_unrolled_stack_equals_torch_fused_module(kind, activation, bias, depth):
    """Same weights -> the same hidden states, logits and gradients of every weight as nn.RNN/LSTM/GRU."""
    cfg = model_cfg(kind, depth=depth, width=5, activation=activation, bias=bias)
    ours = build(cfg)
    extra = {"nonlinearity": activation} if kind == "rnn" else {}
    torch.manual_seed(1)
    fused = TORCH_MODULES[kind](3, 5, num_layers=depth, bias=bias, batch_first=True, **extra).double()
    ours.load_torch_state(dict(fused.named_parameters()))
    head = nn.Linear(5, 4, bias=bias).double()
    head.load_state_dict(ours.head.state_dict())

    x = torch.randn(8, 7, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    logits = ours(x)
    out, _ = fused(x)
    reference = head(out[:, -1])
    torch.testing.assert_close(logits, reference, rtol=1e-12, atol=1e-12)

    nn.functional.cross_entropy(logits, y).backward()
    nn.functional.cross_entropy(reference, y).backward()
    ours_grads = {name: p.grad for name, p in ours.torch_state().items()}
    for name, p in fused.named_parameters():
        torch.testing.assert_close(ours_grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(ours.head.weight.grad, head.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_parameter_names_map_one_to_one_to_torch_cells(kind):
    cfg = model_cfg(kind, depth=1)
    ours = build(cfg).float()
    cell = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](3, 6)
    layer_state = {k: v for k, v in ours.layers[0].state_dict().items() if not k.startswith("act")}
    assert set(layer_state) == set(cell.state_dict())
    cell.load_state_dict(layer_state)  # shapes agree too
    assert set(ours.torch_state()) == {name for name, _ in TORCH_MODULES[kind](3, 6).named_parameters()}


def test_readout_every_gives_logits_per_step_in_cross_entropy_layout():
    cfg = model_cfg("gru", depth=1, readout="every")
    model = build(cfg)
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    logits = model(x)
    assert logits.shape == (5, 4, 7)  # (B, classes, T)
    hidden = model.layers[0](x)
    torch.testing.assert_close(logits[:, :, 2], model.head(hidden[:, 2]))


def test_forget_bias_sets_the_total_forget_bias_in_bias_ih():
    cfg = model_cfg("lstm", depth=2, width=4, forget_bias=1.0)
    model = build(cfg)
    for layer in model.layers:
        total = layer.bias_ih + layer.bias_hh
        torch.testing.assert_close(total[4:8], torch.ones(4, dtype=torch.float64))
        assert (layer.bias_hh[4:8] == 0).all() and (layer.bias_ih[4:8] == 1).all()
        # the other gates keep init.bias's values (PyTorch's default: not all zero)
        assert total[:4].abs().sum() > 0


def test_recurrent_init_applies_per_gate_block():
    """orthogonal on weight_hh: each gate's H x H block is orthogonal (times the gain)."""
    cfg = model_cfg("lstm", depth=1, width=5, recurrent={"name": "orthogonal", "gain": 1.1}, weight={"name": "normal", "std": 0.5},
                    bias_init="zeros")  # fmt: skip
    model = build(cfg)
    layer = model.layers[0]
    for block in layer.gate_blocks(layer.weight_hh.detach()):
        torch.testing.assert_close(block.T @ block, 1.21 * torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)  # made in float32
    assert (layer.bias_ih == 0).all() and (layer.bias_hh == 0).all()
    assert abs(layer.weight_ih.std().item() - 0.5) < 0.2


def test_gates_are_named_in_torch_order():
    assert GATES["lstm"] == ("input", "forget", "cell", "output")
    assert GATES["gru"] == ("reset", "update", "new")
