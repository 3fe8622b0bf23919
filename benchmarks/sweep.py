"""What --jobs buys: the same 8-run sweep with --jobs 1 and --jobs 2, interleaved round by round.

The sweep is 4 activations x 2 seeds on a 20-layer width-64 MLP (one torch thread per run, the
default: the records are then the same whatever --jobs). Each measurement is a fresh process, as
`gradlab run` is, so that every --jobs 2 sweep starts its worker processes from nothing; the order
of the two variants alternates between rounds. Two times are taken per sweep:

    sweep     the command `gradlab run CONFIG --jobs N` from its start (planning, the sweep
              directory, starting the workers, the 8 runs, sweep.csv), timed inside the process
              once gradlab.cli.app is imported
    command   the whole process, Python's and torch's start-up included (the same ~2 s for both)

and the table gives the medians and the median per-round speed-up of each. A third line splits the
sweep's time: `runs / jobs` is the sum of the runs' own durations (sweep.csv's duration_s, from a
run's start to its records closed) over --jobs, what a perfect split of the runs would take; the
rest of the sweep's time is its fixed cost (imports, planning, the memory check, starting workers,
the last run's wait for the slower worker). The first round also checks that both variants wrote
byte-identical layers.csv files.

    python benchmarks/sweep.py [--rounds 3] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.8  # the target for the sweep speed-up on a 2-core machine


def sweep_config(steps: int, out: str) -> dict:
    return {
        "name": "bench-sweep", "device": "cpu",
        "data": {"name": "gaussian", "dim": 32, "classes": 10, "n_train": 2048, "n_test": 512, "batch_size": 64},
        "model": {"depth": 20, "width": 64, "init": {"weight": {"name": "xavier_normal", "gain": "auto"}, "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"steps": steps, "eval_every": steps},
        "log": {"every": 20, "out": out},
        "sweep": {"model.activation": ["sigmoid", "tanh", "relu", "elu"]},
        "seeds": [0, 1],
    }  # fmt: skip


def child(jobs: int, steps: int, out: str) -> None:
    """`gradlab run CONFIG --jobs N --quiet` in this (fresh) process, timed from the moment the
    command starts (gradlab.cli.app imported); prints {"sweep_s": ..., "dir": ...} as JSON."""
    import contextlib
    import io

    import yaml

    from gradlab.cli.app import app

    config = Path(out) / f"sweep-{os.getpid()}.yaml"
    config.write_text(yaml.safe_dump(sweep_config(steps, out), sort_keys=False))
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        app(["run", str(config), "--jobs", str(jobs), "--quiet"], standalone_mode=False)
    elapsed = time.perf_counter() - start
    sweep_dir = Path(printed.getvalue().strip())
    import csv

    with open(sweep_dir / "sweep.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["completed"] * 8, rows
    runs_s = sum(float(row["duration_s"]) for row in rows)
    print(json.dumps({"sweep_s": elapsed, "runs_s": runs_s, "dir": str(sweep_dir)}))


def measure(jobs: int, steps: int, out: str) -> tuple[float, float, float, Path]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(jobs), "--steps", str(steps), "--out", out],
                          capture_output=True, text=True, check=True)  # fmt: skip
    command = time.perf_counter() - start
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["sweep_s"], command, report["runs_s"], Path(report["dir"])


def same_records(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_dir())
    return names == sorted(p.name for p in b.iterdir() if p.is_dir()) and all(
        (a / n / "layers.csv").read_bytes() == (b / n / "layers.csv").read_bytes() for n in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.out)
        return

    from gradlab.build.system import available_cores

    times: dict[int, dict[str, list[float]]] = {jobs: {"sweep": [], "command": [], "runs / jobs": [], "fixed": []} for jobs in (1, 2)}
    with tempfile.TemporaryDirectory(prefix="gradlab-bench-") as out:
        print(f"8 runs ({args.steps} steps, 20 x 64 MLP) per sweep, {args.rounds} rounds, {available_cores()} cores", flush=True)
        for r in range(args.rounds):
            dirs = {}
            for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
                sweep_s, command_s, runs_s, dirs[jobs] = measure(jobs, args.steps, out)
                times[jobs]["sweep"].append(sweep_s)
                times[jobs]["command"].append(command_s)
                times[jobs]["runs / jobs"].append(runs_s / jobs)
                times[jobs]["fixed"].append(sweep_s - runs_s / jobs)
                print(f"  round {r + 1}: --jobs {jobs}  sweep {sweep_s:6.2f} s  command {command_s:6.2f} s  runs / jobs {runs_s / jobs:6.2f} s", flush=True)
            if r == 0:
                print(f"  layers.csv identical for --jobs 1 and --jobs 2: {same_records(dirs[1], dirs[2])}", flush=True)

    print()
    print("| | --jobs 1 (median) | --jobs 2 (median) | speed-up (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for what in ("sweep", "command", "runs / jobs", "fixed"):
        one, two = times[1][what], times[2][what]
        ratios = [a / b for a, b in zip(one, two)]
        print(f"| {what} | {statistics.median(one):.1f} s | {statistics.median(two):.1f} s | {statistics.median(ratios):.2f}x |")
    speedup = statistics.median(a / b for a, b in zip(times[1]["sweep"], times[2]["sweep"]))
    print(f"\nsweep speed-up {speedup:.2f}x (target {TARGET}x on a 2-core machine): {'met' if speedup >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
