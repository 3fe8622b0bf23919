"""Reading a run's files: meta.json, config.yaml and the tables, a table as the writers write it
parsed without pandas.

A run cut off while writing leaves a partial last line: `read_rows` drops it and says so. This
module imports no torch, numpy only where a table is read, and pandas only where a DataFrame is
made (a table as the writers write it is read into numpy columns, and its DataFrame made when
first asked for): `gradlab check` reads runs without pandas, `gradlab compare` without torch.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from gradlab.records.layout import (
    CONFIG_FILE,
    JACOBIAN_COLUMNS,
    JACOBIAN_FILE,
    LAYERS_COLUMNS,
    LAYERS_FILE,
    META_FILE,
    METRICS_COLUMNS,
    METRICS_FILE,
    TEXT_COLUMNS,
    TIMESTEPS_COLUMNS,
    TIMESTEPS_FILE,
)
from gradlab.vocab import quantities
from gradlab.vocab.errors import RunError

if TYPE_CHECKING:  # pandas and numpy are imported where a table is read, never by a writer
    import numpy as np
    import pandas as pd

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

    columns = {METRICS_FILE: METRICS_COLUMNS, LAYERS_FILE: LAYERS_COLUMNS, TIMESTEPS_FILE: TIMESTEPS_COLUMNS, JACOBIAN_FILE: JACOBIAN_COLUMNS}[which]
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


# The largest step a table may hold: a step is an int64 everywhere it is used (pandas, numpy,
# TensorBoard's event step). A step outside 0 ... STEP_MAX, or beyond the run's train.steps, is damage.
STEP_MAX = 2**63 - 1


def checked_steps(table: Table | pd.DataFrame, run_dir: Path, which: str, last_step: int | None = None) -> Table | pd.DataFrame:
    """`table` when every step it holds can be a step of the run: a whole number in 0 ... 2**63 - 1 and,
    where the run's config gives train.steps (`last_step`), not beyond it. Otherwise RunError, one
    line naming the file and the step: the run is skipped, the same in every command (a huge step
    would overflow an int64 cast in compare, report and export). Empty or fractional steps are
    _checked_keys's to say (run.py)."""
    import numpy as np

    step = table_column(table, "step")
    if not len(step):
        return table
    if step.dtype.kind == "O":  # huge integers pandas keeps as Python ints or text
        try:
            step = np.array([float(value) for value in step], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return table  # (not numbers: read_rows's error)
    if step.dtype.kind in "iu":
        low, high = int(step.min()), int(step.max())
    elif step.dtype.kind == "f":
        finite = step[np.isfinite(step)]
        if not len(finite):
            return table
        low, high = float(finite.min()), float(finite.max())
    else:
        return table
    if low < 0 or high > STEP_MAX:
        bad = low if low < 0 else high
        raise RunError(f"{run_dir}: {which}: step {_shown_step(bad)} is outside 0 ... 2^63-1 (damaged records); the run is left out")
    if last_step is not None and high > last_step:
        raise RunError(f"{run_dir}: {which}: step {_shown_step(high)} is beyond the run's train.steps ({last_step}) (damaged records); the run is left out")
    return table


def _shown_step(value: float | int) -> str:
    return str(value) if isinstance(value, int) or not float(value).is_integer() or abs(value) < 1e16 else f"{value:.6g}"


def planned_steps(config: dict[str, Any] | None) -> int | None:
    """train.steps of a config gradlab run wrote (its last step logged is at most that); None where
    the config gives none (a run of watch or of the Lightning callback)."""
    train = config.get("train") if isinstance(config, dict) else None
    steps = train.get("steps") if isinstance(train, dict) else None
    return steps if _whole(steps) else None


def _whole(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


# What a row of a table can take, generously: ~20 numbers at 24 characters, a long module name.
ROW_BYTES_MAX = 4096
# A table is refused when it is this many times larger than the most its run's config can produce.
SIZE_MARGIN = 16
# A table without such a bound (watch, Lightning) larger than this is scanned, in bounded memory,
# for a NUL byte (which no table holds) before it is read.
SCAN_ABOVE = 64 * 2**20
SCAN_CHUNK = 8 * 2**20


def table_cap(config: dict[str, Any] | None, which: str) -> int | None:
    """The most bytes `which` of a run with this config can hold (SIZE_MARGIN times a generous
    count of its rows), or None where the config does not say (no train.steps, log.every, model.depth)."""
    steps = planned_steps(config)
    log = config.get("log") if isinstance(config, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    every = log.get("every") if isinstance(log, dict) else None
    depth = model.get("depth") if isinstance(model, dict) else None
    if steps is None or not _whole(every, 1) or not _whole(depth):
        return None
    logged = steps // every + 2
    if which == METRICS_FILE:
        evaluate = config["train"].get("eval_every")
        rows = 2 * (logged + steps // (evaluate if _whole(evaluate, 1) else 1) + 2)
    else:
        rows = logged * (depth + 4)
        if which == TIMESTEPS_FILE:
            data = config.get("data")
            length = data.get("seq_len") if isinstance(data, dict) else None
            rows *= length if _whole(length, 1) else 1000
    return SIZE_MARGIN * rows * ROW_BYTES_MAX + 2**20


def guard_table_size(path: Path, run_dir: Path, which: str, cap: int | None) -> None:
    """RunError (one line; the run is left out) for a table far larger than its run's config can
    produce, or, where the config gives no bound, a large one holding a NUL byte (found reading
    SCAN_CHUNK bytes at a time): a 2 GB layers.csv of NUL bytes is refused in a moment, in bounded
    memory, not parsed."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # (reading it says why)
    if cap is not None and size > cap:
        raise RunError(f"{run_dir}: {which} is {size:,} bytes, far beyond what the run's config can produce (at most {cap:,}); damaged records, the run is left out")
    if size <= SCAN_ABOVE:
        return
    try:
        with open(path, "rb") as file:
            offset = 0
            while chunk := file.read(SCAN_CHUNK):
                at = chunk.find(b"\0")
                if at >= 0:
                    raise RunError(f"{run_dir}: {which} holds a NUL byte at offset {offset + at:,} of {size:,}: not a table (damaged records); the run is left out")
                offset += len(chunk)
    except OSError:
        return


def read_rows_fast(run_dir: Path, which: str, notes: list[str], config: dict[str, Any] | None = None) -> Table | pd.DataFrame:
    """One table of a run: a Table where the file is as the writers write it, else `read_rows`'s
    DataFrame. RunError, before reading, for a table far larger than the run's `config` can produce
    (guard_table_size), and after, where a step cannot be a step of the run (checked_steps)."""
    guard_table_size(Path(run_dir) / which, run_dir, which, table_cap(config, which))
    return checked_steps(_read_rows_fast(run_dir, which, notes), run_dir, which, planned_steps(config))


def _read_rows_fast(run_dir: Path, which: str, notes: list[str]) -> Table | pd.DataFrame:
    path = Path(run_dir) / which
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        columns = _parse_written(data, TEXT_COLUMNS[which]) if data is not None else None
        if columns is not None:
            expected = {METRICS_FILE: METRICS_COLUMNS, LAYERS_FILE: LAYERS_COLUMNS, TIMESTEPS_FILE: TIMESTEPS_COLUMNS, JACOBIAN_FILE: JACOBIAN_COLUMNS}[which]
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


def table_column(table: Table | pd.DataFrame, name: str) -> np.ndarray:
    return table.columns[name] if isinstance(table, Table) else table[name].to_numpy()


def table_without(table: Table | pd.DataFrame, drop: np.ndarray) -> Table | pd.DataFrame:
    return table.without(drop) if isinstance(table, Table) else table[~drop]
