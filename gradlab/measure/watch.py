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

writes the run directory `gradlab run` writes (config.yaml, meta.json, metrics.csv, layers.csv, and
with time=True timesteps.csv), so `gradlab compare`, `plot`, `check`, `report` and `export` read it
as they read any run.

What is watched: every use of a parameter. During a measured forward pass an ops.OpTap (a
TorchFunctionMode, see ops.py) sees every call of linear, bilinear, conv*, conv_transpose*,
embedding and matmul/mm/bmm/addmm whose weight is one of the model's parameters (or a view of one:
`x @ self.wte.weight.T`), wherever it is made: inside nn.Linear, inside nn.MultiheadAttention
(`in_proj_weight` is a bare parameter, `out_proj` is called through F.linear), in a functional
model. Each call is a site and a layers.csv row, named after the parameter: the module's path for a
module's `weight` (`layers.0.attn.out_proj`), else the parameter's path
(`layers.0.attn.in_proj_weight`); a parameter used again in the same pass gets `#1`, `#2`, ...
(`shared`, `shared#1`). A parameter held by several modules (an embedding tied to the output
layer) is named after the module that uses it (`embed`, then `head`); each use is a row, and the
weight columns of all of them are the shared parameter's. `layer` counts the sites in the order of
the first measured pass, the last one called being the `head`. A recurrent module (nn.RNN, nn.LSTM,
nn.GRU) is one site, or with time=True one site per layer and direction with its time steps
(watch_recurrent.py). config.yaml's model.layers lists exactly the sites that write rows, once a
measured pass has met them.

Steps. `w.step()` ends a step: step s is measured on the network after s calls of `w.step()` (s
updates, when the loop steps its optimizer before it), as `gradlab run` numbers them. Steps 0,
every, 2*every, ... are measured; on the other steps no hook and no mode is active at all.

What a row holds (quantities.py has the exact meanings):
    weight_norm, bias_grad_norm, weight_grad_norm   of the site's parameters (a recurrent module's
                                     weights together; with time=True a layer's W_ih and W_hh, and
                                     their ih_*/hh_* columns); the same on every use of a parameter,
                                     whose gradient is the sum over its uses. The weight norm is
                                     taken in the measured forward pass, a gradient's as autograd
                                     accumulates it (before any clipping the loop does). Empty for a
                                     frozen parameter (requires_grad False) and one that got no gradient.
    delta_norm, delta_rms            ||dL/dz|| over the batch, z this call's output, by a tensor hook
                                     on z, and its per-example root mean square: the examples are
                                     dimension 0 of z where it has the size of dimension 0 of the
                                     model's input (inside nn.MultiheadAttention, its batch dimension),
                                     a Linear's middle dimensions count as positions; delta_rms is
                                     empty where z has no examples' dimension (a positional embedding
                                     of shape (T, D)). Empty for a recurrent module without time=True
                                     (torch's fused kernels never form its pre-activations).
    update_ratio                     ||dW|| / ||W|| of the optimizer's step, when `optimizer` is given
    pe_grad_norm, grad_noise_scale,  groups=[..., "noise"]: the examples' gradients of a Linear's or
    gsnr                             convolution's weight, at calls whose examples are dimension 0 of
                                     their input and output (noise.py); empty elsewhere, and for every
                                     site while a BatchNorm module is in training mode (config.yaml's
                                     log.noise says why). This use's own dL/dW is the mean.
    the activation columns           empty, but for the recurrent layers of time=True: an arbitrary
                                     model has no declared block output or activation to measure
L is what the loop back-propagates; with `scaler=` (a GradScaler), every gradient column is divided
by the scale that step's backward used (metrics.csv's loss_scale), so it is the unscaled loss's, and
a step whose gradients held inf or NaN (the scaler skipped its update) writes no layers.csv rows:
its metrics.csv row says skipped_update 1, and the next step is measured instead. metrics.csv gets
one train row per measured step (`loss` and `accuracy` as the loop reports them, `grad_norm` of
every parameter's gradient, `lr` of the optimizer's first group) and a test row per `w.test(...)`.

Why tensor hooks: a hook registered on z before an in-place op (`nn.ReLU(inplace=True)` right after
a Linear) receives the gradient of z as it was, which is the delta; module full-backward hooks
refuse in-place outputs. The first forward pass with gradients enabled in a measured step is the
one measured: under `torch.no_grad()` (or inference mode) no site is tapped and no row written.

One host transfer per measured step: every value is a 0-d tensor on the model's device, gathered in
a PendingMeasurement and fetched at `w.step()`; `loss` and `accuracy` may be tensors.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from torch import nn

from gradlab.build.sites import Site
from gradlab.measure import kernels, noise, spectrum
from gradlab.measure.norms import norm_of, norms
from gradlab.measure.ops import OpTap, Use
from gradlab.measure.pending import PendingMeasurement
from gradlab.measure.rows import layer_rows
from gradlab.measure.watch_recurrent import EXACT, RecurrentCall, TimeSteps, cells, exact_unavailable, layer_suffixes, run_unrolled
from gradlab.records.layout import CONFIG_FILE, new_run_dir, prepare_out_dir
from gradlab.records.run import run_meta
from gradlab.records.write import META_EVERY_S, RunRecords, write_text_atomic
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.quantities import (
    LAYER_QUANTITIES, NOISE, QUANTITIES, RECURRENT_LAYER_QUANTITIES, RECURRENT_LAYERS_COLUMNS, SPECTRUM, TIMESTEP_QUANTITIES, layers_columns,
)  # fmt: skip

WATCH_GROUPS = ("weights", "deltas", "updates")  # what can be measured on an arbitrary model
TIME_GROUPS = (*WATCH_GROUPS[:2], "activations", WATCH_GROUPS[2])  # with time=True: the recurrent layers' states and gates too
OPT_IN_GROUPS = ("noise", "spectrum")  # measured only when listed in groups=
# Where the noise group's cells stay empty, config.yaml's log.noise says why.
NOISE_BATCHNORM = "empty: a BatchNorm module in training mode makes each example's output depend on the whole batch, so per-example gradients do not exist"
Number = float | int | torch.Tensor | None

# The columns that are gradients of L: under a GradScaler they are the scaled loss's, divided by its scale on the host.
SCALED = frozenset(
    {q.name for q in (*LAYER_QUANTITIES, *RECURRENT_LAYER_QUANTITIES, *TIMESTEP_QUANTITIES) if q.group == "deltas" or q.name.endswith("grad_norm")}
    | {"grad_norm", "pe_grad_norm"}  # (the noise group's other columns are ratios: the scale cancels)
)

# The parameters of every open watch: one model is watched once (two watches would measure each
# other's hooks and write two runs of one training). id(parameter) -> (the parameter, the watch), weakly.
_WATCHING: dict[int, tuple[weakref.ref, weakref.ref]] = {}


@dataclass
class Parts:
    """What a site measures: the parameters its call used (several for a recurrent module), and
    for a recurrent layer of time=True its weight families ('ih', 'hh': weights, biases)."""

    weights: list[nn.Parameter]
    biases: list[nn.Parameter]
    description: str
    units: int = kernels.UNITS_LAST
    families: dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]] = field(default_factory=dict)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"watch: name {name!r} cannot name a folder; use letters, digits, '-', '_' or '.'")
    return name


def _check_model(model: nn.Module, time_steps: bool) -> None:
    """One line for a model that cannot be watched: not a module, compiled, without parameters,
    watched already, or time=True without a recurrent module."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"watch: model is a {type(model).__name__}, not a torch.nn.Module")
    compiled = [name or type(model).__name__ for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
    if hasattr(model, "_orig_mod") or compiled:
        what = f"{type(model).__name__} is" if hasattr(model, "_orig_mod") else f"{compiled[0]} is"
        raise ConfigError(
            f"watch: {what} torch.compile'd: a compiled graph runs none of the Python hooks watch measures with; "
            "watch the module itself (model._orig_mod for torch.compile(model)) and train it uncompiled while watching"
        )
    params = list(model.parameters())
    if not params:
        raise ConfigError(f"watch: {type(model).__name__} has no parameters to measure")
    for param in params:
        entry = _WATCHING.get(id(param))
        if entry is not None and entry[0]() is param:
            other = entry[1]()
            if other is not None and not other._closed:
                raise ConfigError(f"watch: {type(model).__name__} is watched already (into {other.run_dir}); close that watch first")
    if time_steps and not any(isinstance(m, nn.RNNBase) for m in model.modules()):
        raise ConfigError(f"watch: time=True, but {type(model).__name__} has no nn.RNN, nn.LSTM or nn.GRU to measure time steps in")


def _check_scaler(scaler) -> None:
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise ConfigError(f"watch: scaler is a {type(scaler).__name__}, not a torch.amp.GradScaler")


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
        probes: Iterable[str] | None = None,
        seed: int | None = None,
        expect: dict[str, Any] | None = None,
        time: bool = False,
        scaler: torch.amp.GradScaler | None = None,
        jacobian: dict[str, Any] | None = None,
    ):
        # every check first: a refused watch writes nothing
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"watch: every got {every!r}; a whole number of steps, 1 or more")
        if not isinstance(time, bool):
            raise ConfigError(f"watch: time got {time!r}; True or False")
        if probes is not None:  # log.probes' name for the groups
            if groups is not WATCH_GROUPS:
                raise ConfigError("watch: groups and probes name the same thing (log.probes' groups); give one of them")
            groups = probes
        allowed = (*(TIME_GROUPS if time else WATCH_GROUPS), *OPT_IN_GROUPS)
        groups = list(TIME_GROUPS if time and groups is WATCH_GROUPS else dict.fromkeys(groups))
        unknown = [g for g in groups if g not in allowed]
        if unknown:
            extra = "" if time else " (and activations with time=True: the recurrent layers' states and gates)"
            raise ConfigError(f"watch: groups got {unknown[0]!r}; allowed: {', '.join(allowed)}{extra}")
        _check_model(model, time)
        _check_scaler(scaler)
        jacobian_settings = _check_jacobian(jacobian, every)
        name = _check_name(name)
        if expect is not None:
            from gradlab.config.expect import parse_expectations

            parse_expectations(expect)  # refuse a bad section now, not when the run is checked
        prepare_out_dir(out)

        self.model, self.every, self.optimizer, self.groups = model, every, optimizer, set(groups)
        self.time, self.scaler = time, scaler if scaler is not None and scaler.is_enabled() else None
        self.device = next(iter(model.parameters())).device
        self.sites: list[Site] = []  # every site seen in a forward pass that ended, in layer order
        self._parts: dict[Site, Parts] = {}
        self._by_name: dict[str, Site] = {}
        self._time_status: dict[str, str] = {}  # recurrent module -> how its time steps are measured (time=True)
        self._time_written: dict[str, str] = {}  # ... as config.yaml says it
        self._head: Site | None = None  # the last site of the first measured pass, labelled head for good
        recurrent = time and any(isinstance(m, nn.RNNBase) for m in model.modules())
        self._layer_quantities = RECURRENT_LAYERS_COLUMNS[4:] if recurrent else list(QUANTITIES)
        if "noise" in self.groups:
            self._layer_quantities += list(NOISE)
        if "spectrum" in self.groups:  # of the weights each site's call used, as the forward pass used them
            self._layer_quantities += list(SPECTRUM)
        self._spectra = spectrum.LayerSpectra() if "spectrum" in self.groups else None
        self._config = {
            "name": name, "seed": seed, "device": str(self.device),
            "model": {"kind": "watch", "class": type(model).__name__, "depth": None,
                      "parameters": sum(p.numel() for p in model.parameters()), "layers": {}},
            "optim": None if optimizer is None else {"name": type(optimizer).__name__.lower(), "lr": _lr(optimizer)},
            "log": {"every": every, "probes": groups, "out": str(out)},
        }  # fmt: skip
        if time:
            self._config["model"]["time"] = {}
        if self.scaler is not None:
            self._config["scaler"] = {"class": type(scaler).__name__, "init_scale": float(scaler.get_scale())}
        if expect is not None:
            self._config["expect"] = expect
        self._jacobian = jacobian_settings  # log.jacobian's settings, of the model's output with respect to its input
        self._jacobian_rows: list[dict] | None = None
        self._jacobian_pass = False  # while the Jacobian's own forward passes run (grad enabled inside torch.func.vjp)
        if jacobian_settings is not None:
            self._config["log"]["jacobian"] = jacobian_settings.model_dump()
        self.run_dir = new_run_dir(out, name)
        meta = run_meta(name, self.run_dir.name, seed, str(self.device), None)
        self.records = RunRecords(self.run_dir, self._config_yaml(), meta, layers_columns(recurrent=recurrent, noise="noise" in self.groups, spectrum="spectrum" in self.groups), timesteps=time,
                                  jacobian=jacobian_settings is not None)  # fmt: skip
        for param in model.parameters():
            _WATCHING[id(param)] = (weakref.ref(param), weakref.ref(self))
        self.steps = 0  # calls of step() so far: the step now being taken
        self._timesteps = TimeSteps(self.groups)
        self._cells: dict[int, tuple[tuple[int, ...], list]] = {}  # id(recurrent module) -> (its weights' ids, its cells)
        self._handles: list = []
        self._mode: OpTap | None = None
        self._buffers: dict[int, torch.Tensor] = {}  # id(weight) -> its copy before the update
        self._closed = False
        self._started = time_now = _clock()
        self._meta_written = time_now
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
        self._survey()
        model = self.model
        handles = [model.register_forward_pre_hook(self._forward_starts, with_kwargs=True)]
        handles.append(model.register_forward_hook(self._forward_exits, always_call=True))  # the mode is left even when forward raises
        handles.append(model.register_forward_hook(self._forward_ends))
        for module in self._tied_owners:  # which of a shared parameter's modules is running
            handles.append(module.register_forward_pre_hook(self._enter_module))
            handles.append(module.register_forward_hook(self._leave_module, always_call=True))
        for param in self._params.values():
            if param.requires_grad:
                handles.append(param.register_post_accumulate_grad_hook(self._keep_grad_norm))
        if self.optimizer is not None and "updates" in self.groups:
            handles.append(self.optimizer.register_step_pre_hook(self._before_update))
            handles.append(self.optimizer.register_step_post_hook(self._after_update))
        self._handles = handles

    def _survey(self) -> None:
        """The model's parameters, who holds them and under what name (recomputed on each measured
        step: a loop may replace a parameter or a module between steps)."""
        self._params = {id(p): p for p in self.model.parameters()}
        self._param_names = {id(p): n for n, p in self.model.named_parameters()}
        self._descriptions: dict[tuple, str] = {}
        owners: dict[int, list[tuple[str, nn.Module]]] = {}
        recurrent: dict[int, tuple[str, nn.RNNBase]] = {}
        for path, module in self.model.named_modules(remove_duplicate=False):
            for attr, param in module._parameters.items():
                if param is not None:
                    if attr == "weight":
                        label = path or type(self.model).__name__
                    else:
                        label = f"{path}.{attr}" if path else attr
                    entry = owners.setdefault(id(param), [])
                    if all(owner is not module for _, owner in entry):
                        entry.append((label, module))
            if isinstance(module, nn.RNNBase):
                recurrent.setdefault(id(module.weight_ih_l0), (path or type(self.model).__name__, module))
        self._owners = owners
        self._tied_owners = list({id(m): m for entry in owners.values() if len(entry) > 1 for _, m in entry}.values())
        self._recurrent = recurrent

    def _fresh_step(self) -> None:
        """Forget everything measured in this step so far: a new step, or a forward or backward
        pass that raised, whose values must never be merged into the pass measured after it."""
        self._leave_mode()
        for site in getattr(self, "_provisional", ()):
            del self._by_name[site.name]
            del self._parts[site]
        self._pending = PendingMeasurement()
        self._tapping = self._tapped = False
        self._noise_coupled = False  # a BatchNorm in training mode this step: no per-example gradients
        self._calls: dict[str, int] = {}  # call numbers restart with every measured forward pass
        self._touched: list[Site] = []
        self._provisional: list[Site] = []  # sites first seen in this forward pass, kept when it ends
        self._deltas: set[Site] = set()  # sites whose delta this step has
        self._stack: list[nn.Module] = []  # the modules holding a shared parameter that are running
        self._param_norms: dict[int, torch.Tensor] = {}  # id(param) -> ||W|| in the measured forward pass
        self._grad_norms: dict[int, torch.Tensor] = {}  # id(param) -> ||grad||, as it accumulates
        self._accumulated: dict[int, nn.Parameter] = {}  # the parameters this backward pass reached so far
        self._changes: dict[int, torch.Tensor] = {}  # id(weight) -> ||W_after - W_before||
        self._scale: torch.Tensor | None = None  # the GradScaler's scale in this step's backward
        self._spectrum_columns: dict = {}  # the spectrum group's, taken when the measured forward pass ends
        self._jacobian_rows = None  # jacobian.csv's rows of this step, taken when the measured forward pass ends
        if hasattr(self, "_timesteps"):
            self._timesteps.begin(self._pending)

    def _disarm(self) -> None:
        self._leave_mode()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _leave_mode(self) -> None:
        """Leave this pass's mode (after the forward pass, or when a pass that raised is dropped). A
        mode pushed after ours and never popped (code that raised inside the pass) goes first: the
        stack of modes is last in, first out."""
        mode, self._mode = getattr(self, "_mode", None), None
        if mode is None:
            return
        from torch.overrides import _get_current_function_mode_stack

        stack = _get_current_function_mode_stack()
        if any(m is mode for m in stack):
            while stack and stack[-1] is not mode:
                stack.pop().__exit__(None, None, None)
                stack = _get_current_function_mode_stack()
            mode.__exit__(None, None, None)

    def _forward_starts(self, module, args, kwargs) -> None:
        if not torch.is_grad_enabled() or self._jacobian_pass:
            return  # evaluation under no_grad is never measured, nor the Jacobian's own passes
        if self._tapping or (self._tapped and not self._backward_finished()):
            # the measured pass raised in its forward (it never ended) or before its backward
            # reached every weight it used (the loop skipped the batch): discard it, measure this one
            self._fresh_step()
        elif self._tapped:
            return  # one forward pass per step is measured (gradient accumulation: the first)
        self._tapping = True
        self._noise_coupled = "noise" in self.groups and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.model.modules())
        if self._noise_coupled and self._config["log"].get("noise") != NOISE_BATCHNORM:
            self._config["log"]["noise"] = NOISE_BATCHNORM
            self._write_config()
        self._mode = OpTap(self._params, self._on_use, self._on_recurrent, _batch_size(args, kwargs))
        self._mode.__enter__()

    def _forward_exits(self, module, args, output) -> None:
        self._leave_mode()

    def _enter_module(self, module, args) -> None:
        if self._mode is not None:
            self._stack.append(module)

    def _leave_module(self, module, args, output) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def _backward_finished(self) -> bool:
        """Whether the measured forward pass's backward has reached every weight it used."""
        return all(id(w) in self._grad_norms for site in self._touched for w in self._parts[site].weights if w.requires_grad)

    def _forward_ends(self, module, args, output) -> None:
        if not self._tapping:
            return
        self._tapping, self._tapped = False, True
        grown = bool(self._provisional)
        for site in self._provisional:  # sites first seen in a pass that ended: kept from now on
            self.sites.append(site)
        self._provisional = []
        if self._head is None and self._touched:
            self._head = self._touched[-1]  # the last layer called in the first measured pass
        if grown or self._time_status != self._time_written:
            self._write_config()
        if "weights" in self.groups or "updates" in self.groups:
            # every parameter used in this forward pass, normed in one batched call (on a GPU one
            # kernel instead of one per site; on the CPU the same per-tensor norm)
            used = list({id(w): w for site in self._touched for w in self._parts[site].weights}.values())
            self._param_norms = dict(zip((id(w) for w in used), norms([w.detach() for w in used])))
        if self._jacobian is not None and self.steps % self._jacobian.every == 0:
            self._measure_jacobian(args, output)
        if self._spectra is not None:  # one matrix per site: a weight, or one recurrent layer's [W_ih W_hh] (a module of several layers has none)
            used = [(site.key, self._parts[site].weights) for site in dict.fromkeys(self._touched) if len(self._parts[site].weights) <= 2]
            self._spectrum_columns = self._spectra.measure(used)

    def _measure_jacobian(self, args: tuple, output: Any) -> None:
        """jacobian.csv's row of this step: the Jacobian of the model's output with respect to its
        input, on the network of the measured forward pass (before the update), in evaluation mode
        (measure/jacobian.py); where the input or output is not one tensor of examples, none, and
        config.yaml's log.jacobian_note says why."""
        from gradlab.measure.jacobian import in_evaluation_mode, probe_generator, spectrum_of

        x = args[0] if len(args) == 1 else None
        why = ""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            why = "the model's forward takes other than one floating-point tensor of examples (B, ...): its input is not known"
        elif not isinstance(output, torch.Tensor) or output.dim() < 1 or output.shape[0] != x.shape[0]:
            why = "the model's output is not one tensor whose dimension 0 holds the examples"
        if why:
            if self._config["log"].get("jacobian_note") != why:
                self._config["log"]["jacobian_note"] = why
                self._write_config()
            return
        settings, model = self._jacobian, self.model
        examples = x.detach() if settings.examples is None else x.detach()[: settings.examples]
        shape = tuple(examples.shape[1:])

        def outputs(rows: torch.Tensor) -> tuple[torch.Tensor]:
            return (model(rows.reshape(-1, *shape)).flatten(1),)

        generator = probe_generator(examples.device, self._config["seed"] or 0, self.steps)
        self._jacobian_pass = True
        try:
            spectrum_ = in_evaluation_mode(model, lambda: spectrum_of(outputs, examples, settings.probes, settings.power_iterations, generator))
        except (RuntimeError, NotImplementedError) as exc:  # an operation without forward-mode AD
            why = f"the Jacobian could not be taken: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"
            if self._config["log"].get("jacobian_note") != why:
                self._config["log"]["jacobian_note"] = why
                self._write_config()
            return
        finally:
            self._jacobian_pass = False
        head = self._head if self._head is not None else (self._touched[-1] if self._touched else None)
        self._jacobian_rows = spectrum_.rows(self.steps, layers=[head.layer if head is not None else 0])

    # -- the sites of a measured pass ---------------------------------------------------------

    def _name_of(self, param: nn.Parameter) -> str:
        """A parameter's site name: the module that holds it, or of several the innermost one running."""
        owners = self._owners.get(id(param), [])
        if len(owners) > 1:
            for module in reversed(self._stack):
                for label, owner in owners:
                    if owner is module:
                        return label
        return owners[0][0] if owners else "parameter"

    def _site(self, base: str, parts: Parts) -> Site:
        """The site of the next call of `base` in this pass (`base`, `base#1`, ...), touched."""
        call = self._calls.get(base, 0)
        self._calls[base] = call + 1
        name = base if call == 0 else f"{base}#{call}"
        site = self._by_name.get(name)
        if site is None:
            site = Site(len(self.sites) + len(self._provisional), name, "hidden")
            self._by_name[name] = site
            self._provisional.append(site)
        self._parts[site] = parts  # (the latest call's: a loop may change what a site's call uses)
        self._touched.append(site)
        return site

    def _on_use(self, use: Use) -> None:
        """A call whose weight is a parameter of the model (ops.OpTap)."""
        parts = Parts(list(use.weights), [use.bias] if use.bias is not None else [], self._describe(use), use.units)
        site = self._site(self._name_of(use.weights[0]), parts)
        if "deltas" in self.groups and use.output.requires_grad:
            use.output.register_hook(self._delta_hook(site, use.units, use.examples))
        if "noise" in self.groups and not self._noise_coupled and use.output.requires_grad:
            self._noise_use(site, use)

    def _noise_use(self, site: Site, use: Use) -> None:
        """The noise group at a Linear or convolution call whose examples are dimension 0 of its
        input and output (noise.py); every other use keeps empty cells. The layer's gradient g_bar
        is this use's own, summed from the input and output gradient (a parameter used twice has
        one .grad for both uses)."""
        if use.call is None or use.kind not in ("linear", "conv", "conv_transpose") or use.examples != (0, None):
            return
        func, args, kwargs = use.call
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] != use.output.shape[0]:
            return
        x, weight = x.detach(), use.weights[0]
        rest = tuple(args[3:])
        options = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}

        def hook(grad: torch.Tensor) -> None:
            if ("noise", site) in self._deltas:  # a second backward through the same graph: the first counts
                return
            self._deltas.add(("noise", site))  # type: ignore[arg-type]
            with torch.no_grad():
                if use.kind == "linear":
                    sums = noise.linear_sums(x, grad)
                    g_bar = None
                    if sums.mean is None:  # one position: this use's dL/dW, delta^T a
                        g_bar = noise.working(grad).T @ noise.working(x)
                    columns = noise.noise(sums, g_bar)
                else:
                    columns = noise.noise(noise.call_sums(func, x, weight, grad, rest, options))
            for quantity, values in columns.items():
                self._pending.add(quantity, site, values[0])

        use.output.register_hook(hook)

    def _describe(self, use: Use) -> str:
        """config.yaml's line for a use: `linear(c_attn.weight (24, 8), bias c_attn.bias (24,))`."""
        key = (use.kind, *(id(w) for w in use.weights), id(use.bias))
        text = self._descriptions.get(key)
        if text is None:
            text = ", ".join(f"{self._param_names.get(id(w), '?')} {tuple(w.shape)}" for w in use.weights)
            if use.bias is not None:
                text += f", bias {self._param_names.get(id(use.bias), '?')} {tuple(use.bias.shape)}"
            text = self._descriptions[key] = f"{use.kind}({text})"
        return text

    def _on_recurrent(self, kind: str, func, args: tuple, kwargs: dict):
        """A recurrent module's fused call (ops.OpTap): one site, or with time=True its layers run
        through the unrolled cells (watch_recurrent.py)."""
        call = RecurrentCall.parse(kind, args, kwargs)
        found = self._recurrent.get(id(call.weights[0])) if call is not None and call.weights else None
        if found is None:
            return func(*args, **kwargs)  # not a module of this model: run as it is
        path, module = found
        own = dict(module.named_parameters(recurse=False))
        if not self.time:
            weights = [p for n, p in own.items() if n.startswith("weight")]
            biases = [p for n, p in own.items() if n.startswith("bias")]
            self._site(path, Parts(weights, biases, f"{type(module).__name__}({module.extra_repr()})"))
            return func(*args, **kwargs)
        why = exact_unavailable(call, module)
        status = why or EXACT
        self._time_status[path] = status
        sites = []
        for k, suffix in enumerate(layer_suffixes(module)):
            ih, hh = own[f"weight_ih_{suffix}"], own[f"weight_hh_{suffix}"]
            b_ih, b_hh = own.get(f"bias_ih_{suffix}"), own.get(f"bias_hh_{suffix}")
            weights = [ih, hh] + ([own[f"weight_hr_{suffix}"]] if f"weight_hr_{suffix}" in own else [])
            biases = [b for b in (b_ih, b_hh) if b is not None]
            described = f"{type(module).__name__} layer {suffix[1:]} of {path} (input {ih.shape[1]}, hidden {module.hidden_size})"
            families = {"ih": ([ih], [b_ih] if b_ih is not None else []), "hh": ([hh], [b_hh] if b_hh is not None else [])}
            site = self._site(f"{path}.{suffix}", Parts(weights, biases, described, kernels.UNITS_LAST, families))
            self._timesteps.declare(site)
            sites.append(site)
        x = call.input
        if "deltas" in self.groups and x.requires_grad:
            # an alias of the input: its gradient is what flows back through this module alone
            x = x.view_as(x)
            first = sites[0]
            steps = [Site(first.layer, first.name, "hidden", t) for t in range(call.steps())]
            for step in steps:
                self._timesteps.declare_time_site(step)
            packed = None if call.batch_sizes is None else call.batch_sizes.tolist()
            x.register_hook(self._input_delta_hook(first, steps, call.batch_first, packed))
            call = call.with_input(x)
        if why is None:
            return run_unrolled(call, self._cells_of(module), sites, self._timesteps if self._timesteps.groups else None)
        return func(*call.arguments())

    def _cells_of(self, module: nn.RNNBase) -> list:
        key = tuple(id(w) for w in module._flat_weights)
        cached = self._cells.get(id(module))
        if cached is None or cached[0] != key:
            cached = self._cells[id(module)] = (key, cells(module))
        return cached[1]

    # -- what backward hands over ----------------------------------------------------------------

    def _delta_hook(self, site: Site, units: int, examples: tuple[int, tuple[int, ...] | None] | None):
        def hook(grad: torch.Tensor) -> None:
            if site in self._deltas:  # a second backward through the same graph: the first counts
                return
            self._deltas.add(site)
            if examples is None:  # no examples' dimension: the norm alone (delta_rms needs one)
                measured = kernels.delta(grad.reshape(-1))
            else:
                dim, shape = examples
                seen = grad if shape is None else grad.reshape(shape)
                measured = kernels.delta(seen.movedim(dim, 0) if dim else seen, units)
            for m in measured:
                self._pending.add(m.quantity, site, m.value, m.divisor)

        return hook

    def _input_delta_hook(self, layer: Site, steps: list[Site], batch_first: bool, packed: list[int] | None):
        def hook(grad: torch.Tensor) -> None:
            if ("input", layer) in self._deltas:
                return
            self._deltas.add(("input", layer))  # type: ignore[arg-type]
            time_major = grad if packed is not None or not batch_first else grad.transpose(0, 1)
            values = kernels.input_delta_norms(time_major, packed)
            for k, site in enumerate(steps):
                self._pending.add("input_delta_norm", site, values[k])

        return hook

    def _keep_grad_norm(self, param: torch.Tensor) -> None:
        """A parameter's gradient was accumulated: its norm is taken with the others' in one batched
        call when this backward pass ends, before the loop can clip or unscale it (several backward
        passes add up: each one's end norms the gradients it reached, the last one wins)."""
        if not self._accumulated:
            torch.autograd.Variable._execution_engine.queue_callback(self._norm_gradients)
            if self.scaler is not None and self._scale is None:
                self._scale = _scale_of(self.scaler, param.grad.device)
        self._accumulated[id(param)] = param

    def _norm_gradients(self) -> None:
        reached, self._accumulated = list(self._accumulated.values()), {}
        # a sparse gradient (nn.Embedding(sparse=True)): the norm of its coalesced values is its norm
        grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in reached]
        for param, value in zip(reached, norms(grads)):
            self._grad_norms[id(param)] = value

    def _updated_weights(self) -> list[nn.Parameter]:
        seen, weights = set(), []
        for site in self._touched:
            for w in self._parts[site].weights:
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
        """End the step now being taken (call it after the optimizer step, and after
        `scaler.update()` with a GradScaler). On a measured step, writes its layers.csv rows and a
        metrics.csv train row with `loss` and `accuracy` as the loop reports them (numbers or 0-d
        tensors; None leaves the cell empty)."""
        self._check_open()
        skipped = self._write_step(loss, accuracy) if self.measuring else False
        self.steps += 1
        if self.steps % self.every == 0 or skipped:
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
            for param in self.model.parameters():
                entry = _WATCHING.get(id(param))
                if entry is not None and entry[1]() is self:
                    del _WATCHING[id(param)]
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

    def _config_yaml(self) -> str:
        return yaml.safe_dump(self._config, sort_keys=False)

    def _write_config(self) -> None:
        """config.yaml with the sites met so far (model.layers, model.depth) and how each recurrent
        module's time steps are measured (model.time)."""
        model = self._config["model"]
        model["layers"] = {site.name: self._parts[site].description for site in self.sites}
        model["depth"] = len(self.sites) - 1
        if self.time:
            model["time"] = self._time_written = dict(self._time_status)
        write_text_atomic(self.run_dir / CONFIG_FILE, self._config_yaml())

    def _write_step(self, loss: Number, accuracy: Number) -> bool:
        """The measured step's rows; returns whether the GradScaler skipped it (nothing written to
        layers.csv then)."""
        pending = self._pending
        grad_norms = self._grad_norms
        if "weights" in self.groups or "updates" in self.groups:
            self._site_columns(pending)
        self._timesteps.measure(pending)
        for quantity, (keys, values) in self._spectrum_columns.items():
            pending.columns[quantity] = (keys, values, 1.0)
        if grad_norms:
            pending.extras["grad_norm"] = norm_of(list(grad_norms.values()))
        if self._scale is not None:
            pending.extras["loss_scale"] = self._scale
        _add_extras(pending, loss=loss, accuracy=accuracy)
        columns, extras = pending.fetch()  # the one device -> host transfer of this step
        scale = extras.get("loss_scale")
        if scale is not None:  # the gradients of the scaled loss S * L: divided by S
            columns = {q: ({k: v / scale for k, v in column.items()} if q in SCALED else column) for q, column in columns.items()}
            extras["grad_norm"] = extras["grad_norm"] / scale if "grad_norm" in extras else None
        skipped = self.scaler is not None and not math.isfinite(extras.get("grad_norm") or 0.0)
        if self._tapped and not skipped:
            sites = [dataclasses.replace(site, kind="head") if site == self._head else site for site in self.sites]
            self.records.layers.write(layer_rows(self.steps, sites, spectrum.cells(dict(columns)), self._layer_quantities))
            if self.records.timesteps is not None:
                self.records.timesteps.write(self._timesteps.timestep_rows(self.steps, columns))
            if self._jacobian_rows:
                self.records.jacobian.write(self._jacobian_rows)
        values = {**_plain(loss=loss, accuracy=accuracy), **extras}
        row = self._metrics_row("train", values, grad_norm=None if skipped else values.get("grad_norm"))
        if self.scaler is not None:
            row["loss_scale"], row["skipped_update"] = scale, int(skipped)
        self.records.metrics.write([row])
        if _clock() - self._meta_written > META_EVERY_S:
            self.records.write_meta(steps_done=self.steps)
            self._meta_written = _clock()
        return skipped

    def _site_columns(self, pending: PendingMeasurement) -> None:
        """The weight, gradient and update columns of every site this step touched, from the
        parameters' norms (a site of several parameters: the norm of all of them together; the
        update ratios of all sites in one call of their kernel)."""
        param_norms, grad_norms, changes = self._param_norms, self._grad_norms, self._changes
        ratios: list[tuple[str, Site, torch.Tensor, torch.Tensor]] = []
        for site in dict.fromkeys(self._touched):
            parts = self._parts[site]
            columns = [("", parts.weights, parts.biases)] + [(f"{family}_", w, b) for family, (w, b) in parts.families.items()]
            for prefix, weights, biases in columns:
                size = _together([param_norms.get(id(w)) for w in weights])
                if size is None:
                    continue
                if "weights" in self.groups:
                    pending.add(f"{prefix}weight_norm", site, size)
                    grads = _together([grad_norms.get(id(w)) for w in weights])
                    if grads is not None:
                        pending.add(f"{prefix}weight_grad_norm", site, grads)
                    bias_grads = _together([grad_norms.get(id(b)) for b in biases]) if biases else None
                    if bias_grads is not None:
                        pending.add(f"{prefix}bias_grad_norm", site, bias_grads)
                change = _together([changes.get(id(w)) for w in weights])
                if "updates" in self.groups and change is not None:
                    ratios.append((f"{prefix}update_ratio", site, change, size))
        if ratios:
            values = kernels.ratio(torch.stack([c for _, _, c, _ in ratios]), torch.stack([s for _, _, _, s in ratios]))
            for (quantity, site, _, _), value in zip(ratios, values):
                pending.add(quantity, site, value)

    def _metrics_row(self, split: str, values: dict[str, float | None], grad_norm: float | None) -> dict[str, Any]:
        return {
            "step": self.steps, "split": split, "loss": values.get("loss"), "accuracy": values.get("accuracy"),
            "grad_norm": grad_norm, "lr": _lr(self.optimizer), "time_s": round(_clock() - self._started, 4),
        }  # fmt: skip


def watch(
    model: nn.Module,
    out: str | Path = "results",
    every: int = 10,
    name: str = "watch",
    *,
    optimizer: torch.optim.Optimizer | None = None,
    groups: Iterable[str] = WATCH_GROUPS,
    probes: Iterable[str] | None = None,
    seed: int | None = None,
    expect: dict[str, Any] | None = None,
    time: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    jacobian: dict[str, Any] | None = None,
) -> Watch:
    """Start measuring `model` into a new run directory `out/name/<timestamp>-<id>/`.

    every: measure steps 0, every, 2*every, ... (the others run with no hook attached).
    optimizer: the loop's optimizer, for update_ratio and lr (without it those cells are empty).
    groups: of weights, deltas, updates (and activations with time=True); the opt-in groups
    (noise, spectrum) only when listed; probes= is the same, by log.probes' name. seed: recorded in
    config.yaml (the loop seeds torch). expect: an expect: section, checked later by
    `gradlab check` or `gradlab.check(run)`.
    time: timesteps.csv for every nn.RNN, nn.LSTM and nn.GRU in the model, each layer and direction
    its own site (measured through gradlab's unrolled cells where they reproduce the module's kernel
    bit for bit, else the input gradient per time step only: config.yaml's model.time says which).
    scaler: the loop's torch.amp.GradScaler: gradient columns unscaled, skipped steps said so.
    jacobian: log.jacobian's settings ({'every': N, 'probes': K, 'power_iterations': M, 'examples': k}):
    jacobian.csv with the spectrum of d(output)/d(input) at every N-th step, where the model's forward
    takes one floating-point tensor of examples and returns one (docs/jacobian.md).
    Returns a `Watch`: call `w.step(loss=..., accuracy=...)` after each optimizer step, and
    `w.close()` at the end, or use it as a context manager."""
    return Watch(model, out, every, name, optimizer=optimizer, groups=groups, probes=probes, seed=seed, expect=expect, time=time, scaler=scaler,
                 jacobian=jacobian)  # fmt: skip


def _check_jacobian(settings: dict[str, Any] | None, every: int):
    """watch's jacobian= as log.jacobian's JacobianConfig (None: off); a bad one is a one-line ConfigError."""
    if settings is None:
        return None
    from pydantic import ValidationError

    from gradlab.config.experiment import JacobianConfig
    from gradlab.config.messages import format_error

    if not isinstance(settings, dict):
        raise ConfigError(f"watch: jacobian got {settings!r}; a mapping such as {{'every': 10, 'probes': 16}}, or None")
    try:
        parsed = JacobianConfig.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(*dict.fromkeys(f"watch: {format_error(error, JacobianConfig, 'jacobian')}" for error in exc.errors())) from None
    if parsed.every % every:
        raise ConfigError(f"watch: jacobian.every {parsed.every} is not a multiple of every {every}: the Jacobian is measured on measured steps only")
    return parsed


def _together(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The norm of several tensors together from their norms (one: itself); None if one is missing."""
    if any(part is None for part in parts):
        return None
    return parts[0] if len(parts) == 1 else norm_of(parts)


def _clock() -> float:
    return time.perf_counter()


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    """The examples' count: dimension 0 of the forward pass's first tensor argument."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.shape[0] if value.dim() else None
    return None


def _scale_of(scaler: torch.amp.GradScaler, device: torch.device) -> torch.Tensor:
    """The scale a GradScaler multiplies the loss by now, on the device (no transfer): a copy, since
    `scaler.update()` changes it in place."""
    scale = scaler._get_scale_async()
    if scale is None:  # not scaled yet (no scaler.scale(loss) call): the initial scale
        return torch.tensor(float(scaler.get_scale()), dtype=torch.float64, device=device)
    return scale.detach().clone()


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
