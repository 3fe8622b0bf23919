"""A run: the facts meta.json starts with (`run_meta`), and a run directory read back (`Run`,
`load_run`, `load_runs`).

A run cut off while writing leaves a partial last line or a last step with only some of its
layers; `load_run` drops those rows and says so (`Run.notes`). No torch; numpy and pandas only
where a table is read (records.read).
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, NamedTuple

from gradlab.records.layout import JACOBIAN_FILE, LAYERS_FILE, METRICS_FILE, TIMESTEPS_FILE, discover_runs, shown_path
from gradlab.records.read import FrameColumns, Table, read_config, read_meta, read_rows_fast, table_column, table_without
from gradlab.records.write import now_iso
from gradlab.vocab.errors import GradlabError, RunError
from gradlab.vocab.quantities import STATUSES
from gradlab.vocab.version import __version__

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


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


class Run:
    """One run directory read back: its resolved config, meta.json and both tables.

    `layers`, `metrics` (and a recurrent run's `timesteps`) are pandas DataFrames. A run read from
    files holds the numpy columns first and makes each DataFrame when it is first asked for:
    summaries read `arrays(...)`, which a thousand runs compared never turn into DataFrames."""

    def __init__(self, dir: Path, config: dict[str, Any], meta: dict[str, Any], layers: pd.DataFrame | Table,
                 metrics: pd.DataFrame | Table, notes: list[str] | None = None, timesteps: pd.DataFrame | None = None,
                 jacobian: pd.DataFrame | None = None):  # fmt: skip
        self.dir = dir
        self.config = config
        self.meta = meta
        self.layers = layers
        self.metrics = metrics
        self.notes = [] if notes is None else notes  # warnings: the run is read, with caveats
        self.timesteps = timesteps  # timesteps.csv of a recurrent run; None for the others
        self.jacobian = jacobian  # jacobian.csv of a run with log.jacobian; None for the others

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
    # rows are kept from either, with the same notes (table_column and table_without take both)
    # (a table far larger than the config can produce, or a step beyond train.steps or outside
    # int64, is damage: RunError, and the run is left out)
    layers = read_rows_fast(run_dir, LAYERS_FILE, notes, config)
    metrics = read_rows_fast(run_dir, METRICS_FILE, notes, config)
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
        steps, counts = np.unique(table_column(layers, "step"), return_counts=True)  # rows per step: one per layer
        expected = int(counts.max())
        torn = [int(step) for step, n in zip(steps, counts) if n < expected]
        for step in torn[:3]:
            notes.append(f"{run_dir}: step {step} of {LAYERS_FILE} has only {counts[steps == step][0]} of {expected} layers; that step is left out")
        if len(torn) > 3:
            notes.append(f"{run_dir}: {len(torn) - 3} more steps of {LAYERS_FILE} lack layers; they are left out")
        if torn:
            layers = table_without(layers, np.isin(table_column(layers, "step"), torn))

    def renumbered(frame: pd.DataFrame | Table) -> pd.DataFrame | Table:  # (a copy only where rows were left out)
        if isinstance(frame, Table):
            return frame  # (Table.frame() numbers its rows; pandas is not even imported here)
        import pandas as pd

        whole = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
        return frame if whole else frame.reset_index(drop=True)

    timesteps = None
    if (run_dir / TIMESTEPS_FILE).is_file():  # a recurrent run
        timesteps = read_rows_fast(run_dir, TIMESTEPS_FILE, notes, config)
        if isinstance(timesteps, Table):
            timesteps = timesteps.frame()
        # the steps whose layers.csv rows are whole; a last step cut off while its time steps were
        # written (fewer rows than the first step) is left out like a torn layers.csv step
        timesteps = timesteps[timesteps["step"].isin(np.unique(table_column(layers, "step")))]
        counts = timesteps.groupby("step").size()
        if len(counts) > 1 and counts.iloc[-1] < counts.iloc[0]:
            notes.append(f"{run_dir}: step {counts.index[-1]} of {TIMESTEPS_FILE} has only {counts.iloc[-1]} of {counts.iloc[0]} rows; that step is left out")
            timesteps = timesteps[timesteps["step"] != counts.index[-1]]
        timesteps = renumbered(timesteps)
    jacobian = None
    if (run_dir / JACOBIAN_FILE).is_file():  # a run with log.jacobian
        jacobian = read_rows_fast(run_dir, JACOBIAN_FILE, notes, config)
        if isinstance(jacobian, Table):
            jacobian = jacobian.frame()
        # the steps whose layers.csv rows are whole; a step whose blocks were not all written is left out
        jacobian = jacobian[jacobian["step"].isin(np.unique(table_column(layers, "step")))]
        counts = jacobian.groupby("step").size()
        if len(counts) and counts.iloc[-1] < counts.max():
            notes.append(f"{run_dir}: step {counts.index[-1]} of {JACOBIAN_FILE} has only {counts.iloc[-1]} of {counts.max()} rows; that step is left out")
            jacobian = jacobian[jacobian["step"] != counts.index[-1]]
        jacobian = renumbered(jacobian)
    run = Run(run_dir, config, meta, renumbered(layers), renumbered(metrics), notes, timesteps, jacobian)
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
    step = table_column(layers, "step")
    if step.dtype.kind != "i":
        steps = step.astype(float)
        if not np.isfinite(steps).all() or (steps != np.round(steps)).any() or (steps < 0).any():
            raise RunError(f"{run_dir}: {LAYERS_FILE}: column step holds empty or non-integer values; the rows cannot be placed in steps")
    layer = table_column(layers, "layer")
    if layer.dtype.kind != "i":
        numbers = layer.astype(float)
        bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
        if bad.any():
            example = layer[bad][0]
            notes.append(f"{run_dir}: {LAYERS_FILE}: {int(bad.sum())} rows have a layer that is not a whole number (e.g. {str(example)[:20]}); they are left out")
            layers = table_without(layers, bad)
    kinds = table_column(layers, "kind")
    odd = [kind for kind in dict.fromkeys(kinds) if kind not in KNOWN_KINDS and str(kind).lower() in KNOWN_KINDS]
    if odd:
        count = sum(1 for kind in kinds if kind in odd)
        notes.append(f"{run_dir}: {LAYERS_FILE}: kind {str(odd[0])[:20]!r} in {count} rows is not one gradlab writes ({', '.join(KNOWN_KINDS)}); those rows count as neither")
    return layers


class Loaded(NamedTuple):
    runs: list[Run]
    problems: list[str]  # every line to show the user, in order: missing paths, skipped runs, caveats
    skipped: list[str]  # the problems that left a path or a run out


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
