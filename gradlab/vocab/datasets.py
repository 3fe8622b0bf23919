"""Every dataset gradlab knows, declared once: its name and what it is, the family it belongs to
(synthetic vectors, images, files, sequences), the input shape its config section alone gives, and
the facts of its generation that the config checks, theory and the memory estimate read.

The loaders that make the tensors are build/data.py; the config's checks of a data section are
config/experiment.py; theory's input moments of the synthetic vectors are theory/predict.py. A new
dataset is declared here and loaded there. No torch, no numpy.
"""

from __future__ import annotations

from typing import Any

# What each dataset is (`gradlab components` lists them; vocab/specs.py registers the names).
DATASETS: dict[str, str] = {
    "gaussian": "synthetic: one Gaussian cluster per class in `dim` dimensions (spread `noise`)",
    "teacher": "synthetic: N(0, 1) inputs labelled by a fixed random teacher network",
    "spirals": "synthetic: `classes` interleaved spiral arms in 2-D, embedded in `dim` dimensions",
    "images": "synthetic 1x28x28 images: a class template shifted and noised (no download; for CNNs)",
    "mnist": "the four MNIST IDX files (gzipped or not) in the folder `path`; pixels in [0, 1]",
    "npz": "a NumPy .npz at `path` with x_train, y_train, x_test, y_test (or x, y, split by n_train/n_test)",
    "csv": "a CSV at `path` with a header; the `target` column holds labels, the rest are features",
    "adding": "sequences: the adding problem, two channels (values, two markers), target the sum of the marked values (mse; T = seq_len)",
    "copy": "sequences: the copy task, 10 symbols to recall after a gap, a label per step (readout every; T = seq_len)",
    "sequential_mnist": "sequences: the MNIST IDX files in `path` read row by row (seq_len 28) or pixel by pixel (784), `permute` for a fixed permutation",
}

# The families.
SYNTHETIC_VECTORS = ("gaussian", "teacher", "spirals")  # vectors of data.dim features, drawn from the seed
FILE_DATASETS = ("mnist", "npz", "csv", "sequential_mnist")  # read from data.path
IMAGE_DATASETS = ("images", "mnist", "npz")  # (C, H, W) inputs: what model.kind cnn needs
# Sequence datasets (x of shape (T, features)) for the recurrent kinds, with what each needs.
SEQUENCE_DATASETS = ("adding", "copy", "sequential_mnist")
SEQUENCE_READOUT = {"adding": "last", "copy": "every", "sequential_mnist": "last"}
SEQUENCE_LOSSES = {"adding": ("mse",), "copy": ("cross_entropy",), "sequential_mnist": ("cross_entropy", "bce", "mse")}

# Facts of their generation.
IMAGE_SIZE = 28  # the synthetic images are 1 x IMAGE_SIZE x IMAGE_SIZE
MNIST_SIDE = 28  # MNIST's images are 28 x 28
SPIRAL_JITTER = 0.1  # the spirals' jitter std at noise 1.0, in units of the outer radius
COPY_LENGTH = 10  # symbols the copy task asks to remember (Arjovsky et al. 2016)
COPY_SYMBOLS = 8  # its alphabet; class 0 is the blank, 9 (input only) the delimiter
# Outputs fixed by the task: the adding problem's sum; the copy task's blank or a symbol per step
# (sequential_mnist: 10, as mnist).
SEQUENCE_CLASSES = {"adding": 1, "copy": COPY_SYMBOLS + 1}
SEQUENCE_DEFAULT_LENGTHS = {"adding": 50, "copy": 30, "sequential_mnist": MNIST_SIDE}
MIN_SEQ_LEN = {"adding": 2, "copy": 2 * COPY_LENGTH + 1}  # copy: 10 symbols, the delimiter, 10 steps to recall them
MNIST_SEQ_LENS = (MNIST_SIDE, MNIST_SIDE * MNIST_SIDE)  # rows of 28 pixels, or pixels one by one


def seq_len(data: Any) -> int:
    """T of a sequence dataset: data.seq_len, or the dataset's default."""
    return getattr(data, "seq_len", None) or SEQUENCE_DEFAULT_LENGTHS[data.name]


def known_input_shape(data: Any) -> tuple[int, ...] | None:
    """The input shape when the data section alone determines it: (dim,) for the synthetic
    vectors, (1, 28, 28) for images and MNIST, (T, features) for the sequences; None for npz and
    csv, whose shape is known once the file is read."""
    if data.name in SYNTHETIC_VECTORS:
        return (data.dim,)
    if data.name == "images":
        return (1, IMAGE_SIZE, IMAGE_SIZE)
    if data.name == "mnist":
        return (1, MNIST_SIDE, MNIST_SIDE)
    if data.name in SEQUENCE_DATASETS:
        steps = seq_len(data)
        features = {"adding": 2, "copy": COPY_SYMBOLS + 2}.get(data.name) or MNIST_SIDE * MNIST_SIDE // steps
        return steps, features
    return None
