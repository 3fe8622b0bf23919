"""The sequence datasets of the recurrent kinds (`adding`, `copy`, `sequential_mnist`): x is
(N, T, features), T = data.seq_len (vocab/datasets.py holds their lengths and alphabets)."""

from __future__ import annotations

import torch

from gradlab.build.data_files import load_mnist
from gradlab.build.dataset import Dataset, data_generator
from gradlab.config.experiment import DataConfig
from gradlab.vocab.datasets import COPY_LENGTH, COPY_SYMBOLS, MNIST_SIDE, SEQUENCE_CLASSES, seq_len
from gradlab.vocab.errors import DataError

ADDING_BASELINE_MSE = 1 / 6  # always predicting 1: Var(U + U') = 2 * 1/12 for two U[0, 1] values


def load_adding(cfg: DataConfig, seed: int) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): two channels per step, a
    value U[0, 1] and a marker that is 1 at exactly two steps, one in each half of the sequence
    (first half [0, T//2), second [T//2, T)); the target is the sum of the two marked values, y float32
    (N,), one output. Always predicting 1 has an MSE of 1/6: a model that does not beat it has not
    learned to find the marked values."""
    steps = seq_len(cfg)
    if steps < 2:
        raise DataError(f"data.seq_len: the adding problem needs at least 2 steps, got {steps}")
    g = data_generator(seed, "adding")
    n = cfg.n_train + cfg.n_test
    values = torch.rand(n, steps, generator=g)  # (N, T)
    half = steps // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, steps, (n,), generator=g)
    markers = torch.zeros(n, steps)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=2)  # (N, T, 2)
    y = values[rows, first] + values[rows, second]  # (N,) float32
    m = cfg.n_train
    return Dataset(x[:m].contiguous(), y[:m].contiguous(), x[m:].contiguous(), y[m:].contiguous(), (steps, 2), 1)


def load_copy(cfg: DataConfig, seed: int) -> Dataset:
    """The copy (memory) task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): T steps of one-hot
    inputs over 10 classes (0 blank, 1-8 symbols, 9 delimiter): 10 random symbols, blanks, the delimiter
    at step T-11, then 10 blanks; the target per step is blank (0) except for the last 10 steps, which
    repeat the 10 symbols: y int64 (N, T), a label per step (readout: every). Predicting blanks and then
    uniform guesses scores a cross-entropy of 10 ln(8) / T: the memoryless baseline."""
    steps = seq_len(cfg)
    if steps < 2 * COPY_LENGTH + 1:
        raise DataError(f"data.seq_len: the copy task needs at least {2 * COPY_LENGTH + 1} steps (10 symbols, the delimiter, 10 to recall), got {steps}")
    g = data_generator(seed, "copy")
    n = cfg.n_train + cfg.n_test
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (n, COPY_LENGTH), generator=g)  # (N, 10)
    tokens = torch.zeros(n, steps, dtype=torch.int64)
    tokens[:, :COPY_LENGTH] = symbols
    tokens[:, steps - COPY_LENGTH - 1] = COPY_SYMBOLS + 1  # the delimiter: recall now
    y = torch.zeros(n, steps, dtype=torch.int64)
    y[:, steps - COPY_LENGTH :] = symbols
    x = torch.nn.functional.one_hot(tokens, COPY_SYMBOLS + 2).float()  # (N, T, 10)
    m = cfg.n_train
    return Dataset(x[:m].contiguous(), y[:m].contiguous(), x[m:].contiguous(), y[m:].contiguous(), (steps, COPY_SYMBOLS + 2), SEQUENCE_CLASSES["copy"])


def load_sequential_mnist(cfg: DataConfig, seed: int) -> Dataset:
    """MNIST read as a sequence (Le et al. 2015): row by row (seq_len 28: 28 steps of 28 pixels) or
    pixel by pixel (seq_len 784: 784 steps of one pixel), in row-major order, or, with `permute`, in a
    fixed order drawn once from the seed (the same for training and test)."""
    steps = seq_len(cfg)
    if steps not in (MNIST_SIDE, MNIST_SIDE * MNIST_SIDE):
        raise DataError(f"data.seq_len: sequential_mnist reads rows (28) or pixels (784), got {steps}")
    images = load_mnist(cfg, seed)
    if images.input_shape != (1, MNIST_SIDE, MNIST_SIDE):
        raise DataError(f"data.path: sequential_mnist needs 28x28 images, got {'x'.join(map(str, images.input_shape[1:]))}")
    pixels = MNIST_SIDE * MNIST_SIDE
    order = torch.randperm(pixels, generator=data_generator(seed, "sequential_mnist/permutation")) if getattr(cfg, "permute", False) else None

    def as_sequence(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), pixels)  # (N, 784), row-major
        if order is not None:
            flat = flat[:, order]
        return flat.reshape(len(x), steps, pixels // steps).contiguous()  # (N, T, features)

    return Dataset(as_sequence(images.x_train), images.y_train, as_sequence(images.x_test), images.y_test, (steps, pixels // steps), 10)


