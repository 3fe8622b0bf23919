"""The file datasets: MNIST's IDX files (`mnist`), a NumPy `.npz`, a `.csv`. Read with the standard
library and numpy, only as far as the examples used; every problem with a file is a DataError
whose single line names the file and what is wrong with it; a bad file never shows a traceback."""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gradlab.build.dataset import Dataset
from gradlab.build.system import available_bytes, human
from gradlab.config.experiment import DataConfig
from gradlab.vocab.errors import DataError


NPZ_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


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


def load_mnist(cfg: DataConfig, seed: int) -> Dataset:
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


def load_npz(cfg: DataConfig, seed: int) -> Dataset:
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


def load_csv(cfg: DataConfig, seed: int) -> Dataset:
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


