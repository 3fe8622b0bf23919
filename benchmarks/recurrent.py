"""What the unrolled recurrent stack costs: gradlab's LSTM training step against PyTorch's nn.LSTM.

The reference is the issue's: an LSTM of width 128 reading T = 100 steps, batch 64, a linear head
on the last step, on the CPU; the task is the adding problem's shape (2 features, one regression
output, mse). The baseline is the loop everybody writes around the
fused `nn.LSTM` (zero_grad, forward, loss, backward, step), with the same weights. The gradlab
variants run the real `train.Trainer` steps (CSV writing included):

    unprobed                   every step a plain step, no probe attached: on the CPU gradlab runs a
                               plain step through PyTorch's fused call (torch.lstm with oneDNN off,
                               the same numbers as the unrolled stack bit for bit; recurrent.py)
    unprobed, unrolled         the same plain steps through the unrolled stack (fused_plain_steps
                               off): what the fused dispatch saves
    all probes every 10 steps  one logged step (every time step measured, unrolled) in ten, the
                               other nine fused
    all probes every step      every step logged
    nn.LSTM loop, oneDNN off   the baseline loop with oneDNN off: the kernel gradlab's plain steps
                               run (for reference; the ratios are to the default nn.LSTM loop)

Variants are interleaved round by round in one process so that machine noise hits them alike;
each round times `--steps` steps per variant, and the table reports the median ms/step over rounds
and the median of the per-round ratios to the nn.LSTM loop. The first line says what load the
figures were taken under: figures from a loaded machine are labelled so.

    python benchmarks/recurrent.py [--rounds 9] [--steps 10] [--width 128] [--seq-len 100] [--batch 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from gradlab.config.experiment import validate
from gradlab.build.dataset import Dataset
from gradlab.vocab.quantities import layers_columns
from gradlab.records.write import RunRecords
from gradlab.orchestrate.train import Trainer

TARGETS = {"unprobed": 1.35, "all probes every 10 steps": 1.5}
FEATURES, OUTPUTS, LR = 2, 1, 1e-3


def make_trainer(args, out: str) -> Trainer:
    exp = validate({
        "name": "recurrent-benchmark", "device": "cpu",
        "data": {"name": "adding", "seq_len": args.seq_len, "n_train": args.batch, "n_test": args.batch, "batch_size": args.batch},
        "model": {"kind": "lstm", "depth": 1, "width": args.width},
        "loss": "mse", "optim": {"name": "sgd", "lr": LR}, "log": {"out": out},
    })  # fmt: skip
    x = torch.rand(args.batch, args.seq_len, FEATURES)
    y = torch.rand(args.batch)
    trainer = Trainer(exp, torch.device("cpu"), Dataset(x, y, x, y, (args.seq_len, FEATURES), OUTPUTS))
    run_dir = Path(tempfile.mkdtemp(dir=out))
    trainer.records = RunRecords(run_dir, exp.to_yaml(), {}, layers_columns(recurrent=True), timesteps=True)
    return trainer


class FusedLSTM(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, width, batch_first=True)
        self.head = nn.Linear(width, OUTPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    label = "LOADED machine: figures are indicative only" if load > 0.5 * cores else "quiet machine"
    print(f"load average {load:.2f} on {cores} cores ({label}); torch {torch.__version__}, {args.threads} thread(s)")

    out = tempfile.mkdtemp(prefix="gradlab-recurrent-bench-")
    trainer = make_trainer(args, out)
    fused = FusedLSTM(args.width)
    fused.lstm.load_state_dict(trainer.model.torch_state())
    fused.head.load_state_dict(trainer.model.head.state_dict())
    fused_opt = torch.optim.SGD(fused.parameters(), lr=LR)
    x, y = trainer.data.x_train, trainer.data.y_train

    def plain_fused() -> None:
        fused_opt.zero_grad(set_to_none=True)
        ((fused(x)[:, 0] - y) ** 2).mean().backward()  # mse on one output, as gradlab's
        fused_opt.step()

    counter = {"n": 0}

    def fused_without_onednn() -> None:
        onednn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            plain_fused()
        finally:
            torch.backends.mkldnn.enabled = onednn

    def gradlab_every(k: int, fused_plain_steps: bool = True):
        def step() -> None:
            counter["n"] += 1
            trainer.model.fused_plain_steps = fused_plain_steps
            try:
                if k and counter["n"] % k == 0:
                    trainer.logged_step(counter["n"], x, y, update=True)
                else:
                    trainer.plain_step(x, y)
            finally:
                trainer.model.fused_plain_steps = True

        return step

    variants = {
        "nn.LSTM loop": plain_fused,
        "unprobed": gradlab_every(0),
        "unprobed, unrolled": gradlab_every(0, fused_plain_steps=False),
        "all probes every 10 steps": gradlab_every(10),
        "all probes every step": gradlab_every(1),
        "nn.LSTM loop, oneDNN off": fused_without_onednn,
    }
    for step in variants.values():  # warm up
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    base = times["nn.LSTM loop"]
    print(f"LSTM width {args.width}, T = {args.seq_len}, batch {args.batch}; {args.rounds} rounds of {args.steps} steps")
    print(f"{'variant':<28}{'ms/step':>10}{'ratio':>8}  target")  # ratio: to the default nn.LSTM loop
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target}  {'met' if ratio <= target else 'MISSED'}"
        print(f"{name:<28}{statistics.median(values):>10.1f}{ratio:>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
