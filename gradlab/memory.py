"""Will this experiment fit in memory? An estimate made before anything is allocated.

A config such as depth 10000 x width 100000 would otherwise allocate until the operating system
kills the process, with no message and a half-written run. The estimate counts what training
cannot do without: the dataset held in memory, parameters, their gradients, the optimizer's state,
the probe's weight snapshot, and the activations autograd keeps for the backward pass (two tensors
per block). It deliberately leaves out allocator slack and temporaries, so it stays below the true
peak: a config that fits is never refused, one that is refused cannot fit.
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
    m = exp.model
    # first block from the input, the other depth - 1 from width to width (no list of fan-ins:
    # a depth of 10**30 must be counted, not enumerated)
    if m.kind == "mlp":
        weights = math.prod(input_shape) * m.width + (m.depth - 1) * m.width * m.width
    else:
        weights = (input_shape[0] * m.width + (m.depth - 1) * m.width * m.width) * m.kernel_size**2
    biases = (m.depth * m.width + classes) * int(m.bias)
    return weights + m.width * classes + biases


def estimate(exp: Experiment, input_shape: tuple[int, ...], classes: int, with_data: bool = True) -> Estimate:
    m = exp.model
    params = parameter_count(exp, input_shape, classes) * BYTES
    copies = 1 + _STATE[exp.optim["name"]](exp.optim) + ("updates" in exp.log.probes)
    positions = 1
    if m.kind == "cnn":
        positions = input_shape[1] * input_shape[2]  # before pooling: an upper bound per block, a lower on the first
    per_block = exp.data.batch_size * m.width * positions * BYTES
    activations = 2 * per_block * (m.depth if m.kind == "mlp" or not m.pool_every else min(m.depth, m.pool_every))
    if m.norm["name"] == "lrn":  # pads the squared input with size - 1 zero channels: at least one such buffer
        activations += exp.data.batch_size * (m.width + m.norm["size"] - 1) * positions * BYTES
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
