"""Per-layer measurements, taken only on logged steps.

On a logged step the train loop calls, in order:

    probe.attach()                 blocks hand their tensors to the probe during forward
    logits = model(x); probe.watch_logits(logits); loss.backward()
    probe.detach()
    pending = probe.measure(loss, logits, y)     # every pre-update quantity, still on device
    values = pending.fetch()                     # one host transfer, checked for non-finite values
    probe.snapshot_weights(); optimizer.step(); update = probe.update_ratios()  # 'updates' only:
                                                 # a second transfer, after the step

Quantities (the layers.csv contract), with L the back-propagated batch-mean loss:
    weight_norm        ||W||_F                     weight_grad_norm   ||dL/dW||_F
    bias_grad_norm     ||dL/db||                   delta_norm         ||dL/dz|| over the batch
    act_mean, act_std  of the block's output over batch and units (population std, ddof 0)
    saturated_frac     share of (example, unit) pairs with |act'(u)| < 5% of max |act'|
    dead_frac          share of units saturated on every example of the batch
    update_ratio       ||W_after - W_before||_F / ||W_before||_F of this step's update
In a CNN a unit is a channel: a (example, unit) pair is every position of that channel, and a
dead channel is saturated at every position of every example.

Nothing here calls `.item()` or synchronizes per layer: norms are computed with batched
`torch._foreach_norm` calls (the kernel `clip_grad_norm_` uses) and all scalars are stacked and
moved to the host together: once before the optimizer step, and once after it for update ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gradlab.components import activity_counts
from gradlab.models import Block, Stack

SATURATION_THRESHOLD = 0.05  # "derivative below 5% of its maximum"
GROUPS = ("weights", "deltas", "activations", "updates")
QUANTITIES = ("weight_norm", "weight_grad_norm", "bias_grad_norm", "delta_norm",
              "act_mean", "act_std", "saturated_frac", "dead_frac", "update_ratio")  # fmt: skip


Column = dict[int, float]  # layer -> value, for one quantity


@dataclass
class PendingMeasurement:
    """This step's quantities still on the device, one column each; `fetch` moves them all to the
    host in one transfer.

    A column is (layers, values, divisor): `values` is a vector with one entry per listed layer, or
    a list of 0-d tensors gathered layer by layer during forward and backward. The divisor is
    applied on the host: counts of saturated pairs and dead units over their totals, the norm of
    deviations over sqrt(n) for the std.
    """

    columns: dict[str, tuple[list[int], torch.Tensor | list[torch.Tensor], list[float] | float]] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    complements: set[str] = field(default_factory=set)  # columns stored as (divisor - value)

    def add(self, quantity: str, layer: int, value: torch.Tensor, divisor: float = 1.0, complement: bool = False) -> None:
        """One layer's value of a column gathered layer by layer; with `complement`, the column is
        (divisor - value) / divisor (a count of what is active, reported as the share that is not)."""
        layers, values, divisors = self.columns.setdefault(quantity, ([], [], []))
        layers.append(layer)
        values.append(value)
        divisors.append(divisor)
        if complement:
            self.complements.add(quantity)

    def fetch(self) -> tuple[dict[str, Column], dict[str, float]]:
        names, parts = [], []
        for quantity, (layers, values, _) in self.columns.items():
            names.append(quantity)
            parts.append((torch.stack(values) if isinstance(values, list) else values).double())
        parts += [t.reshape(1).double() for t in self.extras.values()]
        if not parts:
            return {}, {}
        host = torch.cat(parts).cpu().tolist()  # the one device -> host transfer
        columns: dict[str, Column] = {}
        at = 0
        for quantity in names:
            layers, _, divisors = self.columns[quantity]
            divisors = divisors if isinstance(divisors, list) else [divisors] * len(layers)
            if quantity in self.complements:
                columns[quantity] = {layer: (divisors[k] - host[at + k]) / divisors[k] for k, layer in enumerate(layers)}
            else:
                columns[quantity] = {layer: host[at + k] / divisors[k] for k, layer in enumerate(layers)}
            at += len(layers)
        extras = dict(zip(self.extras, host[at:]))
        return columns, extras


class Probe:
    """Measures one model's layers on the steps it is attached to."""

    def __init__(self, model: Stack, groups: list[str] | tuple[str, ...] = GROUPS):
        unknown = set(groups) - set(GROUPS)
        assert not unknown, unknown
        self.model = model
        self.groups = set(groups)
        self.layers = model.measured_layers()  # [(name, kind, module)], input side first
        self.blocks: list[Block] = list(model.blocks)
        self.weights = [module.weight for _, _, module in self.layers]
        self.parameters = [p for p in model.parameters()]
        # which entries of `parameters` are the layers' weights and biases (for their grad norms)
        position = {id(p): k for k, p in enumerate(self.parameters)}
        self.weight_at = [position[id(w)] for w in self.weights]
        self.bias_at = [(i, position[id(m.bias)]) for i, (_, _, m) in enumerate(self.layers) if m.bias is not None]
        self._pending = PendingMeasurement()
        self._weights_before: list[torch.Tensor] | None = None  # buffers, see snapshot_weights
        self._snapshot_taken = False
        self._weight_norms: torch.Tensor | None = None  # this step's, reused by update_ratios

    # -- forward / backward capture --------------------------------------------------------

    def attach(self) -> None:
        self._pending = PendingMeasurement()
        if self.groups & {"deltas", "activations"}:  # the weights and updates groups need no forward capture
            self.model.slot.probe = self

    def detach(self) -> None:
        self.model.slot.probe = None

    def observe(self, block: Block, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        """Called by each block during an attached forward pass."""
        i = block.index
        if "deltas" in self.groups and z.requires_grad:
            z.register_hook(self._delta_hook(i))
        if "activations" in self.groups:
            with torch.no_grad():
                # two passes (mean, then the norm of the deviations): population std, as stable as
                # torch.std_mean and an order of magnitude faster on the CPU
                pending = self._pending
                mean = out.mean()
                pending.add("act_mean", i, mean)
                pending.add("act_std", i, torch.linalg.vector_norm(out - mean), math.sqrt(out.numel()))
                active, alive = activity_counts(block.activation, block.act, u, y, SATURATION_THRESHOLD)
                pending.add("saturated_frac", i, active, u.numel(), complement=True)
                pending.add("dead_frac", i, alive, u.shape[1], complement=True)  # a unit is a channel in a CNN

    def watch_logits(self, logits: torch.Tensor) -> None:
        """The head's delta is the gradient of the loss with respect to the logits."""
        if "deltas" in self.groups and logits.requires_grad:
            logits.register_hook(self._delta_hook(len(self.blocks)))

    def _delta_hook(self, layer: int):
        def hook(grad: torch.Tensor) -> None:
            self._pending.add("delta_norm", layer, torch.linalg.vector_norm(grad))

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
            every_layer = list(range(len(self.layers)))
            pending.columns["weight_norm"] = (every_layer, self._weight_norms, 1.0)
            pending.columns["weight_grad_norm"] = (every_layer, torch.stack([grad_norms[k] for k in self.weight_at]), 1.0)
            if self.bias_at:
                layers = [i for i, _ in self.bias_at]
                pending.columns["bias_grad_norm"] = (layers, torch.stack([grad_norms[k] for _, k in self.bias_at]), 1.0)
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
        """{'update_ratio': {layer: ||W_after - W_before|| / ||W_before||}}, after `snapshot_weights`
        and a step."""
        if not self._snapshot_taken:
            return {}
        self._snapshot_taken = False
        before = self._weights_before
        # ||W_before|| is this step's weight_norm when the weights group measured it
        size = self._weight_norms if self._weight_norms is not None else torch.stack(torch._foreach_norm(before))
        torch._foreach_sub_(before, [w.detach() for w in self.weights])  # now W_before - W_after
        change = torch.stack(torch._foreach_norm(before))
        return {"update_ratio": dict(enumerate((change / size).cpu().tolist()))}

    # -- rows -------------------------------------------------------------------------------

    def rows(self, step: int, columns: dict[str, Column]) -> list[dict]:
        """One layers.csv row per layer; a quantity not measured (or not existing) stays None."""
        measured = [(quantity, columns.get(quantity, {})) for quantity in QUANTITIES]
        rows = []
        for i, (name, kind, _) in enumerate(self.layers):
            row = {"step": step, "layer": i, "name": name, "kind": kind}
            for quantity, column in measured:
                row[quantity] = column.get(i)
            rows.append(row)
        return rows


def _layer_of(name: str, depth: int) -> int:
    """`blocks.3.linear.weight` -> 3, `head.weight` -> depth."""
    return int(name.split(".")[1]) if name.startswith("blocks.") else depth


def locate_non_finite(model: Stack, x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict:
    """Where the first non-finite value of a step appears.

    Replays the step's forward and backward on the same batch and scans in the order the step
    computes: parameters (corrupted by an earlier update), then forward tensors block by block,
    the logits and the loss, then gradients from the head back toward the input.
    Returns {layer, name, tensor}; `tensor` names what held the value.
    """
    depth = len(model.blocks)

    def found(tensor_name: str, layer: int) -> dict:
        name = f"blocks.{layer}" if layer < depth else "head"
        return {"layer": layer, "name": name, "tensor": tensor_name}

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            return found(f"{name} (parameter)", _layer_of(name, depth))

    forward: list[tuple[str, int, torch.Tensor]] = []  # (what, layer, tensor) in forward order

    class Recorder:
        def observe(self, block: Block, z, u, y_act, out):
            i = block.index
            z.retain_grad()
            forward.append((f"blocks.{i}.linear output", i, z))
            if block.norm is not None and block.norm_first:
                forward.append((f"blocks.{i}.norm output", i, u))
            forward.append((f"blocks.{i}.act output", i, y_act))
            if block.norm is not None and not block.norm_first:
                forward.append((f"blocks.{i}.norm output", i, out))

    model.slot.probe = Recorder()
    try:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.retain_grad()
        loss = loss_fn(logits, y)
        for what, layer, tensor in forward + [("head output (logits)", depth, logits), ("loss", depth, loss)]:
            if not torch.isfinite(tensor).all():
                return found(what, layer)
        loss.backward()
    finally:
        model.slot.probe = None

    backward: list[tuple[str, int, torch.Tensor | None]] = [("head output (logits) gradient", depth, logits.grad)]
    params_by_layer: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, param in model.named_parameters():
        params_by_layer.setdefault(_layer_of(name, depth), []).append((name, param))
    backward += [(f"{name}.grad", depth, p.grad) for name, p in params_by_layer.get(depth, [])]
    for what, layer, tensor in reversed(forward):
        if what.endswith("linear output"):
            backward.append((f"{what} gradient (delta)", layer, tensor.grad))
            backward += [(f"{name}.grad", layer, p.grad) for name, p in params_by_layer.get(layer, [])]
    for what, layer, grad in backward:
        if grad is not None and not torch.isfinite(grad).all():
            return found(what, layer)
    return found("none found on replay (the value was transient)", depth)
