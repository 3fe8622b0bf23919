"""The sweep directory: the sweep as planned (sweep.yaml), its index (sweep.csv), and what its
members' own records say.

    results/<name>/<YYYYmmdd-HHMMSS>-<id>/
        sweep.yaml    the sweep as planned: the config, overrides applied, with its sweep: axes
        sweep.csv     one row per combination: run, the values, status, duration_s, error
        activation=relu,norm=batchnorm,seed=1/     config.yaml, meta.json, metrics.csv, layers.csv
        ...

    create_sweep_dir(plan)   the folder, sweep.yaml and sweep.csv (every run pending)
    open_sweep(dir)          the plan and index of an existing sweep (for --resume)
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gradlab.orchestrate.sweep_plan import SweepPlan, load_plan
from gradlab.records.layout import LAYERS_FILE, META_FILE, METRICS_FILE, SWEEP_INDEX_FILE, SWEEP_SPEC_FILE, new_run_dir
from gradlab.records.write import disk_full, is_disk_full, write_text_atomic
from gradlab.vocab.errors import DiskFull, RunError
from gradlab.vocab.values import flow

INDEX_STATUSES = ("pending", "running", "completed", "diverged", "interrupted", "failed")
FINISHED = ("completed", "diverged")  # a diverged run is a result: --resume keeps it


@dataclass
class IndexRow:
    run: str
    values: dict[str, Any]
    status: str = "pending"
    duration_s: float | None = None
    error: str = ""


def _float_or_none(text: Any) -> float | None:
    """A duration as sweep.csv stores it; anything else (edited by hand, damaged) is unknown."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class SweepIndex:
    """sweep.csv: one row per combination in plan order. Rewritten whole (a temporary file,
    then a rename) on every change, so it is never seen half written."""

    def __init__(self, sweep_dir: Path, plan: SweepPlan, rows: list[IndexRow]):
        self.path = Path(sweep_dir) / SWEEP_INDEX_FILE
        self.keys = [axis.key for axis in plan.axes]
        self.rows = rows
        self.by_name = {row.run: row for row in rows}

    @classmethod
    def fresh(cls, sweep_dir: Path, plan: SweepPlan) -> "SweepIndex":
        return cls(sweep_dir, plan, [IndexRow(m.name, dict(m.values)) for m in plan.members])

    @classmethod
    def read(cls, sweep_dir: Path, plan: SweepPlan) -> "SweepIndex":
        path = Path(sweep_dir) / SWEEP_INDEX_FILE
        try:
            with open(path, newline="", encoding="utf-8") as file:
                stored = {row.get("run"): row for row in csv.DictReader(file)}
        except FileNotFoundError:
            raise RunError(f"{sweep_dir}: no {SWEEP_INDEX_FILE}; not a sweep directory") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise RunError(f"{path}: cannot be read ({exc})") from None
        index = cls.fresh(sweep_dir, plan)
        unknown = [name for name in stored if name not in index.by_name]
        if unknown:
            raise RunError(f"{path}: run {unknown[0]!r} is not a combination of {SWEEP_SPEC_FILE}; the two files do not belong together")
        for row in index.rows:
            if row.run in stored:
                old = stored[row.run]
                row.status = old.get("status") if old.get("status") in INDEX_STATUSES else "pending"
                row.duration_s = _float_or_none(old.get("duration_s"))
                row.error = old.get("error") or ""
        return index

    def write(self) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["run", *self.keys, "status", "duration_s", "error"])
        for row in self.rows:
            duration = "" if row.duration_s is None else f"{row.duration_s:.2f}"
            writer.writerow([row.run, *(flow(row.values[key]) for key in self.keys), row.status, duration, row.error])
        write_text_atomic(self.path, text.getvalue())

    def counts(self) -> Counter:
        return Counter(row.status for row in self.rows)


def create_sweep_dir(plan: SweepPlan) -> Path:
    """`log.out/<name>/<timestamp>-<id>/` with sweep.yaml and sweep.csv (every run pending)."""
    sweep_dir = new_run_dir(plan.out, plan.name)
    header = "# The sweep as planned by gradlab run (overrides applied); gradlab run --resume on this folder reads it.\n"
    try:
        (sweep_dir / SWEEP_SPEC_FILE).write_text(header + yaml.safe_dump(plan.spec(), sort_keys=False, default_flow_style=None, width=100), encoding="utf-8")
        SweepIndex.fresh(sweep_dir, plan).write()
    except (OSError, DiskFull) as exc:
        shutil.rmtree(sweep_dir, ignore_errors=True)  # a sweep directory without its plan is no sweep
        if is_disk_full(exc) or isinstance(exc, DiskFull):
            raise disk_full(sweep_dir, f"{SWEEP_SPEC_FILE} and {SWEEP_INDEX_FILE}") from None
        raise
    return sweep_dir


def open_sweep(sweep_dir: str | Path) -> tuple[SweepPlan, SweepIndex]:
    """The plan (from sweep.yaml, validated again) and the index of an existing sweep directory."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise RunError(f"--resume: {str(sweep_dir)!r} is not a folder")
    if not (sweep_dir / SWEEP_SPEC_FILE).is_file():
        raise RunError(f"--resume: {str(sweep_dir)!r} has no {SWEEP_SPEC_FILE}; give a sweep directory (results/<name>/<timestamp>-<id>)")
    plan = load_plan(sweep_dir / SWEEP_SPEC_FILE)
    index = SweepIndex.read(sweep_dir, plan)
    refuse_foreign_folders(sweep_dir, index)
    return plan, index


def refuse_foreign_folders(sweep_dir: Path, index: "SweepIndex") -> None:
    """One line (exit 2), before anything is touched, when the folder of a run that --resume would
    run again is a symbolic link or not a folder: resuming removes an unfinished run's folder, and
    never follows a link to remove (or adopt) what lies elsewhere."""
    for row in index.rows:
        if row.status in FINISHED:
            continue
        folder = sweep_dir / row.run
        if folder.is_symlink():
            raise RunError(f"--resume: {str(folder)!r} is a symbolic link (to {str(folder.readlink())!r}), not the run's own folder; "
                           "nothing was touched: replace it by the run's folder, or remove it to run that combination again")
        if folder.exists() and not folder.is_dir():
            raise RunError(f"--resume: {str(folder)!r} is not a folder; nothing was touched: remove it to run that combination again")


def recorded_status(run_dir: Path) -> str | None:
    """The status a run directory's own meta.json records (None: no readable meta.json). A run's
    own records outrank sweep.csv, which a killed command may have left behind them."""
    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not ((run_dir / LAYERS_FILE).is_file() and (run_dir / METRICS_FILE).is_file()):
        return None  # records that lost a table are no finished run, whatever meta.json says
    status = meta.get("status") if isinstance(meta, dict) else None
    return status if isinstance(status, str) else None


def recorded_duration(run_dir: Path) -> float | None:
    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
        start, end = datetime.fromisoformat(meta["started"]), datetime.fromisoformat(meta["ended"])
        return max((end - start).total_seconds(), 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
