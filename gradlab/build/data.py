"""Datasets: the `data:` section of a config turned into tensors, plus a minibatch iterator.

Synthetic sets (`gaussian`, `teacher`, `spirals`, `images`) are generated on the CPU from their own
`torch.Generator`, so the same config and seed give bit-identical tensors whatever else the run
does with the global RNG. Their fixed structure (class means, teacher weights, spiral embedding,
image templates) is drawn before the examples, so changing `n_train` or `n_test` never changes the
task itself, only how many examples of it there are. All n_train + n_test examples are drawn in
one go and split: train and test come from the same distribution.

File sets (`mnist`, `npz`, `csv`) are read with the standard library and numpy. Every problem with
a file is a `DataError` whose single line names the file and what is wrong with it; a bad file
never shows a traceback.

What each dataset is (its name, family, input shape and the facts of its generation that theory
and the memory estimate read) is declared in gradlab.vocab.datasets; this module makes the tensors.

Shapes: x is (N, *input_shape) float32 with input_shape (dim,) for vectors, (C, H, W) for
images or (T, features) for sequences; y is (N,) int64 with values in [0, classes), except for the
sequence tasks: `adding` has float32 targets (N,) (a regression, one output: `classes` 1) and
`copy` a label per step (N, T).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gradlab.build.system import available_bytes, human
from gradlab.config.experiment import DataConfig
from gradlab.vocab.datasets import COPY_LENGTH, COPY_SYMBOLS, IMAGE_SIZE, MNIST_SIDE, SEQUENCE_CLASSES, SEQUENCE_DATASETS, SPIRAL_JITTER, seq_len
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
        self._generator = torch.Generator().manual_seed(_derive_seed(seed, "batches"))
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


# --------------------------------------------------------------------------------------------
# Seeds and shared checks
# --------------------------------------------------------------------------------------------


NPZ_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, derived from the run's seed.

    The model is initialised from the global RNG seeded with the same `seed`; if the data used
    `Generator(seed)` directly, the first random numbers of both would coincide (e.g. the gaussian
    class means would equal the first layer's initial weights up to scale), a silent correlation
    between data and initialisation. Hashing in the purpose keeps the streams apart.
    """
    digest = hashlib.sha256(f"gradlab/{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(seed, f"data/{name}"))


def _split(cfg: DataConfig, x: torch.Tensor, y: torch.Tensor) -> Dataset:
    """First n_train examples for training, the next n_test for testing."""
    if not torch.isfinite(x).all():
        # A noise too large for float32 (about 3.4e38) would otherwise pass as a diverged run.
        raise DataError(f"data.noise: {cfg.noise:g} makes the {cfg.name} features overflow float32 (NaN or inf); use a smaller noise")
    n = cfg.n_train
    return Dataset(
        x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous(),
        tuple(x.shape[1:]), cfg.classes,
    )


def _check_labels(y: np.ndarray, classes: int, where: str, what: str, locate: Callable[[int], str] | None = None) -> np.ndarray:
    """`y` as int64 (N,), or a DataError naming the first value that is not a label in [0, classes).

    `locate(i)` says where example i is in the file (default: `what[i]`).
    """
    locate = locate or (lambda i: f"{what}[{i}]")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: {what} has shape {y.shape}; labels must be one integer per example")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise DataError(f"{where}: {what} has dtype {y.dtype}; labels must be integers")
    if np.issubdtype(y.dtype, np.floating):
        # Labels saved as floats (1.0, 2.0) are accepted when they are whole numbers.
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where}: {locate(i)} = {y[i].item():g} is not an integer label")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: {locate(i)} = {y[i].item():g} is outside [0, {classes}) (data.classes is {classes})")
    return y.astype(np.int64)


def _check_features(x: np.ndarray, where: str, what: str, locate: Callable[[int], str] | None = None) -> np.ndarray:
    """`x` as float32, or a DataError for non-numeric dtypes and NaN/inf (naming the first bad example)."""
    locate = locate or (lambda i: f"{what}[{i}]")
    if x.dtype == np.bool_:
        x = x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"{where}: {what} has dtype {x.dtype}; features must be real numbers")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{where}: {what} has shape {x.shape}: no features")
    with np.errstate(over="ignore"):  # no RuntimeWarning on stderr: the one error line below says it
        x = np.ascontiguousarray(x, dtype=np.float32)  # float64 beyond float32's range becomes inf: caught next
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)  # (N,)
    if not finite.all():
        raise DataError(f"{where}: {locate(int(np.argmin(finite)))} has NaN or inf features")
    return x


def _dataset_from_arrays(cfg: DataConfig, x_train, y_train, x_test, y_test, where: str, names=NPZ_SPLIT_KEYS, locate=None) -> Dataset:
    """A checked Dataset from numpy arrays. `names` name the four arrays in messages;
    `locate(split, i, label)` says where example i of a split (0 train, 1 test) is in the file,
    for its features (label False) or its label (default: `name[i]`)."""
    checked = []
    for split, (x, y) in enumerate(((x_train, y_train), (x_test, y_test))):
        x_name, y_name = names[2 * split], names[2 * split + 1]
        at_x = (lambda i, split=split: locate(split, i, False)) if locate else None
        at_y = (lambda i, split=split: locate(split, i, True)) if locate else None
        checked.append(_check_features(x, where, x_name, at_x))
        checked.append(_check_labels(y, cfg.classes, where, y_name, at_y))
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in checked)
    return Dataset(x_train, y_train, x_test, y_test, tuple(x_train.shape[1:]), cfg.classes)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0] if text.strip() else type(exc).__name__


# Everything reading a damaged or unreadable file can raise (BadGzipFile is an OSError,
# UnicodeDecodeError a ValueError).
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, zipfile.BadZipFile, struct.error, csv.Error)


# --------------------------------------------------------------------------------------------
# Synthetic datasets
# --------------------------------------------------------------------------------------------


def _gaussian(cfg: DataConfig, seed: int) -> Dataset:
    """One isotropic Gaussian per class: mean ~ N(0, I_dim) drawn once, x = mean[y] + noise * N(0, I_dim),
    labels uniform over the classes."""
    g = _generator(seed, "gaussian")
    n = cfg.n_train + cfg.n_test
    means = torch.randn(cfg.classes, cfg.dim, generator=g)  # (classes, dim), the task
    y = torch.randint(0, cfg.classes, (n,), generator=g)  # (N,)
    x = means[y] + cfg.noise * torch.randn(n, cfg.dim, generator=g)  # (N, dim)
    return _split(cfg, x, y)


TEACHER_WIDTH = 64
TEACHER_GAIN = 1.5  # hidden pre-activations ~ N(0, 1.5^2): clearly nonlinear, rarely saturated
_TANH_SQ = 0.5406483809043579  # E[tanh(1.5 z)^2] for z ~ N(0, 1), by quadrature


def _teacher(cfg: DataConfig, seed: int) -> Dataset:
    """x ~ N(0, I_dim), y = argmax of a fixed random 2-layer tanh network (width 64, no biases).

    The teacher's weights are scaled so that its hidden pre-activations have std 1.5 and its logits
    std about 1. `noise` adds N(0, (0.1 * noise)^2) to the logits before the argmax, so the default
    noise 1.0 flips only labels close to the teacher's decision boundaries and noise 0 gives labels
    that are an exact function of x. Classes are roughly but not exactly balanced (it is the
    teacher that decides).
    """
    g = _generator(seed, "teacher")
    n = cfg.n_train + cfg.n_test
    # The teacher runs in float64: a label must not flip with the matmul's summation order
    # (thread count, BLAS build), or the same seed would not give the same labels everywhere.
    f64 = torch.float64
    w1 = torch.randn(cfg.dim, TEACHER_WIDTH, generator=g, dtype=f64) * (TEACHER_GAIN / math.sqrt(cfg.dim))  # (dim, 64)
    w2 = torch.randn(TEACHER_WIDTH, cfg.classes, generator=g, dtype=f64) / math.sqrt(TEACHER_WIDTH * _TANH_SQ)  # (64, classes)
    x = torch.randn(n, cfg.dim, generator=g)  # (N, dim) float32
    logits = torch.tanh(x.double() @ w1) @ w2  # (N, classes), std ~ 1
    logits = logits + 0.1 * cfg.noise * torch.randn(n, cfg.classes, generator=g, dtype=f64)
    return _split(cfg, x, logits.argmax(dim=1))


SPIRAL_TWIST = 4.0  # radians an arm turns from the centre to radius 1 (as in the CS231n spirals)


def _spirals(cfg: DataConfig, seed: int) -> Dataset:
    """`classes` interleaved spiral arms in the unit disc, embedded isometrically in `dim` dimensions.

    Arm k: radius r ~ U(0, 1), angle 2 pi k / classes + 4 r, plus N(0, (0.1 * noise)^2) jitter on each
    coordinate. For dim > 2 the 2-D points are multiplied by a fixed random dim x 2 matrix with
    orthonormal columns, so distances (the problem's geometry) are unchanged; dim == 2 keeps the
    plane as it is.
    """
    if cfg.dim < 2:
        raise DataError("data.dim: spirals needs dim >= 2")
    g = _generator(seed, "spirals")
    n = cfg.n_train + cfg.n_test
    y = torch.randint(0, cfg.classes, (n,), generator=g)  # (N,)
    r = torch.rand(n, generator=g)  # (N,)
    angle = 2 * math.pi * y / cfg.classes + SPIRAL_TWIST * r
    points = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)  # (N, 2)
    points = points + SPIRAL_JITTER * cfg.noise * torch.randn(n, 2, generator=g)
    # Drawn last, so the 2-D points for a seed are the same whatever dim is.
    if cfg.dim > 2:
        basis, _ = torch.linalg.qr(torch.randn(cfg.dim, 2, generator=g, dtype=torch.float64))  # (dim, 2), orthonormal
        points = (points.double() @ basis.T).float()  # (N, dim)
    return _split(cfg, points, y)


IMAGE_SHIFT = 2  # examples are their template shifted by up to this many pixels each way
IMAGE_STROKES = 3  # strokes (bars or blobs) per class template


def _image_templates(classes: int, g: torch.Generator) -> torch.Tensor:
    """(classes, 28, 28) smooth templates in [0, 1]: each the union (max) of a few soft strokes.

    A stroke is a capsule: points within a segment of random centre (in the central 12x12 pixels),
    orientation and length (0 to 12 px, 0 being a round blob), blurred with a Gaussian profile of
    width 1 to 2 px. Different classes get different random strokes.
    """
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (28, 28) each
    templates = torch.zeros(classes, IMAGE_SIZE, IMAGE_SIZE)
    for k in range(classes):
        for _ in range(IMAGE_STROKES):
            centre = 8 + 12 * torch.rand(2, generator=g)
            angle = math.pi * float(torch.rand((), generator=g))
            length = 12 * float(torch.rand((), generator=g))
            width = 1 + float(torch.rand((), generator=g))
            dr, dc = rows - centre[0], cols - centre[1]
            along = dr * math.sin(angle) + dc * math.cos(angle)  # position along the stroke
            across = -dr * math.cos(angle) + dc * math.sin(angle)  # distance from its axis
            beyond = (along.abs() - length / 2).clamp(min=0)  # past either end of the segment
            stroke = torch.exp(-(across**2 + beyond**2) / (2 * width**2))
            templates[k] = torch.maximum(templates[k], stroke)
    return templates


def _images(cfg: DataConfig, seed: int) -> Dataset:
    """Synthetic 1x28x28 images: the class template shifted by up to 2 px each way, plus
    N(0, (0.3 * noise)^2) pixel noise, clipped to [0, 1] like pixel intensities. `dim` is unused."""
    g = _generator(seed, "images")
    n = cfg.n_train + cfg.n_test
    templates = _image_templates(cfg.classes, g)  # (classes, 28, 28)
    s = IMAGE_SHIFT
    padded = torch.nn.functional.pad(templates, (s, s, s, s))  # (classes, 32, 32), zero border
    y = torch.randint(0, cfg.classes, (n,), generator=g)  # (N,)
    shift = torch.randint(0, 2 * s + 1, (n, 2), generator=g)  # (N, 2): crop offset into the padded template
    index = torch.arange(IMAGE_SIZE)
    rows = (shift[:, 0:1] + index)[:, :, None]  # (N, 28, 1)
    cols = (shift[:, 1:2] + index)[:, None, :]  # (N, 1, 28)
    x = padded[y[:, None, None], rows, cols]  # (N, 28, 28): a 28x28 window of the padded template
    x = x + 0.3 * cfg.noise * torch.randn(n, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return _split(cfg, x.clamp(0, 1).unsqueeze(1), y)  # (N, 1, 28, 28)


# --------------------------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------------------------

IDX_IMAGES = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
IDX_LABELS = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)


class _open_maybe_gzip:
    """The file opened for reading, through gzip when it is gzip (its magic bytes, not its name)."""

    def __init__(self, path: Path, kind: str):
        self.path, self.where = path, f"{kind} file {str(path)!r}"

    def __enter__(self):
        try:
            self.raw = open(self.path, "rb")
        except FileNotFoundError:
            raise DataError(f"{self.where} does not exist") from None
        except OSError as exc:
            raise DataError(f"{self.where}: cannot read ({_first_line(exc)})") from None
        self.gzipped = self.raw.read(2) == b"\x1f\x8b"
        self.raw.seek(0)
        if not self.gzipped and self.path.name.endswith(".gz"):
            self.raw.close()
            raise DataError(f"{self.where}: named .gz but not gzip-compressed")
        return gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzipped else self.raw

    def __exit__(self, *exc_info):
        self.raw.close()
        return False


def _guarded_read(file, path: Path, kind: str, size: int) -> bytes:
    """file.read(size), a gzip stream's errors as DataErrors. Reading past a gzip member's end
    checks its CRC: a truncated stream (EOFError) or a bad CRC is found here rather than passing
    as a shorter dataset."""
    where = f"{kind} file {str(path)!r}"
    try:
        return file.read(size)
    except EOFError:
        raise DataError(f"{where}: truncated gzip data (the compressed stream ends early)") from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"{where}: corrupt gzip data ({_first_line(exc)})") from None


def read_idx(path: str | Path, magic: int, first: int | None = None) -> tuple[tuple[int, ...], np.ndarray]:
    """The dims and the uint8 payload (flat, read-only) of an IDX file, gzipped or not: all of it,
    or only its `first` examples (the first dimension) where `first` is given.

    Checks the magic number and that what is to be read fits in memory before reading it (a few MB
    of gzip can decompress to gigabytes). Read whole, the file must hold exactly the payload its
    header declares: it is decompressed as it is read, never more than one byte past that. Read in
    part, a plain file is read no further than those examples (its size is still checked against
    the header, which costs nothing), and a gzip stream is decompressed no further either: what
    lies after them (and the CRC at its end) is never looked at, however large it says it is.
    """
    with _open_maybe_gzip(Path(path), "mnist") as file:
        dims = _idx_header(file, Path(path), magic)
        return dims, _idx_payload(file, Path(path), dims, first)


def _idx_header(file, path: Path, magic: int) -> tuple[int, ...]:
    """The dims an IDX file's header declares, after its magic number is checked."""
    where = f"mnist file {str(path)!r}"
    ndim = magic & 0xFF  # the IDX magic's last byte is the number of dimensions
    header = 4 + 4 * ndim
    head = _guarded_read(file, path, "mnist", header)
    if len(head) < header:
        raise DataError(f"{where}: only {len(head)} bytes, too short for an IDX header ({header} bytes)")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        what = {IDX_IMAGES: "an image", IDX_LABELS: "a label"}
        hint = f"; it looks like {what[found]} file" if found in what else ""
        raise DataError(f"{where}: bad magic number {found} (0x{found:08x}), expected {magic} for {what[magic]} file{hint}")
    return struct.unpack(f">{ndim}I", head[4:header])


def _idx_payload(file, path: Path, dims: tuple[int, ...], first: int | None) -> np.ndarray:
    """The payload of an open IDX file past its header: all of it (first None, or every example),
    or its first `first` examples (see read_idx)."""
    where = f"mnist file {str(path)!r}"
    need = math.prod(dims)
    whole = first is None or first >= dims[0]
    size = need if whole else first * math.prod(dims[1:])
    _check_payload_fits(where, dims, need, None if whole else (first, size))
    if not isinstance(file, gzip.GzipFile):  # a plain file: its size says whether it holds the payload
        have = os.fstat(file.fileno()).st_size - file.tell()
        if have != need:
            problem = "truncated" if have < need else "has trailing bytes"
            raise DataError(f"{where}: {problem}: header says {'x'.join(map(str, dims))} = {need} payload bytes, found {have}")
    data = _guarded_read(file, path, "mnist", size + 1 if whole else size)
    have = len(data)
    if not whole:
        if have < size:  # (a gzip stream that ends before the examples used)
            raise DataError(f"{where}: truncated: header says {'x'.join(map(str, dims))}, but the payload ends after {have} bytes, before the first {first} examples ({size} bytes)")
        return np.frombuffer(data, dtype=np.uint8)
    if have > need:  # count what trails, a chunk at a time (never all of a gzip bomb at once)
        while True:
            chunk = _guarded_read(file, path, "mnist", 1 << 20)
            if not chunk or have > 2 * need + (1 << 20):
                break
            have += len(chunk)
    if have != need:
        problem = "truncated" if have < need else "has trailing bytes"
        raise DataError(f"{where}: {problem}: header says {'x'.join(map(str, dims))} = {need} payload bytes, found {have}")
    return np.frombuffer(data, dtype=np.uint8)


def _check_payload_fits(where: str, dims: tuple[int, ...], need: int, part: tuple[int, int] | None = None) -> None:
    """What is to be read, `need` bytes or `part` = (examples, bytes) of them, fits in memory."""
    free = available_bytes("cpu")
    size = need if part is None else part[1]
    if free is not None and size * 5 > free:  # the bytes, and the float32 copy of what is used
        declared = f"its header declares {'x'.join(map(str, dims))} = {human(need)} of data"
        if part is not None:
            declared = f"its header declares {'x'.join(map(str, dims))}; the first {part[0]} examples used are {human(size)}"
        raise DataError(f"{where}: {declared}, more than fits in the {human(free)} of memory available")


def _find_mnist_file(folder: Path, prefix: str, kind: str) -> Path:
    """`{prefix}-{kind}-idx{n}-ubyte` or the `{prefix}-{kind}.idx{n}-ubyte` spelling, plain or .gz."""
    n = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{n}-ubyte", f"{prefix}-{kind}.idx{n}-ubyte"]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):  # plain first: no decompression
            if candidate.is_file():
                return candidate
    raise DataError(f"mnist folder {str(folder)!r}: no {prefix}-{kind} file (looked for {names[0]}[.gz] and {names[1]}[.gz])")


def _mnist_split(folder: Path, prefix: str, n: int, key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n images (n, 1, H, W) float32 in [0, 1] and labels (n,) int64 of one split."""
    images_path = _find_mnist_file(folder, prefix, "images")
    labels_path = _find_mnist_file(folder, prefix, "labels")
    # both headers first: the counts are checked before any payload is read, and then only the
    # first n examples of each file are (read_idx)
    with _open_maybe_gzip(images_path, "mnist") as images, _open_maybe_gzip(labels_path, "mnist") as label_file:
        count, rows, cols = _idx_header(images, images_path, IDX_IMAGES)
        (label_count,) = _idx_header(label_file, labels_path, IDX_LABELS)
        if rows == 0 or cols == 0:
            raise DataError(f"mnist file {str(images_path)!r}: images are {rows}x{cols} pixels")
        if count != label_count:
            raise DataError(f"mnist files {str(images_path)!r} and {str(labels_path)!r}: {count} images but {label_count} labels")
        if n > count:
            raise DataError(f"data.{key}: {n} is more than the {count} examples in mnist file {str(images_path)!r}")
        pixels = _idx_payload(images, images_path, (count, rows, cols), n)
        labels = _idx_payload(label_file, labels_path, (label_count,), n)
    x = pixels[: n * rows * cols].reshape(n, 1, rows, cols).astype(np.float32) / np.float32(255)
    y = _check_labels(labels[:n], classes, f"mnist file {str(labels_path)!r}", "labels")
    return x, y


def _mnist(cfg: DataConfig, seed: int) -> Dataset:
    """The first n_train / n_test examples of the MNIST IDX files in the folder `path`; pixels / 255."""
    if cfg.classes != 10:
        raise DataError(f"data.classes: mnist has 10 classes, got {cfg.classes}")
    folder = Path(cfg.path).expanduser()
    x_train, y_train = _mnist_split(folder, "train", cfg.n_train, "n_train", cfg.classes)
    x_test, y_test = _mnist_split(folder, "t10k", cfg.n_test, "n_test", cfg.classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"mnist folder {str(folder)!r}: training images are {x_train.shape[2]}x{x_train.shape[3]}, test images {x_test.shape[2]}x{x_test.shape[3]}")
    return Dataset(
        torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test),
        tuple(x_train.shape[1:]), cfg.classes,
    )


# --------------------------------------------------------------------------------------------
# .npz and .csv
# --------------------------------------------------------------------------------------------

def _as_examples(x: np.ndarray, where: str, name: str) -> np.ndarray:
    """x as (N, D) vectors or (N, C, H, W) images; (N, H, W) gets a channel axis."""
    if x.ndim == 3:
        return x[:, None]  # (N, 1, H, W)
    if x.ndim not in (2, 4):
        raise DataError(f"{where}: {name} has shape {x.shape}; expected (N, features), (N, H, W) or (N, C, H, W)")
    return x


def _npy_header(file) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(file)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _npy_declared(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an .npy member, from its header alone."""
    with archive.open(member) as file:
        shape, fortran, dtype = _npy_header(file)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    return shape, fortran, dtype


def _check_rows_fit(where: str, key: str, shape: tuple[int, ...], dtype: np.dtype, rows: int) -> None:
    """DataError when the rows that would be read (and their float32 copy) exceed free memory."""
    per_row = math.prod(shape[1:])
    need = rows * per_row * (dtype.itemsize + 4)
    free = available_bytes("cpu")
    if free is not None and need > free:
        raise DataError(f"{where}: {key} declares shape {shape} of {dtype}; its first {rows} rows need {human(need)} of memory but {human(free)} is available; lower data.n_train/n_test or use smaller examples")


def _npy_first_rows(archive: zipfile.ZipFile, member: str, rows: int) -> np.ndarray:
    """The first `rows` rows of an .npy member (all of them when it has fewer), read from its
    stream without reading the rest; a Fortran-ordered array is read whole (its rows are not
    contiguous)."""
    with archive.open(member) as file:
        shape, fortran, dtype = _npy_header(file)
        if not shape or fortran:
            count = math.prod(shape)
            data = file.read(count * dtype.itemsize)
            if len(data) < count * dtype.itemsize:
                raise EOFError("the array's data ends early")
            return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order="F" if fortran else "C")
        take = min(rows, shape[0])
        count = take * math.prod(shape[1:])
        data = file.read(count * dtype.itemsize)
        if len(data) < count * dtype.itemsize:
            raise EOFError("the array's data ends early")
        return np.frombuffer(bytearray(data), dtype=dtype).reshape((take, *shape[1:]))


def _npz(cfg: DataConfig, seed: int) -> Dataset:
    """x_train, y_train, x_test, y_test from a .npz (first n_train / n_test rows of each), or x and y
    split into the first n_train rows and the next n_test. Features are converted to float32 as they
    are (no rescaling)."""
    path = Path(cfg.path).expanduser()
    where = f"npz file {str(path)!r}"
    try:
        with open(path, "rb") as handle:
            start = handle.read(6)
        # np.load guesses the format from the first bytes and calls anything it does not know
        # "pickled data"; saying what the file is not is clearer.
        if not start:
            raise DataError(f"{where}: is empty")
        if start == b"\x93NUMPY":
            raise DataError(f"{where}: is a single .npy array, not an .npz archive of named arrays")
        if not start.startswith(b"PK"):
            raise DataError(f"{where}: not an .npz archive (no zip signature at the start of the file)")
        with zipfile.ZipFile(path) as archive:
            members = {(name[:-4] if name.endswith(".npy") else name): name for name in archive.namelist()}
            keys = list(members)
            if set(NPZ_SPLIT_KEYS) <= set(keys):
                wanted = {"x_train": cfg.n_train, "y_train": cfg.n_train, "x_test": cfg.n_test, "y_test": cfg.n_test}
            elif {"x", "y"} <= set(keys):
                wanted = {"x": cfg.n_train + cfg.n_test, "y": cfg.n_train + cfg.n_test}
            else:
                raise DataError(
                    f"{where}: missing keys; expected {', '.join(NPZ_SPLIT_KEYS)} (or x, y), found {', '.join(keys) or 'no arrays'}"
                )
            for key in wanted:
                if not members[key].endswith(".npy"):  # np.load would hand such a member back as bytes
                    raise DataError(f"{where}: {key} is not a NumPy array")
            # the declared shapes first: the first n rows alone are read, and only once they fit
            # (a small file may declare an array of gigabytes: compressed zeros)
            declared = {key: _npy_declared(archive, members[key]) for key in wanted}
            for x_key, y_key in (("x", "y"), ("x_train", "y_train"), ("x_test", "y_test")):
                if x_key in declared and declared[x_key][0] and declared[y_key][0] and declared[x_key][0][0] != declared[y_key][0][0]:
                    raise DataError(f"{where}: {x_key} has {declared[x_key][0][0]} rows but {y_key} has {declared[y_key][0][0]}")
            for key, (shape, _, dtype) in declared.items():
                if key.startswith("x") and shape and len(shape) not in (2, 3, 4):
                    raise DataError(f"{where}: {key} has shape {shape}; expected (N, features), (N, H, W) or (N, C, H, W)")
                if shape:
                    _check_rows_fit(where, key, shape, dtype, min(wanted[key], shape[0]))
            arrays = {key: _npy_first_rows(archive, members[key], wanted[key]) for key in wanted}
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except (*_READ_ERRORS, RuntimeError) as exc:  # RuntimeError: encrypted or unsupported zip members
        # np.load: a file that is neither .npy nor .npz (ValueError), a damaged archive
        # (BadZipFile, EOFError, ValueError), an object array that would need pickle (ValueError).
        raise DataError(f"{where}: cannot read ({_first_line(exc)})") from None

    def rows(array: np.ndarray, name: str) -> int:
        if array.ndim == 0:
            raise DataError(f"{where}: {name} is a scalar, not an array of examples")
        return len(array)

    if "x" in arrays:
        x, y = _as_examples(arrays["x"], where, "x"), arrays["y"]
        if rows(x, "x") != rows(y, "y"):
            raise DataError(f"{where}: x has {len(x)} rows but y has {len(y)}")
        n_train, n_test = cfg.n_train, cfg.n_test
        if n_train + n_test > len(x):
            raise DataError(f"data.n_train + data.n_test: {n_train} + {n_test} = {n_train + n_test} is more than the {len(x)} rows of x in {where}")
        split = (x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test])
        return _dataset_from_arrays(
            cfg, *split, where, names=("x", "y", "x", "y"),
            locate=lambda part, i, label: f"{'y' if label else 'x'}[{i + part * n_train}]",  # row in the file's arrays
        )

    parts = []
    for split, n, key in (("train", cfg.n_train, "n_train"), ("test", cfg.n_test, "n_test")):
        x = _as_examples(arrays[f"x_{split}"], where, f"x_{split}")
        y = arrays[f"y_{split}"]
        if rows(x, f"x_{split}") != rows(y, f"y_{split}"):
            raise DataError(f"{where}: x_{split} has {len(x)} rows but y_{split} has {len(y)}")
        if n > len(x):
            raise DataError(f"data.{key}: {n} is more than the {len(x)} rows of x_{split} in {where}")
        parts += [x[:n], y[:n]]
    if parts[0].shape[1:] != parts[2].shape[1:]:
        raise DataError(f"{where}: x_train examples have shape {parts[0].shape[1:]} but x_test examples {parts[2].shape[1:]}")
    return _dataset_from_arrays(cfg, parts[0], parts[1], parts[2], parts[3], where)


def _csv(cfg: DataConfig, seed: int) -> Dataset:
    """A CSV with a header row: column `target` holds integer labels, every other column is a numeric
    feature (in header order). The first n_train data rows are train, the next n_test test; blank
    lines are skipped and later rows ignored."""
    path = Path(cfg.path).expanduser()
    where = f"csv file {str(path)!r}"
    need = cfg.n_train + cfg.n_test
    rows: list[list[str]] = []
    lines: list[int] = []  # file line of each kept row, for messages
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{where}: is empty; expected a header row")
            header = [name.strip() for name in header]
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{where}: line {reader.line_num} has {len(row)} cells but the header has {len(header)}")
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) == need:
                    break
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: is not UTF-8 text") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{where}: cannot read ({_first_line(exc)})") from None

    if cfg.target not in header:
        raise DataError(f"{where}: no column {cfg.target!r} (data.target); columns: {', '.join(header)}")
    if header.count(cfg.target) > 1:
        raise DataError(f"{where}: column {cfg.target!r} (data.target) appears {header.count(cfg.target)} times")
    if len(header) < 2:
        raise DataError(f"{where}: has no feature columns besides {cfg.target!r}")
    if len(rows) < need:
        raise DataError(f"data.n_train + data.n_test: {cfg.n_train} + {cfg.n_test} = {need} is more than the {len(rows)} data rows in {where}")

    try:
        table = np.array(rows, dtype=np.float64)  # (need, columns); fast path
    except ValueError:
        table = None
    if table is None:
        # Find the first cell that is not a number, to say where it is.
        for row, line in zip(rows, lines):
            for name, cell in zip(header, row):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(f"{where}: line {line}, column {name!r}: {cell!r} is not a number") from None
        raise DataError(f"{where}: some cells are not numbers")  # not reached: numpy and float() agree
    target = header.index(cfg.target)
    y = table[:, target]  # (need,)
    x = np.delete(table, target, axis=1)  # (need, features)
    n = cfg.n_train
    return _dataset_from_arrays(
        cfg, x[:n], y[:n], x[n:], y[n:], where,
        names=("features", f"column {cfg.target!r}", "features", f"column {cfg.target!r}"),
        locate=lambda split, i, label: f"line {lines[i + split * n]}" + (f", column {cfg.target!r}" if label else ""),
    )


# --------------------------------------------------------------------------------------------
# Sequence datasets (recurrent models): x is (N, T, features), T = data.seq_len
# --------------------------------------------------------------------------------------------

ADDING_BASELINE_MSE = 1 / 6  # always predicting 1: Var(U + U') = 2 * 1/12 for two U[0, 1] values


def _adding(cfg: DataConfig, seed: int) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): two channels per step, a
    value U[0, 1] and a marker that is 1 at exactly two steps, one in each half of the sequence
    (first half [0, T//2), second [T//2, T)); the target is the sum of the two marked values, y float32
    (N,), one output. Always predicting 1 has an MSE of 1/6: a model that does not beat it has not
    learned to find the marked values."""
    steps = seq_len(cfg)
    if steps < 2:
        raise DataError(f"data.seq_len: the adding problem needs at least 2 steps, got {steps}")
    g = _generator(seed, "adding")
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


def _copy(cfg: DataConfig, seed: int) -> Dataset:
    """The copy (memory) task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): T steps of one-hot
    inputs over 10 classes (0 blank, 1-8 symbols, 9 delimiter): 10 random symbols, blanks, the delimiter
    at step T-11, then 10 blanks; the target per step is blank (0) except for the last 10 steps, which
    repeat the 10 symbols: y int64 (N, T), a label per step (readout: every). Predicting blanks and then
    uniform guesses scores a cross-entropy of 10 ln(8) / T: the memoryless baseline."""
    steps = seq_len(cfg)
    if steps < 2 * COPY_LENGTH + 1:
        raise DataError(f"data.seq_len: the copy task needs at least {2 * COPY_LENGTH + 1} steps (10 symbols, the delimiter, 10 to recall), got {steps}")
    g = _generator(seed, "copy")
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


def _sequential_mnist(cfg: DataConfig, seed: int) -> Dataset:
    """MNIST read as a sequence (Le et al. 2015): row by row (seq_len 28: 28 steps of 28 pixels) or
    pixel by pixel (seq_len 784: 784 steps of one pixel), in row-major order, or, with `permute`, in a
    fixed order drawn once from the seed (the same for training and test)."""
    steps = seq_len(cfg)
    if steps not in (MNIST_SIDE, MNIST_SIDE * MNIST_SIDE):
        raise DataError(f"data.seq_len: sequential_mnist reads rows (28) or pixels (784), got {steps}")
    images = _mnist(cfg, seed)
    if images.input_shape != (1, MNIST_SIDE, MNIST_SIDE):
        raise DataError(f"data.path: sequential_mnist needs 28x28 images, got {'x'.join(map(str, images.input_shape[1:]))}")
    pixels = MNIST_SIDE * MNIST_SIDE
    order = torch.randperm(pixels, generator=_generator(seed, "sequential_mnist/permutation")) if getattr(cfg, "permute", False) else None

    def as_sequence(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), pixels)  # (N, 784), row-major
        if order is not None:
            flat = flat[:, order]
        return flat.reshape(len(x), steps, pixels // steps).contiguous()  # (N, T, features)

    return Dataset(as_sequence(images.x_train), images.y_train, as_sequence(images.x_test), images.y_test, (steps, pixels // steps), 10)


# Exactly the names of `gradlab.vocab.datasets.DATASETS` (checked by the tests).
LOADERS: dict[str, Callable[[DataConfig, int], Dataset]] = {
    "gaussian": _gaussian,
    "teacher": _teacher,
    "spirals": _spirals,
    "images": _images,
    "mnist": _mnist,
    "npz": _npz,
    "csv": _csv,
    "adding": _adding,
    "copy": _copy,
    "sequential_mnist": _sequential_mnist,
}
SEQUENCE_LOADERS = {name: LOADERS[name] for name in SEQUENCE_DATASETS}
