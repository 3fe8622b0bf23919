"""Writing a run's records: the CSV tables, meta.json, and the run-directory operations of
orchestration (stubs, closing a run whose process died, carrying a run to another machine).

Writers append rows as they come and flush on every logged step, so a run that is killed keeps
every row it logged. meta.json is replaced atomically (write to a temporary file, then rename),
so it is never seen half written. A value that cannot exist is an empty cell, never a zero. A full
disk is errors.DiskFull, naming the file. No torch, no numpy, no pandas: the training process
writes records without loading pandas.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from gradlab.records.layout import (
    CONFIG_FILE,
    LAYERS_COLUMNS,
    LAYERS_FILE,
    META_FILE,
    METRICS_COLUMNS,
    METRICS_FILE,
    TIMESTEPS_COLUMNS,
    TIMESTEPS_FILE,
    JACOBIAN_COLUMNS,
    JACOBIAN_FILE,
    new_named_run_dir,
)
from gradlab.records.read import read_meta
from gradlab.vocab.errors import DiskFull, GradlabError, RunError
from gradlab.vocab.quantities import STATUSES

META_EVERY_S = 1.0  # meta.json's steps_done of a running run is refreshed at most this often

def format_cell(value: Any) -> str:
    """CSV text of one value: floats at full precision (repr round-trips), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    return str(value)


# The errnos of a full disk and of an exhausted quota: both are errors.DiskFull.
_DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def disk_full(path: Path | str, what: str) -> DiskFull:
    return DiskFull(f"{path}: no space left on the device while writing {what}; free some space (whole steps written so far are kept)")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class CsvLog:
    """An append-only CSV table with a fixed header.

    Each `write` formats its rows into one string and hands it to the operating system at once
    (unbuffered): a process killed at any moment leaves whole steps behind, never half a row. A
    write the disk cannot take whole (full) is taken back: the file is cut to its last whole step
    and DiskFull raised.
    """

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._size = 0
        self.write([dict(zip(columns, columns))])  # the header

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        columns, cell = self.columns, format_cell
        for row in rows:
            get = row.get
            writer.writerow([cell(get(column)) for column in columns])
        data = text.getvalue().encode("utf-8")
        # to the operating system now: rows survive the process being killed (an fsync would also
        # survive a power cut, at a cost of milliseconds per logged step)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)  # no half step left behind
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError:
                pass
            if is_disk_full(exc):
                raise disk_full(self.path, "a step's rows" if self._size else "the header") from None
            raise
        self._size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` at once (a temporary file beside it, then a rename): a reader sees
    the old content or the new, never half of it (meta.json and sweep.csv are written so).

    On a full disk the temporary file is removed and the file is rewritten in place instead (the
    space its old content frees is usually enough for the new: a status changing from running to
    failed); when even that fails, DiskFull."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = text.encode("utf-8")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
        return
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if not is_disk_full(exc) or not path.exists():
            if is_disk_full(exc):
                raise disk_full(path, path.name) from None
            raise
    try:
        with open(path, "r+b") as file:
            file.truncate(0)
            file.write(data)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, path.name) from None
        raise


class RunRecords:
    """The writers of one run directory."""

    def __init__(self, run_dir: Path, config_yaml: str, meta: dict[str, Any], layer_columns: list[str] | None = None, timesteps: bool = False,
                 jacobian: bool = False):  # fmt: skip
        # layer_columns: layers.csv's header, LAYERS_COLUMNS unless the model adds some (quantities.layers_columns);
        # timesteps: a recurrent run's timesteps.csv is written too; jacobian: a run with log.jacobian's jacobian.csv
        self.dir = run_dir
        self.meta = {"status": "running", **meta}
        opened: list[CsvLog] = []
        try:
            (run_dir / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
            self.write_meta()
            self.metrics = CsvLog(run_dir / METRICS_FILE, METRICS_COLUMNS)
            opened.append(self.metrics)
            self.layers = CsvLog(run_dir / LAYERS_FILE, layer_columns or LAYERS_COLUMNS)
            opened.append(self.layers)
            self.timesteps = CsvLog(run_dir / TIMESTEPS_FILE, TIMESTEPS_COLUMNS) if timesteps else None
            if self.timesteps is not None:
                opened.append(self.timesteps)
            self.jacobian = CsvLog(run_dir / JACOBIAN_FILE, JACOBIAN_COLUMNS) if jacobian else None
        except (OSError, DiskFull) as exc:
            # nothing was recorded yet: no half-made run directory (a 0-byte config.yaml, no meta.json)
            for log in opened:
                log.close()
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            if is_disk_full(exc):
                raise disk_full(run_dir, "the run's first records (config.yaml, meta.json)") from None
            if isinstance(exc, DiskFull):
                raise DiskFull(f"{run_dir}: no space left on the device while writing the run's first records; free some space") from None
            raise

    def write_meta(self, **updates: Any) -> None:
        self.meta.update(updates)
        write_json_atomic(self.dir / META_FILE, self.meta)

    def close(self, status: str, **updates: Any) -> None:
        assert status in STATUSES, status
        self.metrics.close()
        self.layers.close()
        if self.timesteps is not None:
            self.timesteps.close()
        if self.jacobian is not None:
            self.jacobian.close()
        self.write_meta(status=status, ended=now_iso(), **updates)


def write_stub(run_dir: Path, config_yaml: str, meta: dict[str, Any], status: str, error: str | None = None) -> None:
    """The records of a run that stopped before it could write any (a bad data file, the memory
    check): `run_dir` (created if needed) with config.yaml, meta.json closed with `status` and
    `error`, and the two tables with their headers alone."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    RunRecords(run_dir, config_yaml, meta).close(status, error=error)


def close_abandoned(run_dir: Path, status: str, error: str | None = None) -> bool:
    """The records of a run whose process died under it: a meta.json still `running` is closed with
    `status`, the end time and `error` (an unreadable one is left as it is). Returns whether the
    run had begun, i.e. has a meta.json."""
    path = Path(run_dir) / META_FILE
    if not path.exists():
        return False
    try:
        meta = read_meta(Path(run_dir))
        if meta.get("status") == "running":
            write_json_atomic(path, {**meta, "status": status, "ended": now_iso(), **({"error": error} if error else {})})
    except (GradlabError, OSError):
        pass
    return True


def pack_run(run_dir: Path) -> dict[str, bytes]:
    """The record files of a run directory, name to content, to carry the run to another machine."""
    return {path.name: path.read_bytes() for path in sorted(Path(run_dir).iterdir()) if path.is_file() and not path.name.startswith(".")}


def unpack_run(run_dir: Path, files: dict[str, bytes]) -> Path:
    """A packed run written into the new directory `run_dir` (an existing one is never reused)."""
    bad = [name for name in files if Path(name).name != name or name.startswith(".")]
    if bad:
        raise RunError(f"{run_dir}: {bad[0]!r} is not the name of a record file")
    run_dir = new_named_run_dir(Path(run_dir).parent, Path(run_dir).name)
    for name, content in files.items():
        (run_dir / name).write_bytes(content)
    return run_dir
