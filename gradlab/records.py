"""The run directory: its layout, the CSV writers, meta.json, and the readers.

    results/<name>/<YYYYmmdd-HHMMSS>-<short id>/
        config.yaml   the resolved config (every default filled)
        meta.json     status, seed, device, versions, times, steps done, divergence
        metrics.csv   one row per logged step and split
        layers.csv    one row per (logged step, layer)

Writers append rows as they come and flush on every logged step, so a run that is killed keeps
every row it logged. meta.json is replaced atomically (write to a temporary file, then rename),
so it is never seen half written. A value that cannot exist is an empty cell, never a zero.

This module imports no torch: `gradlab compare` and `gradlab plot` read records without it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from gradlab.errors import RunError

METRICS_COLUMNS = ["step", "split", "loss", "accuracy", "grad_norm", "lr", "time_s"]
LAYERS_COLUMNS = [
    "step", "layer", "name", "kind",
    "weight_norm", "weight_grad_norm", "bias_grad_norm", "delta_norm",
    "act_mean", "act_std", "saturated_frac", "dead_frac", "update_ratio",
]  # fmt: skip

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
CONFIG_FILE, META_FILE, METRICS_FILE, LAYERS_FILE = "config.yaml", "meta.json", "metrics.csv", "layers.csv"


def format_cell(value: Any) -> str:
    """CSV text of one value: floats at full precision (repr round-trips), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    return str(value)


class CsvLog:
    """An append-only CSV table with a fixed header.

    Each `write` formats its rows into one string and hands it to the operating system in one
    write: a process killed at any moment leaves whole steps behind, never half a row.
    """

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        self._file = open(path, "w", newline="", encoding="utf-8")
        self.write([dict(zip(columns, columns))])  # the header

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for row in rows:
            writer.writerow([format_cell(row.get(column)) for column in self.columns])
        self._file.write(text.getvalue())
        # to the operating system now: rows survive the process being killed (an fsync would also
        # survive a power cut, at a cost of milliseconds per logged step)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_out_dir(out: str | Path) -> Path:
    """Check up front that runs can be written under `out`, creating nothing yet (a run that
    then stops on bad input leaves no trace): `out` is a writable folder, or the nearest
    existing folder above it is one, so that `out` can be created with the run directory."""
    out = Path(out).expanduser()
    try:
        if out.exists() and not out.is_dir():
            raise RunError(f"log.out: {str(out)!r} is a file, not a folder")
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # e.g. a folder on the way that may not be searched
        raise RunError(f"log.out: cannot use {str(out)!r}: {exc.strerror}") from None
    if not existing.is_dir():
        raise RunError(f"log.out: cannot create {str(out)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == out:
            raise RunError(f"log.out: {str(out)!r} is not writable")
        raise RunError(f"log.out: cannot create {str(out)!r}: {str(existing)!r} is not writable")
    return out


def new_run_dir(out: str | Path, name: str) -> Path:
    """Create `out/name/<timestamp>-<id>/`; never reuses an existing directory."""
    parent = prepare_out_dir(out) / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"log.out: {str(parent)!r} is a file, not a folder (the runs of experiment {name!r} go there)") from None
    except OSError as exc:
        raise RunError(f"log.out: cannot create {str(parent)!r}: {exc.strerror}") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        run_dir = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise RunError(f"log.out: could not create a new run directory under {str(parent)!r}")


def new_named_run_dir(parent: str | Path, name: str) -> Path:
    """Create `parent/name/` for a run whose folder name the caller chooses (a member of a sweep).

    `parent` is created if needed; like `new_run_dir`, an existing directory is never reused.
    """
    run_dir = Path(parent) / name
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise RunError(f"{run_dir}: already exists; a run never writes into an existing directory") from None
    except OSError as exc:
        raise RunError(f"cannot create the run directory {str(run_dir)!r}: {exc.strerror}") from None
    return run_dir


class RunRecords:
    """The writers of one run directory."""

    def __init__(self, run_dir: Path, config_yaml: str, meta: dict[str, Any]):
        self.dir = run_dir
        (run_dir / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        self.meta = {"status": "running", **meta}
        self.write_meta()
        self.metrics = CsvLog(run_dir / METRICS_FILE, METRICS_COLUMNS)
        self.layers = CsvLog(run_dir / LAYERS_FILE, LAYERS_COLUMNS)

    def write_meta(self, **updates: Any) -> None:
        self.meta.update(updates)
        write_json_atomic(self.dir / META_FILE, self.meta)

    def close(self, status: str, **updates: Any) -> None:
        assert status in STATUSES, status
        self.metrics.close()
        self.layers.close()
        self.write_meta(status=status, ended=now_iso(), **updates)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / META_FILE).is_file() or (path / LAYERS_FILE).is_file()


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories named directly or found below the given folders, in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if is_run_dir(path):
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(meta.parent for meta in path.rglob(META_FILE)))
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    return list(unique)


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{run_dir}: no {META_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{run_dir}: {META_FILE} is not valid JSON") from None


def read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{run_dir}: no {CONFIG_FILE}") from None
    except yaml.YAMLError:
        raise RunError(f"{run_dir}: {CONFIG_FILE} is not valid YAML") from None
    if not isinstance(data, dict):
        raise RunError(f"{run_dir}: {CONFIG_FILE} is not a mapping")
    return data


def read_table(run_dir: Path, which: str):
    """`metrics.csv` or `layers.csv` of a run as a pandas DataFrame with the contract's columns."""
    import pandas as pd

    columns = {METRICS_FILE: METRICS_COLUMNS, LAYERS_FILE: LAYERS_COLUMNS}[which]
    path = Path(run_dir) / which
    if not path.is_file():
        raise RunError(f"{run_dir}: no {which}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RunError(f"{run_dir}: {which} cannot be parsed ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RunError(f"{run_dir}: {which} lacks columns {', '.join(missing)}")
    return frame
