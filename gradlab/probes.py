"""Per-layer measurements, taken only on logged steps.

On a logged step the train loop calls, in order:

    probe.attach()                 blocks hand their tensors to the probe during forward
    logits = model(x); probe.watch_logits(logits); loss.backward()
    probe.detach()
    pending = probe.measure(loss, logits, y)     # every pre-update quantity, still on device
    values = pending.fetch()                     # ONE host transfer
    probe.snapshot_weights(); optimizer.step(); update = probe.update_ratios()  # 'updates' only

Quantities (DESIGN.md's layers.csv), with L the back-propagated batch-mean loss:
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
moved to the host once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from gradlab.models import Block, Stack

SATURATION_THRESHOLD = 0.05  # "derivative below 5% of its maximum"
GROUPS = ("weights", "deltas", "activations", "updates")


@dataclass
class PendingMeasurement:
    """Scalars still on the device; `fetch` moves them to the host in one transfer."""

    slots: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def fetch(self) -> tuple[dict[tuple[str, int], float], dict[str, float]]:
        keys = list(self.slots) + list(self.extras)
        tensors = list(self.slots.values()) + list(self.extras.values())
        if not tensors:
            return {}, {}
        values = torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors]).cpu().tolist()
        by_key = dict(zip(keys, values))
        per_layer = {k: by_key[k] for k in self.slots}
        extras = {k: by_key[k] for k in self.extras}
        return per_layer, extras


class Probe:
    """Measures one model's layers on the steps it is attached to."""

    def __init__(self, model: Stack, groups: list[str] | tuple[str, ...] = GROUPS):
        unknown = set(groups) - set(GROUPS)
        assert not unknown, unknown
        self.model = model
        self.groups = set(groups)
        self.layers = model.measured_layers()  # [(name, kind, module)], input side first
        self.blocks: list[Block] = list(model.blocks)
        self._slots: dict[tuple[str, int], torch.Tensor] = {}
        self._weights_before: list[torch.Tensor] | None = None

    # -- forward / backward capture --------------------------------------------------------

    def attach(self) -> None:
        self._slots = {}
        for block in self.blocks:
            block.probe = self

    def detach(self) -> None:
        for block in self.blocks:
            block.probe = None

    def observe(self, block: Block, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        """Called by each block during an attached forward pass."""
        i = block.index
        if "deltas" in self.groups and z.requires_grad:
            z.register_hook(self._delta_hook(i))
        if "activations" in self.groups:
            with torch.no_grad():
                self._slots[("act_mean", i)] = out.mean()
                self._slots[("act_std", i)] = out.std(correction=0)
                saturated = self._saturated(block, u, y)  # bool, shape of u
                self._slots[("saturated_frac", i)] = saturated.float().mean()
                # (B, C, ...) -> (C, B*...): a unit is dead if saturated on all examples/positions
                per_unit = saturated.transpose(0, 1).reshape(saturated.shape[1], -1)
                self._slots[("dead_frac", i)] = per_unit.all(dim=1).float().mean()

    def watch_logits(self, logits: torch.Tensor) -> None:
        """The head's delta is the gradient of the loss with respect to the logits."""
        if "deltas" in self.groups and logits.requires_grad:
            logits.register_hook(self._delta_hook(len(self.blocks)))

    def _delta_hook(self, layer: int):
        def hook(grad: torch.Tensor) -> None:
            self._slots[("delta_norm", layer)] = torch.linalg.vector_norm(grad)

        return hook

    @staticmethod
    def _saturated(block: Block, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        derivative = block.act.derivative(u, y).abs()
        maximum = block.act.max_derivative()
        if isinstance(maximum, torch.Tensor) and maximum.numel() > 1:
            # one maximum per unit/channel (prelu with per-unit slopes): broadcast over (B, C, ...)
            maximum = maximum.reshape(1, -1, *([1] * (u.dim() - 2)))
        return derivative < SATURATION_THRESHOLD * maximum

    # -- after backward ---------------------------------------------------------------------

    def _weights(self) -> list[torch.Tensor]:
        return [module.weight for _, _, module in self.layers]

    def measure(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> PendingMeasurement:
        """Everything measurable before the optimizer step, still on the device."""
        pending = PendingMeasurement(slots=dict(self._slots))
        if "weights" in self.groups:
            weights = self._weights()
            for i, norm in enumerate(torch._foreach_norm([w.detach() for w in weights])):
                pending.slots[("weight_norm", i)] = norm
            with_grad = [(i, w.grad) for i, w in enumerate(weights) if w.grad is not None]
            for (i, _), norm in zip(with_grad, torch._foreach_norm([g for _, g in with_grad])):
                pending.slots[("weight_grad_norm", i)] = norm
            biases = [(i, m.bias.grad) for i, (_, _, m) in enumerate(self.layers) if m.bias is not None and m.bias.grad is not None]
            for (i, _), norm in zip(biases, torch._foreach_norm([g for _, g in biases])):
                pending.slots[("bias_grad_norm", i)] = norm
        pending.extras["loss"] = loss.detach()
        pending.extras["accuracy"] = (logits.detach().argmax(dim=1) == y).float().mean()
        pending.extras["grad_norm"] = global_grad_norm(self.model)
        return pending

    # -- around the optimizer step ------------------------------------------------------------

    def snapshot_weights(self) -> None:
        if "updates" in self.groups:
            self._weights_before = [w.detach().clone() for w in self._weights()]

    def update_ratios(self) -> dict[tuple[str, int], float]:
        """||W_after - W_before|| / ||W_before|| per layer, after `snapshot_weights` and a step."""
        if self._weights_before is None:
            return {}
        before = self._weights_before
        after = [w.detach() for w in self._weights()]
        change = torch._foreach_norm(torch._foreach_sub(after, before))
        size = torch._foreach_norm(before)
        ratios = torch.stack(change) / torch.stack(size)
        self._weights_before = None
        return {("update_ratio", i): value for i, value in enumerate(ratios.cpu().tolist())}

    # -- rows -------------------------------------------------------------------------------

    def rows(self, step: int, values: dict[tuple[str, int], float]) -> list[dict]:
        """One layers.csv row per layer; a quantity not measured (or not existing) stays None."""
        quantities = ("weight_norm", "weight_grad_norm", "bias_grad_norm", "delta_norm",
                      "act_mean", "act_std", "saturated_frac", "dead_frac", "update_ratio")  # fmt: skip
        rows = []
        for i, (name, kind, _) in enumerate(self.layers):
            row = {"step": step, "layer": i, "name": name, "kind": kind}
            for quantity in quantities:
                row[quantity] = values.get((quantity, i))
            rows.append(row)
        return rows


def global_grad_norm(model: nn.Module) -> torch.Tensor:
    """||g|| over every parameter gradient (the norm `clip_grad_norm_` clips), on the device."""
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


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

    recorder = Recorder()
    for block in model.blocks:
        block.probe = recorder
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
        for block in model.blocks:
            block.probe = None

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
