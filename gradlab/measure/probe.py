"""Per-layer measurements at the model's sites, taken only on logged steps.

On a logged step the train loop calls, in order:

    probe.attach()                 the model taps its sites into the probe during forward (sites.py)
    loss = loss_fn(model(x), y); loss.backward()
    probe.detach()
    pending = probe.measure(loss, logits, y)     # every pre-update quantity, still on device
    values = pending.fetch()                     # one host transfer, checked for non-finite values
    probe.snapshot_weights(); optimizer.step(); update = probe.update_ratios()  # 'updates' only:
                                                 # a second transfer, after the step

The quantities and their exact meanings are declared in quantities.py; this module computes them.
With L the back-propagated batch-mean loss: weight norms and gradient norms per declared layer,
delta_norm = ||dL/dz|| at each `preactivation` (and `logits`) site, act_mean/act_std of each
`output` tap, saturated/dead counts of each `activation` tap, update ratios per declared weight.
In a CNN a unit is a channel: a (example, unit) pair is every position of that channel, and a
dead channel is saturated at every position of every example.

Nothing here calls `.item()` or synchronizes per layer: norms are computed with batched
`torch._foreach_norm` calls (the kernel `clip_grad_norm_` uses) and all scalars are stacked and
moved to the host together: once before the optimizer step, and once after it for update ratios.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from gradlab.build.sites import Layer, Role, Site
from gradlab.theory.activations import region_counts
from gradlab.vocab.quantities import GROUPS, NORM, QUANTITIES, RESIDUAL

SATURATION_THRESHOLD = 0.05  # "derivative below 5% of its maximum": log.saturation_threshold's default

SiteKey = tuple[int, "int | None"]  # Site.key: (layer, t)
Column = dict[SiteKey, float]  # site -> value, for one quantity


@dataclass
class PendingMeasurement:
    """This step's quantities still on the device, one column each; `fetch` moves them all to the
    host in one transfer.

    A column is (sites, values, divisors): `values` is a vector with one entry per listed site, or
    a list of 0-d tensors gathered site by site during forward and backward. The divisor is
    applied on the host: counts of saturated pairs and dead units over their totals, the norm of
    deviations over sqrt(n) for the std. A site gives a column one value: a second one is an error,
    never a silent overwrite.
    """

    columns: dict[str, tuple[list[SiteKey], torch.Tensor | list[torch.Tensor], list[float] | float]] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    positives: dict[str, tuple[list[SiteKey], list[torch.Tensor], list[float]]] = field(default_factory=dict)
    complements: set[str] = field(default_factory=set)  # columns stored as (divisor - value)
    _seen: set[tuple[str, SiteKey]] = field(default_factory=set)

    def add(self, quantity: str, site: Site, value: torch.Tensor, divisor: float = 1.0, complement: bool = False) -> None:
        """One site's value of a column gathered site by site; with `complement`, the column is
        (divisor - value) / divisor (a count of what is active, reported as the share that is not)."""
        if (quantity, site.key) in self._seen:
            raise RuntimeError(f"{site.name} (t={site.t}) measured twice for {quantity} in one step")
        self._seen.add((quantity, site.key))
        keys, values, divisors = self.columns.setdefault(quantity, ([], [], []))
        keys.append(site.key)
        values.append(value)
        divisors.append(divisor)
        if complement:
            self.complements.add(quantity)

    def add_positives(self, quantity: str, site: Site, value: torch.Tensor, divisor: float, complement: bool = False) -> None:
        """One site's value of a column that counts the positive entries of `value` (a vector): the
        counting is done at `fetch`, for every such vector of the step in three operations."""
        if (quantity, site.key) in self._seen:
            raise RuntimeError(f"{site.name} (t={site.t}) measured twice for {quantity} in one step")
        self._seen.add((quantity, site.key))
        keys, values, divisors = self.positives.setdefault(quantity, ([], [], []))
        keys.append(site.key)
        values.append(value.reshape(-1))
        divisors.append(divisor)
        if complement:
            self.complements.add(quantity)

    def fetch(self) -> tuple[dict[str, Column], dict[str, float]]:
        """Every column and extra on the host, in one transfer.

        Each value is converted to float64 as it is (an exact conversion), so how values are
        grouped into device operations here changes no number: the 0-d values gathered site by
        site are stacked once per dtype (one stack for a few hundred small tensors, instead of one
        per column), and the positives of every vector are counted together."""
        names: list[tuple[str, str]] = []  # ('columns' | 'positives', quantity)
        parts: list[torch.Tensor] = []  # float64 pieces, concatenated for the one transfer
        order: list[int] = []  # where each piece's first value belongs in `flat` (below)
        scalars: dict[torch.dtype, list[torch.Tensor]] = {}  # 0-d values by dtype, in column order
        scalar_slots: dict[torch.dtype, list[int]] = {}
        size = 0
        for quantity, (keys, values, _) in self.columns.items():
            names.append(("columns", quantity))
            if isinstance(values, list):
                for k, value in enumerate(values):
                    scalars.setdefault(value.dtype, []).append(value)
                    scalar_slots.setdefault(value.dtype, []).append(size + k)
            else:
                parts.append(values.double())
                order.append(size)
            size += len(keys)
        for quantity, (keys, values, _) in self.positives.items():
            names.append(("positives", quantity))
            counts = _count_positives(values)
            parts.append(counts)
            order.append(size)
            size += len(keys)
        for value in self.extras.values():
            parts.append(value.reshape(1).double())
            order.append(size)
            size += 1
        slots: list[int] = []
        for dtype, values in scalars.items():
            parts.append(torch.stack(values).double())
            slots += scalar_slots[dtype]
        if not parts:
            return {}, {}
        host = torch.cat(parts).cpu().tolist()  # the one device -> host transfer
        # put the host values in column order: the vector pieces first, then the stacked scalars
        flat: list[float] = [0.0] * size
        at = 0
        for start, piece in zip(order, parts[: len(order)]):
            n = piece.numel()
            flat[start : start + n] = host[at : at + n]
            at += n
        for slot, value in zip(slots, host[at:]):
            flat[slot] = value
        columns: dict[str, Column] = {}
        at = 0
        for kind, quantity in names:
            keys, _, divisors = getattr(self, kind)[quantity]
            divisors = divisors if isinstance(divisors, list) else [divisors] * len(keys)
            column = columns.setdefault(quantity, {})  # a column may hold both kinds of values
            if quantity in self.complements:
                column.update({key: (divisors[k] - flat[at + k]) / divisors[k] for k, key in enumerate(keys)})
            else:
                column.update({key: flat[at + k] / divisors[k] for k, key in enumerate(keys)})
            at += len(keys)
        extras = dict(zip(self.extras, flat[at:]))
        return columns, extras


@functools.lru_cache(maxsize=64)
def _segment_ends(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Where each segment of `sizes` ends, on `device`: made once per model (on a GPU, copying a
    fresh index to the device every step would be a copy the host waits for)."""
    return torch.tensor(list(itertools.accumulate(sizes)), device=device)


def _count_positives(vectors: list[torch.Tensor]) -> torch.Tensor:
    """How many entries of each vector are > 0, as float64: one comparison and one cumulative sum
    over all of them (integers, so exact), instead of a comparison and a sum per vector."""
    ends = _segment_ends(tuple(v.numel() for v in vectors), vectors[0].device)
    running = torch.cat(vectors).gt(0).cumsum(0)  # int64
    totals = running[ends - 1]
    return torch.cat([totals[:1], totals[1:] - totals[:-1]]).double()


class Probe:
    """Measures one model's declared layers on the steps it is attached to."""

    def __init__(self, model: nn.Module, groups: list[str] | tuple[str, ...] = GROUPS, saturation_threshold: float = SATURATION_THRESHOLD):
        unknown = set(groups) - set(GROUPS)
        assert not unknown, unknown
        self.model = model
        self.saturation_threshold = saturation_threshold  # t of saturated_frac (activations.Regions)
        self.groups = set(groups)
        self.layers: list[Layer] = model.measured_layers()  # input side first
        self.sites = [layer.site for layer in self.layers]
        self.weights = [layer.weight for layer in self.layers]
        self.parameters = [p for p in model.parameters()]
        # which entries of `parameters` are the layers' weights and biases (for their grad norms)
        position = {id(p): k for k, p in enumerate(self.parameters)}
        self.weight_at = [position[id(w)] for w in self.weights]
        self.bias_at = [(layer.site.key, position[id(layer.bias)]) for layer in self.layers if layer.bias is not None]
        self._pending = PendingMeasurement()
        self._weights_before: list[torch.Tensor] | None = None  # buffers, see snapshot_weights
        self._snapshot_taken = False
        self._weight_norms: torch.Tensor | None = None  # this step's, reused by update_ratios
        self._norm_parts = _norm_parts(self.layers, position)  # gamma, beta, PReLU slopes per layer (quantities.NORM)
        self._bn_hooks: list = []

    # -- forward / backward capture: the Tap protocol -----------------------------------------

    def attach(self) -> None:
        self._pending = PendingMeasurement()
        parts = getattr(self, "_norm_parts", None)  # (a subclass with its own __init__ has none)
        if "activations" in self.groups and parts is not None:
            # BatchNorm updates its running statistics in its forward: its pre-hook sees them before
            self._bn_hooks = [module.register_forward_pre_hook(self._bn_hook(site)) for site, module in parts.batchnorms]
        if self.groups & {"deltas", "activations"}:  # the weights and updates groups need no forward capture
            self.model.slot.tap = self

    def detach(self) -> None:
        self.model.slot.tap = None
        for handle in getattr(self, "_bn_hooks", ()):
            handle.remove()
        self._bn_hooks = []

    def _bn_hook(self, site: Site):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if not module.training or module.running_mean is None:
                return
            with torch.no_grad():
                x = inputs[0]
                var, mean = torch.var_mean(x, dim=(0, *range(2, x.dim())), correction=0)  # what training normalizes with
                batch = torch.rsqrt(var + module.eps)
                running = torch.rsqrt(module.running_var + module.eps)
                square = var * (batch - running) ** 2 + (mean - module.running_mean) ** 2 * running**2
                self._pending.add("bn_stat_distance", site, square.mean().sqrt())

        return hook

    def tensor(self, site: Site, role: Role, label: str, value: torch.Tensor) -> None:
        if role in ("preactivation", "logits"):
            # the head's delta is the gradient of the loss with respect to the logits
            if "deltas" in self.groups and value.requires_grad:
                value.register_hook(self._delta_hook(site))
        elif role in ("stream", "branch"):
            self._residual(site, role, value)
        elif role == "output" and "activations" in self.groups:
            with torch.no_grad():
                # two passes (mean, then the norm of the deviations): population std, as stable as
                # torch.std_mean and an order of magnitude faster on the CPU
                pending = self._pending
                mean = value.mean()
                pending.add("act_mean", site, mean)
                pending.add("act_std", site, torch.linalg.vector_norm(value - mean), math.sqrt(value.numel()))

    def activation(self, site: Site, act: nn.Module, activation: str, u: torch.Tensor, y: torch.Tensor) -> None:
        if "activations" not in self.groups:
            return
        pending = self._pending
        n = u.numel()
        with torch.no_grad():
            # u's statistics: two passes (mean, then the norm of the deviations), as for act_std
            mean = u.mean()
            pending.add("preact_mean", site, mean)
            pending.add("preact_std", site, torch.linalg.vector_norm(u - mean), math.sqrt(n))
            if activation == "relu":
                # relu' is 1 exactly where y > 0, else 0. Count those as the sum of sign(y) (0 or 1; a
                # float sum of ones is exact below 2^24): 4x cheaper than (y > 0).sum(), which converts
                # the mask to int64 first; it is also the sum of |relu'|. A unit is alive where its
                # largest y is > 0; those maxima are counted for all layers at once when the step is fetched.
                active = y.sign().sum() if y.numel() < 2**24 else (y > 0).sum()
                pending.add("inactive_frac", site, active, n, complement=True)
                pending.add("dact_mean", site, active, n)
                unit_maxima = y.amax(dim=(0, *range(2, y.dim())))  # (C,): a unit is a channel in a CNN
                pending.add_positives("dead_frac", site, unit_maxima, u.shape[1], complement=True)
                return
            counts = region_counts(activation, act, u, y, self.saturation_threshold)
            pending.add("dact_mean", site, counts["dact"], n)
            if "inactive" in counts:
                pending.add("inactive_frac", site, counts["inactive"], n)
            if "saturated" in counts:
                pending.add("saturated_frac", site, counts["saturated"], n)
            pending.add("dead_frac", site, counts["alive"], u.shape[1], complement=True)  # a unit is a channel in a CNN

    def _residual(self, site: Site, role: Role, value: torch.Tensor) -> None:
        """A residual block's stream x_(l+1) and branch output r_l (quantities.RESIDUAL): the stream's
        gradient norm, and per-channel mean and population variance over the batch (and positions),
        averaged over channels: the Signal Propagation Plot statistics of Brock, De & Smith 2021."""
        if role == "stream" and "deltas" in self.groups and value.requires_grad:
            value.register_hook(self._stream_delta_hook(site))
        if "activations" not in self.groups:
            return
        with torch.no_grad():
            var, mean = torch.var_mean(value, dim=(0, *range(2, value.dim())), correction=0)  # (channels,)
            if role == "stream":
                self._pending.add("spp_sq_mean", site, (mean * mean).mean())
                self._pending.add("spp_var", site, var.mean())
            else:
                self._pending.add("spp_branch_var", site, var.mean())

    def _stream_delta_hook(self, site: Site):
        def hook(grad: torch.Tensor) -> None:
            self._pending.add("stream_delta_norm", site, torch.linalg.vector_norm(grad))

        return hook

    def _delta_hook(self, site: Site):
        def hook(grad: torch.Tensor) -> None:
            norm = torch.linalg.vector_norm(grad)
            self._pending.add("delta_norm", site, norm)
            # delta_rms (quantities.py) = sqrt(B) * || sum over positions of |grad| ||; with one
            # position (an MLP, the logits) that is sqrt(B) * delta_norm, from the same norm
            per_example = 1 / math.sqrt(grad.shape[0])  # the divisor: value / divisor = value * sqrt(B)
            if grad.dim() > 2:
                norm = torch.linalg.vector_norm(grad.abs().sum(dim=tuple(range(2, grad.dim()))))
            self._pending.add("delta_rms", site, norm, per_example)

        return hook

    # -- after backward ---------------------------------------------------------------------

    def measure(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> PendingMeasurement:
        """Everything measurable before the optimizer step, still on the device."""
        pending = self._pending
        # one batched norm over every parameter gradient serves the global norm and the layers'
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        grad_norms = torch._foreach_norm(grads)
        self._weight_norms = None
        if "weights" in self.groups:
            self._weight_norms = torch.stack(torch._foreach_norm([w.detach() for w in self.weights]))
            every_site = [site.key for site in self.sites]
            pending.columns["weight_norm"] = (every_site, self._weight_norms, 1.0)
            pending.columns["weight_grad_norm"] = (every_site, torch.stack([grad_norms[k] for k in self.weight_at]), 1.0)
            if self.bias_at:
                keys = [key for key, _ in self.bias_at]
                pending.columns["bias_grad_norm"] = (keys, torch.stack([grad_norms[k] for _, k in self.bias_at]), 1.0)
        if "activations" in self.groups and "dact_mean" in pending.columns:
            # mean |w| of each layer's weight, for dact_factor (computed from the host values in `rows`)
            every_site = [site.key for site in self.sites]
            l1 = torch.stack(torch._foreach_norm([w.detach() for w in self.weights], 1))
            pending.columns[_WEIGHT_ABS_MEAN] = (every_site, l1, [float(w.numel()) for w in self.weights])
        parts = getattr(self, "_norm_parts", None) or _NormParts()
        if "weights" in self.groups and parts.tensors:
            norms = torch.stack(torch._foreach_norm([t.detach() for t in parts.tensors]))
            for quantity, (keys, at) in parts.value_columns.items():
                pending.columns[quantity] = (keys, norms[at], 1.0)
            for quantity, (keys, params) in parts.grad_columns.items():
                pending.columns[quantity] = (keys, torch.stack([grad_norms[k] for k in params]), 1.0)
        if "weights" in self.groups and parts.prelu:
            keys = [key for key, _ in parts.prelu]
            pending.columns["prelu_slope_mean"] = (keys, torch.stack([w.detach().mean() for _, w in parts.prelu]), 1.0)
        pending.extras["loss"] = loss.detach()
        pending.extras["accuracy"] = (logits.detach().argmax(dim=1) == y).float().mean()
        pending.extras["grad_norm"] = torch.linalg.vector_norm(torch.stack(grad_norms))
        return pending

    # -- around the optimizer step ------------------------------------------------------------

    def snapshot_weights(self) -> None:
        """Copy the weights before the optimizer step (into buffers kept between logged steps:
        allocating fresh copies every time costs ten times more than copying)."""
        if "updates" not in self.groups:
            return
        weights = [w.detach() for w in self.weights]
        if self._weights_before is None:
            self._weights_before = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._weights_before, weights)
        self._snapshot_taken = True

    def update_ratios(self) -> dict[str, Column]:
        """{'update_ratio': {site: ||W_after - W_before|| / ||W_before||}}, after `snapshot_weights`
        and a step."""
        if not self._snapshot_taken:
            return {}
        self._snapshot_taken = False
        before = self._weights_before
        # ||W_before|| is this step's weight_norm when the weights group measured it
        size = self._weight_norms if self._weight_norms is not None else torch.stack(torch._foreach_norm(before))
        torch._foreach_sub_(before, [w.detach() for w in self.weights])  # now W_before - W_after
        change = torch.stack(torch._foreach_norm(before))
        keys = [site.key for site in self.sites]
        return {"update_ratio": dict(zip(keys, (change / size).cpu().tolist()))}

    # -- rows -------------------------------------------------------------------------------

    def _dact_factors(self, columns: dict[str, Column]) -> Column:
        """dact_factor of each hidden layer: its dact_mean times the next layer's mean |w|."""
        dact, weight_abs = columns.get("dact_mean", {}), columns.get(_WEIGHT_ABS_MEAN, {})
        factors: Column = {}
        for site, following in zip(self.sites, self.sites[1:]):
            if site.key in dact and following.key in weight_abs:
                factors[site.key] = dact[site.key] * weight_abs[following.key]
        return factors

    def rows(self, step: int, columns: dict[str, Column]) -> list[dict]:
        """One layers.csv row per declared layer; a quantity not measured (or not existing) stays None."""
        columns = {**columns, "dact_factor": self._dact_factors(columns)}
        measured = [(quantity, columns.get(quantity, {})) for quantity in QUANTITIES]
        measured += [(quantity, columns[quantity]) for quantity in RESIDUAL if quantity in columns]  # residual models only
        measured += [(quantity, columns.get(quantity, {})) for quantity in NORM]  # written where the header has them
        rows = []
        for site in self.sites:
            row = {"step": step, "layer": site.layer, "name": site.name, "kind": site.kind}
            for quantity, column in measured:
                row[quantity] = column.get(site.key)
            rows.append(row)
        return rows


_WEIGHT_ABS_MEAN = "weight_abs_mean"  # not a column: what dact_factor multiplies dact_mean by


@dataclass
class _NormParts:
    """Where each layer's normalization and PReLU parameters are (quantities.NORM)."""

    tensors: list[torch.Tensor] = field(default_factory=list)  # gammas and betas, one batched norm
    value_columns: dict[str, tuple[list[SiteKey], list[int]]] = field(default_factory=dict)  # column -> (sites, indices in tensors)
    grad_columns: dict[str, tuple[list[SiteKey], list[int]]] = field(default_factory=dict)  # column -> (sites, indices in parameters)
    prelu: list[tuple[SiteKey, torch.Tensor]] = field(default_factory=list)
    batchnorms: list[tuple[Site, nn.Module]] = field(default_factory=list)


def _norm_parts(layers: list[Layer], position: dict[int, int]) -> _NormParts:
    """The block's `norm` (BatchNorm, LayerNorm, GroupNorm: its affine weight and bias, wrapped or
    not) and `act` (PReLU) of each declared layer."""
    parts = _NormParts()
    for layer in layers:
        key = layer.site.key
        norm = getattr(layer.module, "norm", None)
        if isinstance(norm, nn.Module):
            inner = getattr(norm, "inner", norm)  # components._UnitsAsChannels
            for attr, value_column, grad_column in (("weight", "norm_weight_norm", "norm_weight_grad_norm"), ("bias", "norm_bias_norm", "norm_bias_grad_norm")):
                param = getattr(inner, attr, None)
                if isinstance(param, nn.Parameter):
                    keys, at = parts.value_columns.setdefault(value_column, ([], []))
                    keys.append(key)
                    at.append(len(parts.tensors))
                    parts.tensors.append(param)
                    keys, at = parts.grad_columns.setdefault(grad_column, ([], []))
                    keys.append(key)
                    at.append(position[id(param)])
            if isinstance(inner, nn.modules.batchnorm._BatchNorm):
                parts.batchnorms.append((layer.site, inner))
        act = getattr(layer.module, "act", None)
        if isinstance(act, nn.PReLU):
            parts.prelu.append((key, act.weight))
    return parts


class _Locator:
    """A Tap that keeps every tensor of the forward pass, in order, to find the first non-finite one."""

    def __init__(self):
        self.forward: list[tuple[str, Site, Role, torch.Tensor]] = []

    def tensor(self, site: Site, role: Role, label: str, value: torch.Tensor) -> None:
        if role == "output":
            return  # what the block passes on is the next block's input: its own tensors are listed
        if role in ("preactivation", "logits"):
            value.retain_grad()
        self.forward.append((label, site, role, value))

    def activation(self, site, act, activation, u, y) -> None:
        pass


def locate_non_finite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict:
    """Where the first non-finite value of a step appears.

    Replays the step's forward and backward on the same batch and scans in the order the step
    computes: parameters (corrupted by an earlier update), then the tensors the model taps at its
    sites in forward order, then the loss, then gradients from the head back toward the input.
    Returns {layer, name, tensor}; `tensor` names what held the value.
    """
    layers: list[Layer] = model.measured_layers()
    last = layers[-1].site

    def found(what: str, site: Site) -> dict:
        return {"layer": site.layer, "name": site.name, "tensor": what}

    site_of = {id(p): layer.site for layer in layers for p in layer.module.parameters()}
    params_of: dict[Site, list[tuple[str, torch.Tensor]]] = {}
    for name, param in model.named_parameters():
        site = site_of.get(id(param), last)
        if not torch.isfinite(param).all():
            return found(f"{name} (parameter)", site)
        params_of.setdefault(site, []).append((name, param))

    locator = _Locator()
    model.slot.tap = locator
    try:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        for what, site, _, tensor in locator.forward + [("loss", last, None, loss)]:
            if not torch.isfinite(tensor).all():
                return found(what, site)
        loss.backward()
    finally:
        model.slot.tap = None

    backward: list[tuple[str, Site, torch.Tensor | None]] = []
    for what, site, role, tensor in reversed(locator.forward):
        if role in ("preactivation", "logits"):
            backward.append((f"{what} gradient" + (" (delta)" if role == "preactivation" else ""), site, tensor.grad))
            backward += [(f"{name}.grad", site, p.grad) for name, p in params_of.get(site, [])]
    for what, site, grad in backward:
        if grad is not None and not torch.isfinite(grad).all():
            return found(what, site)
    return found("none found on replay (the value was transient)", last)
