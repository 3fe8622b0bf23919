"""The memory estimate: exact parameter counts, and impossible sizes refused before allocating."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gradlab.config.experiment import validate
from gradlab.orchestrate.sweep_plan import load_experiments
from gradlab.build.memory import check_fits, estimate, parameter_count
from gradlab.vocab.datasets import known_input_shape
from gradlab.build.models import build_model
from peak_memory import run_peaks

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
    shape = known_input_shape(exp.data)
    built = build_model(exp.model, shape, exp.data.classes)
    # independent: every parameter of the real model, norms and PReLU slopes included
    assert parameter_count(exp, shape, exp.data.classes) == sum(p.numel() for p in built.parameters())


@pytest.mark.slow
def test_shipped_configs_fit():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if "mnist" in path.name and not (ROOT.parent / "shared" / "data" / "mnist").is_dir():
            continue
        for exp in load_experiments(path):
            check_fits(exp, known_input_shape(exp.data), exp.data.classes)


def test_estimate_counts_by_hand():
    exp = validate({"model": {"depth": 2, "width": 8}, "data": {"dim": 4, "classes": 3, "batch_size": 16}, "optim": {"name": "adam"}})
    need = estimate(exp, (4,), 3)
    params = 4 * 8 + 8 * 8 + 8 * 3 + (8 + 8 + 3)  # weights, then biases
    assert need.parameters == params * 4
    assert need.training == params * 4 * (1 + 2 + 1)  # gradients, Adam's two moments, the update snapshot
    # autograd keeps the batch (16 x 4) and each ReLU's output (16 x 8, which the next linear map
    # keeps too: counted once); backward's transients are 6 tensors of the largest of those
    kept = (16 * 4 + 2 * 16 * 8) * 4
    assert need.activations == kept + 6 * 16 * 8 * 4
    assert need.logits == 3 * 16 * 3 * 4  # cross-entropy: logits, softmax, gradient
    n = 4096 + 1024
    assert need.data == n * 4 * 4 + n * 8  # features and int64 labels
    assert need.generation == 3 * 4 * 4 + n * 8 + 3 * n * 4 * 4 + n * 4  # gaussian: means, labels, three (N, dim) floats, a mask
    chunk = 1024  # evaluation: 4 activations of the largest size at the chunk's size, and its logits
    assert need.evaluation == 4 * 8 * 4 * chunk + 3 * chunk * 3 * 4
    assert need.total == max(need.data + need.generation, need.resident + need.activations + need.logits, need.resident + need.evaluation)


# Shapes where tensors dominate the process's memory, each stressing one term of the estimate.
PEAK_GRID = {
    "mlp, large batch": {"data": {"dim": 256, "n_train": 8192, "n_test": 1024, "batch_size": 8192}, "model": {"depth": 20, "width": 256}},
    "cnn, evaluation chunks": {"data": {"name": "images", "n_train": 256, "n_test": 2048, "batch_size": 64}, "model": {"kind": "cnn", "depth": 2, "width": 64}},
    "20000 classes, bce": {"data": {"dim": 32, "classes": 20000, "n_train": 2048, "n_test": 1024, "batch_size": 1024}, "model": {"depth": 2, "width": 64}, "loss": "bce"},
    "cnn with lrn": {"data": {"name": "images", "n_train": 512, "n_test": 256, "batch_size": 256}, "model": {"kind": "cnn", "depth": 3, "width": 32, "norm": "lrn"}},
    "teacher data generation": {"data": {"name": "teacher", "dim": 256, "n_train": 200000, "n_test": 1024, "batch_size": 128}, "model": {"depth": 2, "width": 32}},
}  # fmt: skip
@pytest.mark.slow
def test_the_estimate_bounds_the_real_peak_within_a_factor_of_2(tmp_path):
    for label, real in run_peaks(PEAK_GRID, tmp_path).items():
        exp = validate({"device": "cpu", **PEAK_GRID[label]})
        need = estimate(exp, known_input_shape(exp.data), exp.data.classes).total
        assert real <= need <= 2 * real, f"{label}: real peak {real / 1e6:.0f} MB, estimate {need / 1e6:.0f} MB"


def test_an_impossible_size_fails_fast_with_the_estimate(tmp_path, invoke):
    start = time.perf_counter()
    result = invoke("run", str(ROOT / "configs" / "smoke.yaml"), "--out", str(tmp_path),
                    "--set", "model.depth=10000", "--set", "model.width=100000")  # fmt: skip
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2
    assert result.stderr.startswith("error: model: this experiment needs up to 1.6 PB of cpu memory at its peak (data 55.3 KB, parameters 400 TB")
    assert "reduce model.depth, model.width, data.batch_size, data.classes or data.n_train" in result.stderr
    assert list(tmp_path.rglob("meta.json")) == []
