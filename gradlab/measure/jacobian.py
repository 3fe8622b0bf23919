"""The input-output Jacobian's spectrum (log.jacobian): jacobian.csv's m1, m2, s2 and sv_max.

J_l is the Jacobian of hidden block l's output with respect to the network's input, for one
example. No dense Jacobian is formed: Hutchinson probes v ~ N(0, I) give tr(J^T J) = E ||J v||^2
and tr((J^T J)^2) = E ||J^T J v||^2, and power iteration on J^T J gives the largest singular value.

- One forward-mode pass (torch.func.jvp) over the blocks gives every block's J_l v for the same
  probe v; m2, s2 and sv_max need a reverse pass (J^T of the last block's J v), so they are taken
  for the last hidden block only.
- The model is measured in evaluation mode: BatchNorm normalizes with its running statistics, so
  that each example's output depends on that example alone and J is a per-example Jacobian (with
  batch statistics every example's output moves with every other's input, and J would be a block of
  the whole batch's Jacobian); dropout is off. The mode is put back afterwards; nothing is updated.
- The K probes of each of the k examples travel as one batch of K * k rows (the example repeated),
  so a row's J v is that example's: in evaluation mode the rows do not interact.
- The probes and the power iteration's start are drawn from their own generator, seeded from the
  run's seed and the step, so measuring never moves the training's random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp, vjp

from gradlab.build.models import MLP, Stack
from gradlab.measure.norms import norm_rows


@dataclass(frozen=True)
class JacobianSpectrum:
    """Per hidden block l: m1[l]; for the last block: m2, s2, sv_max (means over the examples)."""

    m1: list[float]
    m2: float
    s2: float
    sv_max: float
    probes: int

    def rows(self, step: int, layers: list[int] | None = None) -> list[dict[str, float | int | None]]:
        """jacobian.csv's rows of this step, block 0 first (`layers`: their layer numbers, by default
        0, 1, ...); m2, s2 and sv_max on the last block's row only."""
        layers = list(range(len(self.m1))) if layers is None else layers
        last = len(self.m1) - 1
        return [
            {"step": step, "layer": layer, "m1": m1,
             "m2": self.m2 if i == last else None, "s2": self.s2 if i == last else None,
             "sv_max": self.sv_max if i == last else None, "probes": self.probes}
            for i, (layer, m1) in enumerate(zip(layers, self.m1))
        ]  # fmt: skip


def block_outputs(model: Stack, x_flat: torch.Tensor, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Every hidden block's output, each flattened to (rows, n_out_l), as a function of the input
    flattened to (rows, n_in): the network's forward pass up to its head."""
    h = x_flat if isinstance(model, MLP) else x_flat.reshape(x_flat.shape[0], *input_shape)
    outputs = []
    for block in model.blocks:
        h = block(h)
        outputs.append(h.flatten(1))
    return tuple(outputs)


def probe_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    """The generator of one step's probes: its own stream, never the global one training draws from."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % 2**63)
    return generator


def jacobian_spectrum(model: Stack, x: torch.Tensor, probes: int, power_iterations: int, generator: torch.Generator) -> JacobianSpectrum:
    """m1 of every hidden block and m2, s2, sv_max of the last, for the examples of `x` (B, *input_shape).

    m1 and m2 are the means over the examples of each example's mean over its `probes` probes of
    ||J v||^2 / n_in and ||J^T J v||^2 / n_in; s2 = m2 / m1^2 - 1 of those means; sv_max the mean over
    the examples of each one's power-iteration estimate."""
    shape = tuple(x.shape[1:])
    return in_evaluation_mode(model, lambda: spectrum_of(lambda rows: block_outputs(model, rows, shape), x, probes, power_iterations, generator))


def in_evaluation_mode(model: torch.nn.Module, compute):
    """compute() with `model` in evaluation mode and no autograd graph of its parameters recorded
    (torch.func's transforms differentiate under no_grad too); the mode is put back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return compute()
    finally:
        model.train(was_training)


def spectrum_of(outputs, x: torch.Tensor, probes: int, power_iterations: int, generator: torch.Generator) -> JacobianSpectrum:
    """The spectrum's columns for `outputs`, a function of the inputs flattened to (rows, n_in) that
    returns each block's output flattened to (rows, n_out_l), row r depending on input row r alone."""
    examples = x.shape[0]
    x_flat = x.detach().reshape(examples, -1)
    n_in = x_flat.shape[1]

    def last(inputs: torch.Tensor) -> torch.Tensor:
        return outputs(inputs)[-1]

    # row r = p * examples + e: probe p of example e
    rows = x_flat.repeat(probes, 1)
    v = torch.randn(rows.shape, generator=generator, device=rows.device, dtype=rows.dtype)
    _, jv = jvp(outputs, (rows,), (v,))
    _, pullback = vjp(last, rows)
    # J^T (J v) = ||J v|| J^T (J v / ||J v||): pulled back as a unit vector, so that a vanishing
    # Jacobian's J^T J v (of the order of m1 |v|) does not underflow float32 on the way
    (jt_unit,) = pullback(_unit_rows(jv[-1]))

    def per_example(vectors: torch.Tensor) -> torch.Tensor:  # (rows, n) -> (examples,): the mean of ||.||^2 over the probes
        # exact norms, squared in float64: a vanishing Jacobian's ||J v||^2 is a small number, not 0
        return norm_rows(vectors).square().reshape(probes, examples).mean(dim=0) / n_in

    m1 = torch.stack([per_example(j).mean() for j in jv])
    m2 = (norm_rows(jt_unit) * norm_rows(jv[-1])).square().reshape(probes, examples).mean(dim=0).mean() / n_in
    s2 = m2 / m1[-1].square() - 1

    # power iteration on each example's J^T J, from a random start
    _, last_pullback = vjp(last, x_flat)
    u = torch.randn(x_flat.shape, generator=generator, device=x_flat.device, dtype=x_flat.dtype)
    u = _unit_rows(u)
    for _ in range(power_iterations):  # u <- J^T J u / ||J^T J u||, J u pulled back as a unit vector
        _, ju = jvp(last, (x_flat,), (u,))
        (jtju,) = last_pullback(_unit_rows(ju))
        u = _unit_rows(jtju)
    _, ju = jvp(last, (x_flat,), (u,))
    sv_max = norm_rows(ju).mean()

    values = torch.cat([m1, torch.stack([m2, s2, sv_max])]).cpu().tolist()  # the one host transfer
    *m1_values, m2_value, s2_value, sv_value = values
    return JacobianSpectrum(m1_values, m2_value, s2_value, sv_value, probes)


def _unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Each row of `t` divided by its exact norm (a row of zeros stays zeros), in t's dtype."""
    scale = norm_rows(t).clamp_min(torch.finfo(torch.float64).tiny)
    return (t.double() / scale[:, None]).to(t.dtype)
