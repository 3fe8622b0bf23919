"""Will this experiment fit in memory? An upper bound on its peak, made before anything is allocated.

A config such as depth 10000 x width 100000 would otherwise allocate until the operating system
kills the process, with no message and a half-written run. The estimate is the largest of three
moments of a run:

    generating the data   the generator's temporaries (per dataset, below) plus the dataset
    a training step       dataset + parameters + gradients + optimizer state + the probe's weight
                          snapshot + what autograd keeps for the backward pass + backward's
                          transients (6 tensors the size of the largest kept one: LRN's chain
                          of square, pool, power and division needs about five) + the loss's
                          tensors of logits size (3 for cross-entropy; 7 for bce/mse, whose
                          one-hot targets are int64 before they become float)
    a logged step         a training step + what the probe keeps: for a recurrent stack its
                          per-time-step tensors (probe_bytes); with the noise group each layer's
                          input and output gradient until the backward pass ends, and the group's
                          buffers (noise_bytes)
    an evaluation         the same resident state + one test chunk's forward without a graph
                          (4 tensors the size of the largest activation, at the chunk's size) and
                          its logits

It is an upper bound on the tensors a run allocates, and tight within a factor of about 2 where
tensors dominate (tests/test_memory.py measures the real peak of a grid of shapes against it);
allocator slack and the interpreter's own memory are not counted.

Nothing here re-derives an architecture: parameters are counted on the model itself, built on
PyTorch's `meta` device (shapes without storage), and what autograd keeps is measured by running
that model's forward pass on a meta batch with a saved-tensors hook, so any model kind is covered
by its own code. Deeper than `EXACT_DEPTH`, both are extrapolated linearly from depths 2 and 3:
exact for stacks of identical blocks, an overestimate where pooling shrinks the later blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradlab.config.experiment import Experiment
from gradlab.build.system import available_bytes, human
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.quantities import GATES, RECURRENT_KINDS

BYTES = 4  # float32 everywhere
EVAL_CHUNK = 1024  # test examples per forward pass in evaluation (orchestrate.train.evaluate), and in the estimate
EXACT_DEPTH = 64  # models up to this depth are built whole on the meta device
EXACT_STEPS = 16  # recurrent models up to this many time steps are run whole on the meta device
STEPS_FROM = 8  # beyond, extrapolated from 8 and 9 steps (see footprint)
BACKWARD_TRANSIENTS = 6  # tensors of the largest kept size alive at once in a backward pass (see above)
# The noise group's working sizes (measure/noise.py): the entries of the weight-shaped tensors its
# stacked Linear layers are done in at once (three such buffers), and of the per-example gradients
# a convolution forms at once (float32, then float64 with its centered copy: 20 bytes an entry).
NOISE_STACK_ENTRIES = 2**24
NOISE_CHUNK_ENTRIES = 2**24

# optimizer state in copies of the parameters
_STATE = {"sgd": lambda o: 1 if o.get("momentum") else 0, "adam": lambda o: 2, "adamw": lambda o: 2, "rmsprop": lambda o: 2 if o.get("momentum") else 1}
# tensors of logits size alive around the loss: logits, the saved softmax and the gradient; bce and
# mse first build int64 one-hot targets (two floats' worth), then float targets and per-unit terms
_LOSS_TENSORS = {"cross_entropy": 3, "bce": 7, "mse": 7}


@dataclass(frozen=True)
class Footprint:
    """What one forward pass of the model on a training batch leaves for the backward pass."""

    parameters: int  # elements
    saved: int  # bytes autograd keeps (parameters excluded), the batch itself included
    largest: int  # bytes of the largest of those tensors


@dataclass(frozen=True)
class Estimate:
    data: int  # the dataset held in memory
    generation: int  # the data generator's temporaries on top of the dataset
    parameters: int  # bytes of the parameters themselves
    training: int  # gradients, optimizer state, probe snapshot
    activations: int  # kept for the backward pass, plus backward's transients
    logits: int  # the loss's tensors of logits size, at the training batch
    evaluation: int  # one test chunk's forward without a graph, and its logits
    probe: int = 0  # what a logged step's probe keeps on top (a recurrent stack's per-time-step tensors, the noise group's)

    @property
    def resident(self) -> int:
        return self.data + self.parameters + self.training

    @property
    def peak_training(self) -> int:
        return self.resident + self.activations + self.logits + self.probe

    @property
    def peak_evaluation(self) -> int:
        return self.resident + self.evaluation

    @property
    def total(self) -> int:
        return max(self.data + self.generation, self.peak_training, self.peak_evaluation)


def _advice(exp: Experiment) -> str:
    lrn = "model.norm.size, " if exp.model.norm["name"] == "lrn" else ""
    return f"reduce model.depth, model.width, {lrn}data.batch_size, data.classes or data.n_train"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def generation_bytes(exp: Experiment, input_shape: tuple[int, ...]) -> int:
    """Bytes the data generator holds on top of the finished dataset while it runs (data.py)."""
    d = exp.data
    n, classes, features = d.n_train + d.n_test, d.classes, math.prod(input_shape)
    if d.name == "gaussian":  # class means; labels; N(0, 1), its scaled copy and the gathered means
        return classes * features * 4 + n * 8 + 3 * n * features * 4 + n * features
    if d.name == "teacher":  # x in float64, hidden layer and its tanh, logits, noise and their sum (float64)
        return n * features * 8 + 2 * n * 64 * 8 + 3 * n * classes * 8 + (features + classes) * 64 * 8
    if d.name == "spirals":  # 2-D points and their parts, then the float64 embedding
        return 8 * n * 2 * 4 + n * features * 8 + n * 2 * 8
    if d.name == "images":  # templates; labels and shifts; the gathered window, noise, sum, clamp
        return classes * 2 * 32 * 32 * 4 + n * 24 + 4 * n * features * 4
    if d.name == "mnist":  # the decompressed file and its pixels as float32
        return n * features * (1 + 1 + 4)
    return 0  # npz / csv: read before the estimate is made


def _footprint(exp: Experiment, input_shape: tuple[int, ...], classes: int, depth: int) -> Footprint:
    """Build the model of `depth` on the meta device and run a training batch through it."""
    import torch

    from gradlab.build.meta_kernels import without_dynamo
    from gradlab.build.models import build_model

    without_dynamo()
    try:
        with torch.device("meta"):
            model = build_model(exp.model.model_copy(update={"depth": depth}), input_shape, classes, initialize=False)
            x = torch.empty(exp.data.batch_size, *input_shape)
    except (RuntimeError, TypeError, OverflowError) as exc:  # a size beyond int64: PyTorch cannot even describe it
        raise ConfigError(f"model: this experiment needs tensors larger than PyTorch can address ({_first_line(exc)}); {_advice(exp)}") from None
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    kept: dict[int, int] = {}
    alive = []  # keeps the saved tensors (and so their storage addresses) alive until counted

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            kept[storage._cdata] = storage.nbytes()
            alive.append(tensor)
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x)
    except (RuntimeError, TypeError, OverflowError) as exc:
        raise ConfigError(f"model: this experiment needs tensors larger than PyTorch can address ({_first_line(exc)}); {_advice(exp)}") from None
    parameters = sum(p.numel() for p in model.parameters())
    return Footprint(parameters, sum(kept.values()), max(kept.values(), default=0))


def footprint(exp: Experiment, input_shape: tuple[int, ...], classes: int) -> Footprint:
    """The model's Footprint at the config's depth and, for a recurrent stack, its number of time
    steps T = input_shape[0]: extrapolated linearly beyond EXACT_DEPTH layers (from 2 and 3 of them:
    exact for a stack of identical blocks) and beyond EXACT_STEPS time steps, so that a depth of
    10**30 or 10**7 time steps is counted, not built or run step by step."""
    steps = input_shape[0] if exp.model.kind in RECURRENT_KINDS else 0
    if steps > EXACT_STEPS:
        # Every time step keeps the same tensors, so what autograd keeps grows by the same amount
        # from one step to the next. The largest tensor kept is, from 8 steps on, one that grows
        # with T (the input sequence (B, T, F) or the hidden states (B, T, H)): no tensor of one
        # step (B x 4H at most, or B x F) is larger than 8 steps of those.
        a, b = (_footprint_at_depth(exp, (t, *input_shape[1:]), classes) for t in (STEPS_FROM, STEPS_FROM + 1))
        return Footprint(a.parameters, a.saved + (steps - STEPS_FROM) * (b.saved - a.saved),
                         b.largest + (steps - STEPS_FROM - 1) * max(0, b.largest - a.largest))  # fmt: skip
    return _footprint_at_depth(exp, input_shape, classes)


def _footprint_at_depth(exp: Experiment, input_shape: tuple[int, ...], classes: int) -> Footprint:
    depth = exp.model.depth
    if depth <= EXACT_DEPTH:
        return _footprint(exp, input_shape, classes, depth)
    two, three = _footprint(exp, input_shape, classes, 2), _footprint(exp, input_shape, classes, 3)
    return Footprint(
        two.parameters + (depth - 2) * (three.parameters - two.parameters),
        two.saved + (depth - 2) * (three.saved - two.saved),
        max(two.largest, three.largest),
    )


def probe_bytes(exp: Experiment, input_shape: tuple[int, ...]) -> int:
    """What the recurrent probe keeps through a logged step (measure/recurrent_probe.py), per
    example, layer and time step, in units of the width H, with g the gates (lstm 4, gru 3, rnn 0)
    and G = max(g, 1) the blocks of a_t: deltas keep dL/da_t (G), dL/dh_t (1), dL/dc_t (lstm: 1)
    and sum |dL/da_t| over t for delta_rms (G); activations keep h_t and the gates' values (1 + g)
    and stack them to reduce (1 + g). A feed-forward probe keeps scalars only.
    tests/test_memory_recurrent.py holds the estimate against the real peak of recurrent runs."""
    m = exp.model
    if m.kind not in RECURRENT_KINDS:
        return 0
    gates = len(GATES[m.kind])
    per_step = 0
    if "deltas" in exp.log.probes:
        per_step += 2 * max(gates, 1) + 1 + (m.kind == "lstm")
    if "activations" in exp.log.probes:
        per_step += 2 * (1 + gates)
    return m.depth * input_shape[0] * exp.data.batch_size * per_step * m.width * BYTES


def noise_bytes(exp: Experiment, model: Footprint) -> int:
    """What the noise group keeps through a logged step of a feed-forward stack: every layer's input
    and output gradient until the backward pass ends (at most what autograd saves for it), the
    three weight-shaped buffers of its stacked Linear layers (at most NOISE_STACK_ENTRIES entries
    each, or the parameters), and for a CNN one chunk of per-example gradients. 0 without the group."""
    if "noise" not in exp.log.probes or exp.model.kind in RECURRENT_KINDS:
        return 0
    buffers = 3 * min(NOISE_STACK_ENTRIES, model.parameters) * BYTES
    chunk = NOISE_CHUNK_ENTRIES * 20 if exp.model.kind == "cnn" else 0
    return model.saved + buffers + chunk


def parameter_count(exp: Experiment, input_shape: tuple[int, ...], classes: int) -> int:
    """The model's parameters, counted on the model built on the meta device."""
    return footprint(exp, input_shape, classes).parameters


def estimate(exp: Experiment, input_shape: tuple[int, ...], classes: int, with_data: bool = True) -> Estimate:
    batch = exp.data.batch_size
    chunk = min(EVAL_CHUNK, exp.data.n_test)
    model = footprint(exp, input_shape, classes)
    params = model.parameters * BYTES
    copies = 1 + _STATE[exp.optim["name"]](exp.optim) + ("updates" in exp.log.probes)
    loss_tensors = _LOSS_TENSORS.get(exp.loss, 7)
    logits = loss_tensors * batch * classes * BYTES
    # without a graph, a forward holds a block's input, its output and two temporaries at a time
    evaluation = math.ceil(4 * model.largest * chunk / batch) + loss_tensors * chunk * classes * BYTES
    data = data_bytes(exp, input_shape) if with_data else 0
    return Estimate(
        data=data, generation=generation_bytes(exp, input_shape) if with_data else 0, parameters=params,
        training=params * copies, activations=model.saved + BACKWARD_TRANSIENTS * model.largest, logits=logits, evaluation=evaluation,
        probe=probe_bytes(exp, input_shape) + noise_bytes(exp, model),
    )  # fmt: skip


def data_bytes(exp: Experiment, input_shape: tuple[int, ...]) -> int:
    """The dataset in memory: float32 features and int64 labels of every train and test example."""
    examples = exp.data.n_train + exp.data.n_test
    return examples * math.prod(input_shape) * BYTES + examples * 8


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
    if with_data:  # before anything is built: a dataset alone too large is refused at once
        free, data = available_bytes("cpu"), data_bytes(exp, input_shape)
        if free is not None and data > free:
            sizes = "data.n_train, data.n_test" + (", data.seq_len" if exp.model.kind in RECURRENT_KINDS else "")
            raise ConfigError(f"data: the dataset alone needs {human(data)} of cpu memory but {human(free)} is available; reduce {sizes}")
    need = estimate(exp, input_shape, classes, with_data)
    on_device = max(need.peak_training, need.peak_evaluation) - need.data
    if device_type == "cpu":
        demands = {"cpu": max(need.total, on_device + need.data)}
    else:  # the dataset stays in host memory; batches move to the device one at a time
        demands = {"cpu": need.data + need.generation, device_type: on_device}
    for device, bytes_needed in demands.items():
        free = available_bytes(device)
        if free is not None and bytes_needed > free:
            parts = [f"data {human(need.data)}", f"parameters {human(need.parameters)}",
                     f"gradients and optimizer state {human(need.training)}", f"activations {human(need.activations)}",
                     f"logits {human(need.logits)}", f"evaluation {human(need.evaluation)}"]  # fmt: skip
            if device != "cpu":
                parts = parts[1:]
            raise ConfigError(
                f"model: this experiment needs up to {human(bytes_needed)} of {device} memory at its peak ({', '.join(parts)}) "
                f"but {human(free)} is available; {_advice(exp)}"
            )
    return need
