"""The `gradlab` command line: a thin Typer layer over the library.

Every command parses its arguments, calls library functions a test or a notebook could call too,
and prints. `GradlabError`s are caught here, at the boundary, and become one line per problem on
stderr with their exit code (2 for bad input); nothing below this module prints errors or exits.

Every gradlab module is imported inside the command that needs it: `gradlab --help` loads typer
and rich alone, `validate` and `components` neither torch nor pandas, `compare`, `plot` and
`check` no torch (they work where torch is not installed). tests/test_cli_startup.py checks what
each command imports; benchmarks/startup.py times them.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from gradlab.vocab.errors import ConfigError, ExpectationFailed, GradlabError, RunError
from gradlab.vocab.text import printable

app = typer.Typer(
    name="gradlab",
    help="Gradient-stability experiments from a YAML file: run, compare, plot, check.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help text is plain text: with rich markup, "pip install 'gradlab[ray]'" lost its "[ray]" and
    # any "[low, high]" in a help line vanished; no help text here uses markup on purpose.
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def reports_errors(command):
    """Turn a GradlabError raised by `command` into 'error: ...' lines and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GradlabError as exc:
            for line in exc.lines:  # (control characters of a damaged run's names as visible escapes)
                err_console.print(f"error: {printable(line)}", markup=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper

# --------------------------------------------------------------------------------------------
# run / validate / components
# --------------------------------------------------------------------------------------------

ConfigArg = Annotated[Path, typer.Argument(help="experiment YAML file", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a config value: key.path=value (value parsed as YAML); repeatable"),
]


def _overrides(sets: list[str] | None, **shortcuts) -> list[str]:
    """--set items plus the shortcut options that were given, as key.path=value strings."""
    keys = {"out": "log.out", "device": "device", "seed": "seed", "steps": "train.steps"}
    extra = [f"{keys[name]}={value}" for name, value in shortcuts.items() if value is not None]
    return list(sets or []) + extra


def _load(config: Path, overrides: list[str]):
    from gradlab.config.load import load_config

    return load_config(config, overrides)


class ExecutorChoice(str, Enum):
    local = "local"
    ray = "ray"


SweepOpt = Annotated[
    Optional[list[str]],
    typer.Option("--sweep", help="sweep a config value: key.path=v1,v2,... (each value parsed as YAML); adds or replaces an axis; repeatable"),
]


@app.command()
@reports_errors
def run(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML file; a sweep when it has sweep: or seeds: (not with --resume)", show_default=False)] = None,
    set_: SetOpt = None,
    out: Annotated[Optional[str], typer.Option("--out", help="folder for run directories (log.out)")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="optimizer steps (train.steps)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the run directory (of a sweep: the sweep directory)")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="draw the run's figures into its directory (of a sweep: into the sweep directory)")] = False,
    sweep: SweepOpt = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="sweep: runs at once, each in its own process (default 1)", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch threads (the config's threads:, default auto: docs/performance.md, Threads); a sweep: per run (default 1 whatever --jobs, so results do not depend on --jobs)", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="run again what is not completed or diverged in this sweep directory", show_default=False)] = None,
    executor: Annotated[ExecutorChoice, typer.Option("--executor", help="sweep: local processes, or Ray tasks (pip install 'gradlab[ray]')")] = ExecutorChoice.local,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="--executor ray: the cluster (ray://HOST:10001, HOST:6379 or auto); default: a local Ray instance", show_default=False)] = None,
) -> None:
    """Train the experiment in CONFIG and write a new run directory of records.

    A config with sweep: (dotted keys to lists of values) or seeds:, or --sweep, is a grid: every
    combination is validated first, then run into one sweep directory with a sweep.csv index.

    Exit code 1 when the config's expect: section is violated at the end of the run (or a run of a
    sweep failed).
    """
    overrides = _overrides(set_, out=out, device=device, seed=seed, steps=steps)
    if ray_address is not None and executor is not ExecutorChoice.ray:
        raise ConfigError("--ray-address: applies to --executor ray")
    if resume is not None or sweep or (config is not None and _is_sweep(config)):
        _run_sweep(config, overrides, sweep, resume, jobs, threads, executor, ray_address, quiet, plot)
        return
    if config is None:
        raise ConfigError("run: give CONFIG, an experiment YAML file (or --resume SWEEP_DIR)")
    for flag, given in (("--jobs", jobs), ("--executor", executor is ExecutorChoice.ray or None)):
        if given is not None:
            raise ConfigError(f"{flag}: applies to sweeps; {config} has no sweep: or seeds: (add --sweep key.path=v1,v2)")
    exp = _load(config, overrides + ([f"threads={threads}"] if threads is not None else []))

    from gradlab.orchestrate import runner
    from gradlab.orchestrate.progress import RunBar
    from gradlab.orchestrate.signals import RunInterrupted

    try:
        report = runner.run(exp, None if quiet else RunBar(err_console), profile=not quiet, plot=plot)
    except RunInterrupted as exc:
        err_console.print(f"interrupted ({exc}); records kept in {exc.run_dir}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    result = report.result
    if quiet:
        print(result.run_dir)
    else:
        console.print(report.profile)
        if result.divergence:
            d = result.divergence
            console.print(f"[bold red]diverged[/] at step {d['step']}: first non-finite value in {d['tensor']}")
        for outcome in report.outcomes:
            console.print(f"expect {outcome.line()}", markup=False, highlight=False, soft_wrap=True, style=None if outcome.passed else "red")
        console.print(f"run directory: {result.run_dir}", markup=False, highlight=False, soft_wrap=True)
    if report.failed:
        raise ExpectationFailed(*(f"expectation failed: {outcome.failure()}" for outcome in report.failed))


@app.command()
@reports_errors
def validate(config: ConfigArg, set_: SetOpt = None, sweep: SweepOpt = None) -> None:
    """Check CONFIG and print it resolved, every default filled in.

    A sweep: every combination is validated; prints their number and, per combination, the
    resolved values that differ between them.
    """
    if sweep or _is_sweep(config):
        from gradlab.orchestrate.sweep_axes import parse_axis
        from gradlab.orchestrate.sweep_plan import differing_values, load_plan
        from gradlab.vocab.values import flow

        plan = load_plan(config, _overrides(set_), [parse_axis(item) for item in sweep or []])
        print(f"{len(plan.members)} combinations ({plan.shape()}), all valid")
        if plan.claims is not None:
            print(f"{len(plan.claims)} {'claim' if len(plan.claims) == 1 else 'claims'} over them, all valid")
        for member, values in zip(plan.members, differing_values(plan)):
            print(f"{member.name}: {', '.join(f'{key}={flow(value)}' for key, value in values.items())}")
        return
    exp = _load(config, _overrides(set_))
    print(exp.to_yaml(), end="")


def _is_sweep(config: Path) -> bool:
    from gradlab.config.load import read_yaml
    from gradlab.orchestrate.sweep_axes import has_sweep

    return has_sweep(read_yaml(config))


def _run_sweep(config, overrides, axis_items, resume, jobs, threads, executor, ray_address, quiet, plot) -> None:
    """`gradlab run` of a sweep, or `--resume` of one: plan (everything validated), run, summarize."""
    from gradlab.orchestrate import sweep as sweeps
    from gradlab.orchestrate.progress import SweepLines

    with sweeps.executor_session(executor.value, jobs, ray_address), sweeps.planned_sweep(
        config, overrides, axis_items, resume, jobs=jobs, threads=threads, executor=executor.value
    ) as planned:  # fmt: skip
        _warn(planned.warnings(jobs, threads, executor.value))
        if not quiet:
            err_console.print(planned.heading(), markup=False, highlight=False, soft_wrap=True)
        outcome = planned.run(jobs=jobs, threads=threads, executor=executor.value, ray_address=ray_address, progress=None if quiet else SweepLines(err_console))
        if plot:
            _warn(outcome.plot())
        sweep_dir = planned.sweep_dir
        if quiet:
            print(sweep_dir)
        else:
            console.print(outcome.summary(), markup=False, highlight=False, soft_wrap=True)
            for row in outcome.rows:
                if row.status == "failed":
                    console.print(f"failed: {row.run}: {row.error}", markup=False, highlight=False, soft_wrap=True)
            if outcome.signum is not None or not outcome.complete:
                console.print(f"to run what is left: gradlab run --resume {sweep_dir}", markup=False, highlight=False, soft_wrap=True)
            console.print(f"sweep directory: {sweep_dir}", markup=False, highlight=False, soft_wrap=True)
        if outcome.signum is not None:
            raise typer.Exit(outcome.exit_code)
        failed = outcome.failed_expectations()
        for claim in planned.claims(outcome):  # the claims: between the configurations, once all ran
            if not quiet:
                console.print(f"claim {claim.line()}", markup=False, highlight=False, soft_wrap=True, style=None if claim.passed else "red")
            if not claim.passed:
                failed.append(f"claim failed: {claim.failure()}")
        if failed:
            raise ExpectationFailed(*failed)
        if outcome.exit_code:
            raise typer.Exit(outcome.exit_code)


@app.command()
@reports_errors
def components() -> None:
    """List every activation, initializer, normalization, dataset, loss and optimizer."""
    from gradlab.show.display import (
        components_tables,  # the names from gradlab.vocab.specs: no torch
    )

    for table in components_tables():
        console.print(table)



# --------------------------------------------------------------------------------------------
# compare / plot / check: runs read back with pandas, no torch
# --------------------------------------------------------------------------------------------

RunPathsArg = Annotated[
    Optional[list[Path]],
    typer.Argument(help="run directories, or folders holding runs (searched recursively)", show_default=False),
]


class Format(str, Enum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


def _warn(lines: list[str]) -> None:
    for line in lines:
        err_console.print(f"warning: {printable(line)}", markup=False)


def _writable_file(path: Path | None, option: str, make_folders: bool = False) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, below a file,
    below a missing folder (unless `make_folders`: the command creates them), or not writable
    (one line, exit 2)."""
    import os

    if path is None:
        return
    from gradlab.records.output import refuse_records

    refuse_records(path, option)  # outputs never replace a run's records
    shown = str(path)
    if path.is_dir():
        raise RunError(f"{option}: {shown!r} is a folder; give the file to write")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise RunError(f"{option}: cannot write {shown!r}: {str(parent)!r} is a file, not a folder")
    if not parent.exists():
        above = next((p for p in parent.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise RunError(f"{option}: cannot write {shown!r}: {str(above)!r} is a file, not a folder")
        if not make_folders:
            raise RunError(f"{option}: cannot write {shown!r}: the folder {str(parent)!r} does not exist")
        if above is not None and not os.access(above, os.W_OK | os.X_OK):
            raise RunError(f"{option}: cannot create {str(parent)!r}: {str(above)!r} is not writable")
        return
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"{option}: cannot write {shown!r}: permission denied")


def _writable_folder(path: Path, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be made or written: a file, or below one."""
    import os

    shown = str(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = f"{shown!r} is a file, not a folder" if existing == path else f"cannot create {shown!r}: {str(existing)!r} is a file, not a folder"
        raise RunError(f"{option}: {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"{option}: cannot write into {str(existing)!r}: permission denied")


def _write_output(path: Path, text: str, option: str) -> None:
    """`text` into `path` whole or not at all (a temporary file renamed): one line on a full disk
    (exit 74) or an unwritable path (exit 2); never over a run's records."""
    from gradlab.records.output import write_output

    write_output(path, text, option)


def _need_paths(paths: list[Path] | None, command: str) -> list[Path]:
    if not paths:
        raise RunError(f"{command}: give at least one PATH (a run directory or a folder holding runs)")
    return paths


def _steps(values: list[str] | None) -> list:
    from gradlab.records.run import parse_step

    try:
        return [parse_step(value) for value in values or ["0", "last"]]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--step") from None


def _print_glossary(rows: list[tuple[str, str]], to: Console) -> None:
    for column, meaning in rows:
        to.print(f"{column}: {meaning}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@reports_errors
def compare(
    paths: RunPathsArg = None,
    step: Annotated[Optional[list[str]], typer.Option("--step", help="0, last or a step number; repeat for several (default: 0 and last)", show_default=False)] = None,
    # (the defaults live in summaries.Thresholds, which imports numpy; --explain states them)
    vanish: Annotated[Optional[float], typer.Option("--vanish", help="gain across the stack below this: vanishing (default: see --explain)", show_default=False)] = None,
    explode: Annotated[Optional[float], typer.Option("--explode", help="gain across the stack above this: exploding (default: see --explain)", show_default=False)] = None,
    depth_scale: Annotated[Optional[float], typer.Option("--depth-scale", help="a signal that changes by e in fewer layers (time steps) than this is vanishing/exploding once the stack spans --scales of them; 0: gain thresholds alone (default: see --explain)", show_default=False)] = None,
    scales: Annotated[Optional[float], typer.Option("--scales", help="how many depth scales a stack must span for its rate to count (default: see --explain)", show_default=False)] = None,
    target_loss: Annotated[Optional[float], typer.Option("--target-loss", help="add steps_to_target: the first step with train loss at or below this")] = None,
    format_: Annotated[Format, typer.Option("--format", "-f", help="table (terminal), csv, markdown or json")] = Format.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write to this file instead of stdout")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="say what every column means (with no PATH: every possible column)")] = False,
    theory: Annotated[bool, typer.Option("--theory", help="add predicted_factor (theory's layer_factor at initialization, from the config) and departs")] = False,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="with --theory: departs when |measured - predicted| > tolerance * predicted (default: see --explain)", show_default=False)] = None,
) -> None:
    """Put runs side by side: gradient profile, verdict and final metrics per configuration.

    One row per configuration, with the config values that differ between the runs; runs that
    differ only by seed form one row (mean ± std).
    """
    from gradlab.analysis import compare as comparing
    from gradlab.analysis.summaries import DEFAULT_THRESHOLDS, Thresholds
    from gradlab.records.run import load_runs
    from gradlab.show import display

    if explain and not paths:
        _print_glossary(comparing.explain(), console)
        return
    thresholds = Thresholds(
        vanish=DEFAULT_THRESHOLDS.vanish if vanish is None else vanish,
        explode=DEFAULT_THRESHOLDS.explode if explode is None else explode,
        depth_scale=DEFAULT_THRESHOLDS.depth_scale if depth_scale is None else depth_scale,
        scales=DEFAULT_THRESHOLDS.scales if scales is None else scales,
    )
    steps = _steps(step)
    _writable_file(output, "--output")
    loaded = load_runs(_need_paths(paths, "compare"))
    _warn(loaded.problems)
    if tolerance is not None and not (tolerance > 0):
        raise ConfigError(f"--tolerance: got {tolerance:g}; expected a number > 0")
    comparison = comparing.compare_runs(loaded.runs, steps, thresholds, target_loss, theory=theory, tolerance=tolerance)
    _warn(comparison.notes)

    if format_ is Format.table:
        if output:
            import io

            buffer = io.StringIO()
            screen = Console(file=buffer, width=200, no_color=True)
            screen.print(display.rich_view(comparison, screen.width))
            _write_output(output, buffer.getvalue(), "--output")
        else:
            console.print(display.rich_view(comparison, console.width))
    else:
        text = display.render(comparison, format_.value)
        if output:
            _write_output(output, text, "--output")
        else:
            sys.stdout.write(text)
    if output:
        console.print(f"compared {len(loaded.runs)} runs in {len(comparison.table)} rows: {output}", markup=False, highlight=False, soft_wrap=True)
    if explain:
        # The glossary never mixes into machine-readable output on stdout.
        machine_stdout = format_ is not Format.table and output is None
        _print_glossary(comparing.explain(comparison), err_console if machine_stdout else console)


@app.command()
@reports_errors
def plot(
    paths: RunPathsArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the PNG figures (created if needed)", show_default=False)] = ...,
    step: Annotated[str, typer.Option("--step", help="the noise figure's step: 0, last or a step number")] = "last",
) -> None:
    """Draw the runs as PNG figures in the --output folder.

    Depth profiles of delta_norm and weight_grad_norm, a layer x step heatmap of delta_norm,
    training curves, and dead/saturated units per layer; with the noise group, grad_noise_scale
    and gsnr per layer at --step; with log.jacobian, the input-output Jacobian's s2 and m1 against
    depth at step 0 and the last step, theory dashed.
    """
    from gradlab.records.run import load_runs
    from gradlab.show import plots

    _writable_folder(output, "--output")
    loaded = load_runs(_need_paths(paths, "plot"))
    _warn(loaded.problems)
    (which,) = _steps([step])
    for path in plots.save_figures(plots.build_figures(loaded.runs, which), output):
        print(path)


@app.command()
@reports_errors
def check(
    paths: RunPathsArg = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="also write a JUnit XML report (one test case per expectation)")] = None,
) -> None:
    """Check runs against the expect: section of their config.

    Exit code 1 when an expectation is violated, 2 when a run cannot be checked.
    """
    from gradlab.analysis import expectations

    _writable_file(junit, "--junit", make_folders=True)  # (write_junit creates its folders)
    checks, problems = expectations.check_paths(_need_paths(paths, "check"))
    _warn(problems)
    for item in checks:
        _warn(list(item.notes))
        if not item.outcomes and not item.error:
            continue
        console.print(str(item.run), markup=False, highlight=False, soft_wrap=True, style="bold")
        if item.error:
            console.print(f"  ERROR  {item.error}", markup=False, highlight=False, soft_wrap=True)
        for outcome in item.outcomes:
            console.print(f"  {outcome.line()}", markup=False, highlight=False, soft_wrap=True, style=None if outcome.passed else "red")
    outcomes = [o for item in checks for o in item.outcomes]
    failed = sum(not o.passed for o in outcomes)
    expectations_word = "expectation" if len(outcomes) == 1 else "expectations"
    runs_word = "run" if len(checks) == 1 else "runs"
    console.print(f"{len(outcomes)} {expectations_word} on {len(checks)} {runs_word}: {len(outcomes) - failed} passed, {failed} failed", markup=False, highlight=False, soft_wrap=True)
    if junit:
        expectations.write_junit(checks, junit)
        console.print(f"JUnit report: {junit}", markup=False, highlight=False, soft_wrap=True)
    errors = [item.error for item in checks if item.error]
    if errors:
        raise RunError(*errors)
    if failed:
        raise ExpectationFailed(*(f"{item.run}: {o.failure()}" for item in checks for o in item.failed))

@app.command("export")
@reports_errors
def export_runs(
    paths: RunPathsArg = None,
    tensorboard: Annotated[Optional[Path], typer.Option("--tensorboard", help="folder for TensorBoard event files, one subfolder per run (needs: pip install 'gradlab[tensorboard]')", show_default=False)] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="log each run as an MLflow run (needs: pip install 'gradlab[mlflow]')")] = False,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="with --mlflow: the tracking store, e.g. sqlite:///mlflow.db or http://host:5000 (default: MLflow's, MLFLOW_TRACKING_URI or ./mlflow.db with ./mlruns/)", show_default=False)] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="with --mlflow: the MLflow experiment, created if needed (default: MLFLOW_EXPERIMENT_NAME or Default)", show_default=False)] = None,
) -> None:
    """Export runs for other tools: TensorBoard event files (--tensorboard DIR), MLflow runs (--mlflow).

    TensorBoard: per-layer scalars as <quantity>/<layer> (delta_norm/blocks.3), train/ and test/
    metrics, the gradient profile of compare (profile/gain, ...), histograms over the hidden layers,
    and the config as text. View them with: tensorboard --logdir DIR

    MLflow: the same series as metrics with their steps, the config as params, the expect: results
    as tags, the records and the figures of plot as artifacts.
    """
    if not mlflow and (tracking_uri is not None or experiment is not None):
        raise RunError(f"export: {'--tracking-uri' if tracking_uri is not None else '--experiment'} goes with --mlflow")
    if tensorboard is None and not mlflow:
        raise RunError("export: say where to: --tensorboard DIR or --mlflow")
    paths = _need_paths(paths, "export")
    warned: list[str] = []
    if tensorboard is not None:
        from gradlab.show import export as exporting

        summary = exporting.export_tensorboard(paths, tensorboard)
        _warn(summary.problems)
        warned = summary.problems
        for run in summary.runs:
            console.print(f"{run.log_dir}: {run.steps} steps, {run.scalars} scalars, {run.histograms} histograms (from {run.run_dir})", markup=False, highlight=False, soft_wrap=True)
        console.print(f"exported {len(summary.runs)} {'run' if len(summary.runs) == 1 else 'runs'}; view them with: tensorboard --logdir {summary.out_dir}", markup=False, highlight=False, soft_wrap=True)
    if mlflow:
        from gradlab.show.export_mlflow import export_mlflow

        logged = export_mlflow(paths, tracking_uri, experiment)
        _warn([line for line in logged.problems if line not in warned])  # (a run skipped is said once)
        for run in logged.runs:
            console.print(f"{run.label}: MLflow run {run.run_id}, {run.steps} steps, {run.metrics} metric points, {run.params} params, {run.artifacts} artifacts (from {run.run_dir})", markup=False, highlight=False, soft_wrap=True)
        view = f"open {logged.tracking_uri}" if logged.tracking_uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {logged.tracking_uri}"
        console.print(f"exported {len(logged.runs)} {'run' if len(logged.runs) == 1 else 'runs'} to MLflow experiment {logged.experiment!r}; view them with: {view}", markup=False, highlight=False, soft_wrap=True)


@app.command("schema")
@reports_errors
def schema_command(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write the schema to this file instead of stdout")] = None,
) -> None:
    """Print the JSON Schema of a config file, so that editors complete and check configs.

    VS Code with the YAML extension: gradlab schema -o gradlab.config.json_schema.json, then start a config
    with the line  # yaml-language-server: $schema=gradlab.config.json_schema.json
    """
    from gradlab.config.json_schema import schema_json

    text = schema_json()
    if output is None:
        sys.stdout.write(text)
        return
    from gradlab.records.output import write_output

    write_output(output, text, "--output")  # (whole or not at all; never over a run's records)
    console.print(f"JSON Schema of a gradlab config: {output}", markup=False, highlight=False, soft_wrap=True)


@app.command("report")
@reports_errors
def report_command(
    paths: RunPathsArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="the HTML file to write", show_default=False)] = ...,
    step: Annotated[Optional[list[str]], typer.Option("--step", help="0, last or a step number; repeat for several (default: 0 and last)", show_default=False)] = None,
    vanish: Annotated[Optional[float], typer.Option("--vanish", help="gain across the stack below this: vanishing (default: see compare --explain)", show_default=False)] = None,
    explode: Annotated[Optional[float], typer.Option("--explode", help="gain across the stack above this: exploding (default: see compare --explain)", show_default=False)] = None,
    depth_scale: Annotated[Optional[float], typer.Option("--depth-scale", help="as compare's: a faster rate than e per this many layers (time steps) is vanishing/exploding over --scales of them; 0: gain thresholds alone", show_default=False)] = None,
    scales: Annotated[Optional[float], typer.Option("--scales", help="as compare's: how many depth scales a stack must span for its rate to count", show_default=False)] = None,
    target_loss: Annotated[Optional[float], typer.Option("--target-loss", help="add steps_to_target: the first step with train loss at or below this")] = None,
) -> None:
    """Write one self-contained HTML page for a sweep or a set of runs.

    The comparison table (as compare) with verdicts in colour, every figure of plot inline, what
    each row means and notes on damaged or partial runs; it loads nothing from the network.
    """
    from gradlab.analysis.summaries import DEFAULT_THRESHOLDS, Thresholds
    from gradlab.show import report as reporting

    thresholds = Thresholds(
        vanish=DEFAULT_THRESHOLDS.vanish if vanish is None else vanish,
        explode=DEFAULT_THRESHOLDS.explode if explode is None else explode,
        depth_scale=DEFAULT_THRESHOLDS.depth_scale if depth_scale is None else depth_scale,
        scales=DEFAULT_THRESHOLDS.scales if scales is None else scales,
    )
    from gradlab.records.output import refuse_records

    refuse_records(output, "--output")  # before any work (write_report refuses it too)
    result = reporting.write_report(_need_paths(paths, "report"), output, steps=_steps(step), thresholds=thresholds, target_loss=target_loss)
    _warn(result.problems)
    runs_word = "run" if result.runs == 1 else "runs"
    rows_word = "configuration" if result.rows == 1 else "configurations"
    console.print(f"report of {result.runs} {runs_word} in {result.rows} {rows_word}: {output}", markup=False, highlight=False, soft_wrap=True)


@app.command("coordcheck")
@reports_errors
def coordcheck_command(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML file (kind mlp or cnn)", show_default=False)] = None,
    widths: Annotated[str, typer.Option("--widths", help="the model.width values, comma-separated (at least two)")] = "64,128,256,512,1024",
    steps: Annotated[int, typer.Option("--steps", help="optimizer steps per run; every step is measured")] = 3,
    seeds: Annotated[int, typer.Option("--seeds", help="seeds per width (the coordinates are averaged over them)")] = 2,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="runs at once, each in its own process (default 1)", show_default=False)] = None,
    fresh_batches: Annotated[bool, typer.Option("--fresh-batches", help="a new training batch every step (default: one fixed batch, as mup)")] = False,
    tolerance: Annotated[float, typer.Option("--tolerance", help="width-stable when |log-log slope| is at most this (mup's test: 1.2x per 4x width)")] = 0.13,
    quantity: Annotated[str, typer.Option("--quantity", help="the coordinate judged: act_l1, act_rms, delta_rms or update_rms")] = "act_l1",
    set_: SetOpt = None,
    out: Annotated[Optional[str], typer.Option("--out", help="folder for the check's sweep folder (log.out)")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="finish the runs of this coordcheck folder that did not finish", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch threads per run (default 1)", show_default=False)] = None,
    executor: Annotated[ExecutorChoice, typer.Option("--executor", help="local processes, or Ray tasks (pip install 'gradlab[ray]')")] = ExecutorChoice.local,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="--executor ray: the cluster", show_default=False)] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="draw coordcheck.png (per variant) into the folder")] = True,
) -> None:
    """Does CONFIG stay stable as it gets wider? The coordinate check of Yang & Hu 2021 (muP).

    Each width (and seed) trains a few steps on one fixed batch; each block's mean |x| (act_l1),
    its RMS, delta_rms and the weight update's RMS are gathered into coordcheck.csv; for each
    (step, layer) the log-log slope against width is width-stable, grows or shrinks. Exit code 1
    when the config's expect: {coordcheck: ...} is violated (or a run failed).
    """
    from gradlab.orchestrate.coordcheck import parse_widths, run_coordcheck
    from gradlab.orchestrate.progress import SweepLines
    from gradlab.show.coordcheck_table import slope_tables

    if ray_address is not None and executor is not ExecutorChoice.ray:
        raise ConfigError("--ray-address: applies to --executor ray")
    widths_list = parse_widths(widths) if resume is None else []

    def planned(sweep_dir, runs: int) -> None:
        err_console.print(f"coordcheck: {runs} runs in {sweep_dir}", markup=False, highlight=False, soft_wrap=True)

    result = run_coordcheck(
        config, widths_list, steps=steps, seeds=seeds, fresh_batches=fresh_batches, overrides=_overrides(set_, out=out),
        resume=resume, jobs=jobs, threads=threads, executor=executor.value, ray_address=ray_address, tolerance=tolerance,
        quantity=quantity, progress=SweepLines(err_console), on_planned=planned,
    )  # fmt: skip
    for table in slope_tables(result.slopes, tolerance):
        console.print(table)
    if plot:
        from gradlab.show import plots

        plots.save_figures(plots.coordcheck_figures(result.coords, quantity), result.sweep_dir)
    for outcome in result.outcomes:
        console.print(f"expect {outcome.line()}", markup=False, highlight=False, soft_wrap=True, style=None if outcome.passed else "red")
    for line in result.runs_failed:
        console.print(f"failed: {line}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"coordcheck folder: {result.sweep_dir}", markup=False, highlight=False, soft_wrap=True)
    if result.failed:
        raise ExpectationFailed(*(f"expectation failed: {outcome.failure()}" for outcome in result.failed))
    if result.runs_failed:
        raise typer.Exit(1)


class TheoryFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("theory")
@reports_errors
def theory_command(
    config: ConfigArg,
    set_: SetOpt = None,
    sweep: SweepOpt = None,
    format_: Annotated[TheoryFormat, typer.Option("--format", "-f", help="table (for people) or json")] = TheoryFormat.table,
) -> None:
    """What theory predicts for CONFIG at initialization, without training (no torch).

    Mean field (Poole 2016, Schoenholz 2017) for MLPs without normalization, Yang 2019 for
    BatchNorm before the activation, the residual stream (De & Smith 2020), Pascanu 2013 for
    recurrent networks; where no theory applies it says why. The 'factor' column is ||dL/dz|| of a
    layer over that of the next one up. For a sweep, one row per combination (seeds share one).
    """
    import json

    from gradlab.show.theory_table import sweep_table_lines, table_lines
    from gradlab.theory.predict import predict

    if sweep or _is_sweep(config):
        # the table leaves out xi_c, the correlation map's depth scale (a 2-D quadrature per
        # combination, most of the time): JSON has every number
        from gradlab.orchestrate.sweep_axes import parse_axis
        from gradlab.orchestrate.sweep_plan import load_plan, predictions

        plan = load_plan(config, _overrides(set_), [parse_axis(item) for item in sweep or []])
        named = predictions(plan, correlations=format_ is TheoryFormat.json, progress=_theory_progress())
        if format_ is TheoryFormat.json:
            print(json.dumps([{"combination": name, "values": values, **prediction.to_json()} for name, values, prediction in named], indent=2, ensure_ascii=False))
            return
        for line in sweep_table_lines([(name, prediction) for name, _, prediction in named]):
            print(line)
        return
    from gradlab.orchestrate.theory_limits import check_theory_fits

    exp = _load(config, _overrides(set_))
    check_theory_fits(exp)  # what `gradlab run` refuses for its size, with run's line
    prediction = predict(exp)
    if format_ is TheoryFormat.json:
        print(json.dumps(prediction.to_json(), indent=2, ensure_ascii=False))
        return
    for line in table_lines(prediction):
        print(line)


def _theory_progress(every: float = 2.0):
    """A sweep's progress for `gradlab theory` on stderr: nothing for the first `every` seconds,
    then a line every `every` seconds and one at the end (stdout stays the table or the JSON)."""
    import time

    start = time.monotonic()
    last = [start]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every or (done == total and last[0] > start):
            last[0] = now
            print(f"theory: {done} of {total} combinations ({now - start:.0f} s)", file=sys.stderr, flush=True)

    return report


def main() -> None:
    app()
