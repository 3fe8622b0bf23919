"""The probe of a recurrent stack: layers.csv rows per layer and timesteps.csv rows per (layer, t).

It measures what probe.Probe measures, on the same logged steps and with the same single host
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
  sqrt(sum_t ||dL/da_t||^2), and its delta_rms counts the time steps as positions (kernels.py);
  for rnn its saturated_frac is the share of (example, t, unit) triples in
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

import torch
from torch import nn

from gradlab.build.recurrent import Recurrent
from gradlab.build.sites import Role, Site
from gradlab.measure import kernels
from gradlab.measure.norms import norms
from gradlab.measure.pending import Column, PendingMeasurement, SiteKey
from gradlab.measure.probe import Probe
from gradlab.measure.rows import timestep_rows
from gradlab.theory.activations import ACTIVATIONS, region_counts
from gradlab.vocab.quantities import DEFAULT_GROUPS, NOISE, RECURRENT_LAYERS_COLUMNS, SATURATION_THRESHOLD, SPECTRUM, TIMESTEPS_COLUMNS, TIMESTEPS_KEYS


class RecurrentProbe(Probe):
    """Measures a recurrent stack's declared layers and their time steps on the steps it is attached to."""

    def __init__(self, model: nn.Module, groups: list[str] | tuple[str, ...] = DEFAULT_GROUPS, saturation_threshold: float = SATURATION_THRESHOLD):
        super().__init__(model, groups, saturation_threshold)  # a recurrent layer's weights: families 'ih', 'hh'
        self._noise_modules = []  # no noise columns for a recurrent stack: quantities.NOISE_QUANTITIES says why
        self._reset_step()

    def _reset_step(self) -> None:
        self._delta_parts: dict[SiteKey, list[torch.Tensor]] = {}  # a_t's gradients, by part (gru: two)
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
                value.register_hook(parts.append)  # the gradient itself; reduced in measure
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

    # -- after backward -----------------------------------------------------------------------

    def _measure_more(self, pending: PendingMeasurement) -> None:
        with torch.no_grad():
            self._reduce_time_steps(pending)
            self._measure_deltas(pending)
        self._measure_layer_regions(pending)

    def _reduce_time_steps(self, pending: PendingMeasurement) -> None:
        """The time-step quantities from what forward and backward kept, in batched calls: gradient
        norms in one call per quantity, h_t's norms and each gate's mean and saturated count over a
        stack of its values (equal shapes: batch x width at every step of every layer)."""
        for quantity, kept in self._grads.items():
            for (site, _), value in zip(kept, norms([grad for _, grad in kept])):
                pending.add(quantity, site, value)
        for role, kept in self._values.items():
            keys = [site.key for site, _ in kept]
            stacked = torch.stack([value for _, value in kept])  # (steps of all layers, B, H)
            if role == "hidden":
                pending.columns["hidden_norm"] = (keys, kernels.hidden_norms(stacked), 1.0)
                continue
            gate = role[: -len("_gate")]
            mean, saturated = kernels.gate_statistics(gate, stacked, self.saturation_threshold)
            pending.columns[f"{gate}_mean"] = (keys, mean, 1.0)
            pending.columns[f"{gate}_saturated_frac"] = (keys, saturated, float(stacked[0].numel()))

    def _measure_deltas(self, pending: PendingMeasurement) -> None:
        """delta_norm at each (layer, t), and each layer's delta_norm and delta_rms over its steps."""
        if not self._delta_parts:
            return
        keys = sorted(self._delta_parts)
        part_norms = iter(norms([grad for key in keys for grad in self._delta_parts[key]]))
        per_layer: dict[int, list[tuple[torch.Tensor, list[torch.Tensor]]]] = {}
        for key in keys:
            parts = self._delta_parts[key]
            value = kernels.step_delta(torch.stack([next(part_norms) for _ in parts]))
            pending.add("delta_norm", self._time_sites[key], value)
            per_layer.setdefault(key[0], []).append((value, parts))
        for layer, steps in per_layer.items():
            measured = kernels.delta_through_time(torch.stack([value for value, _ in steps]), [parts for _, parts in steps])
            self._add(self.sites[layer], measured)

    def _measure_layer_regions(self, pending: PendingMeasurement) -> None:
        """rnn: a layer's saturated_frac, dead_frac and inactive_frac over every (example, t, unit)."""
        saturated = pending.columns.get("saturated_frac")
        for layer, alive in self._alive.items():
            picks = [k for k, key in enumerate(saturated[0]) if key[0] == layer] if saturated else []
            if picks:  # equal counts per t: the share over all triples
                count = torch.stack([saturated[1][k] for k in picks]).sum()
                pending.add("saturated_frac", self.sites[layer], count, sum(saturated[2][k] for k in picks))
            pending.add("dead_frac", self.sites[layer], alive.sum(), alive.numel(), complement=True)
        for layer, counts in self._inactive.items():
            pending.add("inactive_frac", self.sites[layer], torch.stack([count for count, _ in counts]).sum(), sum(n for _, n in counts))

    # -- rows ---------------------------------------------------------------------------------

    def columns_written(self, columns: dict[str, Column]) -> list[str]:
        # the noise group's columns stay empty: see quantities.NOISE_QUANTITIES
        return [
            *RECURRENT_LAYERS_COLUMNS[len(("step", "layer", "name", "kind")) :], *(NOISE if "noise" in self.groups else ()),
            *(SPECTRUM if "spectrum" in self.groups else ()),  # of [W_ih W_hh] (quantities.SPECTRUM)
        ]

    def timestep_rows(self, step: int, columns: dict[str, Column]) -> list[dict]:
        """One timesteps.csv row per (recurrent layer, t) tapped this step, layer then t ascending."""
        sites = [self._time_sites[key] for key in sorted(self._time_sites)]
        return timestep_rows(step, sites, columns, TIMESTEPS_COLUMNS[len(TIMESTEPS_KEYS) :])


def probe_for(model: nn.Module, groups: list[str] | tuple[str, ...] = DEFAULT_GROUPS, saturation_threshold: float = SATURATION_THRESHOLD) -> Probe:
    """The probe that measures `model`: a RecurrentProbe for a recurrent stack, else a Probe."""
    probe = RecurrentProbe if isinstance(model, Recurrent) else Probe
    return probe(model, groups, saturation_threshold)
