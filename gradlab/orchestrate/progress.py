"""The one progress protocol: typed events, and the terminal views that draw them.

Whoever has progress to report calls a `Progress`, a plain callable taking one event:

    RunStarted(index, steps)         the runner: the training loop begins (records exist)
    StepLogged(index, step, loss)    the runner: a logged step was written
    RunEnded(index, status)          the runner: the loop is over, however it ended
    SweepStarted(names, todo)        the sweep: its runs (by index) and how many run now
    RunSubmitted(index)              the executors: a run was handed to a worker
    RunFinished(index, result)       the executors: a run's outcome (a member.MemberResult)
    SweepEnded()                     the sweep: nothing more will come

`index` is the run's row in the sweep (0 for a single run). Events are frozen dataclasses, so they
cross a process boundary as they are: a pool worker puts them on its queue, a Ray task hands them
to the control actor; nothing translates them on the way. `RunBar` (one run) and `SweepLines` (a
sweep) are the views `gradlab run` draws on the terminal; `None` is the silent progress.

This module imports rich only inside the views (Ray's control actor and the workers import it).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    from rich.console import Console

STEP_EVENTS_EVERY_S = 0.25  # a sweep member reports its step at most this often


@dataclass(frozen=True)
class RunStarted:
    index: int
    steps: int  # optimizer steps planned


@dataclass(frozen=True)
class StepLogged:
    index: int
    step: int
    loss: float


@dataclass(frozen=True)
class RunEnded:
    index: int
    status: str  # completed | diverged | interrupted | failed: what the records were closed with


@dataclass(frozen=True)
class SweepStarted:
    names: tuple[str, ...]  # every run of the sweep, by index
    todo: int  # how many of them run now


@dataclass(frozen=True)
class RunSubmitted:
    index: int


@dataclass(frozen=True)
class RunFinished:
    index: int
    result: Any  # member.MemberResult: status, duration_s, error, started


@dataclass(frozen=True)
class SweepEnded:
    pass


Event = Union[RunStarted, StepLogged, RunEnded, SweepStarted, RunSubmitted, RunFinished, SweepEnded]
Progress = Callable[[Event], None]


def silent(event: Event) -> None:
    """The progress that shows nothing."""


class Throttled:
    """`progress` with StepLogged events passed on at most every `every_s` seconds (a sweep's
    display and queue need no more); every other event passes at once."""

    def __init__(self, progress: Progress, every_s: float = STEP_EVENTS_EVERY_S):
        self.progress, self.every_s, self.last = progress, every_s, -float("inf")

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepLogged):
            now = time.monotonic()
            if now - self.last < self.every_s:
                return
            self.last = now
        self.progress(event)


# --------------------------------------------------------------------------------------------
# Terminal views
# --------------------------------------------------------------------------------------------


class RunBar:
    """One run: a rich progress bar with step, loss, elapsed time and ETA (updated on logged
    steps), gone when the run ends."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._start(event.steps)
        elif isinstance(event, StepLogged) and self.progress is not None:
            self.progress.update(self.task, completed=event.step, loss=f"{event.loss:.4g}")
        elif isinstance(event, RunEnded) and self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _start(self, total_steps: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("train", total=total_steps, loss="-")
        self.progress.start()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d} min"


class SweepLines:
    """A sweep: overall progress (runs done / to do, elapsed, ETA) and a line per active run (its
    step and loss) on a terminal; a line per finished run stays above them (in a log or a pipe,
    those lines alone)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.names: tuple[str, ...] = ()
        self.tasks: dict[int, Any] = {}
        self.done = self.total = 0
        self.counts: Counter = Counter()

    def __call__(self, event: Event) -> None:
        if isinstance(event, SweepStarted):
            self._begin(event.names, event.todo)
        elif isinstance(event, RunStarted) and self.progress is not None:
            self.tasks[event.index] = self.progress.add_task(f"  {self.names[event.index]}", total=max(event.steps, 1), info="loss -")
        elif isinstance(event, StepLogged) and self.progress is not None and event.index in self.tasks:
            self.progress.update(self.tasks[event.index], completed=event.step, info=f"loss {event.loss:.4g}")
        elif isinstance(event, RunFinished) and event.result.started:
            self._finished(event.index, event.result)
        elif isinstance(event, SweepEnded) and self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _begin(self, names: tuple[str, ...], todo: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.names, self.total, self.done, self.counts = names, todo, 0, Counter()
        if not self.console.is_terminal:
            return  # no live display in a log or a pipe: the finished-run lines alone
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),  # a run's name may hold [...] (a list value): text, not markup
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.overall = self.progress.add_task("runs", total=todo, info="")
        self.progress.start()

    def _finished(self, index: int, result: Any) -> None:
        self.done += 1
        width = len(str(self.total))
        line = f"[{self.done:>{width}}/{self.total}] {result.status:<11} {self.names[index]}  {format_duration(result.duration_s)}"
        if result.error:
            line += f"  {result.error}"
        if self.progress is None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        task = self.tasks.pop(index, None)
        if task is not None:
            self.progress.remove_task(task)
        self.counts[result.status] += 1
        info = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        self.progress.update(self.overall, completed=self.done, info=info)
