"""Data files in the formats gradlab's loaders read, built byte by byte for the tests."""

from __future__ import annotations

import struct

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An MNIST IDX file's bytes: the magic number of an image (3-d) or label (1-d) file, the
    dimensions as big-endian uint32, then the values as uint8."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
