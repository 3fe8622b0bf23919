"""What probing costs: gradlab's training step against a plain PyTorch loop, side by side.

The model is the issue's reference: a 50-layer width-256 ReLU MLP at batch 128 on the CPU.
The baseline is a plain `nn.Sequential` of Linear+ReLU with the same weights, trained by the
loop everybody writes (zero_grad, forward, loss, backward, step). Each gradlab variant runs the
real `train.Trainer` steps, CSV writing included. Variants are interleaved round by round in one
process so that machine noise hits them alike; each round times `--steps` steps per variant and
the table reports the median ms/step over rounds and the median of the per-round ratios.

    python benchmarks/overhead.py [--rounds 15] [--steps 20] [--depth 50] [--width 256]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from gradlab.config import validate
from gradlab.data import Dataset
from gradlab.records import RunRecords
from gradlab.train import Trainer

TARGETS = {"weights probe every step": 1.05, "all probes every step": 1.25, "all probes every 10 steps": 1.03}


def make_trainer(args, probes: list[str], out: str) -> Trainer:
    exp = validate({
        "name": "overhead", "device": "cpu",
        "data": {"dim": args.width, "classes": 10, "n_train": args.batch, "n_test": args.batch, "batch_size": args.batch},
        "model": {"depth": args.depth, "width": args.width, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": 1e-3},
        "log": {"probes": probes, "out": out},
    })  # fmt: skip
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))
    data = Dataset(x, y, x, y, (args.width,), 10)
    trainer = Trainer(exp, torch.device("cpu"), data)
    trainer.records = RunRecords(Path(tempfile.mkdtemp(dir=out)), exp.to_yaml(), {})
    return trainer


def plain_twin(trainer: Trainer) -> tuple[nn.Module, torch.optim.Optimizer]:
    """nn.Sequential with the same weights: what the network is without gradlab around it."""
    layers: list[nn.Module] = []
    for block in trainer.model.blocks:
        layers += [block.linear, nn.ReLU()]
    model = copy.deepcopy(nn.Sequential(*layers, trainer.model.head))  # its own weights from here on
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def time_plain(model, optimizer, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def time_gradlab(trainer: Trainer, x, y, steps: int, probe_every: int | None) -> float:
    """`steps` steps from step 0, the probe attached every `probe_every` steps (None: never)."""
    start = time.perf_counter()
    for step in range(steps):
        if probe_every is not None and step % probe_every == 0:
            trainer.logged_step(step, x, y, update=True)
        else:
            trainer.plain_step(x, y)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round (a multiple of 10)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = tempfile.mkdtemp(prefix="gradlab-bench-")
    all_probes = ["weights", "deltas", "activations", "updates"]
    variants = {  # name: (trainer, probe every k steps)
        "gradlab, probes never attached": (make_trainer(args, all_probes, out), None),
        "weights probe every step": (make_trainer(args, ["weights"], out), 1),
        "all probes every step": (make_trainer(args, all_probes, out), 1),
        "all probes every 10 steps": (make_trainer(args, all_probes, out), 10),
    }
    plain, plain_opt = plain_twin(variants["weights probe every step"][0])
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))

    times: dict[str, list[float]] = {"plain PyTorch loop": []} | {name: [] for name in variants}
    time_plain(plain, plain_opt, x, y, 5)  # warm-up
    for trainer, every in variants.values():
        time_gradlab(trainer, x, y, 10, every)
    for _ in range(args.rounds):
        times["plain PyTorch loop"].append(time_plain(plain, plain_opt, x, y, args.steps))
        for name, (trainer, every) in variants.items():
            times[name].append(time_gradlab(trainer, x, y, args.steps, every))

    base = times["plain PyTorch loop"]
    print(f"{args.depth}-layer width-{args.width} ReLU MLP, batch {args.batch}, CPU, torch threads {torch.get_num_threads()}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps")  # fmt: skip
    print(f"{'variant':34} {'median ms/step':>15} {'ratio':>7} {'target':>7}")
    for name, samples in times.items():
        ratio = statistics.median(t / b for t, b in zip(samples, base))
        target = TARGETS.get(name)
        mark = "" if target is None else (" ok" if ratio <= target else " OVER")
        target_text = f"<= {target:.2f}" if target else ""
        print(f"{name:34} {statistics.median(samples):15.2f} {ratio:7.3f} {target_text:>7}{mark}")


if __name__ == "__main__":
    main()
