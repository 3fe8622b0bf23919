"""Per-layer measurements of gradlab's models at their sites, taken only on logged steps.

On a logged step the train loop calls, in order:

    probe.attach()                 the model taps its sites into the probe during forward (sites.py)
    loss = loss_fn(model(x), y); loss.backward()
    probe.detach()
    pending = probe.measure(loss, logits, y)     # every pre-update quantity, still on device
    values = pending.fetch()                     # one host transfer, checked for non-finite values
    probe.snapshot_weights(); optimizer.step(); update = probe.update_ratios()  # 'updates' only:
                                                 # a second transfer, after the step

What each quantity means is declared in gradlab.vocab.quantities; the kernel that computes it is in
kernels.py. This module decides when and on what: the tensors each site taps (a gradient hook on a
pre-activation for its delta, the block's output for act_mean/act_std, the activation's input and
output for the region counts), and the parameters each declared layer owns, by family ('' for a
layer with one weight; a recurrent layer has 'ih' and 'hh', see recurrent_probe.py).

Nothing here reads a value per layer: parameter norms are computed with batched calls, and all
values are stacked and moved to the host together, once before the optimizer step and once after
it for update ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from gradlab.build.sites import Layer, Role, Site
from gradlab.measure import kernels, noise, spectrum
from gradlab.measure.kernels import Measured
from gradlab.measure.norms import norm, norm_of, norms
from gradlab.measure.pending import Column, PendingMeasurement, SiteKey
from gradlab.measure.rows import layer_rows
from gradlab.vocab.quantities import COORDINATES, DEFAULT_GROUPS, GROUPS, NOISE, NORM, QUANTITIES, RESIDUAL, SATURATION_THRESHOLD, SPECTRUM

_WEIGHT_SCALE = "weight_scale"  # not a column: ||W||_F / sqrt(n_out), what dact_factor multiplies rms(f') by


@dataclass(frozen=True)
class _Parameter:
    """One weight or bias of a declared layer: its layer's site, its family, and where it is in
    the model's parameter list (whose gradients are normed in one batched call)."""

    key: SiteKey
    family: str
    tensor: nn.Parameter
    at: int


class Probe:
    """Measures one model's declared layers on the steps it is attached to."""

    def __init__(self, model: nn.Module, groups: list[str] | tuple[str, ...] = DEFAULT_GROUPS, saturation_threshold: float = SATURATION_THRESHOLD):
        unknown = set(groups) - set(GROUPS)
        assert not unknown, unknown
        self.model = model
        self.groups = set(groups)
        self.saturation_threshold = saturation_threshold  # t of saturated_frac (activations.Regions)
        self.layers: list[Layer] = model.measured_layers()  # input side first
        self.sites = [layer.site for layer in self.layers]
        self.parameters = list(model.parameters())
        position = {id(p): k for k, p in enumerate(self.parameters)}
        self.weight_entries = [
            _Parameter(layer.site.key, family, w, position[id(w)]) for layer in self.layers for family, w in layer.weights.items()
        ]
        self.bias_entries = [
            _Parameter(layer.site.key, family, b, position[id(b)]) for layer in self.layers for family, b in layer.biases.items() if b is not None
        ]
        self.weights = [entry.tensor for entry in self.weight_entries]
        # where each layer's weight is in self.weights, for weight_scale to take this step's
        # weight_norm instead of measuring the weights again; None where the norms could differ
        # (a layer without a single weight; weights of several dtypes, which `norms` takes one by one)
        at = {id(w): k for k, w in enumerate(self.weights)}
        single = all("" in layer.weights and id(layer.weights[""]) in at for layer in self.layers)
        self._layer_weight_at = [at[id(layer.weights[""])] for layer in self.layers] if single and len({w.dtype for w in self.weights}) == 1 else None
        self._pending = PendingMeasurement()
        self._weights_before: list[torch.Tensor] | None = None  # buffers, see snapshot_weights
        self._snapshot_taken = False
        self._weight_norms: torch.Tensor | None = None  # this step's, reused by update_ratios
        self._norm_parts = _norm_parts(self.layers, position)  # gamma, beta, PReLU slopes per layer (quantities.NORM)
        self._bn_hooks: list = []
        # the noise group: each layer's Linear or convolution, whose input and output gradient it needs
        self._noise_modules = _weight_modules(self.layers)
        self._noise_sums: dict[SiteKey, tuple[Site, noise.NoiseSums]] = {}  # formed per-example gradients, by layer
        self._noise_linear: dict[SiteKey, tuple[Site, torch.Tensor, torch.Tensor, nn.Parameter]] = {}  # a Linear's (a, delta)
        self._noise_buffers = noise.Buffers()  # kept between logged steps
        self._noise_handles: list = []
        # the spectrum group: each layer's weights (a recurrent layer's W_ih and W_hh together)
        self._spectra = spectrum.LayerSpectra() if "spectrum" in self.groups else None

    # -- forward / backward capture: the Tap protocol -----------------------------------------

    def attach(self) -> None:
        self._pending = PendingMeasurement()
        if "activations" in self.groups:
            # BatchNorm updates its running statistics in its forward: its pre-hook sees them before
            self._bn_hooks = [module.register_forward_pre_hook(self._bn_hook(site)) for site, module in self._norm_parts.batchnorms]
        self._noise_sums, self._noise_linear = {}, {}
        if "noise" in self.groups:
            self._noise_handles = [module.register_forward_hook(self._noise_hook(site)) for site, module in self._noise_modules]
        if self.groups & {"deltas", "activations", "coordinates"}:  # the weights and updates groups need no forward capture
            self.model.slot.tap = self

    def detach(self) -> None:
        self.model.slot.tap = None
        for handle in [*self._bn_hooks, *self._noise_handles]:
            handle.remove()
        self._bn_hooks, self._noise_handles = [], []

    def _add(self, site: Site, measured: list[Measured]) -> None:
        for m in measured:
            if m.positives:
                self._pending.add_positives(m.quantity, site, m.value, m.divisor, complement=m.complement)
            else:
                self._pending.add(m.quantity, site, m.value, m.divisor, complement=m.complement)

    def _bn_hook(self, site: Site):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if not module.training or module.running_mean is None:
                return
            with torch.no_grad():
                self._add(site, kernels.bn_stat_distance(module, inputs[0]))

        return hook

    def tensor(self, site: Site, role: Role, label: str, value: torch.Tensor) -> None:
        if role in ("preactivation", "logits"):
            # the head's delta is the gradient of the loss with respect to the logits
            if "deltas" in self.groups and value.requires_grad:
                value.register_hook(self._delta_hook(site))
        elif role in ("stream", "branch"):
            self._residual(site, role, value)
        if role in ("output", "logits") and "coordinates" in self.groups:
            with torch.no_grad():
                self._add(site, kernels.coordinate_sizes(value))
        if role == "output" and "activations" in self.groups:
            with torch.no_grad():
                self._add(site, kernels.moments(value, "act_mean", "act_std"))

    def activation(self, site: Site, act: nn.Module, activation: str, u: torch.Tensor, y: torch.Tensor) -> None:
        if "activations" not in self.groups:
            return
        with torch.no_grad():
            self._add(site, kernels.moments(u, "preact_mean", "preact_std"))
            self._add(site, kernels.activation_regions(activation, act, u, y, self.saturation_threshold))

    def _residual(self, site: Site, role: Role, value: torch.Tensor) -> None:
        """A residual block's stream x_(l+1) and branch output r_l (quantities.RESIDUAL)."""
        if role == "stream" and "deltas" in self.groups and value.requires_grad:
            value.register_hook(self._stream_delta_hook(site))
        if "activations" in self.groups:
            with torch.no_grad():
                self._add(site, kernels.signal_propagation(value, role))

    def _noise_hook(self, site: Site):
        """A forward hook on a layer's Linear or convolution: its input, then (a gradient hook on its
        output z) its output gradient. A Linear's pair is kept for `measure`, which takes the sums of
        every Linear of one shape at once, with their dL/dW; a convolution's per-example gradients
        are formed here, while its input and gradient are at hand."""

        def forward(module: nn.Module, inputs: tuple, z: torch.Tensor) -> None:
            if not z.requires_grad:
                return
            x = inputs[0].detach()

            def backward(grad: torch.Tensor) -> None:
                if isinstance(module, nn.Linear) and x.dim() == 2:
                    self._noise_linear[site.key] = (site, x, grad, module.weight)
                    return
                with torch.no_grad():
                    if isinstance(module, nn.Linear):
                        sums = noise.linear_sums(x, grad)
                    elif noise.conv2d_unfoldable(module):
                        sums = noise.conv2d_sums(x, grad, module)
                    else:
                        sums = noise.call_sums(lambda x_, w, b: module._conv_forward(x_, w, b), x, module.weight, grad, (), {})
                self._noise_sums[site.key] = (site, sums)

            z.register_hook(backward)

        return forward

    def _stream_delta_hook(self, site: Site):
        def hook(grad: torch.Tensor) -> None:
            self._pending.add("stream_delta_norm", site, norm(grad))

        return hook

    def _delta_hook(self, site: Site):
        def hook(grad: torch.Tensor) -> None:
            self._add(site, kernels.delta(grad, kernels.UNITS_FIRST))

        return hook

    # -- after backward ---------------------------------------------------------------------

    def measure(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> PendingMeasurement:
        """Everything measurable before the optimizer step, still on the device."""
        pending = self._pending
        # one batched norm over every parameter gradient serves the global norm and the layers'
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        grad_norms = norms(grads)
        self._weight_norms = None
        if "weights" in self.groups:
            self._weight_norms = norms([w.detach() for w in self.weights])
            _by_family(pending, "weight_norm", self.weight_entries, self._weight_norms)
            _by_family(pending, "weight_grad_norm", self.weight_entries, grad_norms[[e.at for e in self.weight_entries]])
            if self.bias_entries:
                _by_family(pending, "bias_grad_norm", self.bias_entries, grad_norms[[e.at for e in self.bias_entries]])
        if "activations" in self.groups and "dact_mean" in pending.columns:
            # each layer's weight scale, for dact_factor (computed from the host values in `rows`)
            every_site = [site.key for site in self.sites]
            known = self._weight_norms[self._layer_weight_at] if self._weight_norms is not None and self._layer_weight_at is not None else None
            scales, divisors = kernels.weight_scale([layer.weight for layer in self.layers], known)
            pending.columns[_WEIGHT_SCALE] = (every_site, scales, divisors)
        self._measure_norm_parts(pending, grad_norms)
        if self._noise_sums or self._noise_linear:
            self._measure_noise(pending)
        if self._spectra is not None:
            for quantity, (keys, values) in self._spectra.measure([(layer.site.key, list(layer.weights.values())) for layer in self.layers]).items():
                pending.columns[quantity] = (keys, values, 1.0)
        self._measure_more(pending)
        pending.extras["loss"] = loss.detach()
        pending.extras["accuracy"] = _accuracy(logits, y)
        pending.extras["grad_norm"] = norm_of(grad_norms)
        return pending

    def _measure_norm_parts(self, pending: PendingMeasurement, grad_norms: torch.Tensor) -> None:
        parts = self._norm_parts
        if "weights" in self.groups and parts.tensors:
            values = norms([t.detach() for t in parts.tensors])
            for quantity, (keys, at) in parts.value_columns.items():
                pending.columns[quantity] = (keys, values[at], 1.0)
            for quantity, (keys, params) in parts.grad_columns.items():
                pending.columns[quantity] = (keys, grad_norms[params], 1.0)
        if "weights" in self.groups and parts.prelu:
            keys = [key for key, _ in parts.prelu]
            pending.columns["prelu_slope_mean"] = (keys, torch.stack([w.detach().mean() for _, w in parts.prelu]), 1.0)

    def _measure_noise(self, pending: PendingMeasurement) -> None:
        """The noise group's columns, one vector each: the Linear layers grouped by shape (the hidden
        layers of an MLP are one group), each group's sums and columns taken in one batched call."""
        parts: list[tuple[list[SiteKey], dict[str, torch.Tensor]]] = []
        with torch.no_grad():
            groups: dict[tuple, list] = {}
            for entry in self._noise_linear.values():
                _, a, delta, _ = entry
                groups.setdefault((tuple(a.shape), tuple(delta.shape), a.dtype, delta.dtype), []).append(entry)
            for group in groups.values():
                # at most noise.STACK_ENTRIES weight entries at once: the buffers stay bounded however wide the layers
                step = max(1, noise.STACK_ENTRIES // group[0][3].numel())
                for entries in (group[k : k + step] for k in range(0, len(group), step)):
                    sums = noise.stacked_linear_sums([e[1] for e in entries], [e[2] for e in entries], self._noise_buffers)
                    parts.append(([e[0].key for e in entries], noise.noise(sums, [e[3].grad for e in entries], self._noise_buffers)))
            for site, sums in self._noise_sums.values():
                parts.append(([site.key], noise.noise(sums)))
        for quantity in NOISE:
            keys = [key for part_keys, _ in parts for key in part_keys]
            pending.columns[quantity] = (keys, torch.cat([columns[quantity] for _, columns in parts]), 1.0)
        self._noise_sums, self._noise_linear = {}, {}

    def _measure_more(self, pending: PendingMeasurement) -> None:
        """What a subclass measures besides the layers' own quantities (the recurrent probe: time steps)."""

    # -- around the optimizer step ------------------------------------------------------------

    def snapshot_weights(self) -> None:
        """Copy the weights before the optimizer step (into buffers kept between logged steps:
        allocating fresh copies every time costs ten times more than copying)."""
        if not self.groups & {"updates", "coordinates"}:
            return
        weights = [w.detach() for w in self.weights]
        if self._weights_before is None:
            self._weights_before = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._weights_before, weights)
        self._snapshot_taken = True

    def update_ratios(self) -> dict[str, Column]:
        """update_ratio per layer, ||W_after - W_before|| / ||W_before|| over all its weights, and
        <family>_update_ratio per weight family of a recurrent layer; after `snapshot_weights` and a step."""
        if not self._snapshot_taken:
            return {}
        self._snapshot_taken = False
        before = self._weights_before
        # ||W_before|| is this step's weight_norm when the weights group measured it
        size = self._weight_norms if self._weight_norms is not None else norms(before)
        torch._foreach_sub_(before, [w.detach() for w in self.weights])  # now W_before - W_after
        change = norms(before)
        groups = _groups(self.weight_entries)
        layer_ratios = kernels.ratio(kernels.combined(change, groups.values()), kernels.combined(size, groups.values()))
        family_at = [k for k, entry in enumerate(self.weight_entries) if entry.family]
        family_ratios = kernels.ratio(change[family_at], size[family_at]) if family_at else torch.zeros(0, dtype=torch.float64)
        coordinates = "coordinates" in self.groups
        rms, rms_divisors = kernels.update_rms(change, groups.values(), [w.numel() for w in self.weights]) if coordinates else (layer_ratios[:0], [])
        host = torch.cat([layer_ratios, family_ratios, rms.double()]).cpu().tolist()
        columns: dict[str, Column] = {}
        if "updates" in self.groups:
            columns["update_ratio"] = dict(zip(groups, host))
            for k, value in zip(family_at, host[len(groups) : len(groups) + len(family_at)]):
                entry = self.weight_entries[k]
                columns.setdefault(f"{entry.family}_update_ratio", {})[entry.key] = value
        if coordinates:
            values = host[len(groups) + len(family_at) :]
            columns["update_rms"] = {key: value / divisor for key, value, divisor in zip(groups, values, rms_divisors)}
        return columns

    # -- rows -------------------------------------------------------------------------------

    def _dact_factors(self, columns: dict[str, Column]) -> Column:
        """dact_factor of each hidden layer: its rms(f') times the next layer's weight scale."""
        square, scale = columns.get(kernels.DACT_SQUARE_MEAN, {}), columns.get(_WEIGHT_SCALE, {})
        factors: Column = {}
        for site, following in zip(self.sites, self.sites[1:]):
            if site.key in square and following.key in scale:
                factors[site.key] = kernels.dact_factor(square[site.key], scale[following.key])
        return factors

    def columns_written(self, columns: dict[str, Column]) -> list[str]:
        """The quantity columns of this model's layers.csv rows (the header's, after its keys)."""
        return [*QUANTITIES, *(q for q in RESIDUAL if q in columns), *NORM, *(NOISE if "noise" in self.groups else ()), *(COORDINATES if "coordinates" in self.groups else ()),
                *(SPECTRUM if "spectrum" in self.groups else ())]

    def rows(self, step: int, columns: dict[str, Column]) -> list[dict]:
        """One layers.csv row per declared layer; a quantity not measured (or not existing) stays None."""
        columns = spectrum.cells(dict(columns))
        columns = {**columns, "dact_factor": self._dact_factors(columns)}
        return layer_rows(step, self.sites, columns, self.columns_written(columns))


def _weight_modules(layers: list[Layer]) -> list[tuple[Site, nn.Module]]:
    """Each feed-forward layer's module that applies its weight (a block's Linear or convolution, the
    head), for the noise group; none for a recurrent layer (quantities.NOISE says why)."""
    found = []
    for layer in layers:
        if set(layer.weights) != {""}:
            continue
        for module in layer.module.modules():
            if getattr(module, "weight", None) is layer.weight and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                found.append((layer.site, module))
                break
    return found


def _groups(entries: list[_Parameter]) -> dict[SiteKey, list[int]]:
    """The indices of `entries` that belong to each layer, layers in order."""
    groups: dict[SiteKey, list[int]] = {}
    for k, entry in enumerate(entries):
        groups.setdefault(entry.key, []).append(k)
    return groups


def _by_family(pending: PendingMeasurement, quantity: str, entries: list[_Parameter], values: torch.Tensor) -> None:
    """A layer's column (all its weights together: one weight's norm as it is, several weights' as
    the norm of their norms, the Frobenius norm of all of them) and, for the weights of a family
    ('ih', 'hh'), the family's column <family>_<quantity>."""
    groups = _groups(entries)
    pending.columns[quantity] = (list(groups), kernels.combined(values, groups.values()), 1.0)
    family_at = [k for k, entry in enumerate(entries) if entry.family]
    for k in family_at:
        entry = entries[k]
        keys, column, divisors = pending.columns.setdefault(f"{entry.family}_{quantity}", ([], [], []))
        keys.append(entry.key)
        column.append(values[k])
        divisors.append(1.0)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of examples whose largest output is the label; nan (an empty cell) for a regression."""
    if y.is_floating_point():  # a regression (adding): accuracy does not exist
        return torch.full((), math.nan, device=logits.device)
    return (logits.detach().argmax(dim=1) == y).float().mean()  # labels (B,), or per step (B, T)


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
        norm_layer = getattr(layer.module, "norm", None)
        if isinstance(norm_layer, nn.Module):
            inner = getattr(norm_layer, "inner", norm_layer)  # components._UnitsAsChannels
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
