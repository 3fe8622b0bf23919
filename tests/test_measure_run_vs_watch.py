"""One kernel per quantity: `gradlab run` and `gradlab.watch` write the same number for the same tensor.

The same model (gradlab's own, built from the config, or PyTorch's nn.LSTM with the same weights) is
trained twice on the same batches from the same initialization: once by `gradlab.run`, once by a
plain PyTorch loop under `gradlab.watch`. Every column both write (weight, gradient and update
norms, delta_norm, delta_rms) must be the same text in both layers.csv files, at every step both
measured. Nothing is compared where one side leaves the cell empty by design (watch sees no
block output or activation of an arbitrary model).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

import gradlab
from gradlab.build.components import build_optimizer, get_loss
from gradlab.build.data import Batches, load_dataset
from gradlab.build.models import build_model
from gradlab.config.experiment import validate

SHARED = ("weight_norm", "weight_grad_norm", "bias_grad_norm", "delta_norm", "delta_rms", "update_ratio")
STEPS = 3


def config(tmp_path: Path, data: dict, model: dict, **extra) -> dict:
    return {
        "name": "twin", "seed": 3, "device": "cpu", "data": data, "model": model,
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"steps": STEPS, "eval_every": 1000},
        "log": {"every": 1, "probes": ["weights", "deltas", "updates"], "out": str(tmp_path / "run")},
        **extra,
    }  # fmt: skip


def read_layers(run_dir: Path) -> dict[tuple[int, int], dict[str, str]]:
    with open(run_dir / "layers.csv", newline="") as f:
        return {(int(row["step"]), int(row["layer"])): row for row in csv.DictReader(f)}


def watch_loop(tmp_path: Path, model: nn.Module, forward, exp) -> Path:
    """The plain loop a user writes, on the batches gradlab's run draws, under gradlab.watch."""
    data = load_dataset(exp.data, exp.seed)
    optimizer = build_optimizer(exp.optim, model.parameters())
    loss_fn = get_loss(exp.loss)
    batches = iter(Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed))
    with gradlab.watch(model, out=tmp_path / "watch", every=1, optimizer=optimizer) as w:
        for _ in range(STEPS):
            x, y = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x), y)
            loss.backward()
            optimizer.step()
            w.step(loss=loss)
    return w.run_dir


def gradlab_model(exp) -> nn.Module:
    """The model gradlab's run trains, initialized as the run initializes it."""
    data = load_dataset(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    return build_model(exp.model, data.input_shape, data.classes)


def assert_same_shared_columns(run_dir: Path, watch_dir: Path, layers: int, without_delta: tuple[int, ...] = ()) -> None:
    """Every shared cell the same text; empty on both sides only where neither measures it (no
    bias), and watch's delta empty only on `without_delta` (a fused recurrent layer)."""
    ours, theirs = read_layers(run_dir), read_layers(watch_dir)
    compared = 0
    for step in range(STEPS):
        for layer in range(layers):
            mine, watched = ours[(step, layer)], theirs[(step, layer)]
            for column in SHARED:
                if column.startswith("delta") and layer in without_delta:
                    assert mine[column] and not watched[column], (step, layer, column)
                    continue
                assert mine[column] == watched[column], (step, layer, column, mine[column], watched[column])
                compared += bool(mine[column])
    assert compared >= STEPS * layers * 4


def test_an_mlp_with_batchnorm(tmp_path):
    cfg = config(
        tmp_path,
        {"name": "gaussian", "dim": 8, "classes": 3, "n_train": 96, "n_test": 32, "batch_size": 16},
        {"kind": "mlp", "depth": 3, "width": 16, "activation": "tanh", "norm": "batchnorm"},
    )
    run = gradlab.run(cfg)
    exp = validate(cfg)
    model = gradlab_model(exp)
    watch_dir = watch_loop(tmp_path, model, model, exp)
    assert_same_shared_columns(run.dir, watch_dir, layers=4)


def test_a_cnn_with_pooling(tmp_path):
    cfg = config(
        tmp_path,
        {"name": "images", "classes": 3, "n_train": 48, "n_test": 16, "batch_size": 8},
        {"kind": "cnn", "depth": 2, "width": 4, "activation": "relu", "pool": "max"},
    )
    run = gradlab.run(cfg)
    exp = validate(cfg)
    model = gradlab_model(exp)
    watch_dir = watch_loop(tmp_path, model, model, exp)
    rows = read_layers(run.dir)
    assert rows[(0, 0)]["delta_rms"] and rows[(0, 0)]["delta_rms"] != rows[(0, 0)]["delta_norm"]  # positions counted
    assert_same_shared_columns(run.dir, watch_dir, layers=3)


class TorchLSTM(nn.Module):
    """What a user writes: PyTorch's fused nn.LSTM and a Linear read-out of the last step."""

    def __init__(self, lstm: nn.LSTM, head: nn.Linear):
        super().__init__()
        self.lstm, self.head = lstm, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_an_lstm(tmp_path):
    cfg = config(
        tmp_path,
        {"name": "adding", "seq_len": 6, "n_train": 64, "n_test": 16, "batch_size": 16},
        {"kind": "lstm", "depth": 1, "width": 8},
        loss="mse",
    )
    run = gradlab.run(cfg)
    exp = validate(cfg)
    ours = gradlab_model(exp)
    lstm = nn.LSTM(ours.layers[0].weight_ih.shape[1], exp.model.width, batch_first=True)
    lstm.load_state_dict({name: p.detach().clone() for name, p in ours.torch_state().items()})
    head = nn.Linear(ours.head.in_features, ours.head.out_features)
    head.load_state_dict(ours.head.state_dict())
    twin = TorchLSTM(lstm, head)
    with torch.backends.mkldnn.flags(enabled=False):  # gradlab's fused call runs without oneDNN too
        watch_dir = watch_loop(tmp_path, twin, twin, exp)
    rows = read_layers(run.dir)
    assert rows[(0, 0)]["delta_rms"], "a recurrent layer has delta_rms (time steps are its positions)"
    assert_same_shared_columns(run.dir, watch_dir, layers=2, without_delta=(0,))
