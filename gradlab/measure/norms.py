"""Exact L2 norms: every norm gradlab records is computed here.

A float32 norm squares its entries in float32. Below about 1e-19 the squares underflow (a square
below 1.2e-38 is subnormal, below 1.4e-45 it is 0), above about 1.8e19 they overflow to inf, so a
vanishing gradient whose entries are normal float32 numbers of 1e-34 reads as a norm of 0, and an
exploding one as inf. gradlab's subject is exactly those gradients, so:

1. the fast norm first: `torch._foreach_norm` (the kernel `clip_grad_norm_` uses) or
   `torch.linalg.vector_norm`, in float32 (float16 entries are squared in float32: their squares
   cannot underflow or overflow there);
2. a float32 result r is *safe* when SAFE_LOW <= r <= SAFE_HIGH: then no square overflowed, and the
   squares that underflowed add at most n * 2^-150 to r^2 >= 1e-24, a relative error below 1e-7
   for any tensor of fewer than 10^14 entries. The result is that float32 norm, bit for bit, so a
   measurement that was right before stays the same number;
3. an unsafe result (0, tiny, huge, inf or nan) is computed again with float64 squares, which
   neither underflow nor overflow for any finite float32 entry. A truly zero tensor stays 0; a
   tensor holding inf or nan stays non-finite (the divergence check needs to see it).

On the CPU reading a result is free, so the recomputation happens only for the unsafe norms. On an
accelerator reading one would wait for the device, so there the float64 norms are computed for
every tensor and selected on the device, with no transfer.

Results are tensors on the tensors' device: `norms` float64 (1-d), `norm` a 0-d float32 where
float32 holds the value and float64 where it does not; the host reads either exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SAFE_LOW = 1e-12  # below: float32 squares may have lost digits to underflow
SAFE_HIGH = 1e19  # above: a float32 square may have overflowed (1.8e19 ** 2 > float32's largest)

_HALF = (torch.float16, torch.bfloat16)


def _float32_norm(tensor: torch.Tensor) -> torch.Tensor:
    """The fast norm: float32 squares for float32 and half-precision entries."""
    if tensor.dtype in _HALF:
        return torch.linalg.vector_norm(tensor, dtype=torch.float32)
    return torch.linalg.vector_norm(tensor)


def _safe(norm: torch.Tensor) -> torch.Tensor:
    return (norm >= SAFE_LOW) & (norm <= SAFE_HIGH)


def _reads_free(device: torch.device) -> bool:
    return device.type == "cpu"


def norm(tensor: torch.Tensor) -> torch.Tensor:
    """||tensor||, exact for any finite float32/float16/bfloat16 entries, as a 0-d tensor: float32
    where float32 holds it (float32's own number), float64 where it does not. The host reads every
    value exactly, whichever dtype it has."""
    fast = _float32_norm(tensor)
    if tensor.dtype in (torch.float16, torch.float64):
        return fast  # squares of float16 entries are always normal float32 numbers; float64 is float64
    if _reads_free(fast.device):
        if SAFE_LOW <= fast.item() <= SAFE_HIGH:  # one read of a number the CPU already has
            return fast
        return torch.linalg.vector_norm(tensor, dtype=torch.float64)
    return torch.where(_safe(fast), fast.double(), torch.linalg.vector_norm(tensor, dtype=torch.float64))


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """||t|| of each tensor (1-d float64, one entry per tensor): float32 and float64 tensors in one
    batched call, float64 where float32 is not safe; half-precision ones one by one (`norm`)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    tensors = list(tensors)
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1 or dtypes & set(_HALF):
        return torch.stack([norm(t).double() for t in tensors])
    fast = torch.stack(torch._foreach_norm(tensors))
    if fast.dtype == torch.float64:
        return fast
    if _reads_free(fast.device):
        redo = [k for k, value in enumerate(fast.tolist()) if not SAFE_LOW <= value <= SAFE_HIGH]
        fast = fast.double()
        if redo:
            fast[redo] = torch.stack([torch.linalg.vector_norm(tensors[k], dtype=torch.float64) for k in redo])
        return fast
    exact = torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
    return torch.where(_safe(fast), fast.double(), exact)


def norm_of(parts: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The norm of several tensors together, from their norms: sqrt(sum of squares). Where every
    part is a float32 norm (a float32 number, 0 or in the safe range) it is computed as float32
    computes it, so a combination of float32 norms keeps its float32 value bit for bit; else (a
    part rescued by float64, or the norm of a float64 tensor) in float64. One part: itself."""
    if not isinstance(parts, torch.Tensor):
        parts = list(parts)
        if len(parts) == 1:
            return parts[0].reshape(())
        parts = torch.stack([part.double() for part in parts])
    if parts.numel() == 1:
        return parts.reshape(())
    narrow = norm(parts.float())
    wide = torch.linalg.vector_norm(parts.double())
    if _reads_free(parts.device):
        return narrow if bool(float32_held(parts).all()) else wide
    return torch.where(float32_held(parts).all(), narrow.double(), wide)


def float32_held(values: torch.Tensor) -> torch.Tensor:
    """Which values are float32 norms that float32 arithmetic can go on with: float32 numbers
    that are 0 or within the safe range."""
    return (values.float().double() == values) & ((values == 0) | _safe(values))


def norm_rows(stacked: torch.Tensor) -> torch.Tensor:
    """||stacked[k]|| for every k (1-d float64): one batched float32 norm over the other
    dimensions, float64 for the rows where float32 is not safe."""
    dims = tuple(range(1, stacked.dim()))
    if stacked.dtype != torch.float32:
        return torch.linalg.vector_norm(stacked, dim=dims, dtype=torch.float64)
    fast = torch.linalg.vector_norm(stacked, dim=dims).double()
    if _reads_free(fast.device):
        redo = [k for k, ok in enumerate(_safe(fast).tolist()) if not ok]
        if redo:
            fast[redo] = torch.linalg.vector_norm(stacked[redo], dim=dims, dtype=torch.float64)
        return fast
    return torch.where(_safe(fast), fast, torch.linalg.vector_norm(stacked, dim=dims, dtype=torch.float64))
