"""Sweeps: a grid of config values times several seeds, run as one command into one folder.

A config (or the command line, `--sweep model.depth=10,30`) names the axes (sweep_axes.py);
`gradlab run` plans every combination, validated all at once (sweep_plan.py), checks that they
can run here (sweep_resources.py), and writes one sweep directory holding a normal run directory
per combination, with sweep.yaml and the sweep.csv index (sweep_index.py), held by one command at
a time (sweep_lock.py). This module runs it:

    run_sweep(plan, dir)     runs what is not finished with an executor (executors.py), keeping
                             sweep.csv up to date; returns a SweepOutcome, whose runs'
                             expect: sections each member checked on its own records
    planned_sweep(...)       the workflow of `gradlab run` on a sweep (new, or --resume): planned,
                             checked and held, ready to run
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from gradlab.build.system import available_cores, check_threads

from gradlab.orchestrate.executors import execute
from gradlab.orchestrate.local_pool import discard_early_workers, on_early_worker, start_workers_early
from gradlab.orchestrate.member import MemberTask, default_threads
from gradlab.orchestrate.progress import (
    Event,
    Progress,
    RunFinished,
    RunStarted,
    RunSubmitted,
    StepLogged,
    SweepEnded,
    SweepStarted,
    silent,
)
from gradlab.orchestrate.sweep_axes import parse_axis
from gradlab.orchestrate.sweep_index import FINISHED, IndexRow, SweepIndex, create_sweep_dir, open_sweep, recorded_duration, recorded_status
from gradlab.orchestrate.sweep_lock import sweep_lock
from gradlab.orchestrate.sweep_plan import SweepPlan, plan_sweep
from gradlab.orchestrate.ray_tasks import ray_session
from gradlab.orchestrate.sweep_resources import check_resources
from gradlab.records.layout import SWEEP_SPEC_FILE
from gradlab.vocab.errors import ConfigError

ORPHANS_SETTLE_S = 12.0  # > 2 x local_pool.ORPHAN_GRACE_S: how long a killed sweep's workers may still write


def _let_orphans_finish(sweep_dir: Path, names: list[str]) -> None:
    """Wait, when a folder about to be removed was written in the last ORPHANS_SETTLE_S seconds,
    until that long has passed: the workers of a sweep killed a moment ago stop on their own
    (local_pool: parent-death signal) and close their records; removing the folders under them
    would have them re-create the folder as a stub."""
    newest = 0.0
    for name in names:
        folder = sweep_dir / name
        if recorded_status(folder) != "running" and (folder / "meta.json").exists():
            continue  # closed (interrupted, failed): nobody writes there any more
        try:
            newest = max([newest, *(path.stat().st_mtime for path in folder.iterdir())])
        except OSError:
            continue
    wait = newest + ORPHANS_SETTLE_S - time.time()
    if wait > 0:
        time.sleep(min(wait, ORPHANS_SETTLE_S))


@dataclass
class SweepOutcome:
    sweep_dir: Path
    rows: list[IndexRow]
    ran: int  # runs started by this command
    signum: int | None = None  # the signal that stopped the sweep
    checks: dict[str, list] = field(default_factory=dict)  # run -> expect: outcomes, as its member checked them

    @property
    def counts(self) -> Counter:
        return Counter(row.status for row in self.rows)

    @property
    def exit_code(self) -> int:
        if self.signum is not None:
            return 128 + self.signum  # 130 for Ctrl-C, as for a single run
        return 1 if self.counts["failed"] else 0

    def summary(self) -> str:
        counts = self.counts
        text = f"{len(self.rows)} runs: " + ", ".join(f"{counts[s]} {s}" for s in ("completed", "diverged", "failed", "interrupted"))
        left = counts["pending"] + counts["running"]
        return text + (f", {left} not run" if left else "")

    @property
    def complete(self) -> bool:
        """Every run of the sweep finished (completed or diverged)."""
        return all(row.status in FINISHED for row in self.rows)

    def finished(self) -> list[Path]:
        """The run directories of the completed and diverged runs, in plan order."""
        return [self.sweep_dir / row.run for row in self.rows if row.status in FINISHED]

    def failed_expectations(self) -> list[str]:
        """'expectation failed: <run>: <failure>' for every violated expectation of a finished run,
        in plan order. A run that finished before this command (--resume), or whose member could
        not read its records back, is checked here (reading them: pandas, in this process)."""
        lines = []
        for path in self.finished():
            outcomes = self.checks.get(path.name)
            if outcomes is None:
                from gradlab.analysis.expectations import check_run

                outcomes = check_run(path)
            lines.extend(f"expectation failed: {path.name}: {o.failure()}" for o in outcomes if not o.passed)
        return lines

    def plot(self) -> list[str]:
        """The figures of every finished run, together, drawn into the sweep directory; returns the
        warnings of reading them back (runs cut off, skipped)."""
        from gradlab.records.run import load_runs
        from gradlab.show import plots

        finished = self.finished()
        if not finished:
            return []
        loaded = load_runs(finished)
        plots.save_figures(plots.build_figures(loaded.runs), self.sweep_dir)
        return loaded.problems


def run_sweep(
    plan: SweepPlan,
    sweep_dir: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    progress: Progress | None = None,
    index: SweepIndex | None = None,
) -> SweepOutcome:
    """Run every combination of `plan` whose status in sweep.csv is not completed or diverged.

    The sweep directory is held for the whole call (sweep_lock): a second command on it is refused.
    A run whose own meta.json says completed or diverged is kept, whatever sweep.csv says. A run
    that is not finished and left a folder behind (interrupted, failed, killed) has that folder
    removed and runs again in a fresh one. Runs that fail or diverge do not stop the sweep.
    SIGINT/SIGTERM stop it: runs in flight end as interrupted at their next step, runs not started
    stay pending, and the outcome carries the signal.

    `progress` (a view such as progress.SweepLines) gets SweepStarted, the events of the runs in
    flight, RunFinished of each run that was started, and SweepEnded.
    """
    with sweep_lock(sweep_dir):
        return _run_sweep_locked(plan, Path(sweep_dir), jobs, threads, executor, ray_address, progress, index)


def _run_sweep_locked(plan, sweep_dir: Path, jobs, threads, executor, ray_address, progress, index) -> SweepOutcome:
    display = progress or silent
    index = index or SweepIndex.read(sweep_dir, plan)
    members = {member.name: member for member in plan.members}

    def threads_of(config: dict) -> int:
        """--threads; else the run's own `threads:` when it is a number; else one per run (auto in a
        sweep: records the same whatever --jobs)."""
        own = config.get("threads")
        return threads or (own if isinstance(own, int) and not isinstance(own, bool) else default_threads())

    _let_orphans_finish(sweep_dir, [row.run for row in index.rows if row.status not in FINISHED])
    todo = []
    for row in index.rows:
        if row.status in FINISHED:
            continue
        folder = sweep_dir / row.run
        recorded = recorded_status(folder) if folder.exists() else None
        if recorded in FINISHED:  # the run finished; only the index (its command killed) did not hear of it
            row.status, row.duration_s, row.error = recorded, recorded_duration(folder), ""
            continue
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete attempt: the combination runs again from scratch
        row.status, row.duration_s, row.error = "pending", None, ""
        todo.append(row)
    index.write()

    todo_names = {row.run for row in todo}
    tasks = [
        MemberTask(i, row.run, str(sweep_dir / row.run), members[row.run].config, threads_of(members[row.run].config))
        for i, row in enumerate(index.rows) if row.run in todo_names
    ]  # fmt: skip
    rows = index.rows
    outcome = SweepOutcome(sweep_dir, rows, 0)

    def on_event(event: Event) -> None:
        row = rows[event.index]
        if isinstance(event, RunSubmitted):
            row.status = "running"
            index.write()
        elif isinstance(event, RunStarted | StepLogged) and row.status == "running":
            display(event)  # (a late event of a run already finished is dropped)
        elif isinstance(event, RunFinished):
            result = event.result
            if result.started:
                outcome.ran += 1
            row.status = result.status if result.started else "pending"
            row.duration_s = result.duration_s if result.started else None
            row.error = result.error
            if result.outcomes is not None:
                outcome.checks[row.run] = result.outcomes
            index.write()
            display(event)

    display(SweepStarted(tuple(row.run for row in rows), len(tasks)))
    try:
        outcome.signum = execute(tasks, on_event, executor=executor, jobs=jobs, ray_address=ray_address)
    finally:
        # whatever happened, no row claims a run is going on when this command is over; a run
        # whose own records say it finished (its result lost on the way here) is what they say
        for row in rows:
            if row.status == "running":
                recorded = recorded_status(sweep_dir / row.run)
                row.status = recorded if recorded in FINISHED else "interrupted"
        index.write()
        display(SweepEnded())
    return outcome


# --------------------------------------------------------------------------------------------
# The workflow of `gradlab run` on a sweep
# --------------------------------------------------------------------------------------------


@contextmanager
def executor_session(executor: str, jobs: int | None, ray_address: str | None) -> Iterator[None]:
    """The executor of a sweep, for the block: local workers started at once (they start while the
    sweep is planned), or a Ray session; workers no sweep took (a config error) are stopped."""
    start_workers_early(executor, jobs)
    try:
        with ray_session(ray_address) if executor == "ray" else nullcontext():
            yield
    finally:
        discard_early_workers()  # the sweep did not start (a config error): not needed


@dataclass
class PlannedSweep:
    """A sweep planned, checked and held by this command, ready to run."""

    plan: SweepPlan
    index: SweepIndex | None  # a resumed sweep's index; None: a new sweep, every run pending
    sweep_dir: Path

    def warnings(self, jobs: int | None, threads: int | None, executor: str) -> list[str]:
        """Lines to warn of: more threads at once than cores (the runs share them)."""
        threads = threads or default_threads()
        cores = available_cores()
        if executor == "local" and (jobs or 1) * threads > cores:
            return [f"--jobs {jobs or 1} x --threads {threads} is more than the {cores} cores here; the runs will share them"]
        return []

    def heading(self) -> str:
        """`sweep NAME: 12 runs (model.activation (4) x seed (3)) in DIR`; resumed: `5 of 12 runs to run`."""
        runs = f"{len(self.plan.members)} runs"
        if self.index is not None:
            runs = f"{sum(row.status not in FINISHED for row in self.index.rows)} of {runs} to run"
        return f"sweep {self.plan.name}: {runs} ({self.plan.shape()}) in {self.sweep_dir}"

    def run(self, *, jobs: int | None, threads: int | None, executor: str, ray_address: str | None, progress: Progress | None) -> SweepOutcome:
        """run_sweep on this sweep; `threads` None: each run's config says (a number there), else
        default_threads()."""
        return run_sweep(
            self.plan, self.sweep_dir, jobs=jobs if executor == "ray" else (jobs or 1), threads=threads,
            executor=executor, ray_address=ray_address, progress=progress, index=self.index,
        )  # fmt: skip

    def claims(self, outcome: SweepOutcome) -> list:
        """The plan's claims checked on the records, once every run has finished ([] before)."""
        if self.plan.claims is None or not outcome.complete:
            return []
        from gradlab.analysis.expectations import check_sweep

        return check_sweep(self.sweep_dir) or []


@contextmanager
def planned_sweep(
    config: str | Path | None,
    overrides: Sequence[str],
    axis_items: Sequence[str],
    resume: Path | None,
    *,
    jobs: int | None,
    threads: int | None,
    executor: str,
) -> Iterator[PlannedSweep]:
    """A new sweep of `config` (`--set` overrides, `--sweep` axis items) planned, every combination
    validated and checked against this machine (local --jobs N: on a worker started early, so that
    this process never imports torch; --jobs 1: here), its directory created; or, with `resume`, the sweep
    planned in that directory, as planned there. The sweep directory is held (sweep_lock) for the
    block: one owner at a time, this command, from here on."""
    if threads is not None:
        check_threads(threads, "--threads")
    with ExitStack() as held:
        if resume is not None:
            if config is not None:
                raise ConfigError("--resume: give the sweep directory alone; it runs the sweep as planned in its sweep.yaml (CONFIG starts a new sweep)")
            if overrides or axis_items:
                raise ConfigError("--resume: --set, --sweep, --out, --device, --seed and --steps cannot change a planned sweep; start a new one instead")
            if resume.is_dir() and (resume / SWEEP_SPEC_FILE).is_file():
                held.enter_context(sweep_lock(resume))
            plan, index = open_sweep(resume)
            if executor == "local" and (jobs or 1) > 1:
                on_early_worker(check_resources, plan, jobs or 1)  # (the machine, or --jobs, may differ from the first time)
            sweep_dir = resume
        else:
            from gradlab.config.load import read_yaml

            plan = plan_sweep(read_yaml(config), overrides, [parse_axis(item) for item in axis_items or []])
            if executor == "local":  # on a worker where one was started (it has torch; this process never imports it)
                on_early_worker(check_resources, plan, jobs or 1)
            sweep_dir = create_sweep_dir(plan)
            held.enter_context(sweep_lock(sweep_dir))
            index = None
        yield PlannedSweep(plan, index, sweep_dir)
