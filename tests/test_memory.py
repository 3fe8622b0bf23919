"""The memory estimate: exact parameter counts, and impossible sizes refused before allocating."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.config import validate
from gradlab.sweep import load_experiments
from gradlab.memory import check_fits, estimate, known_input_shape, parameter_count
from gradlab.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "model, data",
    [
        ({"depth": 3, "width": 10}, {}),
        ({"depth": 2, "width": 7, "bias": False}, {"dim": 5}),
        ({"depth": 3, "width": 4, "norm": "batchnorm"}, {}),  # pre-norm drops the hidden biases
        ({"depth": 5, "width": 4, "norm": {"name": "batchnorm", "placement": "post"}, "activation": {"name": "prelu", "shared": False}}, {}),
        ({"kind": "cnn", "depth": 3, "width": 6, "kernel_size": 5}, {"name": "images"}),
        ({"kind": "cnn", "depth": 4, "width": 4, "norm": {"name": "groupnorm", "groups": 2}, "pool_every": 2}, {"name": "images"}),
    ],
)
def test_parameter_count_matches_the_built_model(model, data):
    exp = validate({"model": model, "data": data})
    shape = known_input_shape(exp)
    built = build_model(exp.model, shape, exp.data.classes)
    # independent: every parameter of the real model, norms and PReLU slopes included
    assert parameter_count(exp, shape, exp.data.classes) == sum(p.numel() for p in built.parameters())


def test_shipped_configs_fit():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if "mnist" in path.name and not (ROOT.parent / "shared" / "data" / "mnist").is_dir():
            continue
        for exp in load_experiments(path):
            check_fits(exp, known_input_shape(exp), exp.data.classes)


def test_estimate_counts_optimizer_state_and_activations():
    exp = validate({"model": {"depth": 2, "width": 8}, "data": {"dim": 4, "classes": 3, "batch_size": 16}, "optim": {"name": "adam"}})
    need = estimate(exp, (4,), 3)
    params = 4 * 8 + 8 * 8 + 8 * 3 + (8 + 8 + 3)  # weights, then biases
    assert need.parameters == params * 4
    assert need.training == params * 4 * (1 + 2 + 1)  # gradients, Adam's two moments, the update snapshot
    assert need.activations == 2 * 16 * 8 * 4 * 2
    assert need.data == (4096 + 1024) * 4 * 4


def test_an_impossible_size_fails_fast_with_the_estimate(tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(ROOT / "configs" / "smoke.yaml"), "--out", str(tmp_path),
                                      "--set", "model.depth=10000", "--set", "model.width=100000"])  # fmt: skip
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2
    assert result.stderr.startswith("error: model: this experiment needs at least 1.6 PB of cpu memory (data 49.2 KB, parameters 400 TB")
    assert "reduce model.depth, model.width, data.batch_size or data.n_train" in result.stderr
    assert list(tmp_path.rglob("meta.json")) == []
