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

Then each probe group of `log.probes` alone, logged every step (noise also every 10 steps), each
with the extra milliseconds a logged step costs over gradlab's unprobed step, so that a user can
choose the groups (presets: `log.probes: cheap`, weights and deltas; `all`); a group the MLP cannot
measure says why. A 1-layer LSTM (benchmarks/recurrent.py's) shows what the recurrent probe's
per-time-step rows cost against its own unprobed gradlab step. Last, the whole-run figure of issue
22: `gradlab run` of the MLP for 300 steps in a fresh process with log.every 1 against logging
steps 0 and 300 only (--whole-rounds 0 leaves it out).

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
                                  [--whole-rounds 3] [--whole-steps 300]
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
from gradlab.vocab.errors import GradlabError
from gradlab.vocab.quantities import DEFAULT_GROUPS, GROUPS

COCKPIT_ECONOMY = 1.5  # the published figure the noise rows stand beside
# issue 22's targets, as ratios to the row's baseline (a whole run's are in whole_run below)
TARGETS = {"weights probe every step": 1.05, "all probes every step": 1.25, "all probes every 10 steps": 1.03,
           "transformer: watch every 10 steps": 1.05, "group noise: every step": 1.2, "group noise: every 10 steps": 1.03}
WHOLE_RUN_TARGET = 1.35  # a whole gradlab run, default probes every step against logging step 0 (and the last) only
BASELINES = {"transformer: watch every step": "transformer: plain loop", "transformer: watch every 10 steps": "transformer: plain loop",
             "lstm: probes never attached": "lstm: probes never attached", "lstm: default probes every step": "lstm: probes never attached", "lstm: default probes every 10 steps": "lstm: probes never attached"}
# a row's extra milliseconds per logged step are taken against gradlab's own unprobed step
UNPROBED = {name: "lstm: probes never attached" for name in BASELINES if name.startswith("lstm")}
LR = 1e-3
LSTM = {"width": 64, "seq_len": 50, "batch": 32}  # benchmarks/recurrent.py's model, its time steps in timesteps.csv


def make_trainer(args, probes: list[str], out: str, kind: str = "mlp") -> Trainer:
    from gradlab.vocab.quantities import RECURRENT_KINDS, layers_columns

    if kind == "lstm":
        config = {
            "data": {"name": "adding", "seq_len": LSTM["seq_len"], "n_train": LSTM["batch"], "n_test": LSTM["batch"], "batch_size": LSTM["batch"]},
            "model": {"kind": "lstm", "depth": 1, "width": LSTM["width"]}, "loss": "mse",
        }  # fmt: skip
        x, y, shape, classes = torch.rand(LSTM["batch"], LSTM["seq_len"], 2), torch.rand(LSTM["batch"]), (LSTM["seq_len"], 2), 1
    else:
        config = {
            "data": {"dim": args.width, "classes": 10, "n_train": args.batch, "n_test": args.batch, "batch_size": args.batch},
            "model": {"depth": args.depth, "width": args.width, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        }  # fmt: skip
        x, y, shape, classes = torch.randn(args.batch, args.width), torch.randint(0, 10, (args.batch,)), (args.width,), 10
    exp = validate({"name": "overhead", "device": "cpu", **config, "optim": {"name": "sgd", "lr": LR}, "log": {"probes": probes, "out": out}})
    trainer = Trainer(exp, torch.device("cpu"), Dataset(x, y, x, y, shape, classes))
    recurrent = kind in RECURRENT_KINDS
    columns = layers_columns(recurrent=recurrent, **{group: group in probes for group in ("noise", "coordinates", "spectrum")})
    trainer.records = RunRecords(Path(tempfile.mkdtemp(dir=out)), exp.to_yaml(), {}, columns, timesteps=recurrent)
    trainer.own_batch = (x, y) if kind != "mlp" else None
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
    every `probe_every` steps (None: never). A trainer with its own batch (the LSTM) trains on it."""
    state = {"step": 0}

    def step(x, y) -> None:
        if trainer.own_batch is not None:
            x, y = trainer.own_batch
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
    parser.add_argument("--whole-rounds", type=int, default=3, help="rounds of the whole-run figure (0: leave it out)")
    parser.add_argument("--whole-steps", type=int, default=300, help="steps of each whole run")
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
    skipped = {}
    for group in GROUPS:  # each probe group alone, every step; noise also every 10 steps (issue 22's targets)
        for every in (1, 10) if group == "noise" else (1,):
            name = f"group {group}: every {'step' if every == 1 else f'{every} steps'}"
            try:
                trainers[name] = (make_trainer(args, [group], out), every)
            except GradlabError as exc:  # a group this model cannot measure
                skipped[name] = str(exc).splitlines()[0]
    trainers |= {
        "lstm: probes never attached": (make_trainer(args, list(DEFAULT_GROUPS), out, "lstm"), None),
        "lstm: default probes every step": (make_trainer(args, list(DEFAULT_GROUPS), out, "lstm"), 1),
        "lstm: default probes every 10 steps": (make_trainer(args, list(DEFAULT_GROUPS), out, "lstm"), 10),
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
    print(f"lstm rows: a 1-layer width-{LSTM['width']} LSTM on {LSTM['seq_len']} time steps at batch {LSTM['batch']} (per-time-step rows in "
          "timesteps.csv); their ratios are to its gradlab step with the probe never attached")  # fmt: skip
    print("extra ms: per logged step (the wall ms of a probed step minus gradlab's unprobed one, over the share of steps logged)")
    print(f"{'variant':38} {'wall ms/step':>12} {'ratio':>7} {'CPU ms/step':>12} {'ratio':>7} {'extra ms':>9} {'target':>8}")
    for name, samples in times.items():
        base = times[BASELINES.get(name, "plain PyTorch loop")]  # the transformer's and the LSTM's rows: against their own loop
        wall = statistics.median(t[0] / b[0] for t, b in zip(samples, base))
        cpu = statistics.median(t[1] / b[1] for t, b in zip(samples, base))
        target = TARGETS.get(name)
        mark = "" if target is None else (" ok" if max(wall, cpu) <= target else " OVER")
        target_text = f"<= {target:.2f}" if target else ""
        every = trainers.get(name, (None, None))[1]
        unprobed = times.get(UNPROBED.get(name, "gradlab, probes never attached"))
        extra = ""
        if every is not None and unprobed is not None:  # per logged step: 1 step in `every` is logged
            extra = f"{statistics.median((t[0] - u[0]) * every for t, u in zip(samples, unprobed)):9.2f}"
        print(f"{name:38} {statistics.median(t[0] for t in samples):12.2f} {wall:7.3f} "
              f"{statistics.median(t[1] for t in samples):12.2f} {cpu:7.3f} {extra:>9} {target_text:>8}{mark}")  # fmt: skip
    for name, why in skipped.items():
        print(f"{name:38} not measured: {why}")
    if any(name.startswith("group noise") for name in times):
        print(f"{'published: Cockpit economy every step':38} {'':>12} {COCKPIT_ECONOMY:7.3f}   (its gradient-noise tier, whole network, "
              "Schneider, Dangel & Hennig 2021 Fig. 6, on a GPU; not run here)")  # fmt: skip
    if args.whole_rounds:
        whole_run(args)


def whole_run(args) -> None:
    """The issue's whole-run figure: `gradlab run` of the benchmark's MLP for --whole-steps steps in
    a fresh process, log.every 1 (every step probed, default groups) against log.every equal to the
    steps (step 0 and the last step probed), the two taking turns; the median ratio of the wall times."""
    import subprocess
    import sys

    import yaml

    folder = Path(tempfile.mkdtemp(prefix="gradlab-whole-run-"))
    commands = {}
    for every in (1, args.whole_steps):
        config = {
            "name": f"whole-every-{every}", "device": "cpu", "seed": 0,
            "data": {"dim": args.width, "classes": 10, "n_train": 4096, "n_test": 512, "batch_size": args.batch},
            "model": {"depth": args.depth, "width": args.width, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
            "optim": {"name": "sgd", "lr": LR}, "train": {"steps": args.whole_steps, "eval_every": args.whole_steps},
            "log": {"every": every, "out": str(folder)},
        }  # fmt: skip
        path = folder / f"every-{every}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        commands[every] = [sys.executable, "-c", "from gradlab.cli.app import main; main()", "run", str(path), "--quiet", "--threads", str(args.threads)]
    walls: dict[int, list[float]] = {every: [] for every in commands}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for round_ in range(args.whole_rounds):
        for every in commands if round_ % 2 == 0 else reversed(list(commands)):
            start = time.perf_counter()
            subprocess.run(commands[every], check=True, env=env, stdout=subprocess.DEVNULL)
            walls[every].append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(walls[1], walls[args.whole_steps]))
    mark = "ok" if ratio <= WHOLE_RUN_TARGET else "OVER"
    print(f"whole run ({args.whole_steps} steps, `gradlab run` in a fresh process, {args.whole_rounds} rounds taking turns): "
          f"log.every 1 {statistics.median(walls[1]):.2f} s, only steps 0 and {args.whole_steps} {statistics.median(walls[args.whole_steps]):.2f} s, "
          f"ratio {ratio:.3f}  target <= {WHOLE_RUN_TARGET:.2f} {mark}")  # fmt: skip


if __name__ == "__main__":
    main()
