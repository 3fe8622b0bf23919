"""Tests for the datasets (gradlab.build.data and its loaders): synthetic sets, the minibatch iterator, the file loaders and the sequences."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gradlab.vocab import specs
from gradlab.config.experiment import DataConfig
from gradlab.build.data import LOADERS, Batches, Dataset, load_dataset
from gradlab.vocab.errors import DataError
from data_files import idx_bytes

SYNTHETIC = ["gaussian", "teacher", "spirals", "images"]


def make_cfg(**values) -> DataConfig:
    values.setdefault("batch_size", min(values.get("n_train", 4096), 16))
    return DataConfig(**values)


def assert_valid(ds: Dataset, n_train: int, n_test: int, input_shape: tuple[int, ...], classes: int) -> None:
    assert ds.input_shape == input_shape
    assert ds.classes == classes
    assert ds.x_train.shape == (n_train, *input_shape) and ds.x_test.shape == (n_test, *input_shape)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    for y in (ds.y_train, ds.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < classes
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()


def one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_loaders_cover_exactly_the_registered_datasets():
    assert set(LOADERS) == set(specs.datasets.names())


# --------------------------------------------------------------------------------------------
# Synthetic datasets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_shapes_dtypes_and_labels(name):
    ds = load_dataset(make_cfg(name=name, dim=12, classes=5, n_train=300, n_test=100), seed=0)
    shape = (1, 28, 28) if name == "images" else (12,)
    assert_valid(ds, 300, 100, shape, 5)
    # Every class shows up: labels are drawn over all classes, not a constant.
    assert set(ds.y_train.tolist()) == set(range(5))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_is_deterministic_per_seed(name):
    cfg = make_cfg(name=name, dim=8, classes=4, n_train=64, n_test=32)
    a, b, c = load_dataset(cfg, 3), load_dataset(cfg, 3), load_dataset(cfg, 4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_does_not_touch_the_global_rng(name):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_dataset(make_cfg(name=name, dim=4, classes=3, n_train=20, n_test=10), 0)
    assert torch.equal(torch.rand(3), expected)


def test_synthetic_data_is_not_the_models_random_stream():
    # The model is initialised from torch.manual_seed(seed); the data must not replay that stream.
    ds = load_dataset(make_cfg(name="teacher", dim=8, classes=3, n_train=16, n_test=4), seed=0)
    torch.manual_seed(0)
    assert not torch.allclose(ds.x_train[0], torch.randn(8))


def nearest_mean_accuracy(ds: Dataset) -> float:
    x_train, x_test = ds.x_train.flatten(1), ds.x_test.flatten(1)
    means = torch.stack([x_train[ds.y_train == k].mean(0) for k in range(ds.classes)])
    return float((torch.cdist(x_test, means).argmin(1) == ds.y_test).float().mean())


def nearest_neighbour_accuracy(ds: Dataset) -> float:
    nearest = torch.cdist(ds.x_test.flatten(1), ds.x_train.flatten(1)).argmin(1)
    return float((ds.y_train[nearest] == ds.y_test).float().mean())


def test_gaussian_train_and_test_share_the_class_means():
    ds = load_dataset(make_cfg(name="gaussian", dim=16, classes=4, n_train=400, n_test=200), 0)
    assert nearest_mean_accuracy(ds) > 0.9
    # noise is the spread around the means
    tight = load_dataset(make_cfg(name="gaussian", dim=16, classes=4, n_train=400, n_test=200, noise=0.0), 0)
    assert len(torch.unique(tight.x_train, dim=0)) == 4


def test_teacher_labels_are_a_function_of_the_inputs():
    cfg = make_cfg(name="teacher", dim=10, classes=4, n_train=2000, n_test=500, noise=0.0)
    ds = load_dataset(cfg, 0)
    counts = torch.bincount(ds.y_train, minlength=4)
    assert int(counts.min()) > 0.05 * 2000  # roughly balanced
    assert nearest_neighbour_accuracy(ds) > 0.5  # far above chance (0.25): labels follow x
    # noise perturbs the teacher's logits: same inputs, a few labels near the boundaries change.
    noisy = load_dataset(cfg.model_copy(update={"noise": 1.0}), 0)
    assert torch.equal(noisy.x_train, ds.x_train)
    changed = float((noisy.y_train != ds.y_train).float().mean())
    assert 0 < changed < 0.2


def test_spirals_are_learnable_and_embedded_isometrically():
    flat = load_dataset(make_cfg(name="spirals", dim=2, classes=3, n_train=600, n_test=200), 0)
    assert nearest_neighbour_accuracy(flat) > 0.8
    assert float(flat.x_train.norm(dim=1).max()) < 1.6  # unit disc plus jitter
    embedded = load_dataset(make_cfg(name="spirals", dim=7, classes=3, n_train=600, n_test=200), 0)
    assert embedded.input_shape == (7,)
    assert torch.equal(embedded.y_train, flat.y_train)
    # Same 2-D points for the seed, mapped by orthonormal columns: all distances are unchanged.
    exact = "donot_use_mm_for_euclid_dist"  # the mm shortcut loses digits near zero distance
    torch.testing.assert_close(
        torch.cdist(embedded.x_train, embedded.x_train, compute_mode=exact), torch.cdist(flat.x_train, flat.x_train, compute_mode=exact), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(embedded.x_train.norm(dim=1), flat.x_train.norm(dim=1), atol=1e-5, rtol=0)


def test_spirals_need_two_dimensions():
    with pytest.raises(DataError) as excinfo:
        load_dataset(make_cfg(name="spirals", dim=1, classes=3), 0)
    one_line_error(excinfo, "data.dim: spirals needs dim >= 2")


def test_images_are_shifted_noisy_templates_in_unit_range():
    ds = load_dataset(make_cfg(name="images", classes=10, n_train=500, n_test=200), 0)
    assert float(ds.x_train.min()) >= 0 and float(ds.x_train.max()) <= 1
    assert nearest_mean_accuracy(ds) > 0.9
    clean = load_dataset(make_cfg(name="images", classes=10, n_train=500, n_test=200, noise=0.0), 0)
    # Without noise, an example is its template shifted: a few distinct images per class, not one.
    per_class = len(torch.unique(clean.x_train[clean.y_train == 0], dim=0))
    assert 1 < per_class <= 25


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def test_batches_are_full_and_cover_each_example_once_per_epoch():
    x = torch.arange(12, dtype=torch.float32)[:, None] * torch.ones(1, 3)  # (12, 3), row i is i
    y = torch.arange(12)
    batches = Batches(x, y, batch_size=4, seed=0)
    epochs = []
    for _ in range(3):
        seen = []
        for _ in range(3):
            xb, yb = next(batches)
            assert xb.shape == (4, 3) and yb.shape == (4,)
            assert torch.equal(xb[:, 0].long(), yb)  # rows stay paired with their labels
            seen += yb.tolist()
        assert sorted(seen) == list(range(12))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_batches_drop_the_last_partial_batch():
    batches = Batches(torch.zeros(10, 2), torch.arange(10), batch_size=3, seed=1)
    for _ in range(3):
        seen = [i for _ in range(3) for i in next(batches)[1].tolist()]  # one epoch: 3 full batches
        assert len(set(seen)) == 9
    assert all(len(next(batches)[0]) == 3 for _ in range(20))


def test_batches_are_deterministic_per_seed():
    x, y = torch.randn(50, 2), torch.arange(50)

    def stream(seed):
        batches = Batches(x, y, batch_size=8, seed=seed)
        return [next(batches)[1].tolist() for _ in range(20)]

    assert stream(5) == stream(5)
    assert stream(5) != stream(6)
    assert iter(Batches(x, y, 8, 0)) is not None


def test_batches_reject_a_batch_larger_than_the_data():
    with pytest.raises(DataError, match="data.batch_size"):
        Batches(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), batch_size=5, seed=0)


# --------------------------------------------------------------------------------------------
# MNIST: the real files
# --------------------------------------------------------------------------------------------


def real_mnist_dir() -> Path:
    folder = Path(os.environ.get("GRADLAB_MNIST_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    needed = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"real MNIST files not found in {folder} (missing {', '.join(missing)}); set GRADLAB_MNIST_DIR")
    return folder


def test_real_mnist_first_labels_and_mean_pixel():
    folder = real_mnist_dir()
    ds = load_dataset(make_cfg(name="mnist", path=str(folder), n_train=60000, n_test=10000, batch_size=128), 0)
    assert_valid(ds, 60000, 10000, (1, 28, 28), 10)
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(ds.x_train.double().mean()) * 255 == pytest.approx(33.32, abs=0.01)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_takes_the_first_examples_and_checks_counts():
    folder = real_mnist_dir()
    small = load_dataset(make_cfg(name="mnist", path=str(folder), n_train=100, n_test=10), 0)
    assert_valid(small, 100, 10, (1, 28, 28), 10)
    assert small.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    with pytest.raises(DataError) as excinfo:
        load_dataset(make_cfg(name="mnist", path=str(folder), n_train=100, n_test=10001), 0)
    one_line_error(excinfo, "data.n_test", "10000", "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as excinfo:
        load_dataset(make_cfg(name="mnist", path=str(folder), n_train=100, n_test=10, classes=3), 0)
    one_line_error(excinfo, "data.classes")


def test_real_mnist_gzipped_and_plain_give_identical_tensors(tmp_path):
    folder = real_mnist_dir()
    plain = tmp_path / "plain"
    plain.mkdir()
    for prefix in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (plain / prefix).write_bytes(gzip.decompress((folder / f"{prefix}.gz").read_bytes()))
    # The training split is not under test here: small self-made files stand in for it.
    write_idx_pair(plain, "train", images=np.zeros((5, 28, 28), np.uint8), labels=np.arange(5, dtype=np.uint8))
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for prefix in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(plain / prefix, zipped / prefix)
    for prefix in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(folder / f"{prefix}.gz", zipped / f"{prefix}.gz")
    a = load_dataset(make_cfg(name="mnist", path=str(plain), n_train=5, n_test=10000, batch_size=5), 0)
    b = load_dataset(make_cfg(name="mnist", path=str(zipped), n_train=5, n_test=10000, batch_size=5), 0)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert a.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(a.x_test.double().mean()) * 255 == pytest.approx(33.79, abs=0.01)


# --------------------------------------------------------------------------------------------
# MNIST: IDX files built here
# --------------------------------------------------------------------------------------------


def write_idx_pair(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = False, dotted: bool = False) -> tuple[Path, Path]:
    paths = []
    for kind, n, array in (("images", 3, images), ("labels", 1, labels)):
        name = f"{prefix}-{kind}.idx{n}-ubyte" if dotted else f"{prefix}-{kind}-idx{n}-ubyte"
        data = idx_bytes(array)
        path = folder / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def tiny_mnist(tmp_path):
    """A folder of self-made IDX files: 5 training and 3 test images, 28x28, gzipped."""
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx_pair(tmp_path, "train", train_images, np.array([3, 1, 4, 1, 5], np.uint8), gz=True)
    write_idx_pair(tmp_path, "t10k", test_images, np.array([9, 2, 6], np.uint8), gz=True)
    return tmp_path, train_images, test_images


def mnist_cfg(folder: Path, n_train: int = 5, n_test: int = 3) -> DataConfig:
    return make_cfg(name="mnist", path=str(folder), n_train=n_train, n_test=n_test, batch_size=1)


def test_idx_round_trip(tiny_mnist):
    folder, train_images, test_images = tiny_mnist
    ds = load_dataset(mnist_cfg(folder), 0)
    assert_valid(ds, 5, 3, (1, 28, 28), 10)
    assert ds.y_train.tolist() == [3, 1, 4, 1, 5] and ds.y_test.tolist() == [9, 2, 6]
    np.testing.assert_array_equal(ds.x_train.numpy()[:, 0], train_images.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.x_test.numpy()[:, 0], test_images.astype(np.float32) / 255)
    first = load_dataset(mnist_cfg(folder, n_train=2, n_test=1), 0)
    assert torch.equal(first.x_train, ds.x_train[:2]) and first.y_test.tolist() == [9]


def test_idx_accepts_the_dotted_spelling_uncompressed(tmp_path):
    images = np.full((4, 28, 28), 255, np.uint8)
    write_idx_pair(tmp_path, "train", images, np.array([0, 1, 2, 3], np.uint8), dotted=True)
    write_idx_pair(tmp_path, "t10k", images[:2], np.array([7, 8], np.uint8), dotted=True)
    ds = load_dataset(mnist_cfg(tmp_path, n_train=4, n_test=2), 0)
    assert ds.y_test.tolist() == [7, 8] and float(ds.x_train.min()) == 1.0


def test_idx_bad_magic(tiny_mnist):
    folder = tiny_mnist[0]
    path = folder / "train-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[:4] = struct.pack(">I", 2049)  # a label file's magic in an image file
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "bad magic number 2049", "2051")


def test_idx_truncated_payload(tiny_mnist):
    folder = tiny_mnist[0]
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1]))
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "t10k-labels-idx1-ubyte.gz", "truncated", "3 payload bytes, found 2")


def test_idx_trailing_bytes_and_short_header(tmp_path):
    images, labels = write_idx_pair(tmp_path, "train", np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    write_idx_pair(tmp_path, "t10k", np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    images.write_bytes(images.read_bytes() + b"\0")
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(tmp_path, 2, 2), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte", "trailing bytes")
    images.write_bytes(b"\0\0\x08")
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(tmp_path, 2, 2), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte", "too short")


def test_idx_truncated_and_corrupt_gzip(tiny_mnist):
    folder = tiny_mnist[0]
    path = folder / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "truncated gzip")
    corrupt = bytearray(good)
    corrupt[-8] ^= 0xFF  # the CRC-32 trailer
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "corrupt gzip")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "not gzip")


def test_idx_count_mismatch_labels_and_missing_files(tiny_mnist, tmp_path):
    folder = tiny_mnist[0]
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder, n_train=6), 0)
    one_line_error(excinfo, "data.n_train", "6 is more than the 5", "train-images-idx3-ubyte.gz")

    write_idx_pair(folder, "t10k", np.zeros((3, 28, 28), np.uint8), np.array([1, 10, 2], np.uint8), gz=True)
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "t10k-labels-idx1-ubyte.gz", "10 is outside [0, 10)")

    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "3 images but 4 labels", "t10k-labels-idx1-ubyte.gz")

    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset(mnist_cfg(folder), 0)
    one_line_error(excinfo, "t10k-labels", "t10k-labels-idx1-ubyte[.gz]", str(folder))


def _read_everything_then_slice(path: Path, magic: int, n: int) -> np.ndarray:
    """The payload as a reader that reads every byte would give it, cut to the first n examples."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim :], np.uint8)[: n * int(np.prod(dims[1:]))]


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_only_the_first_examples_with_the_numbers_of_a_whole_read(tmp_path, gz):
    from gradlab.build.data_files import IDX_IMAGES, IDX_LABELS, read_idx

    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (40, 7, 5), dtype=np.uint8), rng.integers(0, 10, 40, dtype=np.uint8)
    images_path, labels_path = write_idx_pair(tmp_path, "train", images, labels, gz=gz)
    write_idx_pair(tmp_path, "t10k", images[:9], labels[:9], gz=gz)
    for n in (1, 13, 39, 40):
        dims, pixels = read_idx(images_path, IDX_IMAGES, first=n)
        assert dims == (40, 7, 5) and len(pixels) == n * 35
        np.testing.assert_array_equal(pixels, _read_everything_then_slice(images_path, IDX_IMAGES, n))
        np.testing.assert_array_equal(read_idx(labels_path, IDX_LABELS, first=n)[1], labels[:n])
        ds = load_dataset(mnist_cfg(tmp_path, n_train=n, n_test=9), 0)
        np.testing.assert_array_equal(ds.x_train.numpy()[:, 0], images[:n].astype(np.float32) / 255)
        assert ds.y_train.tolist() == labels[:n].tolist()
    np.testing.assert_array_equal(read_idx(images_path, IDX_IMAGES)[1], images.reshape(-1))  # whole


def test_real_mnist_first_examples_are_those_of_a_whole_read():
    from gradlab.build.data_files import IDX_IMAGES, IDX_LABELS

    folder = real_mnist_dir()
    ds = load_dataset(make_cfg(name="mnist", path=str(folder), n_train=1000, n_test=100, batch_size=100), 0)
    for prefix, x, y in (("train", ds.x_train, ds.y_train), ("t10k", ds.x_test, ds.y_test)):
        pixels = _read_everything_then_slice(folder / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES, len(x))
        labels = _read_everything_then_slice(folder / f"{prefix}-labels-idx1-ubyte.gz", IDX_LABELS, len(y))
        assert torch.equal(x, torch.from_numpy(pixels.reshape(len(x), 1, 28, 28).astype(np.float32) / np.float32(255)))
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_declaring_gigabytes_reads_only_the_examples_used(tmp_path, gz):
    """A header that declares ten million images (7.8 GB) with 5 used: read at once, and nothing
    near the declared size allocated (a plain file is sparse: it is that size, mostly holes; a gzip
    stream holds the 5 images and then a long run of zeros it never decompresses)."""
    import time
    import tracemalloc
    import zlib

    count, rng = 10_000_000, np.random.default_rng(2)
    images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5], np.uint8)
    header = {"images": struct.pack(">IIII", 2051, count, 28, 28), "labels": struct.pack(">II", 2049, count)}
    payload = {"images": images.tobytes(), "labels": labels.tobytes()}
    for kind, n in (("images", 3), ("labels", 1)):
        path = tmp_path / f"train-{kind}-idx{n}-ubyte{'.gz' if gz else ''}"
        if gz:
            stream = zlib.compressobj(9, zlib.DEFLATED, 31)
            path.write_bytes(stream.compress(header[kind] + payload[kind]) + b"".join(stream.compress(bytes(1 << 20)) for _ in range(64)) + stream.flush())
        else:
            with open(path, "wb") as file:
                file.write(header[kind] + payload[kind])
                file.truncate(len(header[kind]) + count * (784 if kind == "images" else 1))
    write_idx_pair(tmp_path, "t10k", images[:2], labels[:2], gz=gz)
    tracemalloc.start()
    began = time.perf_counter()
    ds = load_dataset(mnist_cfg(tmp_path, n_train=5, n_test=2), 0)
    elapsed = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ds.y_train.tolist() == [3, 1, 4, 1, 5]
    np.testing.assert_array_equal(ds.x_train.numpy()[:, 0], images.astype(np.float32) / 255)
    assert elapsed < 2 and peak < 20_000_000, (elapsed, peak)


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def npz_cfg(path: Path, **values) -> DataConfig:
    values = {"n_train": 6, "n_test": 4, "classes": 3, **values}
    return make_cfg(name="npz", path=str(path), batch_size=2, **values)


def test_npz_split_arrays_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(8, 5)), "y_train": rng.integers(0, 3, 8),
        "x_test": rng.normal(size=(4, 5)), "y_test": rng.integers(0, 3, 4),
    }
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_dataset(npz_cfg(tmp_path / "d.npz"), 0)
    assert_valid(ds, 6, 4, (5,), 3)
    np.testing.assert_array_equal(ds.x_train.numpy(), arrays["x_train"][:6].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["y_test"])


def test_npz_x_y_split_and_image_shapes(tmp_path, monkeypatch):
    x = np.arange(12 * 4 * 4, dtype=np.uint8).reshape(12, 4, 4)  # (N, H, W): a channel is added
    y = np.arange(12) % 3
    np.savez_compressed(tmp_path / "xy.npz", x=x, y=y.astype(np.float64))  # whole-number float labels are fine
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the working directory
    ds = load_dataset(npz_cfg(Path("xy.npz")), 0)
    assert_valid(ds, 6, 4, (1, 4, 4), 3)
    assert torch.equal(ds.x_test[0, 0], torch.from_numpy(x[6].astype(np.float32)))
    assert ds.y_test.tolist() == y[6:10].tolist()
    np.savez(tmp_path / "img.npz", x=np.zeros((10, 3, 2, 2)), y=np.zeros(10, int))
    assert load_dataset(npz_cfg(tmp_path / "img.npz"), 0).input_shape == (3, 2, 2)


@pytest.mark.parametrize(
    "arrays, fragments",
    [
        ({"x_train": np.zeros((6, 2)), "y_train": np.zeros(6, int), "features": np.zeros(3)}, ["missing keys", "found x_train, y_train, features"]),
        ({"x": np.zeros((9, 2)), "y": np.zeros(9, int)}, ["data.n_train + data.n_test", "6 + 4 = 10", "9 rows"]),
        ({"x": np.zeros((12, 2)), "y": np.zeros(11, int)}, ["x has 12 rows but y has 11"]),
        ({"x": np.zeros((12, 2)), "y": np.array([0, 1, 2, 0, 1, -1, 7, 0, 0, 0, 0, 0])}, ["y[5] = -1 is outside [0, 3)"]),
        ({"x": np.zeros((12, 2)), "y": np.array([0] * 8 + [3, 0, 0, 0])}, ["y[8] = 3 is outside [0, 3)"]),  # a test row
        ({"x": np.zeros((12, 2)), "y": np.full(12, 0.5)}, ["0.5 is not an integer label"]),
        ({"x": np.zeros((12, 0)), "y": np.zeros(12, int)}, ["no features"]),
        ({"x": np.zeros((12, 2)), "y": np.zeros(12, "U2")}, ["labels must be integers"]),
        ({"x": np.array([[0.0, 1.0]] * 7 + [[np.nan, 0.0]] + [[0.0, 0.0]] * 4), "y": np.zeros(12, int)}, ["x[7] has NaN or inf"]),
        ({"x": np.zeros((12, 2, 2, 2, 2)), "y": np.zeros(12, int)}, ["x has shape (12, 2, 2, 2, 2)"]),
        (
            {"x_train": np.zeros((6, 2)), "y_train": np.zeros(6, int), "x_test": np.zeros((4, 3)), "y_test": np.zeros(4, int)},
            ["x_train examples have shape (2,) but x_test examples (3,)"],
        ),
        (
            {"x_train": np.zeros((6, 2)), "y_train": np.zeros(6, int), "x_test": np.zeros((3, 2)), "y_test": np.zeros(3, int)},
            ["data.n_test: 4 is more than the 3 rows of x_test"],
        ),
    ],
)
def test_npz_errors(tmp_path, arrays, fragments):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as excinfo:
        load_dataset(npz_cfg(path), 0)
    one_line_error(excinfo, "bad.npz", *fragments)


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "is empty"), (b"PK\x03\x04 garbage", "cannot read"), (b"just text\n", "not an .npz archive")],
)
def test_npz_unreadable_files(tmp_path, content, fragment):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        load_dataset(npz_cfg(path), 0)
    one_line_error(excinfo, "broken.npz", fragment)


def test_npz_truncated_archive_and_plain_npy(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((12, 2)), y=np.zeros(12, int))
    path = tmp_path / "cut.npz"
    path.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataError) as excinfo:
        load_dataset(npz_cfg(path), 0)
    one_line_error(excinfo, "cut.npz")
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(DataError) as excinfo:
        load_dataset(npz_cfg(npy), 0)
    one_line_error(excinfo, "single.npz", "not an .npz archive")


def test_npz_members_that_are_not_arrays(tmp_path):
    path = tmp_path / "zip.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x", b"raw bytes")
        archive.writestr("y", b"raw bytes")
    with pytest.raises(DataError) as excinfo:
        load_dataset(npz_cfg(path), 0)
    one_line_error(excinfo, "zip.npz", "x is not a NumPy array")


def test_npz_object_arrays_are_refused_without_pickle(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([[1, "a"]] * 12, dtype=object), y=np.zeros(12, int))
    with pytest.raises(DataError) as excinfo:
        load_dataset(npz_cfg(path), 0)
    one_line_error(excinfo, "obj.npz", "cannot read")


# --------------------------------------------------------------------------------------------
# .csv
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def csv_cfg(path: Path, **values) -> DataConfig:
    values = {"n_train": 3, "n_test": 2, "classes": 3, **values}
    return make_cfg(name="csv", path=str(path), batch_size=1, **values)


def test_csv_round_trip(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a, label ,b", ["1.5,0,2", "-1,2,3e2", "", "0,1, 4 ", "7,0,8", "9,2,10", "99,9,99"])
    ds = load_dataset(csv_cfg(path), 0)
    assert_valid(ds, 3, 2, (2,), 3)
    assert ds.x_train.tolist() == [[1.5, 2.0], [-1.0, 300.0], [0.0, 4.0]]
    assert ds.y_train.tolist() == [0, 2, 1] and ds.y_test.tolist() == [0, 2]  # rows after n_train + n_test are ignored


def test_csv_other_target_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", "y,f1,f2", ["1,0.1,0.2", "0,0.3,0.4", "2,0.5,0.6", "1,0.7,0.8"])
    ds = load_dataset(csv_cfg(path, target="y", n_train=2), 0)
    assert ds.y_train.tolist() == [1, 0] and ds.y_test.tolist() == [2, 1]
    torch.testing.assert_close(ds.x_test, torch.tensor([[0.5, 0.6], [0.7, 0.8]]))


@pytest.mark.parametrize(
    "header, rows, values, fragments",
    [
        ("a,b", ["1,2"] * 5, {}, ["no column 'label'", "columns: a, b"]),
        ("a,label", ["1,0", "2,1", "x1,2", "4,0", "5,1"], {}, ["line 4", "column 'a'", "'x1' is not a number"]),
        ("a,label", ["1,0", "2,1", "3,2", "4,3", "5,1"], {}, ["line 5, column 'label' = 3 is outside [0, 3)"]),
        ("a,label", ["1,0", "2,1.5", "3,2", "4,0", "5,1"], {}, ["line 3, column 'label' = 1.5 is not an integer label"]),
        ("a,label", ["1,0", "nan,1", "3,2", "4,0", "5,1"], {}, ["line 3 has NaN or inf"]),
        ("a,label", ["1,0", "2,1", "3,2,4", "4,0", "5,1"], {}, ["line 4 has 3 cells but the header has 2"]),
        ("a,label", ["1,0", "2,1", "3,2"], {}, ["data.n_train + data.n_test", "3 + 2 = 5", "3 data rows"]),
        ("label", ["1", "2", "0", "1", "0"], {}, ["no feature columns"]),
        ("a,label,label", ["1,0,0"] * 5, {}, ["'label'", "appears 2 times"]),
    ],
)
def test_csv_errors(tmp_path, header, rows, values, fragments):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError) as excinfo:
        load_dataset(csv_cfg(path, **values), 0)
    one_line_error(excinfo, "bad.csv", *fragments)


def test_csv_unreadable_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        load_dataset(csv_cfg(empty), 0)
    one_line_error(excinfo, "empty.csv", "empty")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"a,label\n\xff\xfe\x00,1\n")
    with pytest.raises(DataError) as excinfo:
        load_dataset(csv_cfg(binary), 0)
    one_line_error(excinfo, "binary.csv", "not UTF-8")
    bom = tmp_path / "bom.csv"
    bom.write_bytes("label,a\n0,1\n1,2\n2,3\n0,4\n1,5\n".encode("utf-8-sig"))
    assert load_dataset(csv_cfg(bom), 0).y_train.tolist() == [0, 1, 2]


def test_file_vanished_after_validation(tmp_path):
    path = write_csv(tmp_path / "gone.csv", "a,label", ["1,0"] * 5)
    cfg = csv_cfg(path)
    path.unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset(cfg, 0)
    one_line_error(excinfo, "gone.csv", "does not exist")
    npz = tmp_path / "gone.npz"
    np.savez(npz, x=np.zeros((12, 2)), y=np.zeros(12, int))
    cfg = npz_cfg(npz)
    npz.unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset(cfg, 0)
    one_line_error(excinfo, "gone.npz", "does not exist")


# --------------------------------------------------------------------------------------------
# Sequence datasets
# --------------------------------------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from gradlab.build.data import SEQUENCE_LOADERS  # noqa: E402
from gradlab.build.data_sequences import ADDING_BASELINE_MSE  # noqa: E402
from gradlab.vocab.datasets import COPY_LENGTH  # noqa: E402


def seq_cfg(name, **values):
    base = dict(name=name, n_train=200, n_test=50, batch_size=16, classes=10, seq_len=None, permute=False, path=None)
    return SimpleNamespace(**{**base, **values})


def test_adding_problem_marks_one_value_in_each_half_and_sums_them():
    ds = SEQUENCE_LOADERS["adding"](seq_cfg("adding", seq_len=12, n_train=3000), 0)
    assert ds.input_shape == (12, 2) and ds.classes == 1
    assert ds.x_train.shape == (3000, 12, 2) and ds.y_train.shape == (3000,) and ds.y_train.dtype == torch.float32
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        markers, values = x[:, :, 1], x[:, :, 0]
        assert ((markers == 0) | (markers == 1)).all()
        assert (markers[:, :6].sum(1) == 1).all() and (markers[:, 6:].sum(1) == 1).all()
        assert ((values >= 0) & (values <= 1)).all()
        torch.testing.assert_close(y, (values * markers).sum(1))
    # what "not learning" scores: predicting 1 gives the variance of the sum, 1/6
    assert ((ds.y_train - 1) ** 2).mean().item() == pytest.approx(ADDING_BASELINE_MSE, abs=0.01)


def test_copy_task_recalls_the_first_symbols_after_the_delimiter():
    ds = SEQUENCE_LOADERS["copy"](seq_cfg("copy", seq_len=30), 0)
    assert ds.input_shape == (30, 10) and ds.classes == 9
    assert ds.y_train.shape == (200, 30) and ds.y_train.dtype == torch.int64
    tokens = ds.x_train.argmax(dim=2)  # (N, T)
    assert (ds.x_train.sum(dim=2) == 1).all()  # one-hot
    assert ((tokens[:, :COPY_LENGTH] >= 1) & (tokens[:, :COPY_LENGTH] <= 8)).all()
    assert (tokens[:, COPY_LENGTH:19] == 0).all() and (tokens[:, 19] == 9).all() and (tokens[:, 20:] == 0).all()
    assert (ds.y_train[:, :20] == 0).all()
    assert torch.equal(ds.y_train[:, 20:], tokens[:, :COPY_LENGTH])


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_sequence_tasks_are_deterministic_per_seed(name):
    a = SEQUENCE_LOADERS[name](seq_cfg(name, seq_len=25), 3)
    b = SEQUENCE_LOADERS[name](seq_cfg(name, seq_len=25), 3)
    c = SEQUENCE_LOADERS[name](seq_cfg(name, seq_len=25), 4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize(
    "name,seq_len,fragment",
    [("adding", 1, "data.seq_len: the adding problem needs at least 2 steps, got 1"),
     ("copy", 20, "data.seq_len: the copy task needs at least 21 steps"),
     ("sequential_mnist", 100, "data.seq_len: sequential_mnist reads rows (28) or pixels (784), got 100")],
)  # fmt: skip
def test_sequence_tasks_refuse_impossible_lengths_in_one_line(name, seq_len, fragment):
    with pytest.raises(DataError) as info:
        SEQUENCE_LOADERS[name](seq_cfg(name, seq_len=seq_len, path="."), 0)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_sequential_mnist_rows_pixels_and_a_fixed_permutation():
    folder = str(real_mnist_dir())
    images = load_dataset(make_cfg(name="mnist", path=folder, n_train=20, n_test=10), 0)
    rows = SEQUENCE_LOADERS["sequential_mnist"](seq_cfg("sequential_mnist", path=folder, n_train=20, n_test=10, seq_len=28), 0)
    assert rows.input_shape == (28, 28) and rows.classes == 10
    torch.testing.assert_close(rows.x_train, images.x_train[:, 0])  # step t is image row t
    assert torch.equal(rows.y_test, images.y_test)
    pixels = SEQUENCE_LOADERS["sequential_mnist"](seq_cfg("sequential_mnist", path=folder, n_train=20, n_test=10, seq_len=784), 0)
    assert pixels.input_shape == (784, 1)
    torch.testing.assert_close(pixels.x_test[:, :, 0], images.x_test.reshape(10, 784))
    permuted = SEQUENCE_LOADERS["sequential_mnist"](
        seq_cfg("sequential_mnist", path=folder, n_train=20, n_test=10, seq_len=784, permute=True), 0
    )
    flat_train, flat_test = images.x_train.reshape(20, 784), images.x_test.reshape(10, 784)
    # one permutation of the 784 positions, the same for every image of both splits: every step's
    # column (over all 30 images) is a column of the row-major images
    original = torch.cat([flat_train, flat_test])  # (30, 784)
    shuffled = torch.cat([permuted.x_train[:, :, 0], permuted.x_test[:, :, 0]])
    matches = (shuffled[:, :, None] == original[:, None, :]).all(dim=0)  # (784 steps, 784 positions)
    assert matches.any(dim=1).all()
    assert not torch.equal(permuted.x_train[:, :, 0], flat_train)
    assert torch.equal(permuted.x_train[:, :, 0].sort(dim=1).values, flat_train.sort(dim=1).values)
    assert torch.equal(permuted.x_test[:, :, 0].sort(dim=1).values, flat_test.sort(dim=1).values)
    again = SEQUENCE_LOADERS["sequential_mnist"](
        seq_cfg("sequential_mnist", path=folder, n_train=20, n_test=10, seq_len=784, permute=True), 0
    )
    assert torch.equal(again.x_test, permuted.x_test)


@pytest.mark.parametrize("name,seq_len", [("adding", None), ("adding", 7), ("copy", 25), ("sequential_mnist", 28), ("sequential_mnist", 784)])
def test_sequence_shape_from_the_config_is_the_loaded_one(name, seq_len):
    from gradlab.vocab.datasets import known_input_shape

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if name == "sequential_mnist" and not folder.is_dir():
        pytest.skip("real MNIST files not found")
    cfg = seq_cfg(name, seq_len=seq_len, path=str(folder), n_train=20, n_test=10)
    assert known_input_shape(cfg) == SEQUENCE_LOADERS[name](cfg, 0).input_shape
