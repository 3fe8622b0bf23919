"""gradlab compare, check and plot on many runs: each timed from process start to exit, against its target.

    python benchmarks/scale.py [--runs 1000] [--repeat 3] [--only compare,check]

Makes `--runs` synthetic run directories in a temporary folder (tests/run_factory.write_run, as
benchmarks/startup.py: 4 seeds per configuration, a 10-layer stack logged at 11 steps, each with
an expect: section so that check has something to check), then runs each command in a fresh
interpreter, one after another (never two at once). Targets for 1000 runs (issue 14): compare
and check under 5 s, plot under 30 s (more than plots.MAX_RUNS_DRAWN runs are drawn as their
median and 10-90% band). Each command's wall time and CPU time (user + system, of the process
and its children) are printed, medians over --repeat, with the wall time's ratio to the target.
The output of `uptime` is printed with the figures: on a loaded machine the wall time grows while
the CPU time barely does, so on a busy machine the CPU time says what a quiet one's wall time would.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TARGETS_S = {"compare": 5.0, "check": 5.0, "plot": 30.0}


def make_runs(out: Path, count: int) -> None:
    from run_factory import layer_rows, metric_rows, resolved_config, write_run

    activations = ["sigmoid", "tanh", "relu", "elu", "gelu"]
    for i in range(count):
        config_index, seed = divmod(i, 4)
        activation = activations[config_index % len(activations)]
        lr = 0.01 * (1 + config_index // len(activations))
        config = resolved_config("scale", seed, depth=10, model__activation=activation, optim={"name": "sgd", "lr": lr},
                                 expect={"status": "completed", "gain": {"step": 0, "between": [1e-9, 1e9]}})  # fmt: skip
        decay = 0.5 + 0.02 * config_index + 0.001 * seed
        layers = [row for step in range(0, 101, 10) for row in layer_rows(step, [decay ** (9 - k) for k in range(10)])]
        train = {step: (2.0 / (1 + step / 50), min(1.0, 0.25 + step / 200)) for step in range(0, 101, 10)}
        test = {step: (loss * 1.05, acc * 0.95) for step, (loss, acc) in train.items() if step % 50 == 0}
        write_run(out, config, layers, metric_rows(train, test), run_id=f"{i:06d}")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `args` run `repeat` times, each in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    walls, cpus = [], []
    for _ in range(repeat):
        cpu, start = children_cpu_s(), time.perf_counter()
        proc = subprocess.run(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu_s() - cpu)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return statistics.median(walls), statistics.median(cpus)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        load = os.getloadavg() if hasattr(os, "getloadavg") else ()
        return "load average " + ", ".join(f"{x:.2f}" for x in load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="synthetic runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (the medians are shown)")
    parser.add_argument("--only", default="compare,check,plot", help="the commands to time, comma-separated")
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in TARGETS_S]
    if unknown:
        sys.exit(f"--only: {', '.join(unknown)} is not one of {', '.join(TARGETS_S)}")

    gradlab = [sys.executable, "-m", "gradlab"]
    with tempfile.TemporaryDirectory(prefix="gradlab-scale-") as tmp:
        runs = Path(tmp) / "runs"
        made = time.perf_counter()
        make_runs(runs, args.runs)
        print(f"{args.runs} synthetic runs made in {time.perf_counter() - made:.1f} s")
        commands = [
            ("compare", [*gradlab, "compare", str(runs), "--format", "csv"]),
            ("check", [*gradlab, "check", str(runs)]),
            ("plot", [*gradlab, "plot", str(runs), "--output", str(Path(tmp) / "figures")]),
        ]
        print(f"uptime before: {uptime()}  ({os.cpu_count()} cores)")
        print(f"each figure the median of {args.repeat} runs of the command")
        for name, command in commands:
            if name not in only:
                continue
            wall, cpu = timed(command, args.repeat)
            target = TARGETS_S[name]
            verdict = "ok" if wall < target else "MISSED"
            print(f"  gradlab {name:<8} {args.runs} runs  wall {wall:6.2f} s  CPU {cpu:6.2f} s  target < {target:g} s  wall/target {wall / target:4.2f}  {verdict}", flush=True)
        print(f"uptime after:  {uptime()}")


if __name__ == "__main__":
    main()
