"""The GPU path: plain vs probed milliseconds per step, and host syncs per step.

On a CUDA GPU, for the issue's reference model (a 50-layer width-256 ReLU MLP, batch 128, by
default), each variant trains from gradlab's `train.Trainer` the way `gradlab run` drives it
(batches drawn from the dataset the trainer placed on the device, `check()` before every logged
step, plain steps that leave their loss on the device), interleaved round by round with a plain
PyTorch loop (zero_grad, forward, loss, backward, step; the loss never read):

    plain PyTorch loop                    the baseline
    gradlab, probes never attached        plain steps only (check() at the end of each round)
    all probes every 10 steps             the default logging cadence
    all probes every step

Milliseconds are wall time per step with the GPU synchronized at the end of each timed block.
Host syncs are counted with torch.cuda.set_sync_debug_mode("warn"): every operation that
waits for the GPU warns once, and the warnings of a block of steps are counted per step.

    python benchmarks/gpu.py [--rounds 10] [--steps 50] [--depth 50] [--width 256] [--batch 128]

Without a CUDA GPU it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn


def make_trainer(args, probes: list[str], out: str):
    from gradlab.config.experiment import validate
    from gradlab.build.data import Batches, load_dataset
    from gradlab.records.write import RunRecords
    from gradlab.orchestrate.train import Trainer

    exp = validate({
        "name": "gpu", "device": "cuda",
        "data": {"name": "gaussian", "dim": args.width, "classes": 10, "n_train": 8192, "n_test": 1024, "batch_size": args.batch},
        "model": {"depth": args.depth, "width": args.width, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": 1e-3},
        "log": {"probes": probes, "out": out},
    })  # fmt: skip
    data = load_dataset(exp.data, exp.seed)
    trainer = Trainer(exp, torch.device("cuda"), data)
    trainer.records = RunRecords(Path(tempfile.mkdtemp(dir=out)), exp.to_yaml(), {})
    batches = Batches(trainer.data.x_train, trainer.data.y_train, exp.data.batch_size, exp.seed)
    return trainer, batches


def gradlab_steps(trainer, batches, probe_every: int | None):
    """A function running n steps as gradlab's loop does: check() before each logged step."""
    state = {"step": 0}

    def run(n: int) -> None:
        for _ in range(n):
            k = state["step"]
            state["step"] += 1
            x, y = next(batches)
            if probe_every is not None and k % probe_every == 0:
                assert trainer.check() is None
                trainer.logged_step(k, x, y, update=True)
            else:
                trainer.plain_step(x, y, k)
        assert trainer.check() is None  # one read of the block's losses, as the next logged step would

    return run


def plain_steps(trainer, batches):
    model = nn.Sequential(*[m for b in trainer.model.blocks for m in (b.linear, nn.ReLU())], trainer.model.head)
    import copy

    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run(n: int) -> None:
        for _ in range(n):
            x, y = next(batches)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    return run


def timed(run, n: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(n)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


def syncs_per_step(run, n: int) -> float:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(n)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50, help="steps per variant per round (a multiple of 10)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch here: nothing measured (run this on a machine with one)")
        return
    torch.manual_seed(0)
    out = tempfile.mkdtemp(prefix="gradlab-bench-")
    everything = ["weights", "deltas", "activations", "updates"]
    base_trainer, base_batches = make_trainer(args, everything, out)
    variants = {
        "plain PyTorch loop": plain_steps(base_trainer, base_batches),
        "gradlab, probes never attached": gradlab_steps(*make_trainer(args, everything, out), None),
        "all probes every 10 steps": gradlab_steps(*make_trainer(args, everything, out), 10),
        "all probes every step": gradlab_steps(*make_trainer(args, everything, out), 1),
    }
    for run in variants.values():
        timed(run, 10)  # warm-up: kernels chosen, memory pools filled
    syncs = {name: syncs_per_step(run, args.steps) for name, run in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(timed(run, args.steps))
    base = times["plain PyTorch loop"]
    print(f"{args.depth}-layer width-{args.width} ReLU MLP, batch {args.batch}, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps")  # fmt: skip
    print(f"{'variant':34} {'ms/step':>8} {'ratio':>7} {'host syncs/step':>16}")
    for name, samples in times.items():
        ratio = statistics.median(t / b for t, b in zip(samples, base))
        print(f"{name:34} {statistics.median(samples):8.3f} {ratio:7.3f} {syncs[name]:16.2f}")


if __name__ == "__main__":
    sys.exit(main())
