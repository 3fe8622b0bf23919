"""Thread oversubscription: the same run alone and two at once, with torch's default thread count,
one thread, and gradlab's `threads: auto`; prints each one's slowdown when it has company.

Each run is its own process (as `gradlab run` is): it builds the issue's small model (a 6-layer
width-32 ReLU MLP, batch 128, every probe every 10 steps, CSV rows written), then waits for a
common start time so that the two runs of a pair train at the same moment, and reports the wall
time of its training steps alone. Settings and pairs are interleaved round by round.

    python benchmarks/threads.py [--rounds 3] [--steps 400] [--width 32] [--depth 6]
    python benchmarks/threads.py --calibrate     # where intra-op threads start to pay, alone

`--calibrate` times one step of a 6-layer MLP at batch 128 per width with one thread and with
every core, alternating in one process, and prints the speed-up beside the largest layer's
multiply-adds: gradlab's `threads: auto` uses more than one thread from PARALLEL_MIN_MACS up.
Timings on a shared machine are inflated and the speed-ups of more threads are understated; the
first line says the load they were taken under.
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

SETTINGS = ("torch default", "1", "auto")


def experiment(args, out: str):
    from gradlab.config.experiment import validate

    return validate({
        "name": "threads", "device": "cpu",
        "data": {"dim": args.width, "classes": 10, "n_train": 1024, "n_test": 128, "batch_size": 128},
        "model": {"depth": args.depth, "width": args.width, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": 1e-3},
        "log": {"every": 10, "out": out},
    })  # fmt: skip


def child(args) -> None:
    """One run: set the threads, build, wait for the start time, train; print JSON."""
    import torch

    from gradlab.build.data import Batches, load_dataset
    from gradlab.records.write import RunRecords
    from gradlab.orchestrate.train import Trainer, resolve_threads

    exp = experiment(args, args.out)
    data = load_dataset(exp.data, exp.seed)
    if args.child != "torch default":
        torch.set_num_threads(resolve_threads("auto" if args.child == "auto" else int(args.child), exp, data.input_shape))
    trainer = Trainer(exp, torch.device("cpu"), data)
    trainer.records = RunRecords(Path(tempfile.mkdtemp(dir=args.out)), exp.to_yaml(), {})
    batches = Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed)
    for step in range(5):  # warm-up
        trainer.plain_step(*next(batches))
    time.sleep(max(0.0, args.start_at - time.time()))
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = next(batches)
        if step % exp.log.every == 0:
            trainer.logged_step(step, x, y, update=True)
        else:
            trainer.plain_step(x, y)
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}))


def launch(args, setting: str, copies: int, out: str) -> tuple[list[float], int]:
    """`copies` runs with `setting`, started together; their training times and thread count."""
    start_at = time.time() + 6.0  # after every copy has imported torch and built its model
    command = [sys.executable, __file__, "--child", setting, "--start-at", str(start_at), "--out", out,
               "--steps", str(args.steps), "--width", str(args.width), "--depth", str(args.depth)]  # fmt: skip
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    reports = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return [r["seconds"] for r in reports], reports[0]["threads"]


def calibrate() -> None:
    import torch
    from torch import nn

    def step_ms(model, optimizer, x, y, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - start) / n * 1e3

    from gradlab.build.system import available_cores
    from gradlab.orchestrate.train import PARALLEL_MIN_MACS

    cores = available_cores()
    print(f"6-layer ReLU MLP, batch 128, 1 thread vs {cores}; load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'width':>6} {'largest layer MACs':>19} {'1 thread ms':>12} {f'{cores} threads ms':>13} {'speed-up':>9}")
    for width in (32, 64, 128, 256, 512, 1024, 2048):
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for _ in range(6):
            layers += [nn.Linear(width, width), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(width, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = torch.randn(128, width), torch.randint(0, 10, (128,))
        n = max(3, int(3e8 / (128 * width * width * 6 * 3)))
        times: dict[int, list[float]] = {1: [], cores: []}
        for _ in range(5):
            for threads in times:
                torch.set_num_threads(threads)
                step_ms(model, optimizer, x, y, 2)
                times[threads].append(step_ms(model, optimizer, x, y, n))
        speedup = statistics.median(a / b for a, b in zip(times[1], times[cores]))
        macs = 128 * width * width
        line = "  <- auto uses more threads from here" if macs >= PARALLEL_MIN_MACS and macs // 4 < PARALLEL_MIN_MACS else ""
        print(f"{width:6d} {macs:19,d} {statistics.median(times[1]):12.2f} {statistics.median(times[cores]):13.2f} {speedup:9.2f}{line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    if args.calibrate:
        calibrate()
        return

    alone: dict[str, list[float]] = {s: [] for s in SETTINGS}
    pair: dict[str, list[float]] = {s: [] for s in SETTINGS}
    threads: dict[str, int] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gradlab-bench-") as out:
        for r in range(args.rounds):
            for setting in SETTINGS:
                times, threads[setting] = launch(args, setting, 1, out)
                alone[setting] += times
                times, _ = launch(args, setting, 2, out)
                pair[setting].append(statistics.mean(times))
                print(f"  round {r + 1}: {setting:14} alone {alone[setting][-1]:6.2f} s, two at once {pair[setting][-1]:6.2f} s each", flush=True)
    print(f"\n{args.depth}-layer width-{args.width} ReLU MLP, batch 128, {args.steps} steps (all probes every 10), "
          f"{args.rounds} rounds; load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores")  # fmt: skip
    print(f"{'threads':22} {'alone (median)':>15} {'two at once, each':>18} {'slowdown':>9}")
    for setting in SETTINGS:
        slowdown = statistics.median(p / a for p, a in zip(pair[setting], alone[setting]))
        label = f"{setting} ({threads[setting]})"
        print(f"{label:22} {statistics.median(alone[setting]):13.2f} s {statistics.median(pair[setting]):16.2f} s {slowdown:8.2f}x")


if __name__ == "__main__":
    main()
