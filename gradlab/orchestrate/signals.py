"""Stopping on SIGINT, SIGTERM and SIGHUP.

`StopSignals` is the one handler: it notes signals for whoever installed it to act on at a point
where stopping leaves everything whole. A run's training loop installs one that insists: the first
signal stops the run between two steps (a step's rows are never cut in half), the records are
closed as `interrupted` and RunInterrupted is raised; a second signal raises at once. The process
that runs a sweep, and each of its pool workers, note signals in `STOP` and act on them (the sweep
passes them on to its workers). No torch.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

# SIGHUP (the terminal closed) is a stop like SIGTERM: the records are closed, not left running
SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))

StopPoll = Callable[[], "int | None"]  # asked at the start and after every logged step: a signal to stop on
POLL_S = 0.1  # how often the process running a sweep looks at signals, finished runs and progress


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived during a run; the records were closed as `interrupted`."""

    def __init__(self, signum: int, run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_dir = run_dir
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, as shells report them


class StopSignals:
    """SIGINT/SIGTERM noted in arrival order (`signals`; `signum` is the first), to be acted on by
    whoever installed the handler, at a point where stopping leaves everything whole.

    `insist`: a second signal raises RunInterrupted at once (the user insists); without it every
    signal is only noted.
    """

    def __init__(self, insist: bool = False):
        self.insist = insist
        self.signals: list[int] = []

    @property
    def signum(self) -> int | None:
        return self.signals[0] if self.signals else None

    def reset(self) -> None:
        self.signals = []

    def __call__(self, signum, frame) -> None:
        if self.insist and self.signals:
            raise RunInterrupted(signum)
        self.signals.append(signum)

    @contextmanager
    def installed(self):
        """This handler for SIGINT and SIGTERM during the block, the previous ones restored after.
        Outside the main thread signals belong to the main thread's owner: nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        try:
            previous = {s: signal.signal(s, self) for s in SIGNALS}
        except ValueError:  # not the main interpreter
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


STOP = StopSignals()  # this process's, noting only: the parent's in a sweep, a worker's in a pool


def stop_noted() -> int | None:
    """The signal this process noted in STOP (None: none)."""
    return STOP.signum


@contextmanager
def signals_held():
    """SIGINT/SIGTERM held back (not lost) in this thread while it starts worker processes: a new
    worker inherits the mask, so a signal cannot hit it while it imports, before its handler is
    installed (a KeyboardInterrupt traceback); it waits until local_pool's worker set-up lets it in."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
