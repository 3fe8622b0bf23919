"""The run directory's layout: where runs go, what their files are called, and finding them.

    results/<name>/<YYYYmmdd-HHMMSS>-<short id>/
        config.yaml    the resolved config (every default filled)
        meta.json      status, seed, device, versions, times, steps done, divergence
        metrics.csv    one row per logged step and split
        layers.csv     one row per (logged step, layer)
        timesteps.csv  recurrent models only: one row per (logged step, layer, time step)
        jacobian.csv   with log.jacobian only: one row per (step measured, hidden block)

The column names come from `gradlab.vocab.quantities`, the one home of every quantity. Writing
the files is records.write, reading them back records.read and records.run. No torch, no numpy,
no pandas.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Iterable

from gradlab.vocab import quantities
from gradlab.vocab.errors import RunError

# The headers of the two tables, from the declarations of their columns.
METRICS_COLUMNS: list[str] = list(quantities.METRICS_COLUMNS)
LAYERS_COLUMNS: list[str] = list(quantities.LAYERS_COLUMNS)
# A recurrent run (model.kind rnn, lstm, gru) also writes timesteps.csv: a row
# per (logged step, recurrent layer, time step).
TIMESTEPS_COLUMNS: list[str] = list(quantities.TIMESTEPS_COLUMNS)
# A run with log.jacobian also writes jacobian.csv: a row per (step measured, hidden block).
JACOBIAN_COLUMNS: list[str] = list(quantities.JACOBIAN_COLUMNS)

CONFIG_FILE, META_FILE, METRICS_FILE, LAYERS_FILE = "config.yaml", "meta.json", "metrics.csv", "layers.csv"
TIMESTEPS_FILE = "timesteps.csv"
JACOBIAN_FILE = "jacobian.csv"
# A sweep directory holds a run directory per combination, the sweep as planned and its index.
SWEEP_SPEC_FILE, SWEEP_INDEX_FILE = "sweep.yaml", "sweep.csv"
# The columns of each table that hold text; every other column holds numbers.
TEXT_COLUMNS = {METRICS_FILE: ("split",), LAYERS_FILE: ("name", "kind"), TIMESTEPS_FILE: ("name",), JACOBIAN_FILE: ()}


def prepare_out_dir(out: str | Path) -> Path:
    """Check up front that runs can be written under `out`, creating nothing yet (a run that
    then stops on bad input leaves no trace): `out` is a writable folder, or the nearest
    existing folder above it is one, so that `out` can be created with the run directory."""
    out = Path(out).expanduser()
    try:
        if out.is_symlink() and not out.exists():
            raise RunError(f"log.out: {str(out)!r} is a symbolic link to {os.readlink(out)!r}, which does not exist")
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
    """Create `out/name/<timestamp>-<id>/`; never reuses an existing directory. A symbolic link
    at `out/name` is followed and the real path returned (what is printed is where the run is)."""
    parent = prepare_out_dir(out) / name
    if parent.is_symlink():
        if not parent.exists():
            raise RunError(f"log.out: {str(parent)!r} is a symbolic link to {os.readlink(parent)!r}, which does not exist")
        parent = parent.resolve()
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


def discover_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories named in `paths` or found below them (recursively), and one line per path
    that does not exist or holds no runs."""
    missing: list[str] = []
    run_dirs: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            missing.append(f"{path}: does not exist")
            continue
        found = find_run_dirs([path])
        if not found:
            missing.append(f"{path}: no runs found (a run directory holds {META_FILE})")
        for run_dir in found:
            run_dirs.setdefault(run_dir, None)
    return list(run_dirs), missing


def shown_path(path: str | Path) -> Path:
    """`path` relative to the working directory when it lies below it: shorter messages and labels."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path
