"""What probing costs: gradlab's training step against a plain PyTorch loop, beside the anchors.

The model is the issue's reference: a 50-layer width-256 ReLU MLP at batch 128 on the CPU.
The baseline is a plain `nn.Sequential` of Linear+ReLU with the same weights, trained by the
loop everybody writes (zero_grad, forward, loss, backward, step). Each gradlab variant runs the
real `train.Trainer` steps, CSV writing included. The anchors are what people write by hand
instead, each on its own copy of the plain model, every step:

    Lightning grad_norm      a norm per parameter gradient, their total, one .item() per value
                             (lightning.pytorch.utilities.grad_norm, then logged)
    one _foreach_norm        every parameter gradient's norm in one batched call, one transfer
    Karpathy retain_grad     retain_grad() on every layer's output; after backward, per layer the
                             activation's mean, std and saturated share, the output gradient's
                             norm, the weight gradient's norm and the update-to-data ratio, each
                             with .item() (makemore part 3's diagnostics, written plainly)

and `gradlab.watch` on the plain loop, every step and every 10 steps. Beside the MLP, a transformer
block (issue 20): nn.TransformerEncoderLayer (d_model 128, 4 heads, feed-forward 512, pre-norm, no
dropout) and a Linear head on sequences of 32 tokens at batch 16, its watch rows timed against its own
plain loop: there watch sees every parameter use through a TorchFunctionMode on measured steps
(the attention's in_proj_weight and out_proj inside nn.MultiheadAttention included).

With --per-step the variants take turns step by step within each round instead. The two differ for
a variant that measures some steps only (watch every 10 steps): in blocks, the steps that follow a
measured one run a few percent slower than a plain loop's (glibc's allocator gives back memory the
measured step's temporaries took and takes it again; with MALLOC_TRIM_THRESHOLD_ and
MALLOC_MMAP_THRESHOLD_ raised the difference is gone), which a loop that measures every 10th step
pays too; taking turns step by step spreads that cost over every variant.

Variants are interleaved round by round in one process so that machine noise hits them alike;
each round times `--steps` steps per variant and the table reports the median ms/step over
rounds and the median of the per-round ratios to the plain loop, by wall time and by the
process's CPU time. Ratios are far steadier than milliseconds on a loaded machine, and CPU-time
ratios steadier than wall-time ones (time spent waiting for a core is not counted); the first line
says what load the figures were taken under. On a quiet machine the two agree.

    python benchmarks/overhead.py [--rounds 15] [--steps 20] [--depth 50] [--width 256] [--threads 1] [--only TEXT] [--per-step]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from gradlab.config.experiment import validate
from gradlab.build.dataset import Dataset
from gradlab.records.write import RunRecords
from gradlab.orchestrate.train import Trainer

TARGETS = {"weights probe every step": 1.05, "all probes every step": 1.25, "all probes every 10 steps": 1.03,
           "transformer: watch every 10 steps": 1.05}
BASELINES = {"transformer: watch every step": "transformer: plain loop", "transformer: watch every 10 steps": "transformer: plain loop"}
LR = 1e-3


def make_trainer(args, probes: list[str], out: str) -> Trainer:
    exp = validate({
        "name": "overhead", "device": "cpu",
        "data": {"dim": args.width, "classes": 10, "n_train": args.batch, "n_test": args.batch, "batch_size": args.batch},
        "model": {"depth": args.depth, "width": args.width, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        "optim": {"name": "sgd", "lr": LR},
        "log": {"probes": probes, "out": out},
    })  # fmt: skip
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))
    data = Dataset(x, y, x, y, (args.width,), 10)
    trainer = Trainer(exp, torch.device("cpu"), data)
    trainer.records = RunRecords(Path(tempfile.mkdtemp(dir=out)), exp.to_yaml(), {})
    return trainer


def plain_twin(trainer: Trainer) -> nn.Sequential:
    """nn.Sequential with the same weights: what the network is without gradlab around it."""
    layers: list[nn.Module] = []
    for block in trainer.model.blocks:
        layers += [block.linear, nn.ReLU()]
    return copy.deepcopy(nn.Sequential(*layers, trainer.model.head))  # its own weights from here on


class Plain:
    """The loop everybody writes; the anchors add their measurements to it."""

    def __init__(self, model: nn.Sequential):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def step(self, x, y) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.measure()
        self.optimizer.step()

    def measure(self) -> None:
        pass


class LightningGradNorm(Plain):
    """lightning.pytorch.utilities.grad_norm, then logged (self.log_dict reads each value)."""

    def measure(self) -> None:
        norms = {f"grad_2.0_norm/{name}": p.grad.data.norm(2) for name, p in self.model.named_parameters() if p.grad is not None}
        norms["grad_2.0_norm_total"] = torch.tensor(list(norms.values())).norm(2)
        self.logged = {key: value.item() for key, value in norms.items()}


class ForeachNorm(Plain):
    """Every gradient's norm in one batched call, moved to the host in one transfer."""

    def measure(self) -> None:
        grads = [p.grad for p in self.model.parameters()]
        self.logged = torch.stack(torch._foreach_norm(grads)).cpu().tolist()


class WatchedLoop(Plain):
    """The plain loop under gradlab.watch (a model gradlab did not build), measured every `every` steps."""

    def __init__(self, model: nn.Sequential, out: str, every: int):
        super().__init__(model)
        from gradlab.measure.watch import watch

        self.watch = watch(model, out=out, every=every, name="overhead-watch", optimizer=self.optimizer)

    def step(self, x, y) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.watch.step(loss=loss)


class TransformerBlock(nn.Module):
    """One pre-norm encoder layer over (B, T, d_model) and a Linear head on the first position."""

    def __init__(self, d_model: int = 128, heads: int = 4, classes: int = 10):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        return self.head(self.layer(x)[:, 0])


def on_own_batch(step, x, y):
    """A step function that ignores the MLP's batch and trains on its own (x, y)."""
    return lambda _x, _y: step(x, y)


class KarpathyRetainGrad(Plain):
    """makemore part 3's diagnostics: keep every layer's output, retain_grad, read stats with .item()."""

    def step(self, x, y) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        outputs = []
        h = x
        for layer in self.model:
            h = layer(h)
            h.retain_grad()
            outputs.append((layer, h))
        loss = nn.functional.cross_entropy(h, y)
        loss.backward()
        stats = []
        for layer, out in outputs:
            if isinstance(layer, nn.ReLU):
                stats.append((out.mean().item(), out.std().item(), (out <= 0).float().mean().item()))
            else:
                stats.append((out.grad.norm().item(),))
        for p in self.model.parameters():
            if p.dim() == 2:
                stats.append((p.grad.norm().item(), ((LR * p.grad).std() / p.data.std()).log10().item()))
        self.logged = stats
        self.optimizer.step()


def timed(step, x, y, steps: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per step. The CPU time of the process counts only the time its
    threads ran: on a machine shared with other work it is inflated far less than the wall time."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(x, y)
    return (time.perf_counter() - start) / steps * 1e3, (time.process_time() - cpu) / steps * 1e3


def gradlab_step(trainer: Trainer, probe_every: int | None):
    """A step function for the trainer that counts its own steps from 0 and attaches the probe
    every `probe_every` steps (None: never)."""
    state = {"step": 0}

    def step(x, y) -> None:
        k = state["step"]
        state["step"] += 1
        if probe_every is not None and k % probe_every == 0:
            trainer.logged_step(k, x, y, update=True)
        else:
            trainer.plain_step(x, y)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round (a multiple of 10)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadiest on a shared machine)")
    parser.add_argument("--only", default=None, help="time only the variants whose name holds this text (and their plain loops)")
    parser.add_argument("--per-step", action="store_true",
                        help="interleave the variants step by step instead of in blocks of --steps (see the module docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = tempfile.mkdtemp(prefix="gradlab-bench-")
    all_probes = ["weights", "deltas", "activations", "updates"]
    trainers = {  # name: (trainer, probe every k steps)
        "gradlab, probes never attached": (make_trainer(args, all_probes, out), None),
        "weights probe every step": (make_trainer(args, ["weights"], out), 1),
        "all probes every step": (make_trainer(args, all_probes, out), 1),
        "all probes every 10 steps": (make_trainer(args, all_probes, out), 10),
    }
    twin = plain_twin(trainers["weights probe every step"][0])
    variants = {"plain PyTorch loop": Plain(twin).step}
    variants |= {name: gradlab_step(trainer, every) for name, (trainer, every) in trainers.items()}
    variants |= {
        "anchor: Lightning grad_norm": LightningGradNorm(copy.deepcopy(twin)).step,
        "anchor: one _foreach_norm": ForeachNorm(copy.deepcopy(twin)).step,
        "anchor: Karpathy retain_grad": KarpathyRetainGrad(copy.deepcopy(twin)).step,
    }
    variants |= {  # gradlab.watch on the plain loop (issue 13)
        "watch every step": WatchedLoop(copy.deepcopy(twin), out, 1).step,
        "watch every 10 steps": WatchedLoop(copy.deepcopy(twin), out, 10).step,
    }
    transformer = TransformerBlock()
    tokens, labels = torch.randn(16, 32, 128), torch.randint(0, 10, (16,))
    variants |= {
        "transformer: plain loop": on_own_batch(Plain(transformer).step, tokens, labels),
        "transformer: watch every step": on_own_batch(WatchedLoop(copy.deepcopy(transformer), out, 1).step, tokens, labels),
        "transformer: watch every 10 steps": on_own_batch(WatchedLoop(copy.deepcopy(transformer), out, 10).step, tokens, labels),
    }
    if args.only:
        kept = {name for name in variants if args.only in name}
        kept |= {BASELINES.get(name, "plain PyTorch loop") for name in kept}
        variants = {name: step for name, step in variants.items() if name in kept}
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))

    load_before = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for step in variants.values():
        timed(step, x, y, 10)  # warm-up
    for _ in range(args.rounds):
        if args.per_step:  # one step of each variant in turn: what follows a variant's step is another's
            spent = {name: [0.0, 0.0] for name in variants}
            for _ in range(args.steps):
                for name, step in variants.items():
                    wall, cpu = timed(step, x, y, 1)
                    spent[name][0] += wall / args.steps
                    spent[name][1] += cpu / args.steps
            for name in variants:
                times[name].append(tuple(spent[name]))
            continue
        for name, step in variants.items():
            times[name].append(timed(step, x, y, args.steps))
    load_after = os.getloadavg()

    print(f"{args.depth}-layer width-{args.width} ReLU MLP, batch {args.batch}, CPU, torch threads {torch.get_num_threads()}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps; load average (1 min) {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after, on {os.cpu_count()} cores")  # fmt: skip
    print("transformer rows: one pre-norm nn.TransformerEncoderLayer (d_model 128, 4 heads, ff 512) + Linear head, batch 16 x 32 tokens; "
          "their ratios are to the transformer's own plain loop")  # fmt: skip
    print(f"{'variant':34} {'wall ms/step':>12} {'ratio':>7} {'CPU ms/step':>12} {'ratio':>7} {'target':>8}")
    for name, samples in times.items():
        base = times[BASELINES.get(name, "plain PyTorch loop")]  # the transformer's rows: against its own plain loop
        wall = statistics.median(t[0] / b[0] for t, b in zip(samples, base))
        cpu = statistics.median(t[1] / b[1] for t, b in zip(samples, base))
        target = TARGETS.get(name)
        mark = "" if target is None else (" ok" if max(wall, cpu) <= target else " OVER")
        target_text = f"<= {target:.2f}" if target else ""
        print(f"{name:34} {statistics.median(t[0] for t in samples):12.2f} {wall:7.3f} "
              f"{statistics.median(t[1] for t in samples):12.2f} {cpu:7.3f} {target_text:>8}{mark}")  # fmt: skip


if __name__ == "__main__":
    main()
