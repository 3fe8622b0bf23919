"""Per-layer gradient records of any PyTorch model, in the user's own training loop.

    with gradlab.watch(model, out="results", every=10, name="resnet", optimizer=opt) as w:
        for x, y in batches:
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            w.step(loss=loss, accuracy=(logits.argmax(1) == y).float().mean())
        with torch.no_grad():                      # evaluation is not measured
            w.test(loss=..., accuracy=...)

writes the run directory `gradlab run` writes (config.yaml, meta.json, metrics.csv, layers.csv), so
`gradlab compare`, `plot`, `check`, `report` and `export` read it as they read any run.

What is watched. Every `nn.Linear`, convolution (`nn.Conv1d/2d/3d` and transposed) and recurrent
layer (`nn.RNN`, `nn.LSTM`, `nn.GRU`) below `model`, as it is called in the forward pass: one
`layers.csv` row per call, named by the module's path (`layer1.0.conv2`), `layer` counting in the
order of the first measured forward pass, the last one called being the `head`. A module called
twice in one forward pass is two sites, `shared` and `shared#1`: their rows never merge.

Steps. `w.step()` ends a step: step s is measured on the network after s calls of `w.step()` (s
updates, when the loop steps its optimizer before it), as `gradlab run` numbers them. Steps 0,
every, 2*every, ... are measured; on the other steps no hook is attached at all.

What a row holds (quantities.py has the exact meanings):
    weight_norm, bias_grad_norm, weight_grad_norm   of the module's parameters (a recurrent layer's
                                     weights together); the same on every site of a reused module,
                                     whose gradient is the sum over its calls. The weight norm is
                                     taken in the measured forward pass, a gradient's as autograd
                                     accumulates it (before any clipping the loop does). Empty for a
                                     frozen parameter (requires_grad False) and one that got no gradient.
    delta_norm, delta_rms            ||dL/dz|| over the batch, z this call's output, by a tensor hook
                                     on z, and its per-example root mean square (B the first dimension;
                                     a Linear's middle dimensions, a sequence's, count as positions);
                                     empty for a recurrent layer, whose pre-activations torch's fused
                                     kernels never form (gradlab's own recurrent models have them)
    update_ratio                     ||dW|| / ||W|| of the optimizer's step, when `optimizer` is given
    the activation columns           empty: an arbitrary model has no declared block output or
                                     activation to measure (gradlab's own models do)
L is what the loop back-propagates (under a GradScaler: the scaled loss). metrics.csv gets one train row per measured step (`loss` and
`accuracy` as the loop reports them, `grad_norm` of every parameter's gradient, `lr` of the
optimizer's first group) and a test row per `w.test(...)`.

Why tensor hooks: a hook registered on z before an in-place op (`nn.ReLU(inplace=True)` right after
a Linear) receives the gradient of z as it was, which is the delta; module full-backward hooks
refuse in-place outputs. The first forward pass with gradients enabled in a measured step is the
one measured: under `torch.no_grad()` (or inference mode) no site is tapped and no row written.

One host transfer per measured step: every value is a 0-d tensor on the model's device, gathered in
a probes.PendingMeasurement and fetched at `w.step()`; `loss` and `accuracy` may be tensors.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from torch import nn

from gradlab.build.sites import Role, Site
from gradlab.measure import kernels
from gradlab.measure.norms import norm, norm_of, norms
from gradlab.measure.pending import PendingMeasurement
from gradlab.measure.rows import layer_rows
from gradlab.records.layout import new_run_dir, prepare_out_dir
from gradlab.records.run import run_meta
from gradlab.records.write import META_EVERY_S, RunRecords
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.quantities import QUANTITIES

WATCHED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)
WATCH_GROUPS = ("weights", "deltas", "updates")  # what can be measured on an arbitrary model
Number = float | int | torch.Tensor | None


@dataclass
class Watched:
    """A module gradlab measures: its path, its weights and biases (a recurrent layer has several)."""

    name: str
    module: nn.Module
    weights: list[nn.Parameter]
    biases: list[nn.Parameter]
    recurrent: bool
    sites: list[Site] = field(default_factory=list)  # one per call in a forward pass, in call order

    @classmethod
    def of(cls, name: str, module: nn.Module) -> Watched:
        if isinstance(module, nn.RNNBase):
            own = dict(module.named_parameters(recurse=False))
            weights = [p for n, p in own.items() if n.startswith("weight")]
            biases = [p for n, p in own.items() if n.startswith("bias")]
            return cls(name, module, weights, biases, recurrent=True)
        bias = getattr(module, "bias", None)
        return cls(name, module, [module.weight], [bias] if isinstance(bias, torch.Tensor) else [], recurrent=False)

    def describe(self) -> str:
        return f"{type(self.module).__name__}({self.module.extra_repr()})"


def discover(model: nn.Module) -> list[Watched]:
    """The Linear, convolution and recurrent modules below `model` (itself included), by path."""
    return [Watched.of(name or type(model).__name__, module) for name, module in model.named_modules() if isinstance(module, WATCHED_TYPES)]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"watch: name {name!r} cannot name a folder; use letters, digits, '-', '_' or '.'")
    return name


class Watch:
    """Measures `model` in the caller's loop and writes a gradlab run directory (see the module
    docstring). Use `watch(...)`; `step()` after each optimizer step, `test()` for evaluation,
    `close()` at the end (or a `with` block, which closes it as completed, or as failed or
    interrupted when the block raises)."""

    def __init__(
        self,
        model: nn.Module,
        out: str | Path = "results",
        every: int = 10,
        name: str = "watch",
        *,
        optimizer: torch.optim.Optimizer | None = None,
        groups: Iterable[str] = WATCH_GROUPS,
        seed: int | None = None,
        expect: dict[str, Any] | None = None,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"watch: every got {every!r}; a whole number of steps, 1 or more")
        groups = list(dict.fromkeys(groups))
        unknown = [g for g in groups if g not in WATCH_GROUPS]
        if unknown:
            raise ConfigError(f"watch: groups got {unknown[0]!r}; allowed: {', '.join(WATCH_GROUPS)}")
        self.model, self.every, self.optimizer, self.groups = model, every, optimizer, set(groups)
        self.watched = discover(model)
        if not self.watched:
            raise ConfigError(f"watch: {type(model).__name__} has no Linear, convolution or recurrent layer to measure")
        name = _check_name(name)
        if expect is not None:
            from gradlab.config.experiment import parse_expectations

            parse_expectations(expect)  # refuse a bad section now, not when the run is checked
        prepare_out_dir(out)
        first = next(iter(model.parameters()))
        self.device = first.device
        config = {
            "name": name, "seed": seed, "device": str(self.device),
            "model": {"kind": "watch", "class": type(model).__name__, "depth": len(self.watched) - 1,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "layers": {w.name: w.describe() for w in self.watched}},
            "optim": None if optimizer is None else {"name": type(optimizer).__name__.lower(), "lr": _lr(optimizer)},
            "log": {"every": every, "probes": groups, "out": str(out)},
        }  # fmt: skip
        if expect is not None:
            config["expect"] = expect
        self.run_dir = new_run_dir(out, name)
        meta = run_meta(name, self.run_dir.name, seed, str(self.device), None)
        self.records = RunRecords(self.run_dir, yaml.safe_dump(config, sort_keys=False), meta)
        self.steps = 0  # calls of step() so far: the step now being taken
        self.sites: list[Site] = []  # every site seen in a forward pass that ended, in layer order
        self._head: Site | None = None  # the last site of the first measured pass, labelled head for good
        self._site_module: dict[Site, Watched] = {}
        self._handles: list = []
        self._buffers: dict[int, torch.Tensor] = {}  # id(weight) -> its copy before the update
        self._closed = False
        self._started = time.perf_counter()
        self._meta_written = self._started
        self._arm()

    # -- hooks, attached for a measured step only -----------------------------------------------

    @property
    def measuring(self) -> bool:
        """Whether the step now being taken is measured (hooks attached)."""
        return bool(self._handles)

    def _arm(self) -> None:
        """Measure the step now being taken: fresh state, and the hooks attached (they measure the
        first forward pass with gradients; while consecutive steps are measured, every=1, they
        stay attached)."""
        self._fresh_step()
        if self._handles:
            return
        handles = [self.model.register_forward_pre_hook(self._forward_starts)]
        handles += [w.module.register_forward_hook(self._tap(w)) for w in self.watched]
        handles.append(self.model.register_forward_hook(self._forward_ends))  # after the taps: the model may be watched itself
        for param in self.model.parameters():
            if param.requires_grad:
                handles.append(param.register_post_accumulate_grad_hook(self._keep_grad_norm))
        if self.optimizer is not None and "updates" in self.groups:
            handles.append(self.optimizer.register_step_pre_hook(self._before_update))
            handles.append(self.optimizer.register_step_post_hook(self._after_update))
        self._handles = handles

    def _fresh_step(self) -> None:
        """Forget everything measured in this step so far: a new step, or a forward or backward
        pass that raised, whose values must never be merged into the pass measured after it."""
        for site in getattr(self, "_provisional", ()):
            self._site_module[site].sites.remove(site)
            del self._site_module[site]
        self._pending = PendingMeasurement()
        self._tapping = self._tapped = False
        self._calls: dict[str, int] = {}  # call numbers restart with every measured forward pass
        self._touched: list[Site] = []
        self._provisional: list[Site] = []  # sites first seen in this forward pass, kept when it ends
        self._deltas: set[Site] = set()  # sites whose delta this step has
        self._weight_norms: dict[str, torch.Tensor] = {}  # module name -> ||W|| in the measured forward pass
        self._grad_norms: dict[int, torch.Tensor] = {}  # id(param) -> ||grad||, as it accumulates
        self._changes: dict[int, torch.Tensor] = {}  # id(weight) -> ||W_after - W_before||

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_starts(self, module, args) -> None:
        if not torch.is_grad_enabled():
            return  # evaluation under no_grad is never measured
        if self._tapping or (self._tapped and not self._backward_finished()):
            # the measured pass raised in its forward (it never ended) or before its backward
            # reached every weight it used (the loop skipped the batch): discard it, measure this one
            self._fresh_step()
        elif self._tapped:
            return  # one forward pass per step is measured (gradient accumulation: the first)
        self._tapping = True

    def _backward_finished(self) -> bool:
        """Whether the measured forward pass's backward has reached every weight it used."""
        return all(id(w) in self._grad_norms for site in self._touched for w in self._site_module[site].weights if w.requires_grad)

    def _forward_ends(self, module, args, output) -> None:
        if not self._tapping:
            return
        self._tapping, self._tapped = False, True
        for site in self._provisional:  # sites first seen in a pass that ended: kept from now on
            self.sites.append(site)
        self._provisional = []
        if self._head is None and self._touched:
            self._head = self._touched[-1]  # the last layer called in the first measured pass
        if "weights" in self.groups or "updates" in self.groups:
            # every weight called in this forward pass, normed in one batched call (on a GPU one
            # kernel instead of one per layer; on the CPU the same per-tensor norm)
            called = list({self._site_module[site].name: self._site_module[site] for site in self._touched}.values())
            weights = [w.detach() for watched in called for w in watched.weights]
            weight_norms = iter(norms(weights))
            for watched in called:
                self._weight_norms[watched.name] = norm_of([next(weight_norms) for _ in watched.weights])
            if "weights" in self.groups:
                for site in self._touched:
                    self._pending.add("weight_norm", site, self._weight_norms[self._site_module[site].name])

    def _site(self, watched: Watched, call: int) -> Site:
        if call < len(watched.sites):
            return watched.sites[call]
        layer = len(self.sites) + len(self._provisional)
        site = Site(layer, watched.name if call == 0 else f"{watched.name}#{call}", "hidden")
        watched.sites.append(site)
        self._provisional.append(site)
        self._site_module[site] = watched
        return site

    def _tap(self, watched: Watched):
        def hook(module, args, output) -> None:
            if not self._tapping:
                return
            call = self._calls.get(watched.name, 0)
            self._calls[watched.name] = call + 1
            site = self._site(watched, call)
            self._touched.append(site)
            if not watched.recurrent and isinstance(output, torch.Tensor):
                self.tensor(site, "preactivation", f"{site.name} output", output)

        return hook

    # -- the Tap protocol (sites.py): what a forward hook hands over, as gradlab's models do --

    def tensor(self, site: Site, role: Role, label: str, value: torch.Tensor) -> None:
        """A module's output z at `site`: its delta ||dL/dz|| is taken by a tensor hook (which,
        registered before an in-place op overwrites z, receives the gradient of z as it was)."""
        if role == "preactivation" and "deltas" in self.groups and value.requires_grad:
            value.register_hook(self._delta_hook(site))

    def activation(self, site: Site, act: nn.Module, activation: str, u: torch.Tensor, y: torch.Tensor) -> None:
        """Not tapped: an arbitrary model declares no activation of its own (see the module docstring)."""

    def _delta_hook(self, site: Site):
        # a channel is dim 1 of a convolution's output, the last dim of a Linear's (whose middle
        # dims, a sequence's, are positions)
        conv = isinstance(self._site_module[site].module, nn.modules.conv._ConvNd)
        units = kernels.UNITS_FIRST if conv else kernels.UNITS_LAST

        def hook(grad: torch.Tensor) -> None:
            if site in self._deltas:  # a second backward through the same graph: the first counts
                return
            self._deltas.add(site)
            for m in kernels.delta(grad, units):
                self._pending.add(m.quantity, site, m.value, m.divisor)

        return hook

    def _keep_grad_norm(self, param: torch.Tensor) -> None:
        # the norm of the accumulated gradient (the last call wins: several backward passes add up)
        self._grad_norms[id(param)] = norm(param.grad)

    def _updated_weights(self) -> list[nn.Parameter]:
        seen, weights = set(), []
        for site in self._touched:
            for w in self._site_module[site].weights:
                if w.requires_grad and id(w) not in seen:
                    seen.add(id(w))
                    weights.append(w)
        return weights

    def _before_update(self, optimizer, args, kwargs) -> None:
        if not self._tapped:
            return
        weights = self._updated_weights()
        # copies into buffers kept between measured steps (allocating them anew costs more than copying)
        buffers = [self._buffers.get(id(w)) for w in weights]
        for k, (w, buffer) in enumerate(zip(weights, buffers)):
            if buffer is None or buffer.shape != w.shape or buffer.device != w.device or buffer.dtype != w.dtype:
                buffers[k] = self._buffers[id(w)] = torch.empty_like(w.detach())
        if weights:
            torch._foreach_copy_(buffers, [w.detach() for w in weights])
        self._before = (weights, buffers)

    def _after_update(self, optimizer, args, kwargs) -> None:
        before = getattr(self, "_before", None)
        if before is None:
            return
        weights, buffers = before
        if weights:
            torch._foreach_sub_(buffers, [w.detach() for w in weights])  # now W_before - W_after
            for w, change in zip(weights, norms(buffers)):
                self._changes[id(w)] = change
        self._before = None

    # -- the loop's side ----------------------------------------------------------------------

    def step(self, loss: Number = None, accuracy: Number = None) -> None:
        """End the step now being taken (call it after the optimizer step). On a measured step,
        writes its layers.csv rows and a metrics.csv train row with `loss` and `accuracy` as the
        loop reports them (numbers or 0-d tensors; None leaves the cell empty)."""
        self._check_open()
        if self.measuring:
            self._write_step(loss, accuracy)
        self.steps += 1
        if self.steps % self.every == 0:
            self._arm()
        else:
            self._disarm()

    def test(self, loss: Number = None, accuracy: Number = None) -> None:
        """A metrics.csv test row at the current step (the network after `steps` updates): the
        loop's evaluation, which it runs under torch.no_grad() so that nothing is measured."""
        self._check_open()
        pending = PendingMeasurement()
        _add_extras(pending, loss=loss, accuracy=accuracy)
        _, extras = pending.fetch()
        values = {**_plain(loss=loss, accuracy=accuracy), **extras}
        self.records.metrics.write([self._metrics_row("test", values, grad_norm=None)])

    def close(self, status: str = "completed", error: str | None = None) -> Path:
        """Detach every hook and close the records with `status`; returns the run directory."""
        if not self._closed:
            self._disarm()
            self._closed = True
            self.records.close(status, steps_done=self.steps, **({"error": error} if error else {}))
        return self.run_dir

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            self.close("completed")
        elif issubclass(kind, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed", error=f"{kind.__name__}: {exc}")
        return False

    # -- writing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"watch of {self.run_dir} is closed")

    def _write_step(self, loss: Number, accuracy: Number) -> None:
        pending = self._pending
        grad_norms = self._grad_norms
        for site in dict.fromkeys(self._touched):
            watched = self._site_module[site]
            if "weights" in self.groups:
                grads = [grad_norms.get(id(w)) for w in watched.weights]
                if all(g is not None for g in grads):
                    pending.add("weight_grad_norm", site, norm_of(grads))
                bias_grads = [grad_norms.get(id(b)) for b in watched.biases]
                if bias_grads and all(g is not None for g in bias_grads):
                    pending.add("bias_grad_norm", site, norm_of(bias_grads))
            changes = [self._changes.get(id(w)) for w in watched.weights]
            if "updates" in self.groups and all(c is not None for c in changes):
                pending.add("update_ratio", site, kernels.ratio(norm_of(changes), self._weight_norms[watched.name]))
        if grad_norms:
            pending.extras["grad_norm"] = norm_of(list(grad_norms.values()))
        _add_extras(pending, loss=loss, accuracy=accuracy)
        columns, extras = pending.fetch()  # the one device -> host transfer of this step
        if self._tapped:
            sites = [dataclasses.replace(site, kind="head") if site == self._head else site for site in self.sites]
            self.records.layers.write(layer_rows(self.steps, sites, columns, list(QUANTITIES)))
        values = {**_plain(loss=loss, accuracy=accuracy), **extras}
        self.records.metrics.write([self._metrics_row("train", values, grad_norm=values.get("grad_norm"))])
        if time.perf_counter() - self._meta_written > META_EVERY_S:
            self.records.write_meta(steps_done=self.steps)
            self._meta_written = time.perf_counter()

    def _metrics_row(self, split: str, values: dict[str, float | None], grad_norm: float | None) -> dict[str, Any]:
        return {
            "step": self.steps, "split": split, "loss": values.get("loss"), "accuracy": values.get("accuracy"),
            "grad_norm": grad_norm, "lr": _lr(self.optimizer), "time_s": round(time.perf_counter() - self._started, 4),
        }  # fmt: skip


def watch(
    model: nn.Module,
    out: str | Path = "results",
    every: int = 10,
    name: str = "watch",
    *,
    optimizer: torch.optim.Optimizer | None = None,
    groups: Iterable[str] = WATCH_GROUPS,
    seed: int | None = None,
    expect: dict[str, Any] | None = None,
) -> Watch:
    """Start measuring `model` into a new run directory `out/name/<timestamp>-<id>/`.

    every: measure steps 0, every, 2*every, ... (the others run with no hook attached).
    optimizer: the loop's optimizer, for update_ratio and lr (without it those cells are empty).
    groups: of weights, deltas, updates. seed: recorded in config.yaml (the loop seeds torch).
    expect: an expect: section, checked later by `gradlab check` or `gradlab.check(run)`.
    Returns a `Watch`: call `w.step(loss=..., accuracy=...)` after each optimizer step, and
    `w.close()` at the end, or use it as a context manager."""
    return Watch(model, out, every, name, optimizer=optimizer, groups=groups, seed=seed, expect=expect)


def _add_extras(pending: PendingMeasurement, **values: Number) -> None:
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"watch: {key} must be one number, got a tensor of shape {tuple(value.shape)}")
            pending.extras[key] = value.detach().reshape(())


def _plain(**values: Number) -> dict[str, float | None]:
    """The values given as numbers (tensors come back from the transfer)."""
    plain = {}
    for key, value in values.items():
        if value is None or isinstance(value, torch.Tensor):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"watch: {key} must be a number or a 0-d tensor, got {type(value).__name__}")
        plain[key] = float(value)
    return plain


def _lr(optimizer: torch.optim.Optimizer | None) -> float | None:
    if optimizer is None or not optimizer.param_groups:
        return None
    lr = optimizer.param_groups[0].get("lr")
    return float(lr) if isinstance(lr, (int, float)) or isinstance(lr, torch.Tensor) else None
