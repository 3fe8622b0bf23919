"""Run records as MLflow runs (`gradlab export RUN_OR_FOLDER --mlflow [--tracking-uri URI] [--experiment NAME]`).

    export_mlflow(paths, tracking_uri=None, experiment=None)   every run found under `paths`, one MLflow run each

What a gradlab run becomes:

    metrics    <quantity>/<layer name>   every layers.csv cell at its step: delta_norm/blocks.3
               <split>/<column>          every number of metrics.csv: train/loss, test/accuracy, train/lr, ...
               profile/<quantity>        the gradient profile of `gradlab compare` at every logged step
    params     the resolved config.yaml as dotted keys, every leaf its own param (model.depth,
               optim.lr, model.activation.name), each value as one line of YAML
    tags       mlflow.runName (the run's label, as the TensorBoard export names its folder),
               gradlab.status, gradlab.run_dir; where the config has an expect: section,
               gradlab.expect (passed | failed) and gradlab.expect.<name>, the line `gradlab check`
               prints for that expectation
    artifacts  records/ (config.yaml, meta.json, metrics.csv, layers.csv, timesteps.csv) and
               figures/ (the PNG files of `gradlab plot` for the run)
    status     completed -> FINISHED, diverged and failed -> FAILED, interrupted -> KILLED, a run
               still running stays RUNNING; start and end times from meta.json

Nothing is recomputed: a metric is the CSV cell's own number (MLflow stores a double, so it reads
back equal), and the profile comes from the function `gradlab compare` uses. An empty cell (a value
that cannot exist) logs no point, never a zero. A metric's timestamp is the run's start plus the
step's time_s, so MLflow's time axes show training time.

Names. MLflow allows letters, digits, `_ - . /` and space in a key. A layer's later calls (`shared#1`)
become `shared-1`; any other character becomes `_` (`gradlab.expect.gain_at_0` for `gain@0`).

Where to. `tracking_uri` (`--tracking-uri`): a SQLite file (`sqlite:///mlflow.db`), a tracking
server (`http://host:5000`), or any store MLflow knows. Without it, MLflow's default:
MLFLOW_TRACKING_URI, else (MLflow 3.7 and later) `sqlite:///mlflow.db` in the current folder with
the artifacts in `./mlruns/`, (earlier) the local `./mlruns/` folder. `experiment`
(`--experiment`): created when it does not exist; without it MLFLOW_EXPERIMENT_NAME, else MLflow's
`Default`. Every export makes new MLflow runs (exporting twice lists a run twice).

MLflow is an optional extra: `pip install 'gradlab[mlflow]'` (mlflow-skinny, the tracking client,
with SQLAlchemy and Alembic for the SQLite store; the full mlflow package works too). Like every
module on this floor it imports no torch.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from gradlab.analysis import expectations
from gradlab.analysis.configdiff import flatten, flatten_config
from gradlab.analysis.summaries import profile_at
from gradlab.records.layout import CONFIG_FILE, LAYERS_FILE, META_FILE, METRICS_FILE, TIMESTEPS_FILE
from gradlab.records.run import Run, load_runs
from gradlab.show.export import run_labels, wall_times
from gradlab.vocab import quantities
from gradlab.vocab.errors import GradlabError, RunError
from gradlab.vocab.values import flow

INSTALL = "pip install 'gradlab[mlflow]'"
RECORD_FILES = (CONFIG_FILE, META_FILE, METRICS_FILE, LAYERS_FILE, TIMESTEPS_FILE)
NOT_METRICS = ("step", "split", "time_s")  # metrics.csv columns that are not a metric of the step
STATUSES = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}  # running: RUNNING
# MLflow's limits on one log_batch call, and on a param's value (MLflow 2.10 and later)
METRICS_PER_BATCH, PARAMS_PER_BATCH, TAGS_PER_BATCH, PARAM_LENGTH = 1000, 100, 100, 6000
# The first request to a tracking server: no retries and a short timeout (MLflow's own defaults
# retry for minutes before an unreachable server is reported); MLflow's variables, where the user
# set them, win.
FIRST_REQUEST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@dataclass
class ExportedRun:
    run_dir: Path
    label: str  # the MLflow run's name
    run_id: str  # the MLflow run's id
    steps: int  # logged steps with at least one metric
    metrics: int  # metric points logged
    params: int
    artifacts: int  # files logged


@dataclass
class MlflowSummary:
    tracking_uri: str
    experiment: str
    experiment_id: str
    runs: list[ExportedRun]
    problems: list[str] = field(default_factory=list)  # lines to show the user (skipped or partial runs)


def _mlflow():
    """MLflow's client and entities, or one line saying how to install them."""
    try:
        import mlflow
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RunError(f"--mlflow: the mlflow package is not installed; {INSTALL}") from None
    return mlflow, MlflowClient, MlflowException, Metric, Param


def key(name: str) -> str:
    """`name` as an MLflow key: `#` (a layer's later call) -> `-`, any character MLflow refuses -> `_`."""
    text = re.sub(r"[^\w./\- ]", "_", name.replace("#", "-"), flags=re.ASCII)
    parts = [part if part not in ("", ".", "..") else "_" for part in text.split("/")]  # no empty or relative path parts
    return "/".join(parts)


class _Keys:
    """Unique MLflow keys for the names of one run: a name that would land on another's key gets
    `-2`, `-3`, ... appended."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.taken: set[str] = set()

    def __call__(self, name: str) -> str:
        if name not in self.names:
            base = candidate = key(name)
            n = 1
            while candidate in self.taken:
                n += 1
                candidate = f"{base}-{n}"
            self.names[name] = candidate
            self.taken.add(candidate)
        return self.names[name]


def _reason(exc: BaseException) -> str:
    """What went wrong, on one line."""
    text = " ".join(str(getattr(exc, "message", exc)).split())
    if any(sign in text for sign in ("Max retries exceeded", "Failed to establish a new connection", "NameResolutionError", "Read timed out")):
        return "cannot reach the tracking server (is it running, and is the address right?)"
    return text or type(exc).__name__


@contextmanager
def _fast_first_request() -> Iterator[None]:
    """The first request to a tracking server answered fast, reachable or not (FIRST_REQUEST)."""
    added = [name for name in FIRST_REQUEST if name not in os.environ]
    for name in added:
        os.environ[name] = FIRST_REQUEST[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """MLflow's and Alembic's INFO lines (a new SQLite store's tables being created) kept quiet."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None


def _metrics(run: Run, keys: _Keys, Metric) -> tuple[list, int]:
    """Every metric point of `run` (Metric entities), and the number of steps they cover."""
    times = wall_times(run)
    first = min(times.values(), default=0.0)
    points: list = []
    steps: set[int] = set()

    def point(name: str, step: int, value: Any) -> None:
        number = float(value)
        if math.isnan(number):  # an empty cell: no point, never a made-up zero
            return
        points.append(Metric(keys(name), number, _ms(times.get(step, first)), step))
        steps.add(step)

    layers = run.layers.sort_values(["step", "layer"], kind="stable")
    present = [q.name for q in quantities.LAYER_QUANTITIES if q.name in layers.columns]
    for row in layers.itertuples(index=False):
        for name in present:
            point(f"{name}/{row.name}", int(row.step), getattr(row, name))

    columns = [c for c in run.metrics.columns if c not in NOT_METRICS]
    for row in run.metrics.sort_values(["step"], kind="stable").to_dict("records"):
        for column in columns:
            if isinstance(row[column], (int, float)) and not isinstance(row[column], bool):
                point(f"{row['split']}/{column}", int(row["step"]), row[column])

    for step in sorted(set(layers.loc[layers["kind"] == "hidden", "step"].astype(int))):
        for name, number in profile_at(run, step).items():  # as `gradlab compare` computes it
            point(f"profile/{name}", step, number)
    return points, len(steps)


def _params(run: Run, keys: _Keys, Param) -> list:
    params = []
    # every leaf its own param (optim.lr); a component written as a bare name is its .name
    # (model.activation.name = relu), as one written as a mapping, so runs share their keys
    for name, value in flatten(flatten_config(run.config)).items():
        text = flow(value)
        if len(text) > PARAM_LENGTH:  # (the whole config travels as records/config.yaml)
            text = text[: PARAM_LENGTH - 3] + "..."
        params.append(Param(keys(name), text))
    return params


def _tags(run: Run, label: str, keys: _Keys, problems: list[str]) -> dict[str, str]:
    tags = {"mlflow.runName": label, "gradlab.status": str(run.status), "gradlab.run_dir": str(run.dir.resolve())}
    section = run.config.get("expect")
    if section is None:
        return tags
    try:
        outcomes = expectations.check(run, expectations.parse(section, where=f"{run.dir / CONFIG_FILE}: expect"))
    except GradlabError as exc:
        problems.extend(f"{line}; its expect: section is not exported" for line in exc.lines)
        return tags
    tags["gradlab.expect"] = "passed" if all(o.passed for o in outcomes) else "failed"
    for outcome in outcomes:
        tags[keys(f"gradlab.expect.{outcome.name.replace('@', '_at_')}")] = outcome.line()
    return tags


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _figures(run: Run, problems: list[str], out_dir: Path) -> list[Path]:
    from gradlab.show.plots import build_figures, save_figures

    try:
        return save_figures(build_figures([run]), out_dir)
    except GradlabError as exc:
        problems.extend(f"{run.dir}: {line}; no figures exported" for line in exc.lines)
        return []


def _connect(uri: str | None, experiment: str | None):
    """The client, the tracking URI, and the experiment's name and id (created if needed), or one
    line saying why not."""
    mlflow, MlflowClient, MlflowException, *_ = _mlflow()
    if uri is not None and not uri.strip():
        raise RunError("--tracking-uri: give a tracking URI (sqlite:///mlflow.db, http://host:5000, ...)")
    name = experiment if experiment is not None else os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    if not name.strip():
        raise RunError("--experiment: give an experiment name")
    where = f"--tracking-uri {uri}" if uri is not None else "--mlflow: the tracking store"
    try:
        if uri is None:
            uri = mlflow.get_tracking_uri()
            where = f"--mlflow: the tracking store {uri}"
        with _fast_first_request():
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            raise RunError(f"--experiment {name}: deleted in the tracking store {uri}; restore it or give another name")
        experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
    except GradlabError:
        raise
    except (MlflowException, OSError, ValueError) as exc:
        raise RunError(f"{where}: {_reason(exc)}") from None
    except Exception as exc:  # the store's own errors (SQLAlchemy's, requests') share no base class
        raise RunError(f"{where}: {type(exc).__name__}: {_reason(exc)}") from None
    return client, uri, name, experiment_id


def export_mlflow(paths: Iterable[str | Path], tracking_uri: str | None = None, experiment: str | None = None) -> MlflowSummary:
    """Log every run found under `paths` as an MLflow run of `experiment` in the tracking store
    at `tracking_uri` (see the module docstring for what is logged and the defaults).

    Runs that cannot be read are reported in `problems` and left out (as in `gradlab compare`);
    raises RunError when no run can be read, when MLflow is not installed, and when the tracking
    store cannot be reached or written (a run half logged is then marked FAILED in MLflow).
    """
    _, _, MlflowException, Metric, Param = _mlflow()
    loaded = load_runs(paths)
    problems = list(loaded.problems)
    with _quiet_logging():
        client, uri, name, experiment_id = _connect(tracking_uri, experiment)
        exported = []
        for run, label in zip(loaded.runs, run_labels(loaded.runs)):
            points, steps = _metrics(run, _Keys(), Metric)  # (metrics, params and tags: three namespaces)
            params = _params(run, _Keys(), Param)
            tags = _tags(run, label, _Keys(), problems)
            start = _time(run.meta.get("started"))
            run_id = None
            try:
                created = client.create_run(experiment_id, start_time=None if start is None else _ms(start), tags=tags, run_name=label)
                run_id = created.info.run_id
                for batch in _chunks(params, PARAMS_PER_BATCH):
                    client.log_batch(run_id, params=batch)
                for batch in _chunks(points, METRICS_PER_BATCH):
                    client.log_batch(run_id, metrics=batch)
                files = [run.dir / f for f in RECORD_FILES if (run.dir / f).is_file()]
                for path in files:
                    client.log_artifact(run_id, str(path), artifact_path="records")
                with tempfile.TemporaryDirectory(prefix="gradlab-figures-") as scratch:
                    figures = _figures(run, problems, Path(scratch))
                    if figures:
                        client.log_artifacts(run_id, scratch, artifact_path="figures")
                status = STATUSES.get(str(run.status))
                if status is not None:
                    end = _time(run.meta.get("ended"))
                    client.set_terminated(run_id, status, end_time=None if end is None else _ms(end))
            except (MlflowException, OSError) as exc:
                _abandon(client, run_id)
                raise RunError(f"--mlflow: {label}: {_reason(exc)}") from None
            except Exception as exc:  # the store's own errors
                _abandon(client, run_id)
                raise RunError(f"--mlflow: {label}: {type(exc).__name__}: {_reason(exc)}") from None
            exported.append(ExportedRun(run.dir, label, run_id, steps, len(points), len(params), len(files) + len(figures)))
    return MlflowSummary(uri, name, experiment_id, exported, problems)


def _abandon(client, run_id: str | None) -> None:
    """A run half logged is marked FAILED, where the store still answers."""
    if run_id is None:
        return
    try:
        client.set_terminated(run_id, "FAILED")
    except Exception:  # the store that just failed may fail again: the error already raised says why
        pass
