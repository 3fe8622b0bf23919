"""The synthetic datasets (`gaussian`, `teacher`, `spirals`, `images`), generated on the CPU from
their own torch.Generator: the same config and seed give bit-identical tensors whatever else the
run does with the global RNG. Their fixed structure (class means, teacher weights, spiral
embedding, image templates) is drawn before the examples, so changing n_train or n_test never
changes the task itself, only how many examples of it there are."""

from __future__ import annotations

import math

import torch

from gradlab.build.dataset import Dataset, data_generator, split_dataset
from gradlab.config.experiment import DataConfig
from gradlab.vocab.datasets import IMAGE_SIZE, SPIRAL_JITTER
from gradlab.vocab.errors import DataError


def load_gaussian(cfg: DataConfig, seed: int) -> Dataset:
    """One isotropic Gaussian per class: mean ~ N(0, I_dim) drawn once, x = mean[y] + noise * N(0, I_dim),
    labels uniform over the classes."""
    g = data_generator(seed, "gaussian")
    n = cfg.n_train + cfg.n_test
    means = torch.randn(cfg.classes, cfg.dim, generator=g)  # (classes, dim), the task
    y = torch.randint(0, cfg.classes, (n,), generator=g)  # (N,)
    x = means[y] + cfg.noise * torch.randn(n, cfg.dim, generator=g)  # (N, dim)
    return split_dataset(cfg, x, y)


TEACHER_WIDTH = 64
TEACHER_GAIN = 1.5  # hidden pre-activations ~ N(0, 1.5^2): clearly nonlinear, rarely saturated
_TANH_SQ = 0.5406483809043579  # E[tanh(1.5 z)^2] for z ~ N(0, 1), by quadrature


def load_teacher(cfg: DataConfig, seed: int) -> Dataset:
    """x ~ N(0, I_dim), y = argmax of a fixed random 2-layer tanh network (width 64, no biases).

    The teacher's weights are scaled so that its hidden pre-activations have std 1.5 and its logits
    std about 1. `noise` adds N(0, (0.1 * noise)^2) to the logits before the argmax, so the default
    noise 1.0 flips only labels close to the teacher's decision boundaries and noise 0 gives labels
    that are an exact function of x. Classes are roughly but not exactly balanced (it is the
    teacher that decides).
    """
    g = data_generator(seed, "teacher")
    n = cfg.n_train + cfg.n_test
    # The teacher runs in float64: a label must not flip with the matmul's summation order
    # (thread count, BLAS build), or the same seed would not give the same labels everywhere.
    f64 = torch.float64
    w1 = torch.randn(cfg.dim, TEACHER_WIDTH, generator=g, dtype=f64) * (TEACHER_GAIN / math.sqrt(cfg.dim))  # (dim, 64)
    w2 = torch.randn(TEACHER_WIDTH, cfg.classes, generator=g, dtype=f64) / math.sqrt(TEACHER_WIDTH * _TANH_SQ)  # (64, classes)
    x = torch.randn(n, cfg.dim, generator=g)  # (N, dim) float32
    logits = torch.tanh(x.double() @ w1) @ w2  # (N, classes), std ~ 1
    logits = logits + 0.1 * cfg.noise * torch.randn(n, cfg.classes, generator=g, dtype=f64)
    return split_dataset(cfg, x, logits.argmax(dim=1))


SPIRAL_TWIST = 4.0  # radians an arm turns from the centre to radius 1 (as in the CS231n spirals)


def load_spirals(cfg: DataConfig, seed: int) -> Dataset:
    """`classes` interleaved spiral arms in the unit disc, embedded isometrically in `dim` dimensions.

    Arm k: radius r ~ U(0, 1), angle 2 pi k / classes + 4 r, plus N(0, (0.1 * noise)^2) jitter on each
    coordinate. For dim > 2 the 2-D points are multiplied by a fixed random dim x 2 matrix with
    orthonormal columns, so distances (the problem's geometry) are unchanged; dim == 2 keeps the
    plane as it is.
    """
    if cfg.dim < 2:
        raise DataError("data.dim: spirals needs dim >= 2")
    g = data_generator(seed, "spirals")
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
    return split_dataset(cfg, points, y)


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


def load_images(cfg: DataConfig, seed: int) -> Dataset:
    """Synthetic 1x28x28 images: the class template shifted by up to 2 px each way, plus
    N(0, (0.3 * noise)^2) pixel noise, clipped to [0, 1] like pixel intensities. `dim` is unused."""
    g = data_generator(seed, "images")
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
    return split_dataset(cfg, x.clamp(0, 1).unsqueeze(1), y)  # (N, 1, 28, 28)


