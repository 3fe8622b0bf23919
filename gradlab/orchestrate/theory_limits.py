"""`gradlab theory` refuses what `gradlab run` refuses for its size, with run's own line (exit 2).

run refuses a config whose data or peak memory does not fit (build.memory.check_fits); theory
predicts from the config alone, but a prediction for a network no run can build (depth 10⁶) is
of no use and its per-layer table is as long as the network. check_fits measures the model on
torch's meta device, and `gradlab theory` does not load torch for an ordinary config: a torch-free
lower bound of run's estimate (the dataset, the hidden weight matrices and their gradients, one
batch of activations per block) decides whether the config is anywhere near the limit, and only
then is run's own check made. Run's estimate is at least this bound and, for every model gradlab
builds, within a few times of it (optimizer state, the probe's copy, BatchNorm's saved tensors and
backward's transients are each a small multiple of these terms), so below REACH of the free
memory run's check cannot refuse.
"""

from __future__ import annotations

from typing import Any

from gradlab.config.experiment import Experiment
from gradlab.vocab.datasets import known_input_shape
from gradlab.vocab.quantities import RECURRENT_KINDS

BYTES = 4  # float32, as build.memory counts
REACH = 1 / 16  # a lower bound above this share of the free memory: make run's exact check


def lower_bound(exp: Experiment, input_shape: tuple[int, ...]) -> int:
    """Bytes that run's estimate certainly counts: data + 2 × the hidden weight matrices (weights
    and gradients) + one batch × width tensor per block (per time step for a recurrent stack)."""
    m, d = exp.model, exp.data
    examples = d.n_train + d.n_test
    features = 1
    for size in input_shape:
        features *= size
    data = examples * features * BYTES + examples * 8
    steps = input_shape[0] if m.kind in RECURRENT_KINDS and len(input_shape) == 2 else 1
    weights = max(0, m.depth - 1) * m.width * m.width
    activations = d.batch_size * m.width * m.depth * steps
    return data + 2 * weights * BYTES + activations * BYTES


def check_theory_fits(exp: Experiment) -> None:
    """Raise run's ConfigError (one line, exit 2) for a config `gradlab run` refuses for its size;
    return at once, without torch, for one far from the limit. Configs whose input shape needs the
    data file (npz, csv) are not checked: run reads the file first."""
    from gradlab.build.system import available_bytes

    shape = known_input_shape(exp.data)
    if shape is None:
        return
    free = available_bytes("cpu")
    if free is None or lower_bound(exp, shape) <= REACH * free:
        return
    from gradlab.build.memory import check_fits

    device: Any = str(exp.device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"  # auto: the host's memory, as on a machine without a GPU
    check_fits(exp, shape, exp.data.classes, device_type)
