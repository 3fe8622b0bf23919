"""Run directories and configs for the tests.

`write_run` writes one with gradlab.records.write from numbers the test chooses, so that every summary
can be checked against a truth known in advance (no training involved). `real_run` trains a tiny
experiment with gradlab.orchestrate.train, for the tests that must hold on what `gradlab run` really
writes; `recurrent_run` does the same for a one-layer recurrent stack at initialization.
`start_long_run` starts a real `gradlab run` process for the tests that signal or kill one, and
`wait_for_rows` waits until it has logged some steps. `write_yaml` writes a config file and
`run_dirs` finds the run directories under a folder.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from gradlab.records.run import Run, load_run
from gradlab.records.write import RunRecords


def resolved_config(name: str = "exp", seed: int = 0, *, depth: int = 3, out: str = "results", **sections: Any) -> dict[str, Any]:
    """A config as a run directory stores it (every default filled), via the real schema."""
    from gradlab.config.experiment import validate

    data: dict[str, Any] = {"name": name, "seed": seed, "model": {"depth": depth, "width": 8}, "log": {"out": out}}
    for dotted, value in sections.items():  # model__activation="sigmoid" -> model.activation
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate(data).model_dump(mode="json")


def layer_rows(step: int, delta: Sequence[float], weight_grad: Sequence[float] | None = None,
               dead: Sequence[float] | None = None, saturated: Sequence[float] | None = None,
               inactive: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Rows of layers.csv at one step: one per hidden layer (len(delta)) plus the head; inactive_frac
    only where `inactive` is given (empty cells otherwise, as for sigmoid)."""
    depth = len(delta)
    weight_grad = weight_grad or [1.0] * depth
    dead = dead or [0.0] * depth
    saturated = saturated or [0.0] * depth
    rows = [
        {"step": step, "layer": i, "name": f"blocks.{i}", "kind": "hidden", "weight_norm": 1.0,
         "weight_grad_norm": weight_grad[i], "bias_grad_norm": 0.5, "delta_norm": delta[i],
         "act_mean": 0.0, "act_std": 1.0, "saturated_frac": saturated[i], "dead_frac": dead[i],
         "update_ratio": math.nan if step == 0 else 1e-3}
        for i in range(depth)
    ]
    if inactive is not None:
        for row, value in zip(rows, inactive):
            row["inactive_frac"] = value
    rows.append({"step": step, "layer": depth, "name": "head", "kind": "head", "weight_norm": 1.0,
                 "weight_grad_norm": 9.0, "bias_grad_norm": 9.0, "delta_norm": 99.0,
                 "act_mean": math.nan, "act_std": math.nan, "saturated_frac": math.nan,
                 "dead_frac": math.nan, "update_ratio": math.nan})
    return rows


def metric_rows(train: dict[int, tuple[float, float]], test: dict[int, tuple[float, float]]) -> list[dict[str, Any]]:
    """metrics.csv rows from {step: (loss, accuracy)} per split."""
    rows = [{"step": s, "split": "train", "loss": l, "accuracy": a, "grad_norm": 1.0, "lr": 0.1, "time_s": 0.01 * s}
            for s, (l, a) in train.items()]
    rows += [{"step": s, "split": "test", "loss": l, "accuracy": a, "grad_norm": None, "lr": 0.1, "time_s": 0.01 * s}
             for s, (l, a) in test.items()]
    return sorted(rows, key=lambda row: row["step"])


def write_run(out: Path, config: dict[str, Any], layers: list[dict[str, Any]], metrics: list[dict[str, Any]],
              status: str = "completed", run_id: str = "000000") -> Path:
    """A run directory as `gradlab run` leaves it; status 'running' leaves meta.json as a killed run would."""
    run_dir = Path(out) / config["name"] / f"20240101-000000-{run_id}"
    run_dir.mkdir(parents=True)
    records = RunRecords(run_dir, yaml.safe_dump(config, sort_keys=False), {"seed": config["seed"], "device": "cpu"})
    records.layers.write(layers)
    records.metrics.write(metrics)
    if status == "running":
        records.layers.close()
        records.metrics.close()
    else:
        records.close(status, steps_done=max((row["step"] for row in layers), default=0))
    return run_dir


# metrics.csv of the synthetic runs: train rows at steps 0, 5, 10, test rows at 0 and 10.
METRICS = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (0.75, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})


def one_run(out: Path, delta: Sequence[float], *, weight_grad=None, dead=None, saturated=None, last=None,
            status: str = "completed", name: str = "exp", seed: int = 0, run_id: str = "000000", **config: Any) -> Run:
    """A run read back, with the profile `delta` (and friends) at step 0 and `last` (default: the
    same) at step 10, and METRICS; `config` as in resolved_config (model__width=16)."""
    layers = layer_rows(0, delta, weight_grad, dead, saturated) + layer_rows(10, last or delta, weight_grad, dead, saturated)
    cfg = resolved_config(name, seed, depth=len(delta), **config)
    return load_run(write_run(out, cfg, layers, METRICS, status=status, run_id=run_id))


TINY_DATA = {"name": "gaussian", "dim": 16, "classes": 4, "n_train": 256, "n_test": 128, "batch_size": 64}

# A small ReLU MLP config that sweeps are built on (a `sweep:` section goes on top).
SWEEP_BASE = {
    "name": "grid",
    "device": "cpu",
    "data": TINY_DATA,
    "model": {"depth": 4, "width": 16, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"steps": 20, "eval_every": 10},
    "log": {"every": 5},
}


def real_run(out: Path, name: str, model: dict[str, Any], seed: int = 0, steps: int = 20, **extra: Any) -> Path:
    """Train a tiny experiment on the CPU with the real loop; returns its run directory."""
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment

    exp = validate({
        "name": name, "seed": seed, "device": "cpu", "data": TINY_DATA, "model": {"width": 32, **model},
        "train": {"steps": steps, "eval_every": 10}, "log": {"every": 5, "out": str(out)}, **extra,
    })  # fmt: skip
    return run_experiment(exp).run_dir


# The three regimes of the issue, at initialization (step 0).
VANISHING = {"depth": 10, "activation": "sigmoid", "init": {"weight": "lecun_normal", "bias": "zeros"}}
STABLE = {"depth": 10, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}}
# Batch normalization before each ReLU of a 30-layer MLP: the gradient grows ~1.2x per layer
# toward the input (Yang et al. 2019, "A mean field theory of batch normalization"), a gain of
# ~200 across the stack at this width and batch size. Without the norm (STABLE_30) it stays ~1.
EXPLODING = {"depth": 30, "activation": "relu", "norm": "batchnorm", "init": {"weight": "kaiming_normal", "bias": "zeros"}}
STABLE_30 = {**EXPLODING, "norm": "none"}


def recurrent_run(out: Path, name: str, kind: str = "rnn", activation: str = "tanh", gain: float = 0.9,
                  weight: Any = "xavier_uniform", **model: Any) -> Run:
    """A one-layer recurrent stack (width 64) on the adding task, measured at initialization only
    (train.steps 0, probes: deltas), with an orthogonal recurrent init of `gain`; read back."""
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment

    raw = {"name": name, "seed": 0, "device": "cpu",
           "data": {"name": "adding", "seq_len": 20, "n_train": 128, "n_test": 32, "batch_size": 128},
           "model": {"kind": kind, "depth": 1, "width": 64, "activation": activation, **model,
                     "init": {"weight": weight, "recurrent": {"name": "orthogonal", "gain": gain}, "bias": "zeros"}},
           "loss": "mse", "train": {"steps": 0, "eval_every": 1}, "log": {"every": 1, "probes": ["deltas"], "out": str(out)}}  # fmt: skip
    return load_run(run_experiment(validate(raw)).run_dir)


def write_yaml(path: Path, data: Any) -> Path:
    """`data` as a YAML file at `path` (keys in the order given); returns the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_dirs(out: Path) -> list[Path]:
    """The run directories under `out` (every folder with a meta.json), sorted."""
    return sorted(meta.parent for meta in out.rglob("meta.json"))


ROOT = Path(__file__).resolve().parents[1]


def start_long_run(out: Path) -> subprocess.Popen:
    """`gradlab run configs/smoke.yaml` for a million steps, logging every step, as a real process."""
    args = [sys.executable, "-m", "gradlab", "run", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out),
            "--steps", "1000000", "--quiet", "--set", "log.every=1"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(out: Path, steps: int, timeout: float = 60) -> Path:
    """The run directory under `out` once its layers.csv holds `steps` steps (head rows)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for layers in out.rglob("layers.csv"):
            if layers.read_text().count(",head,") >= steps:
                return layers.parent
        time.sleep(0.1)
    raise AssertionError("the run logged nothing in time")


def fill_disk(disk: Path, leave: int = 0) -> None:
    """Fill the filesystem holding `disk` (a small tmpfs), then give back `leave` bytes."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        size = (disk / "filler").stat().st_size
        os.truncate(disk / "filler", max(size - leave, 0))


def assert_one_error(result: Any, *fragments: str, code: int = 2, warnings: bool = False) -> str:
    """A command refused with one clear line: exit `code`, stderr exactly one `error: ...` line holding
    every fragment (with `warnings`, `warning: ...` lines beside it are allowed), no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if not (warnings and line.startswith("warning: "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]
