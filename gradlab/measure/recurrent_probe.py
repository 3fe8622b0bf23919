"""The probe of a recurrent stack: layers.csv rows per layer and timesteps.csv rows per (layer, t).

It measures what probes.Probe measures, on the same logged steps and with the same single host
transfer, and adds what only a recurrent layer has:

- a layer has two weights, W_ih and W_hh (and two biases): each gets its own columns (ih_*, hh_*),
  and the layer's weight_norm, weight_grad_norm, bias_grad_norm and update_ratio are those of all
  its weights (or biases) together, the Frobenius norm of [W_ih W_hh], the matrix that maps
  [x_t; h_{t-1}] to a_t;
- at every time step t (sites Site(layer, name, 'hidden', t), see recurrent.py): delta_norm
  = ||dL/da_t||, hidden_delta_norm = ||dL/dh_t||, cell_delta_norm = ||dL/dc_t|| (lstm), hidden_norm
  = ||h_t||, each over the whole batch, and per gate the mean value and the saturated fraction; for
  rnn the activation's saturated fraction at t;
- a layer's delta_norm in layers.csv is ||dL/da|| over all its time steps:
  sqrt(sum_t ||dL/da_t||^2); for rnn its saturated_frac is the share of (example, t, unit) triples in
  a flat tail of the activation (equal counts per t, so the mean over t; empty for activations
  without a saturating tail, as in feed-forward layers), its dead_frac the share of units whose
  f'(a_t) is 0 at every t of every example (lstm and gru report their gates instead and leave both
  empty), and its inactive_frac the share of (example, t, unit) triples with a_t <= 0 (activations
  with such a side: the ReLU family, ELU, ...). The other activation statistics of feed-forward
  layers (dact_mean, preact_mean, ...) are not measured on recurrent layers: empty cells.

A gradient reaches h_t from every tensor that reads it (the next step, the next layer, the head),
and a tensor hook sees their sum: hidden_delta_norm is the total derivative, as back-propagation
through time computes it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradlab.build.recurrent import GATE_ACTIVATION, Recurrent
from gradlab.build.sites import Layer, Role, Site
from gradlab.measure.probe import (
    SATURATION_THRESHOLD,
    Column,
    PendingMeasurement,
    Probe,
)
from gradlab.theory.activations import ACTIVATIONS, region_counts, saturation_mask
from gradlab.vocab.quantities import GROUPS, RECURRENT_LAYERS_COLUMNS, TIMESTEPS_COLUMNS

SiteKey = tuple[int, "int | None"]



class RecurrentProbe(Probe):
    """Measures a recurrent stack's declared layers and their time steps on the steps it is attached to."""

    def __init__(self, model: nn.Module, groups: list[str] | tuple[str, ...] = GROUPS, saturation_threshold: float = SATURATION_THRESHOLD):
        # Not Probe.__init__: a recurrent layer declares two weights ('ih', 'hh'), the head one ('').
        unknown = set(groups) - set(GROUPS)
        assert not unknown, unknown
        self.model = model
        self.groups = set(groups)
        self.saturation_threshold = saturation_threshold  # t: |f'| < t * sup |f'| (log.saturation_threshold)
        self.layers: list[Layer] = model.measured_layers()
        self.sites = [layer.site for layer in self.layers]
        self.parameters = list(model.parameters())
        position = {id(p): k for k, p in enumerate(self.parameters)}
        # every weight as (site key, family, parameter); a layer's families are '' or 'ih' and 'hh'
        self.weight_entries = [(layer.site.key, family, w) for layer in self.layers for family, w in layer.weights.items()]
        self.weights = [w for _, _, w in self.weight_entries]
        self.weight_at = [position[id(w)] for w in self.weights]
        self.bias_entries = [
            (layer.site.key, family, position[id(b)]) for layer in self.layers for family, b in layer.biases.items() if b is not None
        ]
        self._pending = PendingMeasurement()
        self._weights_before: list[torch.Tensor] | None = None
        self._snapshot_taken = False
        self._weight_norms: torch.Tensor | None = None
        self._reset_step()

    def _reset_step(self) -> None:
        self._delta_parts: dict[SiteKey, list[torch.Tensor]] = {}  # a_t's gradient norms, by part (gru: two)
        self._time_sites: dict[SiteKey, Site] = {}  # every (layer, t) tapped this step
        self._alive: dict[int, torch.Tensor] = {}  # rnn: units active on some (example, t), per layer
        self._inactive: dict[int, list[tuple[torch.Tensor, int]]] = {}  # rnn: per layer and t, (pairs with a_t <= 0, pairs)
        # Kept during forward and backward and reduced in a few batched calls in `measure` (one norm
        # or mean per time step each would be T * depth small kernels per quantity):
        self._grads: dict[str, list[tuple[Site, torch.Tensor]]] = {}  # hidden/cell gradients, by quantity
        self._values: dict[str, list[tuple[Site, torch.Tensor]]] = {}  # h_t and the gates' values, by role

    def attach(self) -> None:
        self._reset_step()
        super().attach()

    # -- the Tap protocol ---------------------------------------------------------------------

    def tensor(self, site: Site, role: Role, label: str, value: torch.Tensor) -> None:
        if site.t is None:
            super().tensor(site, role, label, value)  # a layer's output sequence, the head's logits
            return
        self._time_sites.setdefault(site.key, site)
        if role == "preactivation":
            if "deltas" in self.groups and value.requires_grad:
                parts = self._delta_parts.setdefault(site.key, [])
                value.register_hook(parts.append)  # the gradient itself; its norm is taken in measure
        elif role in ("hidden", "cell"):
            if "deltas" in self.groups and value.requires_grad:
                value.register_hook(self._keep_hook(f"{role}_delta_norm", site))
            if role == "hidden" and "activations" in self.groups:
                self._values.setdefault("hidden", []).append((site, value.detach()))
        elif role.endswith("_gate") and "activations" in self.groups:
            self._values.setdefault(role, []).append((site, value.detach()))

    def activation(self, site: Site, act: nn.Module, activation: str, u: torch.Tensor, y: torch.Tensor) -> None:
        """An rnn's activation at step t: the share of (example, unit) pairs in a flat tail at t (as
        saturated_frac of layers.csv: only activations with a saturating tail have one), and which
        units passed a gradient somewhere so far (for the layer's dead_frac)."""
        if "activations" not in self.groups:
            return
        with torch.no_grad():
            counts = region_counts(activation, act, u, y, self.saturation_threshold)
            if "saturated" in counts:
                self._pending.add("saturated_frac", site, counts["saturated"], u.numel())
            if "inactive" in counts:  # the layer's share over every t, reduced in measure (no timesteps.csv column)
                self._inactive.setdefault(site.layer, []).append((torch.as_tensor(counts["inactive"]), u.numel()))
            if activation == "relu":
                alive = y.amax(dim=0) > 0  # (H,): relu' is nonzero exactly where y > 0
            else:
                alive = ACTIVATIONS[activation].derivative(act, u, y).abs().amax(dim=0) > 0
            seen = self._alive.get(site.layer)
            self._alive[site.layer] = alive if seen is None else seen | alive

    def _keep_hook(self, quantity: str, site: Site):
        def hook(grad: torch.Tensor) -> None:
            self._grads.setdefault(quantity, []).append((site, grad))

        return hook

    def _reduce_time_steps(self, pending: PendingMeasurement) -> None:
        """The time-step quantities from what forward and backward kept, in batched calls: gradient
        norms with one _foreach_norm, h_t's norms and each gate's mean and saturated count over a
        stack of its values (equal shapes: batch x width at every step of every layer)."""
        for quantity, kept in self._grads.items():
            for (site, _), norm in zip(kept, torch._foreach_norm([grad for _, grad in kept])):
                pending.add(quantity, site, norm)
        for role, kept in self._values.items():
            keys = [site.key for site, _ in kept]
            stacked = torch.stack([value for _, value in kept])  # (steps of all layers, B, H)
            if role == "hidden":
                pending.columns["hidden_norm"] = (keys, torch.linalg.vector_norm(stacked, dim=(1, 2)), 1.0)
                continue
            gate = role[: -len("_gate")]
            saturated = saturation_mask(GATE_ACTIVATION[gate], None, stacked, stacked, self.saturation_threshold)
            pending.columns[f"{gate}_mean"] = (keys, stacked.mean(dim=(1, 2)), 1.0)
            pending.columns[f"{gate}_saturated_frac"] = (keys, saturated.sum(dim=(1, 2)), float(stacked[0].numel()))

    # -- after backward -----------------------------------------------------------------------

    def measure(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> PendingMeasurement:
        pending = self._pending
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        grad_norms = torch._foreach_norm(grads)
        self._weight_norms = None
        if "weights" in self.groups:
            self._weight_norms = torch.stack(torch._foreach_norm([w.detach() for w in self.weights]))
            weight_grads = torch.stack([grad_norms[k] for k in self.weight_at])
            self._by_family(pending, "weight_norm", [key for key, _, _ in self.weight_entries], [f for _, f, _ in self.weight_entries], self._weight_norms)
            self._by_family(pending, "weight_grad_norm", [key for key, _, _ in self.weight_entries], [f for _, f, _ in self.weight_entries], weight_grads)
            if self.bias_entries:
                bias_grads = torch.stack([grad_norms[k] for _, _, k in self.bias_entries])
                self._by_family(pending, "bias_grad_norm", [key for key, _, _ in self.bias_entries], [f for _, f, _ in self.bias_entries], bias_grads)
        with torch.no_grad():
            self._reduce_time_steps(pending)
        if self._delta_parts:
            per_layer: dict[int, list[torch.Tensor]] = {}
            keys = sorted(self._delta_parts)
            part_norms = iter(torch._foreach_norm([grad for key in keys for grad in self._delta_parts[key]]))
            for key in keys:
                parts = [next(part_norms) for _ in self._delta_parts[key]]
                norm = parts[0] if len(parts) == 1 else torch.linalg.vector_norm(torch.stack(parts))
                pending.add("delta_norm", self._time_sites[key], norm)
                per_layer.setdefault(key[0], []).append(norm)
            for layer, norms in per_layer.items():
                pending.add("delta_norm", self.sites[layer], torch.linalg.vector_norm(torch.stack(norms)))
        saturated = pending.columns.get("saturated_frac")
        for layer, alive in self._alive.items():  # rnn: over every (example, t, unit) of the layer
            picks = [k for k, key in enumerate(saturated[0]) if key[0] == layer] if saturated else []
            if picks:  # equal counts per t: the share over all triples
                count = torch.stack([saturated[1][k] for k in picks]).sum()
                pending.add("saturated_frac", self.sites[layer], count, sum(saturated[2][k] for k in picks))
            pending.add("dead_frac", self.sites[layer], alive.sum(), alive.numel(), complement=True)
        for layer, counts in self._inactive.items():  # rnn: over every (example, t, unit) of the layer
            pending.add("inactive_frac", self.sites[layer], torch.stack([count for count, _ in counts]).sum(), sum(n for _, n in counts))
        pending.extras["loss"] = loss.detach()
        if y.is_floating_point():  # a regression (adding): accuracy does not exist, an empty cell
            pending.extras["accuracy"] = torch.full((), math.nan, device=loss.device)
        else:  # a label per example, or per step (B, T) with logits (B, classes, T)
            pending.extras["accuracy"] = (logits.detach().argmax(dim=1) == y).float().mean()
        pending.extras["grad_norm"] = torch.linalg.vector_norm(torch.stack(grad_norms))
        return pending

    @staticmethod
    def _by_family(pending: PendingMeasurement, quantity: str, keys: list[SiteKey], families: list[str], norms: torch.Tensor) -> None:
        """Per-family columns (ih_<quantity>, hh_<quantity>) and the layer's own: a single weight's
        norm as it is, several weights' as the norm of their norms (the Frobenius norm of all of them)."""
        per_site: dict[SiteKey, list[int]] = {}
        for k, (key, family) in enumerate(zip(keys, families)):
            per_site.setdefault(key, []).append(k)
            if family:
                column = pending.columns.setdefault(f"{family}_{quantity}", ([], [], []))
                column[0].append(key)
                column[1].append(norms[k])
                column[2].append(1.0)
        sites = list(per_site)
        combined = [norms[ks[0]] if len(ks) == 1 else torch.linalg.vector_norm(norms[ks]) for ks in per_site.values()]
        pending.columns[quantity] = (sites, torch.stack(combined), 1.0)

    # -- around the optimizer step ------------------------------------------------------------

    def update_ratios(self) -> dict[str, Column]:
        """update_ratio per layer (all its weights together) and ih_/hh_update_ratio per family."""
        if not self._snapshot_taken:
            return {}
        self._snapshot_taken = False
        before = self._weights_before
        size = self._weight_norms if self._weight_norms is not None else torch.stack(torch._foreach_norm(before))
        torch._foreach_sub_(before, [w.detach() for w in self.weights])
        change = torch.stack(torch._foreach_norm(before))
        size_host, change_host = torch.stack([size, change]).double().cpu().tolist()
        columns: dict[str, Column] = {"update_ratio": {}}
        per_site: dict[SiteKey, list[int]] = {}
        for k, (key, family, _) in enumerate(self.weight_entries):
            per_site.setdefault(key, []).append(k)
            if family:
                columns.setdefault(f"{family}_update_ratio", {})[key] = change_host[k] / size_host[k]
        for key, ks in per_site.items():
            if len(ks) == 1:
                columns["update_ratio"][key] = change_host[ks[0]] / size_host[ks[0]]
            else:
                columns["update_ratio"][key] = math.sqrt(sum(change_host[k] ** 2 for k in ks)) / math.sqrt(sum(size_host[k] ** 2 for k in ks))
        return columns

    # -- rows ---------------------------------------------------------------------------------

    def rows(self, step: int, columns: dict[str, Column]) -> list[dict]:
        """One layers.csv row per declared layer, with the ih_/hh_ columns of a recurrent run."""
        rows = []
        for site in self.sites:
            row = {"step": step, "layer": site.layer, "name": site.name, "kind": site.kind}
            for quantity in RECURRENT_LAYERS_COLUMNS[len(row) :]:
                row[quantity] = columns.get(quantity, {}).get(site.key)
            rows.append(row)
        return rows

    def timestep_rows(self, step: int, columns: dict[str, Column]) -> list[dict]:
        """One timesteps.csv row per (recurrent layer, t) tapped this step, layer then t ascending."""
        rows = []
        for key in sorted(self._time_sites):
            site = self._time_sites[key]
            row = {"step": step, "layer": site.layer, "name": site.name, "t": site.t}
            for quantity in TIMESTEPS_COLUMNS[len(row) :]:
                row[quantity] = columns.get(quantity, {}).get(key)
            rows.append(row)
        return rows


def probe_for(model: nn.Module, groups: list[str] | tuple[str, ...] = GROUPS, saturation_threshold: float = SATURATION_THRESHOLD) -> Probe:
    """The probe that measures `model`: a RecurrentProbe for a recurrent stack, else a Probe."""
    probe = RecurrentProbe if isinstance(model, Recurrent) else Probe
    return probe(model, groups, saturation_threshold)
