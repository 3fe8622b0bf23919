"""A dataset's tensors (`Dataset`), and what every loader shares: a random stream per purpose
derived from the run's seed, and the split into training and test examples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from gradlab.config.experiment import DataConfig
from gradlab.vocab.errors import DataError


@dataclass
class Dataset:
    x_train: torch.Tensor  # (n_train, *input_shape) float32
    y_train: torch.Tensor  # (n_train,) int64, values in [0, classes) (adding: float32; copy: (n_train, T))
    x_test: torch.Tensor  # (n_test, *input_shape) float32
    y_test: torch.Tensor  # (n_test,) int64
    input_shape: tuple[int, ...]  # (dim,) for vectors, (C, H, W) for images, (T, features) for sequences
    classes: int  # outputs of the model's head (adding: 1, a regression)

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on `device` (the tensors are moved once, not per batch)."""
        return Dataset(
            self.x_train.to(device), self.y_train.to(device), self.x_test.to(device), self.y_test.to(device),
            self.input_shape, self.classes,
        )


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, derived from the run's seed.

    The model is initialised from the global RNG seeded with the same `seed`; if the data used
    `Generator(seed)` directly, the first random numbers of both would coincide (e.g. the gaussian
    class means would equal the first layer's initial weights up to scale), a silent correlation
    between data and initialisation. Hashing in the purpose keeps the streams apart.
    """
    digest = hashlib.sha256(f"gradlab/{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def data_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, f"data/{name}"))


def split_dataset(cfg: DataConfig, x: torch.Tensor, y: torch.Tensor) -> Dataset:
    """First n_train examples for training, the next n_test for testing."""
    if not torch.isfinite(x).all():
        # A noise too large for float32 (about 3.4e38) would otherwise pass as a diverged run.
        raise DataError(f"data.noise: {cfg.noise:g} makes the {cfg.name} features overflow float32 (NaN or inf); use a smaller noise")
    n = cfg.n_train
    return Dataset(
        x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous(),
        tuple(x.shape[1:]), cfg.classes,
    )
