"""Weight spectra (the `spectrum` probe group): each layer's largest singular value, stable rank and
the power-law exponent of its eigenvalue density, as WeightWatcher fits it.

Which matrix:
- weight_sv_max and weight_stable_rank are of the layer's weight as a matrix with one row per
  output: a Linear's W (out, in); a convolution's (out, in, *kernel) reshaped to (out, in * kernel
  positions), as torch's spectral_norm does; a recurrent layer's [W_ih W_hh] (the matrix that maps
  [x_t; h_(t-1)] to a_t, whose Frobenius norm is its weight_norm).
- weight_alpha is of the eigenvalues WeightWatcher (0.7.7, `analyze()` with its defaults) fits: a
  Linear's (or the recurrent [W_ih W_hh]'s) squared singular values, min(out, in) of them; a
  convolution's weight sliced at each kernel position p into the (out, in) matrix W[:, :, p], each
  slice times sqrt(1/2) (WeightWatcher's conv2d_norm), the squared singular values of all slices
  pooled: min(out, in) * kernel positions of them. WeightWatcher does not divide by N (its
  `normalize` was removed in 0.6.5); no scale changes alpha, but the floor below is absolute.

The fit (WeightWatcher's WWFit.fit_power_law_standard): keep the eigenvalues above 1e-5, sorted
x_0 <= ... <= x_(N-1); for each candidate x_min = x_i, i < N - 1, with n = N - i eigenvalues in the
tail, the maximum-likelihood exponent alpha_i = 1 + n / sum_(j >= i) ln(x_j / x_i) and the
Kolmogorov-Smirnov distance D_i = max_(j >= i) |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n|; the
fit is the candidate with the smallest D_i (the first of equal ones). A layer with fewer than 50
eigenvalues has no alpha (the minimum WeightWatcher's docstrings name; 0.7.7's default is 8), nor one whose
eigenvalues above the floor number fewer than 20 (where 0.7.7 switches to another estimator), nor one
whose tail has no spread (alpha infinite: an orthogonal weight's eigenvalues are all equal).

Everything is computed on the device and handed to the step's pending measurement. A layer whose
alpha is fitted to its operator matrix's own eigenvalues (a Linear, [W_ih W_hh]) takes sigma_max as
the square root of the largest, exact to float64 rounding and at no extra cost; the others (a
convolution, a layer with fewer than 50 eigenvalues) are power-iterated, reading one flag per
POWER_CHUNK iterations (for all layers at once) to know when every layer's estimate has settled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradlab.measure.norms import norm

MIN_EIGENVALUES = 50  # fewer: no alpha (WeightWatcher's analyze(min_evals=50), the DEFAULT_MIN_EVALS its docstrings name; 0.7.7's default is 8)
EIGENVALUE_FLOOR = 1e-5  # WeightWatcher's EVALS_THRESH: eigenvalues at or below it are not fitted
MIN_FITTED = 20  # WeightWatcher 0.7.7 fits fewer eigenvalues with another (bias-corrected) estimator
CONV_EIGENVALUE_SCALE = 0.5  # conv2d_norm: each slice times sqrt(1/2)
# Power iteration stops when the estimate of every layer grew by less than POWER_TOLERANCE (relative)
# over the last POWER_CHUNK iterations. On Gaussian matrices from 10 x 256 to 4096 x 1024, started at
# random, that leaves it within 1.1e-5 of torch.linalg.svdvals (tests: 1e-4); warm-started after a
# small change of the weight it mostly stops after 20 to 50 iterations (more where the top two
# singular values are close and the top direction moved).
POWER_CHUNK = 10
POWER_TOLERANCE = 1e-6
POWER_MAX_ITERATIONS = 2000
_KS_BLOCK = 1 << 22  # entries of the (candidates x eigenvalues) KS table computed at once
_FITTED = "weight_alpha_fitted"  # not a column: 1 where the fit exists, 0 where alpha stays empty


def operator_matrix(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The matrix of weight_sv_max and weight_stable_rank: each weight (out, ...) as (out, rest),
    several weights (a recurrent layer's W_ih, W_hh) side by side."""
    return torch.cat([w.detach().reshape(w.shape[0], -1) for w in weights], dim=1)


def alpha_slices(weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The matrices whose squared singular values WeightWatcher pools, as (slices, rows, cols), and
    the factor their eigenvalues are scaled by: a convolution's kernel positions, else one matrix."""
    if len(weights) == 1 and weights[0].dim() > 2:
        w = weights[0].detach()
        return w.flatten(2).permute(2, 0, 1), CONV_EIGENVALUE_SCALE  # (positions, out, in)
    return operator_matrix(weights).unsqueeze(0), 1.0


def eigenvalue_count(weights: Sequence[torch.Tensor]) -> int:
    """How many eigenvalues weight_alpha is fitted to (before the floor)."""
    slices, _ = alpha_slices(weights)
    return slices.shape[0] * min(slices.shape[1], slices.shape[2])


def eigenvalues(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The pooled eigenvalues of the layer's slices (their squared singular values, scaled as
    WeightWatcher scales them), ascending, in float64 (see layer_eigenvalues)."""
    return layer_eigenvalues([weights])[0]


def layer_eigenvalues(layers: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """eigenvalues() of each layer (its weights), the layers whose slices have one shape in one
    batched eigvalsh of the slices' smaller Gram matrices, in float64. A slice with a non-finite
    entry gives zeros (its step is a divergence the probe reports)."""
    prepared = [alpha_slices(weights) for weights in layers]
    by_shape: dict[tuple, list[int]] = {}
    for k, (slices, _) in enumerate(prepared):
        by_shape.setdefault((tuple(slices.shape[1:]), slices.device), []).append(k)
    found: list[torch.Tensor] = [torch.empty(0)] * len(layers)
    for members in by_shape.values():
        s = torch.cat([prepared[k][0] for k in members]).double()  # (slices of every member, rows, cols)
        gram = s.mT @ s if s.shape[1] >= s.shape[2] else s @ s.mT
        gram = torch.where(torch.isfinite(gram).all(dim=(1, 2), keepdim=True), gram, torch.zeros_like(gram))
        values = torch.linalg.eigvalsh(gram)  # (slices, min(rows, cols)), one call for the group
        start = 0
        for k in members:
            count = prepared[k][0].shape[0]
            found[k] = (values[start : start + count].reshape(-1) * prepared[k][1]).sort().values
            start += count
    return found


def fit_alpha(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """WeightWatcher's power-law fit of ascending eigenvalues `values` (float64): (alpha, fitted),
    fitted 1.0 where the fit exists and 0.0 where it does not (alpha is then 0, never read). No
    host read: the eigenvalues at or below the floor are the leading ones, so every candidate's
    tail is the same with or without them and they are masked rather than removed."""
    n_all = values.numel()
    kept = (values > EIGENVALUE_FLOOR).sum()
    first = n_all - kept  # index of the first eigenvalue above the floor
    logs = values.clamp_min(EIGENVALUE_FLOOR).log()
    i = torch.arange(n_all - 1, device=values.device)  # candidate x_min = values[i]
    n = (n_all - i).to(values.dtype)
    tail_logs = logs.flip(0).cumsum(0).flip(0)[:-1]  # sum_(j >= i) ln x_j
    alphas = 1 + n / (tail_logs - n * logs[:-1])
    distances = torch.empty_like(alphas)
    rows = max(1, _KS_BLOCK // n_all)
    j = torch.arange(n_all, device=values.device)
    for start in range(0, n_all - 1, rows):
        block = slice(start, min(start + rows, n_all - 1))
        xmin, alpha, count = values[block, None], alphas[block, None], n[block, None]
        offset = j[None, :] - i[block, None]  # j - i
        theoretical = 1 - torch.pow(values[None, :] / xmin, 1 - alpha)
        gap = (theoretical - offset / count).abs()
        gap = torch.where(offset >= 0, gap, torch.zeros((), dtype=gap.dtype, device=gap.device))
        distances[block] = gap.amax(dim=1)
    distances = torch.where(i >= first, distances, torch.full((), math.inf, dtype=distances.dtype, device=distances.device))
    best = distances.argmin()
    alpha = alphas[best]
    fitted = (kept >= MIN_FITTED) & torch.isfinite(alpha)
    return torch.where(fitted, alpha, torch.zeros_like(alpha)), fitted.to(values.dtype)


def weight_alpha(weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """weight_alpha of one layer and whether it exists (see fit_alpha); None below MIN_EIGENVALUES."""
    if eigenvalue_count(weights) < MIN_EIGENVALUES:
        return None
    return fit_alpha(eigenvalues(weights))


def sv_max(matrices: Sequence[torch.Tensor], starts: Sequence[torch.Tensor | None], generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The largest singular value of each matrix by power iteration on W^T W, matrices of one shape
    iterated together (one batched product per iteration), each from its start vector (the last
    logged step's) or a random one: (sigma per matrix as 0-d tensors, the vectors reached)."""
    by_shape: dict[tuple, list[int]] = {}
    for k, m in enumerate(matrices):
        by_shape.setdefault((tuple(m.shape), m.dtype, m.device), []).append(k)
    groups = []
    for (shape, dtype, device), members in by_shape.items():
        stack = torch.stack([matrices[k] for k in members])  # (L, rows, cols)
        fresh = torch.randn(len(members), shape[1], 1, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
        usable = [starts[k] is not None and starts[k].shape == fresh[0].shape and starts[k].dtype == dtype for k in members]
        v = torch.stack([starts[k] if ok else fresh[n] for n, (k, ok) in enumerate(zip(members, usable))])
        groups.append([members, stack, v, fresh, None])
    iterations = 0
    while groups and iterations < POWER_MAX_ITERATIONS:
        settled = []
        for group in groups:
            _, stack, v, fresh, before = group
            for _ in range(POWER_CHUNK):
                v = _scaled(stack.mT @ _scaled(stack @ v), fresh)
            wide = v.double()  # the estimate in float64: no square of a float32 entry underflows or overflows
            sigma = ((stack @ v).double().square().sum(dim=(1, 2)) / wide.square().sum(dim=(1, 2))).sqrt()
            if before is not None:  # (a non-finite weight's estimate never settles: its step is a divergence)
                settled.append((((sigma - before) <= POWER_TOLERANCE * sigma) | ~torch.isfinite(sigma)).all())
            group[2], group[4] = v, sigma
        iterations += POWER_CHUNK
        if len(settled) == len(groups) and bool(torch.stack(settled).all()):  # the one read per chunk
            break
    sigmas: list[torch.Tensor] = [torch.empty(())] * len(matrices)
    vectors: list[torch.Tensor] = [torch.empty(())] * len(matrices)
    for members, stack, v, _, _ in groups:
        values = [norm(stack[n] @ v[n]).double() / norm(v[n]).double() for n in range(len(members))]
        for n, k in enumerate(members):
            sigmas[k], vectors[k] = values[n], v[n]
    return sigmas, vectors


def _scaled(v: torch.Tensor, fresh: torch.Tensor | None = None) -> torch.Tensor:
    """Each column vector of `v` (L, n, 1) divided by its largest entry's size (power iteration needs
    only the direction; no square is taken, so a tiny or huge weight neither underflows nor
    overflows); a zero one (a zero weight) restarts from `fresh`, so that a weight that grows from
    zero is found."""
    largest = v.abs().amax(dim=(1, 2), keepdim=True)
    scaled = v / largest.clamp_min(torch.finfo(v.dtype).tiny)
    return scaled if fresh is None else torch.where(largest > 0, scaled, fresh)


def stable_rank(matrix: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """||W||_F^2 / sigma_max^2 in float64 (the host leaves it empty where sigma_max is 0)."""
    return (norm(matrix).double() / sigma.double().clamp_min(torch.finfo(torch.float64).tiny)).square()


class LayerSpectra:
    """The spectrum group's state across logged steps: each layer's last power-iteration vector, the
    next logged step's start, by site key."""

    def __init__(self, seed: int = 0):
        self._vectors: dict[object, torch.Tensor] = {}
        self._generator = torch.Generator().manual_seed(seed)  # its own stream: training's draws are untouched

    def measure(self, layers: Sequence[tuple[object, Sequence[torch.Tensor]]]) -> dict[str, tuple[list, list[torch.Tensor]]]:
        """{quantity: (site keys, 0-d values on the device)} of `layers`, (site key, the layer's
        weights) each, the hidden _FITTED column included."""
        # weights that cannot stand side by side (a recurrent module of several shapes, watched whole) have no matrix
        layers = [(key, list(weights)) for key, weights in layers if weights and len({w.shape[0] for w in weights}) == 1]
        with torch.no_grad():
            keys = [key for key, _ in layers]
            matrices = [operator_matrix(weights) for _, weights in layers]
            eligible = [(key, weights) for key, weights in layers if eigenvalue_count(weights) >= MIN_EIGENVALUES]
            fitted_keys, alphas, fitted, exact = [key for key, _ in eligible], [], [], {}
            for (key, weights), values in zip(eligible, layer_eigenvalues([weights for _, weights in eligible])):
                alpha, exists = fit_alpha(values)
                alphas.append(alpha)
                fitted.append(exists)
                if alpha_slices(weights)[1] == 1.0:  # one slice, the operator matrix itself
                    exact[key] = _largest_singular_value(values, weights)
            # Where alpha's eigenvalues are those of the operator matrix (a Linear, [W_ih W_hh]) the
            # largest is sigma_max^2, exact and free; power iteration only for the others.
            iterated = [k for k, key in enumerate(keys) if key not in exact]
            found, vectors = sv_max([matrices[k] for k in iterated], [self._vectors.get(keys[k]) for k in iterated], self._generator)
            self._vectors.update((keys[k], v) for k, v in zip(iterated, vectors))
            sigmas = [exact.get(key) for key in keys]
            for k, sigma in zip(iterated, found):
                sigmas[k] = sigma
            columns = {
                "weight_sv_max": (keys, sigmas),
                "weight_stable_rank": (keys, [stable_rank(m, s) for m, s in zip(matrices, sigmas)]),
            }
            if fitted_keys:
                columns["weight_alpha"] = (fitted_keys, alphas)
                columns[_FITTED] = (fitted_keys, fitted)
        return columns


def _largest_singular_value(values: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """sigma_max from the ascending eigenvalues of W^T W (float64), NaN where W is not finite
    (layer_eigenvalues gives such a weight zeros; its step is a divergence)."""
    finite = torch.stack([torch.isfinite(w.detach()).all() for w in weights]).all()
    sigma = values[-1].clamp_min(0).sqrt()
    return torch.where(finite, sigma, torch.full_like(sigma, math.nan))


def cells(columns: dict[str, dict]) -> dict[str, dict]:
    """The host's columns with the spectrum's cells that do not exist left empty: weight_alpha where
    the fit does not exist, weight_stable_rank where sigma_max is 0 (a zero weight)."""
    fitted = columns.pop(_FITTED, None)
    if fitted is not None and "weight_alpha" in columns:
        columns["weight_alpha"] = {key: value for key, value in columns["weight_alpha"].items() if fitted.get(key)}
    sigma = columns.get("weight_sv_max")
    if sigma is not None and "weight_stable_rank" in columns:
        columns["weight_stable_rank"] = {key: value for key, value in columns["weight_stable_rank"].items() if sigma.get(key)}
    return columns
