"""Datasets: the `data:` section of a config turned into tensors, plus a minibatch iterator.

    load_dataset(cfg, seed)   -> Dataset (build/dataset.py), by the loader of cfg.name
    Batches(x, y, size, seed)  the training minibatches

The loaders: the synthetic sets (`gaussian`, `teacher`, `spirals`, `images`: data_synthetic.py),
generated from their own torch.Generator, all n_train + n_test examples in one go and split, so
train and test come from the same distribution; the file sets (`mnist`, `npz`, `csv`:
data_files.py); the sequences of the recurrent kinds (`adding`, `copy`, `sequential_mnist`:
data_sequences.py).

What each dataset is (its name, family, input shape and the facts of its generation that theory
and the memory estimate read) is declared in gradlab.vocab.datasets; this module makes the tensors.

Shapes: x is (N, *input_shape) float32 with input_shape (dim,) for vectors, (C, H, W) for
images or (T, features) for sequences; y is (N,) int64 with values in [0, classes), except for the
sequence tasks: `adding` has float32 targets (N,) (a regression, one output: `classes` 1) and
`copy` a label per step (N, T).
"""

from __future__ import annotations

from typing import Callable

import torch

from gradlab.build import data_files, data_sequences, data_synthetic
from gradlab.build.dataset import Dataset, derive_seed
from gradlab.config.experiment import DataConfig
from gradlab.vocab.datasets import SEQUENCE_DATASETS
from gradlab.vocab.errors import DataError


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """The dataset `cfg.name` with `cfg.n_train` training and `cfg.n_test` test examples."""
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise DataError(f"data.name: unknown dataset {cfg.name!r}; known: {', '.join(LOADERS)}")
    return loader(cfg, seed)


class Batches:
    """An endless stream of training minibatches `(x (B, ...), y (B,))`.

    Each epoch is a fresh permutation drawn from this iterator's own generator, so the order
    depends only on `seed`. The last partial batch of an epoch is dropped: every batch has exactly
    `batch_size` examples (BatchNorm statistics and per-batch probes then always mean the same
    thing), and each example appears at most once per epoch (exactly once when batch_size divides N).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if not 1 <= batch_size <= len(x):
            raise DataError(f"data.batch_size: {batch_size} must be between 1 and the {len(x)} training examples")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.steps_per_epoch = len(x) // batch_size
        self.epoch = 0  # epochs started so far
        self._generator = torch.Generator().manual_seed(derive_seed(seed, "batches"))
        self._order = torch.empty(0, dtype=torch.int64)
        self._pos = 0

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos + self.batch_size > len(self._order):
            # Permute on the CPU generator (deterministic everywhere), then move the indices to
            # the data's device once per epoch rather than once per batch.
            self._order = torch.randperm(len(self.x), generator=self._generator).to(self.x.device)
            self._pos = 0
            self.epoch += 1
        index = self._order[self._pos : self._pos + self.batch_size]  # (B,)
        self._pos += self.batch_size
        return self.x[index], self.y[index]


# Exactly the names of `gradlab.vocab.datasets.DATASETS` (checked by the tests).
LOADERS: dict[str, Callable[[DataConfig, int], Dataset]] = {
    "gaussian": data_synthetic.load_gaussian,
    "teacher": data_synthetic.load_teacher,
    "spirals": data_synthetic.load_spirals,
    "images": data_synthetic.load_images,
    "mnist": data_files.load_mnist,
    "npz": data_files.load_npz,
    "csv": data_files.load_csv,
    "adding": data_sequences.load_adding,
    "copy": data_sequences.load_copy,
    "sequential_mnist": data_sequences.load_sequential_mnist,
}
SEQUENCE_LOADERS = {name: LOADERS[name] for name in SEQUENCE_DATASETS}
