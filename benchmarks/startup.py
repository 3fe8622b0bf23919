"""How fast the commands start: each one timed from process start to exit, against its target.

    python benchmarks/startup.py [--repeat 7] [--runs 100]

Every command runs in a fresh interpreter (`python -m gradlab ...`), one after another, never two at
once, `--repeat` times; the median wall time is printed next to its target, with `python -c pass`
as the floor no command can go below. `gradlab compare` reads `--runs` synthetic run directories
(tests/run_factory.write_run: 25 configurations x 4 seeds, a 10-layer stack logged at 11 steps)
made in a temporary folder first. The load average is printed with the figures: on a busy
machine every number grows, the floor too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TARGETS_S = {"--help": 0.3, "validate": 0.6, "components": 0.6, "compare": 2.0}


def make_runs(out: Path, count: int) -> None:
    from run_factory import layer_rows, metric_rows, resolved_config, write_run

    activations = ["sigmoid", "tanh", "relu", "elu", "gelu"]
    for i in range(count):
        config_index, seed = divmod(i, 4)
        activation = activations[config_index % len(activations)]
        lr = 0.01 * (1 + config_index // len(activations))
        config = resolved_config("bench", seed, depth=10, model__activation=activation, optim={"name": "sgd", "lr": lr})
        decay = 0.5 + 0.02 * config_index + 0.001 * seed
        layers = [row for step in range(0, 101, 10) for row in layer_rows(step, [decay ** (9 - k) for k in range(10)])]
        train = {step: (2.0 / (1 + step / 50), min(1.0, 0.25 + step / 200)) for step in range(0, 101, 10)}
        test = {step: (loss * 1.05, acc * 0.95) for step, (loss, acc) in train.items() if step % 50 == 0}
        write_run(out, config, layers, metric_rows(train, test), run_id=f"{i:06d}")


def median_wall_s(args: list[str], repeat: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs of each command (the median is shown)")
    parser.add_argument("--runs", type=int, default=100, help="synthetic runs for gradlab compare")
    args = parser.parse_args()

    gradlab = [sys.executable, "-m", "gradlab"]
    with tempfile.TemporaryDirectory(prefix="gradlab-startup-") as tmp:
        make_runs(Path(tmp), args.runs)
        commands = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("gradlab --help", [*gradlab, "--help"], TARGETS_S["--help"]),
            ("gradlab validate configs/example.yaml", [*gradlab, "validate", "configs/example.yaml"], TARGETS_S["validate"]),
            ("gradlab components", [*gradlab, "components"], TARGETS_S["components"]),
            (f"gradlab compare ({args.runs} runs)", [*gradlab, "compare", tmp], TARGETS_S["compare"]),
        ]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"start-up, median of {args.repeat} runs each, one after another; load average {load:.2f}, {os.cpu_count()} cores")
        width = max(len(name) for name, _, _ in commands)
        for name, command, target in commands:
            median = median_wall_s(command, args.repeat)
            verdict = "(the floor)" if target is None else f"target < {target:g} s  {'ok' if median < target else 'MISSED'}"
            print(f"  {name:<{width}}  {median:6.3f} s  {verdict}", flush=True)


if __name__ == "__main__":
    main()
