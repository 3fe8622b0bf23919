"""What --jobs buys, and what a sweep costs beyond its runs: 8-run sweeps with --jobs 1 and --jobs 2,
interleaved round by round, beside `python -c "import torch"` measured in the same rounds.

Two sweeps, each 4 activations x 2 seeds (one torch thread per run, the default: the records are
then the same whatever --jobs):

    bench    a 20-layer width-64 MLP, --steps optimizer steps (2000)
    small    a 10-layer width-64 MLP, 1500 steps: eight runs of about 2 s each (issue 22)

Each measurement is a fresh process, as `gradlab run` is, so that every --jobs 2 sweep starts its
worker processes from nothing; the order of the two variants alternates between rounds. Per sweep:

    sweep     the command `gradlab run CONFIG --jobs N` from its start (planning, the memory check,
              the sweep directory, starting the workers, the 8 runs, sweep.csv), timed inside the
              process once gradlab.cli.app is imported
    command   the whole process, Python's start-up included: the sweep's wall time
    runs / jobs   the sum of the runs' own durations (sweep.csv's duration_s, from a run's start
              to its records closed) over --jobs, what a perfect split of the runs would take
    fixed     command - runs / jobs: the sweep's fixed cost (interpreter and imports, planning,
              the memory check, starting the workers, the last run's wait for the slower worker)

The target (issue 22): with --jobs 2 the fixed cost is at most one `python -c "import torch"` (a
fresh process, timed in the same rounds) plus 0.5 s; the sweep's own process never imports torch
(`parent torch` says whether it did). The first round also checks that both variants wrote
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
FIXED_MARGIN_S = 0.5  # issue 22: fixed cost of a --jobs 2 sweep <= `import torch` + this
SWEEPS = {"bench": (20, None), "small": (10, 1500)}  # name -> (depth, steps; None: --steps)


def sweep_config(steps: int, out: str, depth: int = 20) -> dict:
    return {
        "name": "bench-sweep", "device": "cpu",
        "data": {"name": "gaussian", "dim": 32, "classes": 10, "n_train": 2048, "n_test": 512, "batch_size": 64},
        "model": {"depth": depth, "width": 64, "init": {"weight": {"name": "xavier_normal", "gain": "auto"}, "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"steps": steps, "eval_every": steps},
        "log": {"every": 20, "out": out},
        "sweep": {"model.activation": ["sigmoid", "tanh", "relu", "elu"]},
        "seeds": [0, 1],
    }  # fmt: skip


def child(jobs: int, steps: int, depth: int, out: str) -> None:
    """`gradlab run CONFIG --jobs N --quiet` in this (fresh) process, timed from the moment the
    command starts (gradlab.cli.app imported); prints {"sweep_s": ..., "dir": ...} as JSON."""
    import contextlib
    import io

    import yaml

    from gradlab.cli.app import app

    config = Path(out) / f"sweep-{os.getpid()}.yaml"
    config.write_text(yaml.safe_dump(sweep_config(steps, out, depth), sort_keys=False))
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
    print(json.dumps({"sweep_s": elapsed, "runs_s": runs_s, "dir": str(sweep_dir), "torch": "torch" in sys.modules, "pandas": "pandas" in sys.modules}))


def measure(jobs: int, steps: int, depth: int, out: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(jobs), "--steps", str(steps), "--depth", str(depth), "--out", out],
                          capture_output=True, text=True, check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["command_s"] = time.perf_counter() - start
    return report


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (of other work: the figures need a quiet machine)."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def import_torch_s() -> float:
    """The wall time of a fresh `python -c "import torch"`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


def same_records(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_dir())
    return names == sorted(p.name for p in b.iterdir() if p.is_dir()) and all(
        (a / n / "layers.csv").read_bytes() == (b / n / "layers.csv").read_bytes() for n in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run of the bench sweep")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.depth, args.out)
        return

    from gradlab.build.system import available_cores

    whats = ("sweep", "command", "runs / jobs", "fixed")
    times = {name: {jobs: {what: [] for what in whats} for jobs in (1, 2)} for name in SWEEPS}
    parent_heavy: set[str] = set()
    torch_s: list[float] = []
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="gradlab-bench-") as out:
        print(f"8 runs per sweep (bench: {args.steps} steps, 20 x 64 MLP; small: 1500 steps, 10 x 64 MLP), "
              f"{args.rounds} rounds, {available_cores()} cores", flush=True)  # fmt: skip
        for r in range(args.rounds):
            torch_s.append(import_torch_s())
            print(f"  round {r + 1}: python -c 'import torch' {torch_s[-1]:6.2f} s", flush=True)
            for name, (depth, steps) in SWEEPS.items():
                dirs = {}
                for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
                    report = measure(jobs, steps or args.steps, depth, out)
                    dirs[jobs] = Path(report["dir"])
                    runs = report["runs_s"] / jobs
                    row = times[name][jobs]
                    row["sweep"].append(report["sweep_s"])
                    row["command"].append(report["command_s"])
                    row["runs / jobs"].append(runs)
                    row["fixed"].append(report["command_s"] - runs)
                    if jobs > 1:
                        parent_heavy |= {module for module in ("torch", "pandas") if report[module]}
                    print(f"  round {r + 1}: {name} --jobs {jobs}  sweep {report['sweep_s']:6.2f} s  command {report['command_s']:6.2f} s  "
                          f"runs / jobs {runs:6.2f} s  fixed {report['command_s'] - runs:5.2f} s", flush=True)  # fmt: skip
                if r == 0:
                    print(f"  {name}: layers.csv identical for --jobs 1 and --jobs 2: {same_records(dirs[1], dirs[2])}", flush=True)

    torch_median = statistics.median(torch_s)
    for name in SWEEPS:
        print(f"\n{name} sweep")
        print("| | --jobs 1 (median) | --jobs 2 (median) | speed-up (median of rounds) |")
        print("| --- | --- | --- | --- |")
        for what in whats:
            one, two = times[name][1][what], times[name][2][what]
            ratios = [a / b for a, b in zip(one, two)]
            print(f"| {what} | {statistics.median(one):.1f} s | {statistics.median(two):.1f} s | {statistics.median(ratios):.2f}x |")
    print()
    for name in SWEEPS:
        fixed = statistics.median(times[name][2]["fixed"])
        bound = torch_median + FIXED_MARGIN_S
        print(f"{name}: --jobs 2 fixed cost {fixed:.2f} s beside python -c 'import torch' {torch_median:.2f} s "
              f"(target <= {bound:.2f} s): {'met' if fixed <= bound else 'NOT met'}")  # fmt: skip
    print(f"the --jobs 2 sweeps' own process imported: {', '.join(sorted(parent_heavy)) or 'neither torch nor pandas'}")
    speedup = statistics.median(a / b for a, b in zip(times["bench"][1]["sweep"], times["bench"][2]["sweep"]))
    print(f"bench sweep speed-up {speedup:.2f}x (target {TARGET}x on a 2-core machine): {'met' if speedup >= TARGET else 'NOT met'}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
