"""One run, start to end: train an experiment into a new run directory, then read the finished run
back once for what is shown and checked at its end.

    run(exp, progress, ...)            -> RunReport   what `gradlab run` calls (run_experiment, then report)
    run_experiment(exp, progress, ...) -> RunResult   the training half: writes the records, reads nothing
    report(exp, result, ...)           -> RunReport   the reading half: the run loaded once for the
                                                      profile table, --plot's figures and expect:

A sweep member (member.run_member) calls the two halves itself, because a member whose records
cannot be read back is still the result its training says.

Stopping: the training loop installs a signals.StopSignals that insists. The first signal stops the
run between two steps (a step's rows are never cut in half), the records are closed as
`interrupted` and RunInterrupted is raised; a second signal raises at once.

Nothing here imports torch at module level (a sweep's member runs import this module, and Ray's
control actor imports them); the training does, when a run starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradlab.orchestrate.progress import (
    Progress,
    RunEnded,
    RunStarted,
    StepLogged,
    silent,
)
from gradlab.orchestrate.signals import RunInterrupted, StopPoll, StopSignals
from gradlab.records.layout import new_named_run_dir, new_run_dir, prepare_out_dir
from gradlab.records import run as records_run  # (records_run.load_run: read where a test can count the reads)
from gradlab.records.run import run_meta
from gradlab.records.write import META_EVERY_S, RunRecords, disk_full, is_disk_full
from gradlab.vocab.datasets import known_input_shape
from gradlab.vocab.errors import ConfigError, GradlabError

if TYPE_CHECKING:
    import torch

    from gradlab.analysis.expectations import Outcome
    from gradlab.config.experiment import Experiment


# --------------------------------------------------------------------------------------------
# Training: the records written
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | diverged
    steps_done: int
    divergence: dict[str, Any] | None

    def divergence_text(self) -> str:
        """'diverged at step 12: first non-finite value in blocks.3.delta' ('' when it did not)."""
        d = self.divergence
        return f"diverged at step {d.get('step')}: first non-finite value in {d.get('tensor')}" if d else ""


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} asked for, but this torch sees no CUDA GPU; allowed here: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: mps asked for, but this torch has no MPS backend; allowed here: auto, cpu")
    return torch.device(name)


def run_experiment(
    exp: Experiment,
    progress: Progress | None = None,
    *,
    run_dir: Path | None = None,
    index: int = 0,
    stop_poll: StopPoll | None = None,
    threads: int | None = None,
) -> RunResult:
    """Train `exp` and write its run directory. Bad input raises before anything is written.

    `run_dir`: create the records in this new directory (a sweep member) instead of a new
    `log.out/name/<timestamp>-<id>/`; it must not exist yet. `progress` gets RunStarted, a
    StepLogged per logged step and RunEnded, tagged with `index`. `stop_poll`, asked when the
    loop starts and after every logged step, returns a signal when the run must stop (a sweep's
    stop that reached its process before the run took the signals, or a Ray sweep's). `threads`:
    torch threads for the run (a sweep member's); None: the config's `threads`, `auto` resolved
    from the model's size (train.resolve_threads). The process's count is restored at the end.
    """
    import torch

    from gradlab.build.data import load_dataset
    from gradlab.build.memory import check_fits
    from gradlab.orchestrate.train import resolve_threads

    emit = progress or silent
    device = resolve_device(exp.device)
    if run_dir is None:
        prepare_out_dir(exp.log.out)
    shape = known_input_shape(exp.data)
    if shape is not None:  # refuse an impossible size before generating data or building anything
        check_fits(exp, shape, exp.data.classes, device.type)
    data = load_dataset(exp.data, exp.seed)
    if shape is None:
        check_fits(exp, data.input_shape, data.classes, device.type, with_data=False)
    if threads is None:
        threads = resolve_threads(exp.threads, exp, data.input_shape)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(exp, emit, device, data, run_dir, index, stop_poll, threads)
    finally:
        torch.set_num_threads(threads_before)


def _train(exp, emit, device, data, run_dir, index, stop_poll, threads) -> RunResult:
    """run_experiment's training, with the thread count set."""
    from gradlab.build.data import Batches
    from gradlab.measure.locate import locate_non_finite
    from gradlab.orchestrate.train import Trainer

    trainer = Trainer(exp, device, data)  # places the data (on a GPU: on the device, or pinned)
    batches = Batches(trainer.data.x_train, trainer.data.y_train, exp.data.batch_size, exp.seed)
    steps, every, eval_every = exp.train.steps, exp.log.every, exp.train.eval_every

    run_dir = new_run_dir(exp.log.out, exp.name) if run_dir is None else new_named_run_dir(Path(run_dir).parent, Path(run_dir).name)
    from gradlab.vocab.quantities import (  # residual, norm and recurrent models add columns; every other header is unchanged
        RECURRENT_KINDS,
        has_norm_columns,  # a norm or PReLU adds its columns (quantities.NORM)
        layers_columns,
    )

    recurrent = exp.model.kind in RECURRENT_KINDS  # rnn, lstm, gru: their own layers.csv columns, and timesteps.csv
    # the opt-in groups (noise; coordinates, for gradlab coordcheck; spectrum) add their columns last
    layer_columns = layers_columns(getattr(exp.model, "residual", False), has_norm_columns(exp.model), recurrent,
                                   noise="noise" in exp.log.probes, coordinates="coordinates" in exp.log.probes,
                                   spectrum="spectrum" in exp.log.probes)  # fmt: skip
    meta = run_meta(exp.name, run_dir.name, exp.seed, str(device), steps)
    if threads > 1:  # the last bits of large reductions depend on it (docs/performance.md, Threads); one is the usual
        meta["threads"] = threads
    records = RunRecords(run_dir, exp.to_yaml(), meta, layer_columns, timesteps=recurrent, jacobian=exp.log.jacobian is not None)
    result = RunResult(run_dir, "running", 0, None)

    def poll() -> None:
        signum = stop_poll() if stop_poll is not None else None
        if signum is not None:
            raise RunInterrupted(signum)

    meta_written = time.perf_counter()
    try:
        with StopSignals(insist=True).installed() as stop:
            trainer.records = records
            trainer.model.train()
            emit(RunStarted(index, steps))
            poll()
            for step in range(steps + 1):
                if stop.signum is not None:
                    raise RunInterrupted(stop.signum)
                x, y = next(batches) if not exp.train.fixed_batch or step == 0 else (x, y)  # fixed_batch: the first batch, every step
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                update = step < steps  # the last measurement is taken without updating
                logged = step % every == 0 or step == steps
                evaluated = step % eval_every == 0 or step == steps
                if trainer.deferred and (logged or evaluated):  # a GPU: the losses not read yet
                    bad = trainer.check()
                    if bad is not None:  # the model is back as it was before that step's update
                        bad_step, bad_x, bad_y = bad
                        where = locate_non_finite(trainer.model, bad_x, bad_y, trainer.loss_fn)
                        result.status, result.divergence = "diverged", {"step": bad_step, **where}
                        result.steps_done = bad_step
                        break
                if evaluated:
                    trainer.evaluate(step)  # the network after `step` updates, before the next
                loss = trainer.logged_step(step, x, y, update) if logged else trainer.plain_step(x, y, step)
                if loss is not None and not math.isfinite(loss):
                    where = locate_non_finite(trainer.model, x, y, trainer.loss_fn)
                    result.status, result.divergence = "diverged", {"step": step, **where}
                    break
                result.steps_done = step + 1 if update else step
                if logged:
                    if time.perf_counter() - meta_written > META_EVERY_S:
                        records.write_meta(steps_done=result.steps_done)
                        meta_written = time.perf_counter()
                    emit(StepLogged(index, step, loss))
                    poll()
    except RunInterrupted as exc:
        emit(RunEnded(index, "interrupted"))
        records.close("interrupted", steps_done=result.steps_done)
        exc.run_dir = run_dir
        raise
    except BaseException as exc:
        emit(RunEnded(index, "failed"))
        error = "; ".join(exc.lines) if isinstance(exc, GradlabError) else f"{type(exc).__name__}: {exc}"
        try:
            records.close("failed", steps_done=result.steps_done, error=error)
        except GradlabError:
            pass  # a full disk that cannot take even the closing meta.json: the error says so
        if is_disk_full(exc):
            raise disk_full(run_dir, "the run's records") from None
        raise
    if result.status == "running":
        result.status = "completed"
    emit(RunEnded(index, result.status))
    records.close(result.status, steps_done=result.steps_done, divergence=result.divergence)
    return result


# --------------------------------------------------------------------------------------------
# The end of a run: read back once
# --------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    result: RunResult
    outcomes: list[Outcome] = field(default_factory=list)  # expect:, in the section's order
    profile: Any = None  # the profile table (a rich Table) when asked for
    figures: list[Path] = field(default_factory=list)  # --plot's PNG files

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.passed]


def report(exp: Experiment, result: RunResult, *, profile: bool = False, plot: bool = False) -> RunReport:
    """The finished run read back once (pandas, no torch), for: its expect: section checked,
    `profile` the per-layer table of `gradlab run`, `plot` the figures drawn into the run directory.
    Reads nothing when none of them is wanted. Raises RunError when the records cannot be read."""
    out = RunReport(result)
    if not (profile or plot or exp.expect is not None):
        return out

    run = records_run.load_run(result.run_dir)
    if plot:
        from gradlab.show import plots

        out.figures = plots.save_figures(plots.build_figures([run]), result.run_dir)
    if exp.expect is not None:
        from gradlab.analysis import expectations

        out.outcomes = expectations.check(run, exp.expect)
    if profile:
        from gradlab.show.display import profile_table

        out.profile = profile_table(run)
    return out


def run(
    exp: Experiment,
    progress: Progress | None = None,
    *,
    run_dir: Path | None = None,
    profile: bool = False,
    plot: bool = False,
) -> RunReport:
    """Train `exp` into a new run directory, then read it back once (see `report`).
    Raises RunInterrupted (records kept, closed as interrupted) and GradlabError for bad input."""
    return report(exp, run_experiment(exp, progress, run_dir=run_dir), profile=profile, plot=plot)
