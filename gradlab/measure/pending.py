"""A step's measurements, gathered on the device and moved to the host in one transfer.

Kernels (kernels.py) hand their values over as 0-d tensors (or a vector with one entry per site)
with a divisor that the host applies; nothing is read until `fetch`, so a logged step waits for the
device once, however many layers and quantities it measures.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import torch

from gradlab.build.sites import Site

SiteKey = tuple[int, "int | None"]  # Site.key: (layer, t)
Column = dict[SiteKey, float]  # site -> value, for one quantity


@dataclass
class PendingMeasurement:
    """This step's quantities still on the device, one column each; `fetch` moves them all to the
    host in one transfer.

    A column is (sites, values, divisors): `values` is a vector with one entry per listed site, or
    a list of 0-d tensors gathered site by site during forward and backward. The divisor is
    applied on the host: counts of saturated pairs and dead units over their totals, the norm of
    deviations over sqrt(n) for the std. A site gives a column one value: a second one is an error,
    never a silent overwrite.
    """

    columns: dict[str, tuple[list[SiteKey], torch.Tensor | list[torch.Tensor], list[float] | float]] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    positives: dict[str, tuple[list[SiteKey], list[torch.Tensor], list[float]]] = field(default_factory=dict)
    complements: set[str] = field(default_factory=set)  # columns stored as (divisor - value)
    _seen: set[tuple[str, SiteKey]] = field(default_factory=set)

    def add(self, quantity: str, site: Site, value: torch.Tensor, divisor: float = 1.0, complement: bool = False) -> None:
        """One site's value of a column gathered site by site; with `complement`, the column is
        (divisor - value) / divisor (a count of what is active, reported as the share that is not)."""
        key = site.key
        if (quantity, key) in self._seen:
            raise RuntimeError(f"{site.name} (t={site.t}) measured twice for {quantity} in one step")
        self._seen.add((quantity, key))
        column = self.columns.get(quantity)
        if column is None:
            column = self.columns[quantity] = ([], [], [])
        column[0].append(key)
        column[1].append(value)
        column[2].append(divisor)
        if complement:
            self.complements.add(quantity)

    def add_positives(self, quantity: str, site: Site, value: torch.Tensor, divisor: float, complement: bool = False) -> None:
        """One site's value of a column that counts the positive entries of `value` (a vector): the
        counting is done at `fetch`, for every such vector of the step in three operations."""
        if (quantity, site.key) in self._seen:
            raise RuntimeError(f"{site.name} (t={site.t}) measured twice for {quantity} in one step")
        self._seen.add((quantity, site.key))
        keys, values, divisors = self.positives.setdefault(quantity, ([], [], []))
        keys.append(site.key)
        values.append(value.reshape(-1))
        divisors.append(divisor)
        if complement:
            self.complements.add(quantity)

    def fetch(self) -> tuple[dict[str, Column], dict[str, float]]:
        """Every column and extra on the host, in one transfer.

        Each value is converted to float64 as it is (an exact conversion), so how values are
        grouped into device operations here changes no number: the 0-d values gathered site by
        site are stacked once per dtype (one stack for a few hundred small tensors, instead of one
        per column), and the positives of every vector are counted together."""
        names: list[tuple[str, str]] = []  # ('columns' | 'positives', quantity)
        parts: list[torch.Tensor] = []  # float64 pieces, concatenated for the one transfer
        order: list[int] = []  # where each piece's first value belongs in `flat` (below)
        scalars: dict[torch.dtype, list[torch.Tensor]] = {}  # 0-d values by dtype, in column order
        scalar_slots: dict[torch.dtype, list[int]] = {}
        size = 0
        for quantity, (keys, values, _) in self.columns.items():
            names.append(("columns", quantity))
            if isinstance(values, list):
                for k, value in enumerate(values):
                    scalars.setdefault(value.dtype, []).append(value)
                    scalar_slots.setdefault(value.dtype, []).append(size + k)
            else:
                parts.append(values.double())
                order.append(size)
            size += len(keys)
        for quantity, (keys, values, _) in self.positives.items():
            names.append(("positives", quantity))
            counts = _count_positives(values)
            parts.append(counts)
            order.append(size)
            size += len(keys)
        for value in self.extras.values():
            parts.append(value.reshape(1).double())
            order.append(size)
            size += 1
        slots: list[int] = []
        for dtype, values in scalars.items():
            parts.append(torch.stack(values).double())
            slots += scalar_slots[dtype]
        if not parts:
            return {}, {}
        host = torch.cat(parts).cpu().tolist()  # the one device -> host transfer
        # put the host values in column order: the vector pieces first, then the stacked scalars
        flat: list[float] = [0.0] * size
        at = 0
        for start, piece in zip(order, parts[: len(order)]):
            n = piece.numel()
            flat[start : start + n] = host[at : at + n]
            at += n
        for slot, value in zip(slots, host[at:]):
            flat[slot] = value
        columns: dict[str, Column] = {}
        at = 0
        for kind, quantity in names:
            keys, _, divisors = getattr(self, kind)[quantity]
            divisors = divisors if isinstance(divisors, list) else [divisors] * len(keys)
            column = columns.setdefault(quantity, {})  # a column may hold both kinds of values
            if quantity in self.complements:
                column.update({key: (divisors[k] - flat[at + k]) / divisors[k] for k, key in enumerate(keys)})
            else:
                column.update({key: flat[at + k] / divisors[k] for k, key in enumerate(keys)})
            at += len(keys)
        extras = dict(zip(self.extras, flat[at:]))
        return columns, extras


@functools.lru_cache(maxsize=64)
def _segment_ends(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Where each segment of `sizes` ends, on `device`: made once per model (on a GPU, copying a
    fresh index to the device every step would be a copy the host waits for)."""
    return torch.tensor(list(itertools.accumulate(sizes)), device=device)


def _count_positives(vectors: list[torch.Tensor]) -> torch.Tensor:
    """How many entries of each vector are > 0, as float64: one comparison and one cumulative sum
    over all of them (integers, so exact), instead of a comparison and a sum per vector."""
    ends = _segment_ends(tuple(v.numel() for v in vectors), vectors[0].device)
    running = torch.cat(vectors).gt(0).cumsum(0)  # int64
    totals = running[ends - 1]
    return torch.cat([totals[:1], totals[1:] - totals[:-1]]).double()
