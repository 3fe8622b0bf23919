"""Will this experiment fit in memory? An estimate made before anything is allocated.

A config such as depth 10000 x width 100000 would otherwise allocate until the operating system
kills the process, with no message and a half-written run. The estimate counts what training
cannot do without: the dataset held in memory, parameters, their gradients, the optimizer's state,
the probe's weight snapshot, and the activations autograd keeps for the backward pass. It
deliberately leaves out allocator slack and temporaries, so it stays below the true peak: a config
that fits is never refused, one that is refused cannot fit.

Nothing here re-derives an architecture: parameters are counted on the model itself, built on
PyTorch's `meta` device (shapes without storage), and each model class reports the activation
elements it keeps per example (`saved_activation_elements`), so a new architecture is covered by
its own code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from gradlab.config import Experiment
from gradlab.errors import ConfigError

BYTES = 4  # float32 everywhere

# optimizer state in copies of the parameters
_STATE = {"sgd": lambda o: 1 if o.get("momentum") else 0, "adam": lambda o: 2, "adamw": lambda o: 2, "rmsprop": lambda o: 2 if o.get("momentum") else 1}


@dataclass(frozen=True)
class Estimate:
    data: int
    parameters: int  # bytes of the parameters themselves
    training: int  # gradients, optimizer state, probe snapshot
    activations: int

    @property
    def total(self) -> int:
        return self.data + self.parameters + self.training + self.activations


def known_input_shape(exp: Experiment) -> tuple[int, ...] | None:
    """The input shape when the config alone determines it (synthetic data and MNIST)."""
    data = exp.data
    if data.name in ("gaussian", "teacher", "spirals"):
        return (data.dim,)
    if data.name in ("images", "mnist"):
        return (1, 28, 28)
    return None  # npz / csv: known once the file is read


def parameter_count(exp: Experiment, input_shape: tuple[int, ...], classes: int) -> int:
    """The model's parameters, counted on the model built on the meta device.

    A stack's blocks after the first are alike (the first one alone reads the input), so the count
    is linear in depth: models of depth 1 and 2 give it for any depth, 10**30 included, without
    building a module per block.
    """
    import torch

    from gradlab.models import build_model

    def count(depth: int) -> int:
        with torch.device("meta"):
            model = build_model(exp.model.model_copy(update={"depth": depth}), input_shape, classes, initialize=False)
        return sum(p.numel() for p in model.parameters())

    depth = exp.model.depth
    if depth <= 2:
        return count(depth)
    one, two = count(1), count(2)
    return one + (depth - 1) * (two - one)


def estimate(exp: Experiment, input_shape: tuple[int, ...], classes: int, with_data: bool = True) -> Estimate:
    from gradlab.models import model_class

    params = parameter_count(exp, input_shape, classes) * BYTES
    copies = 1 + _STATE[exp.optim["name"]](exp.optim) + ("updates" in exp.log.probes)
    elements = model_class(exp.model.kind).saved_activation_elements(exp.model, input_shape)
    activations = exp.data.batch_size * elements * BYTES
    examples = exp.data.n_train + exp.data.n_test
    data = examples * math.prod(input_shape) * BYTES if with_data else 0
    return Estimate(data=data, parameters=params, training=params * copies, activations=activations)


def available_bytes(device_type: str = "cpu") -> int | None:
    """Free memory on the device: MemAvailable for the CPU, the CUDA driver's free memory on a GPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # unknown: do not refuse


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def check_shapes(exp: Experiment, input_shape: tuple[int, ...]) -> None:
    """Raise ConfigError when a CNN's 2x2 poolings would shrink the images below 1x1, or leave
    its last BatchNorm a single value per channel to normalize."""
    m = exp.model
    if m.kind != "cnn" or len(input_shape) != 3:
        return
    height, width = input_shape[1:]
    pools = m.depth // m.pool_every if m.pool_every else 0
    fits = min(height, width).bit_length() - 1  # each pooling halves (rounding down): floor(log2(side)) of them
    if pools > fits:
        raise ConfigError(
            f"model.pool_every: {pools} 2x2 poolings (one after every {m.pool_every} of the {m.depth} blocks) would shrink "
            f"the {height}x{width} images below 1x1; at most {fits} fit: raise model.pool_every or lower model.depth"
        )
    before_last = (m.depth - 1) // m.pool_every if m.pool_every else 0  # poolings before the last block's norm
    values = exp.data.batch_size * (height >> before_last) * (width >> before_last)
    if m.norm["name"] == "batchnorm" and values < 2:
        raise ConfigError(
            f"data.batch_size: batchnorm in the last block sees {values} value per channel "
            f"({exp.data.batch_size} example of {height >> before_last}x{width >> before_last}); it needs at least 2"
        )


def check_fits(exp: Experiment, input_shape: tuple[int, ...], classes: int, device_type: str = "cpu", with_data: bool = True) -> Estimate:
    """Raise ConfigError, with the estimate and the limit, when the run cannot fit.

    The dataset stays in host memory (batches are moved to the device one at a time); the model,
    its gradients, optimizer state and activations live on `device_type`.
    """
    check_shapes(exp, input_shape)
    need = estimate(exp, input_shape, classes, with_data)
    model_bytes = need.parameters + need.training + need.activations
    demands = {"cpu": need.data} if device_type != "cpu" else {}
    demands[device_type] = demands.get(device_type, 0) + model_bytes + (need.data if device_type == "cpu" else 0)
    for device, bytes_needed in demands.items():
        free = available_bytes(device)
        if free is not None and bytes_needed > free:
            raise ConfigError(
                f"model: this experiment needs at least {human(bytes_needed)} of {device} memory (data {human(need.data)}, "
                f"parameters {human(need.parameters)}, gradients and optimizer state {human(need.training)}, "
                f"activations {human(need.activations)}) but {human(free)} is available; "
                f"reduce model.depth, model.width, {'model.norm.size, ' if exp.model.norm['name'] == 'lrn' else ''}data.batch_size or data.n_train"
            )
    return need
