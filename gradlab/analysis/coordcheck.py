"""The coordinate check read back (`gradlab coordcheck`): each (variant, step, layer)'s log-log
slope of a coordinate size against width and its verdict (the `expect: {coordcheck: ...}` outcomes are
analysis/expectations.py's).

For each (variant, step, layer) the coordinate (act_l1 unless asked otherwise) is averaged over the
seeds at each width, and its slope s is the least-squares line through (log width, log mean):
`width-stable` when |s| <= tolerance (COORDCHECK_TOLERANCE, 0.13: mup's test allows 1.2x per 4x
width), `grows` when s is above it, `shrinks` below. A coordinate that is empty or not positive at
some width (update_rms at the last step) gets no slope and no verdict. pandas and numpy, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gradlab.vocab.errors import ConfigError
from gradlab.vocab.quantities import COORDCHECK_COLUMNS, COORDCHECK_QUANTITIES, COORDCHECK_TOLERANCE

COORDCHECK_FILE = "coordcheck.csv"
VERDICT_KEYS = ("variant", "step", "layer", "name")
COLUMNS = list(COORDCHECK_COLUMNS)  # coordcheck.csv's header


def verdict(slope: float, tolerance: float = COORDCHECK_TOLERANCE) -> str:
    """width-stable, grows or shrinks; '' for no slope."""
    if not math.isfinite(slope):
        return ""
    if abs(slope) <= tolerance:
        return "width-stable"
    return "grows" if slope > 0 else "shrinks"


def loglog_slope(widths: np.ndarray, values: np.ndarray) -> float:
    """The least-squares slope of log(values) against log(widths); nan unless every value is
    positive and finite at two or more distinct widths."""
    widths, values = np.asarray(widths, dtype=float), np.asarray(values, dtype=float)
    if len(np.unique(widths)) < 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return math.nan
    x, y = np.log(widths), np.log(values)
    x0 = x - x.mean()
    return float((x0 * (y - y.mean())).sum() / (x0 * x0).sum())


def slopes(coords: pd.DataFrame, quantity: str = "act_l1", tolerance: float = COORDCHECK_TOLERANCE) -> pd.DataFrame:
    """One row per (variant, step, layer, name): the widths, the seed-mean of `quantity` at the
    smallest and largest width, the slope and its verdict."""
    if quantity not in COORDCHECK_QUANTITIES:
        raise ConfigError(f"--quantity: got {quantity!r}; allowed: {', '.join(COORDCHECK_QUANTITIES)}")
    means = coords.groupby([*VERDICT_KEYS, "width"], sort=True, dropna=False)[quantity].mean().reset_index()
    rows = []
    for key, group in means.groupby(list(VERDICT_KEYS), sort=True, dropna=False):
        group = group.sort_values("width")
        slope = loglog_slope(group["width"].to_numpy(), group[quantity].to_numpy())
        rows.append({
            **dict(zip(VERDICT_KEYS, key)), "quantity": quantity, "widths": len(group),
            "first": float(group[quantity].iloc[0]), "last": float(group[quantity].iloc[-1]),
            "slope": slope, "verdict": verdict(slope, tolerance),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=[*VERDICT_KEYS, "quantity", "widths", "first", "last", "slope", "verdict"])


def read_coords(sweep_dir: str | Path) -> pd.DataFrame:
    path = Path(sweep_dir) / COORDCHECK_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir}: no {COORDCHECK_FILE} (not a gradlab coordcheck folder, or its runs have not finished)")
    coords = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"variant": str})
    coords["variant"] = coords["variant"].fillna("")
    return coords


@dataclass
class CoordcheckResult:
    """A finished coordinate check: the coordinates, the slopes, and the expectations checked."""

    sweep_dir: Path
    coords: pd.DataFrame  # coordcheck.csv
    slopes: pd.DataFrame
    outcomes: list  # analysis.expectations.Outcome of each expect.coordcheck verdict
    tolerance: float
    quantity: str
    runs_failed: list[str] = field(default_factory=list)  # "<run>: <error>" of the runs that failed

    @property
    def failed(self) -> list:
        return [o for o in self.outcomes if not o.passed]


def judged_steps(slopes_: pd.DataFrame, steps: list[int] | None) -> list[int]:
    measured = sorted(int(s) for s in slopes_["step"].unique())
    return [s for s in measured if s >= 1] if steps is None else list(steps)


def variant_of(values: dict) -> str:
    """The values of a run's own sweep axes (not model.width, seed or expect.*) as `key=value, ...`:
    the run's variant, as coordcheck.csv names it."""
    from gradlab.vocab.values import flow

    return ", ".join(f"{key}={flow(value)}" for key, value in values.items() if key not in ("model.width", "seed") and not key.startswith("expect"))
