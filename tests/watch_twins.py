"""The references of the watch tests: a twin of the watched model measured by hand, and the records
read back with the csv module (not with gradlab's reader).

A twin is a copy of the watched model (the same weights, batches and optimizer) whose forward pass
is given `keep`: it calls keep(name, z, weight, bias, examples) on every output z of a use of a
parameter, written out by hand where the watched model calls a fused module (nn.MultiheadAttention).
`reference_step` retains those tensors' gradients and reads the parameters around the optimizer step.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import torch
from torch import nn

QUANTITIES = ("delta_norm", "delta_rms", "weight_norm", "weight_grad_norm", "bias_grad_norm", "update_ratio")


def read_csv(run_dir: Path, table: str) -> list[dict[str, str]]:
    with open(run_dir / table, newline="") as file:
        return list(csv.DictReader(file))


def number(text: str) -> float | None:
    return None if text == "" else float(text)


def read_layers(run_dir: Path) -> dict[int, dict[str, dict]]:
    """{step: {name: {column: value or None, 'kind': ..., 'layer': ...}}} from layers.csv."""
    out: dict[int, dict[str, dict]] = {}
    for row in read_csv(run_dir, "layers.csv"):
        values = {k: number(v) for k, v in row.items() if k not in ("step", "name", "kind", "layer")}
        values["kind"], values["layer"] = row["kind"], int(row["layer"])
        out.setdefault(int(row["step"]), {})[row["name"]] = values
    return out


def read_timesteps(run_dir: Path) -> dict[int, dict[tuple[str, int], dict]]:
    """{step: {(name, t): {column: value or None}}} from timesteps.csv."""
    out: dict[int, dict[tuple[str, int], dict]] = {}
    for row in read_csv(run_dir, "timesteps.csv"):
        values = {k: number(v) for k, v in row.items() if k not in ("step", "name", "layer", "t")}
        values["layer"] = int(row["layer"])
        out.setdefault(int(row["step"]), {})[(row["name"], int(row["t"]))] = values
    return out


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def delta_rms(grad: torch.Tensor, units: int = -1) -> float:
    """From its definition (quantities.py): sqrt((1/B) sum_b sum_c g_bc^2), g_bc the sum over the
    positions of unit c of |dl_b/dz|, with dl_b/dz = B dL/dz (examples in dimension 0)."""
    B = grad.shape[0]
    per_example = (B * grad.double().abs()).movedim(units, -1)
    g = per_example.reshape(B, -1, per_example.shape[-1]).sum(1)
    return math.sqrt(sum((g[b] ** 2).sum().item() for b in range(B)) / B)


def norm(tensor: torch.Tensor) -> float:
    """||tensor||, float16 and bfloat16 ones with float32 arithmetic."""
    return (tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor).norm().item()


def reference_step(twin: nn.Module, optimizer, x, y, loss_fn, scaler=None, autocast=None) -> dict[str, dict[str, float | None]]:
    """One training step of the twin, measured by hand: {site name: {quantity: value}}. With a
    GradScaler, the gradients are the scaled loss's, divided here by the scale the step used;
    with `autocast` (a dtype), the forward pass runs under CPU autocast."""
    kept: list[tuple[str, torch.Tensor, nn.Parameter, nn.Parameter | None, int | None, int]] = []

    def keep(name, z, weight, bias=None, examples=True, units=-1):
        z.retain_grad()
        kept.append((name, z, weight, bias, examples, units))

    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        loss = loss_fn(twin(x, keep=keep), y)
    scale = 1.0 if scaler is None else scaler.get_scale()
    (loss if scaler is None else scaler.scale(loss)).backward()
    before = {id(w): w.detach().clone() for _, _, w, _, _, _ in kept}
    grads = {id(p): norm(p.grad) / scale for _, _, w, b, _, _ in kept for p in (w, b) if p is not None and p.grad is not None}
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    measured = {}
    for name, z, w, b, examples, units in kept:
        g = z.grad
        measured[name] = {
            "delta_norm": norm(g) / scale if g is not None else None,
            "delta_rms": delta_rms(g, units) / scale if g is not None and examples else None,
            "weight_norm": norm(before[id(w)]),
            "weight_grad_norm": grads.get(id(w)),
            "bias_grad_norm": grads.get(id(b)) if b is not None else None,
            "update_ratio": norm(w.detach() - before[id(w)]) / norm(before[id(w)]),
        }
    return measured


def assert_matches(recorded: dict, expected: dict, rel: float = 1e-5) -> None:
    assert sorted(recorded) == sorted(expected)
    for step, sites in expected.items():
        assert list(recorded[step]) == list(sites), (step, list(recorded[step]), list(sites))  # the same sites, in call order
        for name, values in sites.items():
            for quantity, value in values.items():
                got = recorded[step][name][quantity]
                assert close(got, value, rel), (step, name, quantity, got, value)


def train_twins(model: nn.Module, batches, loss_fn, watch, every: int, lr: float = 0.1):
    """Train `model` under `watch(model, optimizer)` (a function returning the Watch) and a deepcopy
    of it measured by reference_step, on the same batches; returns (run_dir, the twin's values of
    the measured steps)."""
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9)
    expected = {}
    with watch(model, opt) as w:
        for step, (x, y) in enumerate(batches):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            w.step(loss=loss)
            measured = reference_step(twin, twin_opt, x, y, loss_fn)
            if step % every == 0:
                expected[step] = measured
    return w.run_dir, expected


def train_alone(model: nn.Module, batches, loss_fn, watch=None, lr: float = 0.1) -> nn.Module:
    """Train `model` on `batches` (under `watch(model, optimizer)` when given); returns it."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def loop(w):
        for x, y in batches:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if w is not None:
                w.step(loss=loss)

    if watch is None:
        loop(None)
    else:
        with watch(model, opt) as w:
            loop(w)
    return model


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    """Bit for bit."""
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name
