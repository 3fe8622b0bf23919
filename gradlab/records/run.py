"""The run directory: its layout, the CSV writers, meta.json, and the readers.

    results/<name>/<YYYYmmdd-HHMMSS>-<short id>/
        config.yaml   the resolved config (every default filled)
        meta.json     status, seed, device, versions, times, steps done, divergence
        metrics.csv   one row per logged step and split
        layers.csv    one row per (logged step, layer)

Writers append rows as they come and flush on every logged step, so a run that is killed keeps
every row it logged. meta.json is replaced atomically (write to a temporary file, then rename),
so it is never seen half written. A value that cannot exist is an empty cell, never a zero.

Reading a run back (`load_run`, `load_runs`) lives here too, next to the writers whose output it
reads: a run cut off while writing leaves a partial last line or a last step with only some of its
layers, and the reader drops those rows and says so (`Run.notes`).

This module imports no torch, numpy only where a table is read, and pandas only where a DataFrame
is made (a table as the writers write it is read into numpy columns, and its DataFrame made when
first asked for): the training process writes records without loading pandas, `gradlab check`
reads them without it, and `gradlab compare` and `gradlab plot` without torch.
The column names come from `gradlab.vocab.quantities`, the one home of every quantity.
"""

from __future__ import annotations

import csv
import errno
import functools
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, NamedTuple

from gradlab.vocab import quantities
from gradlab.vocab.errors import DiskFull, GradlabError, RunError
from gradlab.vocab.quantities import STATUSES
from gradlab.vocab.version import __version__

if TYPE_CHECKING:  # pandas and numpy are imported where a table is read, never by a writer
    import numpy as np
    import pandas as pd

# The headers of the two tables, from the declarations of their columns.
METRICS_COLUMNS: list[str] = list(quantities.METRICS_COLUMNS)
LAYERS_COLUMNS: list[str] = list(quantities.LAYERS_COLUMNS)
# A recurrent run (model.kind rnn, lstm, gru) also writes timesteps.csv: a row
# per (logged step, recurrent layer, time step).
TIMESTEPS_COLUMNS: list[str] = list(quantities.TIMESTEPS_COLUMNS)

CONFIG_FILE, META_FILE, METRICS_FILE, LAYERS_FILE = "config.yaml", "meta.json", "metrics.csv", "layers.csv"
TIMESTEPS_FILE = "timesteps.csv"
# The columns of each table that hold text; every other column holds numbers.
TEXT_COLUMNS = {METRICS_FILE: ("split",), LAYERS_FILE: ("name", "kind"), TIMESTEPS_FILE: ("name",)}


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
        for row in rows:
            writer.writerow([format_cell(row.get(column)) for column in self.columns])
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


def run_meta(name: Any, run_id: str, seed: Any, device: str | None, steps_planned: Any) -> dict[str, Any]:
    """meta.json of a run that starts now (RunRecords adds its status)."""
    return {
        "name": name, "run_id": run_id, "seed": seed, "device": device,
        "versions": {"gradlab": __version__, "torch": _torch_version(), "python": platform.python_version()},
        "started": now_iso(), "ended": None, "steps_planned": steps_planned, "steps_done": 0, "divergence": None,
    }  # fmt: skip


def _torch_version() -> str | None:
    """torch's version without importing it where it is not loaded yet (a sweep's parent)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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


class RunRecords:
    """The writers of one run directory."""

    def __init__(self, run_dir: Path, config_yaml: str, meta: dict[str, Any], layer_columns: list[str] | None = None, timesteps: bool = False):
        # layer_columns: layers.csv's header, LAYERS_COLUMNS unless the model adds some (quantities.layers_columns);
        # timesteps: a recurrent run's timesteps.csv is written too
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


MAX_META_BYTES = 1_000_000  # a meta.json is under a kilobyte


def read_meta(run_dir: Path) -> dict[str, Any]:
    from gradlab.vocab.yamlio import read_capped

    path = Path(run_dir) / META_FILE
    try:
        meta = json.loads(read_capped(path, MAX_META_BYTES))
    except FileNotFoundError:
        raise RunError(f"{run_dir}: no {META_FILE}") from None
    except OSError as exc:
        raise RunError(f"{run_dir}: {META_FILE} cannot be read ({exc.strerror})") from None
    except ValueError as exc:  # (json's errors are ValueErrors too)
        problem = str(exc) if not isinstance(exc, json.JSONDecodeError) else "is not valid JSON"
        raise RunError(f"{run_dir}: {META_FILE} {problem}" if problem.startswith("is ") else f"{run_dir}: {META_FILE} is not valid JSON") from None
    except RecursionError:
        raise RunError(f"{run_dir}: {META_FILE} is nested too deeply") from None
    if not isinstance(meta, dict):
        raise RunError(f"{run_dir}: {META_FILE} holds {type(meta).__name__ if meta is not None else 'null'}, not an object of run facts")
    return meta


# The sections of config.yaml that are mappings in every config gradlab writes: a run whose
# config has `model: 5` cannot be labelled or grouped, and is skipped with a line saying why.
MAPPING_SECTIONS = ("data", "model", "train", "log")


def read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    from gradlab.vocab.yamlio import RecordLoader, TooLarge, load_guarded, read_capped

    path = Path(run_dir) / CONFIG_FILE
    try:
        # libyaml's parser where PyYAML has it: the same safe constructor, 3x faster (a hundred
        # configs are most of `gradlab compare`'s reading time with the pure-Python one); the
        # document's expanded size is checked before it is built (one hostile run must not hang
        # compare on a shared folder)
        data = load_guarded(read_capped(path), RecordLoader)
    except FileNotFoundError:
        raise RunError(f"{run_dir}: no {CONFIG_FILE}") from None
    except TooLarge as exc:
        raise RunError(f"{run_dir}: {CONFIG_FILE} {exc.problem}") from None
    except ValueError as exc:
        raise RunError(f"{run_dir}: {CONFIG_FILE} {exc}") from None
    except OSError as exc:
        raise RunError(f"{run_dir}: {CONFIG_FILE} cannot be read ({exc.strerror})") from None
    except (yaml.YAMLError, RecursionError):
        raise RunError(f"{run_dir}: {CONFIG_FILE} is not valid YAML") from None
    if not isinstance(data, dict):
        raise RunError(f"{run_dir}: {CONFIG_FILE} is not a mapping")
    for section in MAPPING_SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise RunError(f"{run_dir}: {CONFIG_FILE}: {section} is {type(data[section]).__name__}, not a mapping (not a config gradlab wrote)")
    return data


def read_table(run_dir: Path, which: str) -> pd.DataFrame:
    """`metrics.csv` or `layers.csv` of a run as a pandas DataFrame with the contract's columns,
    exactly as written (a partial last line included: `read_rows` drops it)."""
    import pandas as pd

    columns = {METRICS_FILE: METRICS_COLUMNS, LAYERS_FILE: LAYERS_COLUMNS, TIMESTEPS_FILE: TIMESTEPS_COLUMNS}[which]
    path = Path(run_dir) / which
    if not path.is_file():
        raise RunError(f"{run_dir}: no {which}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RunError(f"{run_dir}: {which} cannot be parsed ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in frame.columns and c not in quantities.ADDED_COLUMNS]
    if missing:
        raise RunError(f"{run_dir}: {which} lacks columns {', '.join(missing)}")
    for column in quantities.ADDED_COLUMNS:  # a run recorded before these existed: empty cells
        if column in columns and column not in frame.columns:
            frame[column] = float("nan")
    return frame


def _ends_cleanly(path: Path) -> bool:
    """Whether a CSV ends with a whole line: a writer killed mid-write leaves a partial one."""
    with open(path, "rb") as file:
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(size - 1, 0))
        return size == 0 or file.read(1) == b"\n"


def _numeric(frame: pd.DataFrame, text_columns: Iterable[str], where: str) -> pd.DataFrame:
    """Every column but the text ones as numbers; a cell that is not a number is an error."""
    import pandas as pd

    text_columns = set(text_columns)
    converted = {}
    for column, dtype in frame.dtypes.items():
        if column in text_columns or pd.api.types.is_numeric_dtype(dtype):
            continue  # (read_csv already parsed it: converting again would copy it for nothing)
        try:
            converted[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError):
            raise RunError(f"{where}: column {column} holds values that are not numbers") from None
    return frame.assign(**converted) if converted else frame


def read_rows(run_dir: Path, which: str, notes: list[str]) -> pd.DataFrame:
    """One table of a run with its numbers as numbers, a partial last line (the run was killed
    mid-write) dropped and noted in `notes`."""
    frame = read_table(run_dir, which)
    if not _ends_cleanly(Path(run_dir) / which) and len(frame):
        notes.append(f"{run_dir}: {which} ends in a partial row (the run was cut off while writing it); that row is left out")
        frame = frame.iloc[:-1]
    return _numeric(frame, TEXT_COLUMNS[which], f"{run_dir}: {which}")


# A table exactly as CsvLog writes it is parsed without pandas: pd.read_csv costs about a
# millisecond a call whatever the file's size, most of `gradlab compare`'s time on a thousand runs.
# The fast path takes only what the writers write (a header of plain names, rows of the header's
# width, no quotes, CRs or blank lines, a last line that is whole; integers, floats as repr() writes
# them, empty cells, and text cells that are plain names); anything else goes to pd.read_csv. Either
# way the numbers are the ones pd.read_csv reads (its float parser rounds correctly, as float() does)
# and the DataFrame made is the same: tests/test_records.py holds the two paths equal.
_HEADER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:,[A-Za-z_][A-Za-z0-9_]*)*")
# A number as repr() and str() write one: an integer part of at most 18 digits (within int64, as
# read_csv reads it), a fraction, an exponent of at most 3 digits, or inf; empty for a missing value.
# (atomic groups and possessive repeats: the same language, matched without backtracking, 2x faster)
_NUMBER = r"(?>-?(?:[0-9]{1,18}+(?:\.[0-9]++)?+(?:e[+-][0-9]{1,3}+)?+|inf))?+"
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"  # a module name, a kind, a split
# text that read_csv turns into a missing value, a boolean or a float, whatever its case
_NOT_PLAIN_TEXT = frozenset({"nan", "na", "null", "none", "true", "false", "inf", "infinity"})


@functools.lru_cache(maxsize=64)
def _rows_pattern(header: str, text_columns: frozenset[str]) -> re.Pattern[str]:
    """Every row of a table with this header as the writers write it (one pattern per header)."""
    return re.compile("(?:" + ",".join(_NAME if name in text_columns else _NUMBER for name in header.split(",")) + r"\n)+")


def _parse_written(data: bytes, text_columns: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The columns of a CSV table as the writers write it (see above), or None: read it with pandas."""
    import numpy as np

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    header, _, body = text.partition("\n")
    if "\n\n" in body or body.startswith("\n") or not _HEADER.fullmatch(header):
        return None  # (read_csv skips blank lines)
    names = header.split(",")
    if len(set(names)) != len(names) or not _rows_pattern(header, frozenset(text_columns)).fullmatch(body):
        return None
    width = len(names)
    cells = body.replace("\n", ",").split(",")  # (every row has the header's width: the pattern says so)
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        column_cells = cells[j:-1:width]
        if name in text_columns:
            if any(cell.lower() in _NOT_PLAIN_TEXT for cell in set(column_cells)):
                return None
            column = np.array(column_cells, dtype=object)
        else:
            joined = ",".join(column_cells)
            if "" not in column_cells and "." not in joined and "e" not in joined and "n" not in joined:
                column = np.array(list(map(int, column_cells)), dtype=np.int64)  # every cell an integer: int64, as read_csv
            elif "" not in column_cells:
                column = np.array(list(map(float, column_cells)), dtype=np.float64)
            elif not any(column_cells):  # (a quantity the run did not measure)
                column = np.full(len(column_cells), np.nan)
            else:
                column = np.array([float(cell) if cell else math.nan for cell in column_cells], dtype=np.float64)
            if column.dtype.kind == "f" and "e+" in joined and np.isinf(column).sum() != joined.count("inf"):
                return None  # (an exponent past float's range: read_csv's to judge)
        column.flags.writeable = False
        columns[name] = column
    return columns


class Table:
    """A table of a run read back by the fast path: its numpy columns (`columns`, the rows kept),
    and `frame()`, the DataFrame pd.read_csv would have made of the file with the same rows kept."""

    def __init__(self, columns: dict[str, np.ndarray], keep: np.ndarray | None = None):
        self._all = columns  # every row of the file
        self._keep = keep  # a boolean mask of the rows kept; None: all
        self.columns = columns if keep is None else {name: _read_only(column[keep]) for name, column in columns.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def without(self, drop: np.ndarray) -> Table:
        """The table less the rows where `drop` (over the rows kept) is true."""
        import numpy as np

        keep = np.ones(len(next(iter(self._all.values()))), dtype=bool) if self._keep is None else self._keep.copy()
        keep[np.flatnonzero(keep)[drop]] = False
        return Table(self._all, keep)

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(self._all)
        # (the rows left out are left out by pandas, as load_run's pandas path does: the same dtypes)
        return frame if self._keep is None else frame[self._keep].reset_index(drop=True)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class FrameColumns(Mapping):
    """The columns of a DataFrame as numpy arrays, read from the frame at each access (never stale)."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __getitem__(self, name: str) -> np.ndarray:
        return self.frame[name].to_numpy()

    def __contains__(self, name: object) -> bool:
        return name in self.frame.columns

    def __iter__(self):
        return iter(self.frame.columns)

    def __len__(self) -> int:
        return len(self.frame.columns)


def read_rows_fast(run_dir: Path, which: str, notes: list[str]) -> Table | pd.DataFrame:
    """One table of a run: a Table where the file is as the writers write it, else `read_rows`'s DataFrame."""
    path = Path(run_dir) / which
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        columns = _parse_written(data, TEXT_COLUMNS[which]) if data is not None else None
        if columns is not None:
            expected = {METRICS_FILE: METRICS_COLUMNS, LAYERS_FILE: LAYERS_COLUMNS, TIMESTEPS_FILE: TIMESTEPS_COLUMNS}[which]
            missing = [c for c in expected if c not in columns and c not in quantities.ADDED_COLUMNS]
            if missing:
                raise RunError(f"{run_dir}: {which} lacks columns {', '.join(missing)}")
            rows = len(next(iter(columns.values())))
            for column in quantities.ADDED_COLUMNS:  # a run recorded before these existed: empty cells
                if column in expected and column not in columns:
                    import numpy as np

                    columns[column] = _read_only(np.full(rows, np.nan))
            return Table(columns)
    return read_rows(run_dir, which, notes)


def _column(table: Table | pd.DataFrame, name: str) -> np.ndarray:
    return table.columns[name] if isinstance(table, Table) else table[name].to_numpy()


def _without(table: Table | pd.DataFrame, drop: np.ndarray) -> Table | pd.DataFrame:
    return table.without(drop) if isinstance(table, Table) else table[~drop]


# --------------------------------------------------------------------------------------------
# A run read back
# --------------------------------------------------------------------------------------------

Step = int | Literal["last"]


def parse_step(text: str | int) -> Step:
    """'0', 'last' or 'N' (a logged step) -> 0, 'last' or N."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and text.strip().lower() == "last":
        return "last"
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"got {text!r}; expected 0, last or a step number") from None
    if value < 0:
        raise ValueError(f"got {value}; a step is 0 or more")
    return value


def shown_path(path: str | Path) -> Path:
    """`path` relative to the working directory when it lies below it: shorter messages and labels."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


class Run:
    """One run directory read back: its resolved config, meta.json and both tables.

    `layers`, `metrics` (and a recurrent run's `timesteps`) are pandas DataFrames. A run read from
    files holds the numpy columns first and makes each DataFrame when it is first asked for:
    summaries read `arrays(...)`, which a thousand runs compared never turn into DataFrames."""

    def __init__(self, dir: Path, config: dict[str, Any], meta: dict[str, Any], layers: pd.DataFrame | Table,
                 metrics: pd.DataFrame | Table, notes: list[str] | None = None, timesteps: pd.DataFrame | None = None):  # fmt: skip
        self.dir = dir
        self.config = config
        self.meta = meta
        self.layers = layers
        self.metrics = metrics
        self.notes = [] if notes is None else notes  # warnings: the run is read, with caveats
        self.timesteps = timesteps  # timesteps.csv of a recurrent run; None for the others

    @property
    def layers(self) -> pd.DataFrame:
        if isinstance(self._layers, Table):
            self._layers = self._layers.frame()
        return self._layers

    @layers.setter
    def layers(self, value: pd.DataFrame | Table) -> None:
        self._layers = value

    @property
    def metrics(self) -> pd.DataFrame:
        if isinstance(self._metrics, Table):
            self._metrics = self._metrics.frame()
        return self._metrics

    @metrics.setter
    def metrics(self, value: pd.DataFrame | Table) -> None:
        self._metrics = value

    def arrays(self, which: Literal["layers", "metrics"]) -> Mapping[str, np.ndarray]:
        """A table's columns as numpy arrays (read-only), without making its DataFrame when the
        run was read from files and the DataFrame was not asked for; else read from the DataFrame."""
        table = self._layers if which == "layers" else self._metrics
        return table.columns if isinstance(table, Table) else FrameColumns(table)

    def __repr__(self) -> str:
        return f"Run(dir={str(self.dir)!r}, status={self.status!r}, last_step={self.last_step!r})"

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.dir.parent.name))

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def short_id(self) -> str:
        # Run directories are named <YYYYmmdd-HHMMSS>-<hex id>.
        return self.dir.name.rsplit("-", 1)[-1]

    @property
    def last_step(self) -> int | None:
        """None when nothing was logged (a run that diverged at its very first step)."""
        if not isinstance(self._layers, Table):
            return None if self.layers.empty else int(self.layers["step"].max())
        import numpy as np

        steps = self._layers.columns["step"]
        return None if not len(steps) else int(np.nanmax(steps) if steps.dtype.kind == "f" else steps.max())

    def resolve_step(self, step: Step) -> int | None:
        return self.last_step if step == "last" else int(step)


def load_run(run_dir: str | Path, config: dict[str, Any] | None = None) -> Run:
    """Read one run directory. Raises RunError when it cannot be read at all.

    Problems that leave the run usable (still marked running, interrupted, a partial last row, a
    last step with only some of its layers) are collected in `Run.notes`, one line each, naming
    the run.
    """
    import numpy as np

    run_dir = shown_path(Path(run_dir))
    notes: list[str] = []
    meta = read_meta(run_dir)
    config = read_config(run_dir) if config is None else config  # (a caller that read it already)
    # a Table where the file is as the writers write it, else a DataFrame by pd.read_csv: the same
    # rows are kept from either, with the same notes (_column and _without take both)
    layers = read_rows_fast(run_dir, LAYERS_FILE, notes)
    metrics = read_rows_fast(run_dir, METRICS_FILE, notes)
    if not len(layers) and meta.get("status") != "diverged":
        # (a run that diverged at step 0 logged nothing, and is still a result to compare)
        raise RunError(f"{run_dir}: {LAYERS_FILE} has no rows (the run logged nothing)")
    layers = _checked_keys(layers, run_dir, notes)
    # A step with fewer rows than the run has layers is incomplete, wherever the cut fell: a
    # partial line, a process killed between two rows of a step, or a file cut at a line boundary
    # (a run closed as completed included). Its layers would be summarized as if they were the
    # whole network, so the step is left out and said so. The run's layer count is that of its
    # first logged step (step 0 is whole unless the file was cut within it), or the most any step has.
    if len(layers):
        steps, counts = np.unique(_column(layers, "step"), return_counts=True)  # rows per step: one per layer
        expected = int(counts.max())
        torn = [int(step) for step, n in zip(steps, counts) if n < expected]
        for step in torn[:3]:
            notes.append(f"{run_dir}: step {step} of {LAYERS_FILE} has only {counts[steps == step][0]} of {expected} layers; that step is left out")
        if len(torn) > 3:
            notes.append(f"{run_dir}: {len(torn) - 3} more steps of {LAYERS_FILE} lack layers; they are left out")
        if torn:
            layers = _without(layers, np.isin(_column(layers, "step"), torn))

    def renumbered(frame: pd.DataFrame | Table) -> pd.DataFrame | Table:  # (a copy only where rows were left out)
        if isinstance(frame, Table):
            return frame  # (Table.frame() numbers its rows; pandas is not even imported here)
        import pandas as pd

        whole = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
        return frame if whole else frame.reset_index(drop=True)

    timesteps = None
    if (run_dir / TIMESTEPS_FILE).is_file():  # a recurrent run
        timesteps = read_rows_fast(run_dir, TIMESTEPS_FILE, notes)
        if isinstance(timesteps, Table):
            timesteps = timesteps.frame()
        # the steps whose layers.csv rows are whole; a last step cut off while its time steps were
        # written (fewer rows than the first step) is left out like a torn layers.csv step
        timesteps = timesteps[timesteps["step"].isin(np.unique(_column(layers, "step")))]
        counts = timesteps.groupby("step").size()
        if len(counts) > 1 and counts.iloc[-1] < counts.iloc[0]:
            notes.append(f"{run_dir}: step {counts.index[-1]} of {TIMESTEPS_FILE} has only {counts.iloc[-1]} of {counts.iloc[0]} rows; that step is left out")
            timesteps = timesteps[timesteps["step"] != counts.index[-1]]
        timesteps = renumbered(timesteps)
    run = Run(run_dir, config, meta, renumbered(layers), renumbered(metrics), notes, timesteps)
    if run.status == "running":
        notes.append(f"{run_dir}: still marked running (in progress, or killed before it could finish); compared up to step {run.last_step}")
    elif run.status == "interrupted":
        notes.append(f"{run_dir}: was interrupted; compared up to step {run.last_step}")
    elif run.status == "failed":
        notes.append(f"{run_dir}: failed; compared up to step {run.last_step}")
    elif run.status not in STATUSES:
        notes.append(f"{run_dir}: meta.json has status {run.status!r}, not one of {', '.join(STATUSES)}")
    return run


KNOWN_KINDS = ("hidden", "head")  # what the writers put in layers.csv's kind column


def _checked_keys(layers: Table | pd.DataFrame, run_dir: Path, notes: list[str]) -> Table | pd.DataFrame:
    """layers.csv's keys as the writers wrote them: an empty or fractional `step` or `layer` makes
    rows that belong to no step or layer (RunError for steps: nothing can be placed; rows with a
    fractional layer are left out and said); a `kind` in another case (HIDDEN) is said, since
    such rows count as no hidden layer. Integer columns (what the writers write) cost nothing."""
    import numpy as np

    if not len(layers):
        return layers
    step = _column(layers, "step")
    if step.dtype.kind != "i":
        steps = step.astype(float)
        if not np.isfinite(steps).all() or (steps != np.round(steps)).any() or (steps < 0).any():
            raise RunError(f"{run_dir}: {LAYERS_FILE}: column step holds empty or non-integer values; the rows cannot be placed in steps")
    layer = _column(layers, "layer")
    if layer.dtype.kind != "i":
        numbers = layer.astype(float)
        bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
        if bad.any():
            example = layer[bad][0]
            notes.append(f"{run_dir}: {LAYERS_FILE}: {int(bad.sum())} rows have a layer that is not a whole number (e.g. {str(example)[:20]}); they are left out")
            layers = _without(layers, bad)
    kinds = _column(layers, "kind")
    odd = [kind for kind in dict.fromkeys(kinds) if kind not in KNOWN_KINDS and str(kind).lower() in KNOWN_KINDS]
    if odd:
        count = sum(1 for kind in kinds if kind in odd)
        notes.append(f"{run_dir}: {LAYERS_FILE}: kind {str(odd[0])[:20]!r} in {count} rows is not one gradlab writes ({', '.join(KNOWN_KINDS)}); those rows count as neither")
    return layers


class Loaded(NamedTuple):
    runs: list[Run]
    problems: list[str]  # every line to show the user, in order: missing paths, skipped runs, caveats
    skipped: list[str]  # the problems that left a path or a run out


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


def load_runs(paths: Iterable[str | Path]) -> Loaded:
    """The runs found under `paths` (run directories or folders holding runs, searched recursively).

    A path without runs and a run that cannot be read are reported and left out; a run that can
    be read with caveats (still running, cut off) is reported and kept. Raises RunError, with
    every problem, only when no run at all could be read.
    """
    paths = list(paths)
    run_dirs, skipped = discover_runs(paths)
    problems = list(skipped)
    runs: list[Run] = []
    for run_dir in run_dirs:
        try:
            run = load_run(run_dir)
        except GradlabError as exc:
            lines = [f"{line}; skipped" for line in exc.lines]
            skipped.extend(lines)
            problems.extend(lines)
            continue
        problems.extend(run.notes)
        runs.append(run)
    if not runs:
        raise RunError(*(problems or [f"no runs found in {', '.join(map(str, paths)) or 'no paths'}"]), "no run could be read")
    return Loaded(runs, problems, skipped)


# --------------------------------------------------------------------------------------------
# Run-directory operations for orchestration (runner, executors, sweep); appended by O, issue 8
# --------------------------------------------------------------------------------------------


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
