"""Where the first non-finite value of a diverged step appears: a replay of the step that scans
parameters, the tensors tapped at the model's sites, the loss, then the gradients back to the input."""

from __future__ import annotations

import torch
from torch import nn

from gradlab.build.sites import Layer, Role, Site


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
