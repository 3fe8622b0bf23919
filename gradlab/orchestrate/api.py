"""gradlab as a library: the functions `import gradlab` offers, thin over the modules the CLI uses.

    gradlab.run(config, overrides=None, *, progress=None, plot=False) -> Run    train, then read back
    gradlab.load(path) -> Run                                               one run directory
    gradlab.load_runs(paths) -> list[Run]                                   every run under paths
    gradlab.comparison(runs, steps=(0, "last"), ...) -> Comparison          what `gradlab compare` shows
    gradlab.render(comparison, fmt="markdown") -> str                       as csv | markdown | json
    gradlab.figures(runs) -> dict[str, Figure]                              what `gradlab plot` draws
    gradlab.plot(runs, out_dir) -> list[Path]                               ... written as PNG files
    gradlab.check(run) -> list[Outcome]                                     a run's expect: section
    gradlab.write_report(paths, out_file, ...), gradlab.export_tensorboard(paths, out_dir)
    gradlab.export_mlflow(paths, tracking_uri=None, experiment=None)        one MLflow run per run

Wherever runs are taken, a run directory, a folder holding runs (searched recursively) and a `Run`
already loaded are all accepted. Errors are `gradlab.vocab.errors.GradlabError`s with the lines the CLI
would print (`exc.lines`). A `Run` (gradlab.records.run.Run) holds `.config` (dict), `.meta` (dict),
`.layers` and `.metrics` (pandas DataFrames, one row per layers.csv / metrics.csv row),
`.timesteps` (timesteps.csv of a recurrent run; None for the others), `.dir`, `.status` and
`.notes` (caveats: still running, cut off).

Why `comparison` and not `compare`: `gradlab.analysis.compare` is the module that computes the table, and a
package attribute of a submodule's name would be replaced by that module the first time it is
imported. Every import here happens inside the function, so `import gradlab` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gradlab.analysis.compare import Comparison
    from gradlab.analysis.expectations import Outcome
    from gradlab.config.experiment import Experiment
    from gradlab.orchestrate.progress import Progress
    from gradlab.records.run import Run, Step

RunsLike = Union[str, Path, "Run", Iterable[Union[str, Path, "Run"]]]


def experiment(config: str | Path | Mapping[str, Any] | Experiment, overrides: Sequence[str] | Mapping[str, Any] | None = None) -> Experiment:
    """The validated `Experiment` for `config`: a YAML file, a mapping as the YAML would hold it,
    or an Experiment; `overrides` are `--set` strings (`["model.depth=30"]`, values parsed as
    YAML) or a mapping of dotted keys to values (`{"model.depth": 30}`). Raises ConfigError."""
    from gradlab.config import load as configs
    from gradlab.config.experiment import Experiment, validate

    if isinstance(config, Experiment):
        if not overrides:
            return config
        data = config.model_dump(mode="json")
    elif isinstance(config, (str, Path)):
        data = configs.read_yaml(config)
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"config: a path, a mapping or an Experiment, not {type(config).__name__}")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            configs.set_dotted(data, key, value, where=key)
    elif overrides:
        if isinstance(overrides, str):
            overrides = [overrides]
        data = configs.apply_overrides(data, list(overrides))
    return validate(data)


def run(
    config: str | Path | Mapping[str, Any] | Experiment,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    progress: Progress | bool | None = None,
    plot: bool = False,
) -> Run:
    """Train `config` (see `experiment`) into a new run directory under its `log.out`, exactly as
    `gradlab run` does, and return the run read back. `progress`: True shows the progress bar of
    `gradlab run` (on stderr), a callable gets the run's events (gradlab.orchestrate.progress: RunStarted,
    StepLogged per logged step, RunEnded). `plot` draws the figures of `gradlab plot` into the run
    directory. A run that diverges is returned too (`run.status == "diverged"`,
    `run.meta["divergence"]` says where); its expect: section is checked by `check(run)`."""
    from gradlab.orchestrate import runner
    from gradlab.records.run import load_run

    if progress is True:
        from rich.console import Console

        from gradlab.orchestrate.progress import RunBar

        progress = RunBar(Console(stderr=True))
    result = runner.run(experiment(config, overrides), progress or None, plot=plot).result
    return load_run(result.run_dir)


def load(path: str | Path) -> Run:
    """One run directory read back (records.run.load_run): raises RunError when it cannot be read."""
    from gradlab.records.run import load_run

    return load_run(path)


def load_runs(paths: RunsLike) -> list[Run]:
    """Every run found under `paths`; runs already loaded are kept as they are. A run that cannot
    be read is left out with a warning (warnings.warn, one per line, as `gradlab compare` prints
    them); raises RunError when none can be read."""
    import warnings

    from gradlab.records.run import Run
    from gradlab.records.run import load_runs as read

    items = [paths] if isinstance(paths, (str, Path, Run)) else list(paths)
    runs = [item for item in items if isinstance(item, Run)]
    named = [item for item in items if not isinstance(item, Run)]
    if named:
        loaded = read(named)
        for line in loaded.problems:
            warnings.warn(line, stacklevel=3)
        runs += loaded.runs
    if not runs:
        from gradlab.vocab.errors import RunError

        raise RunError("no runs given")
    return runs


def comparison(
    runs: RunsLike,
    steps: Sequence[Step] = (0, "last"),
    *,
    vanish: float | None = None,
    explode: float | None = None,
    target_loss: float | None = None,
    depth_scale: float | None = None,
    scales: float | None = None,
) -> Comparison:
    """The table of `gradlab compare` (compare.compare_runs): one row per configuration, seeds
    averaged. `.table` is a pandas DataFrame of numbers; `render(...)` formats it as the CLI does,
    and `.notes` holds the caveats the CLI prints as warnings."""
    from gradlab.analysis.compare import compare_runs
    from gradlab.analysis.summaries import DEFAULT_THRESHOLDS, Thresholds

    thresholds = Thresholds(
        vanish=DEFAULT_THRESHOLDS.vanish if vanish is None else vanish,
        explode=DEFAULT_THRESHOLDS.explode if explode is None else explode,
        depth_scale=DEFAULT_THRESHOLDS.depth_scale if depth_scale is None else depth_scale,
        scales=DEFAULT_THRESHOLDS.scales if scales is None else scales,
    )
    return compare_runs(load_runs(runs), list(steps), thresholds, target_loss)


def render(comparison: Comparison, fmt: str = "markdown") -> str:
    """A comparison as `gradlab compare --format` writes it: csv, markdown or json."""
    from gradlab.show.display import render as rendered

    return rendered(comparison, fmt)


def figures(runs: RunsLike) -> dict[str, Figure]:
    """The figures of `gradlab plot` (matplotlib Figures, by the file name they are saved under)."""
    from gradlab.show.plots import build_figures

    return build_figures(load_runs(runs))


def plot(runs: RunsLike, out_dir: str | Path) -> list[Path]:
    """Draw the figures of `gradlab plot` into `out_dir` (created if needed); the PNG paths."""
    from gradlab.show.plots import save_figures

    return save_figures(figures(runs), out_dir)


def check(run: str | Path | Run) -> list[Outcome]:
    """The run's expect: section checked against its records (as `gradlab check`): one Outcome per
    expectation (`.passed`, `.line()`), [] when the config states none."""
    from gradlab.analysis import expectations
    from gradlab.records.run import Run

    if not isinstance(run, Run):
        return expectations.check_run(run)
    section = run.config.get("expect")
    if section is None:
        return []
    return expectations.check(run, expectations.parse(section, where=f"{run.dir / 'config.yaml'}: expect"))


def write_report(paths: Iterable[str | Path], out_file: str | Path, **options):
    """The HTML page of `gradlab report` (report.write_report); options: steps, thresholds, target_loss, title."""
    from gradlab.show.report import write_report as write

    return write(paths, out_file, **options)


def export_tensorboard(paths: Iterable[str | Path], out_dir: str | Path):
    """TensorBoard event files as `gradlab export --tensorboard` writes them (export.export_tensorboard)."""
    from gradlab.show.export import export_tensorboard as export

    return export(paths, out_dir)


def export_mlflow(paths: Iterable[str | Path], tracking_uri: str | None = None, experiment: str | None = None):
    """MLflow runs as `gradlab export --mlflow` logs them (export_mlflow.export_mlflow): per-layer
    metrics with their steps, the config as params, expect: results as tags, records and figures as
    artifacts. tracking_uri: e.g. "sqlite:///mlflow.db" (default: MLflow's); experiment: created if needed."""
    from gradlab.show.export_mlflow import export_mlflow as export

    return export(paths, tracking_uri, experiment)
