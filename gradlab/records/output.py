"""Writing what a command outputs (schema -o, compare -o, check --junit, plot --output, report -o,
export --tensorboard): never over a run's records, never half written.

    refuse_records(path, option)        RunError when `path` is (or links to) a record gradlab wrote
    write_output(path, data, option)    write `data` to a temporary file beside `path`, then rename
    output_error(exc, path, option)     an OSError as one line: DiskFull (exit 74) or RunError (exit 2)

A record is a file of a run directory (config.yaml, meta.json, metrics.csv, layers.csv,
timesteps.csv in a folder that holds meta.json or layers.csv) or of a sweep directory (sweep.yaml,
sweep.csv); `gradlab report DIR -o DIR/<run>/meta.json` would otherwise replace a run by HTML.

A failed write (a full disk, a read-only filesystem, a folder without write permission) removes its
temporary file and leaves the file that was there before as it was; a retry then works. No pandas.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from gradlab.records.layout import (
    CONFIG_FILE,
    JACOBIAN_FILE,
    LAYERS_FILE,
    META_FILE,
    METRICS_FILE,
    SWEEP_INDEX_FILE,
    SWEEP_SPEC_FILE,
    TIMESTEPS_FILE,
    is_run_dir,
)
from gradlab.records.write import is_disk_full
from gradlab.vocab.errors import DiskFull, GradlabError, RunError

RUN_RECORDS = (CONFIG_FILE, META_FILE, METRICS_FILE, LAYERS_FILE, TIMESTEPS_FILE, JACOBIAN_FILE)
SWEEP_RECORDS = (SWEEP_SPEC_FILE, SWEEP_INDEX_FILE)


def record_kind(path: str | Path) -> str | None:
    """What record `path` is ('the run record ...'), following symbolic links; None when it is none."""
    path = Path(path)
    try:
        real = path.resolve()
        candidates = {path.absolute(), real}
        for candidate in candidates:
            folder = candidate.parent
            if candidate.name in RUN_RECORDS and is_run_dir(folder):
                return f"the run record {candidate.name} of {folder}"
            if candidate.name in SWEEP_RECORDS and ((folder / SWEEP_INDEX_FILE).is_file() or (folder / SWEEP_SPEC_FILE).is_file()):
                return f"the sweep record {candidate.name} of {folder}"
    except (OSError, RuntimeError):  # a loop of links, a folder that may not be searched: not a record we know
        return None
    return None


def refuse_records(path: str | Path | None, option: str) -> None:
    """One line (exit 2) when `path` is a record gradlab wrote: outputs never replace records."""
    if path is None:
        return
    kind = record_kind(path)
    if kind is not None:
        raise RunError(f"{option}: {str(path)!r} is {kind}; gradlab never writes over a run's records: give another file")


def output_error(exc: OSError, path: str | Path, option: str) -> GradlabError:
    """An OSError while writing `path` as one line: a full disk (or quota) is DiskFull (exit 74),
    anything else (read-only, permission, a folder) RunError (exit 2)."""
    if is_disk_full(exc):
        return DiskFull(f"{option}: no space left on the device while writing {str(path)!r}; free some space and run the command again (nothing was written)")
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        reason = "the filesystem is read-only"
    return RunError(f"{option}: cannot write {str(path)!r}: {reason}")


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_output(path: str | Path, data: str | bytes, option: str) -> Path:
    """Write `data` to `path` whole or not at all: a temporary file beside it, flushed to disk, then
    renamed over it. Refuses a record; on failure the temporary file is removed (its own removal
    failing is ignored) and one line raised (output_error)."""
    path = Path(path)
    refuse_records(path, option)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        discard(tmp)
        raise output_error(exc, path, option) from None
    except BaseException:
        discard(tmp)
        raise
    return path


def discard(tmp: Path) -> None:
    """Remove a temporary file, quietly: on a read-only filesystem there is nothing to remove."""
    try:
        tmp.unlink()
    except OSError:
        pass
