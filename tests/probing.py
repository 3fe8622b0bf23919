"""One probed training pass, the way the train loop takes a logged step (see gradlab.measure.probe):
the tests that check a probe's numbers against an independent computation share it."""

from __future__ import annotations

import torch
from torch import nn

from gradlab.measure.probe import Probe
from gradlab.measure.recurrent_probe import RecurrentProbe


def measured_pass(probe: Probe | RecurrentProbe, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict]:
    """zero_grad, forward with the probe attached, the cross-entropy loss, backward: the probe's
    fetched (values, extras) of that pass."""
    model.zero_grad(set_to_none=True)
    probe.attach()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    probe.detach()
    return probe.measure(loss, logits, y).fetch()


def probed_rows(probe: Probe, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> list[dict]:
    """The probe's layers.csv rows of one measured pass, at `step`."""
    values, _ = measured_pass(probe, model, x, y)
    return probe.rows(step, values)
