"""The local pool: a sweep's runs in N worker processes (ProcessPoolExecutor, "forkserver" or
"spawn"), a run each.

Progress travels as the typed events of gradlab.orchestrate.progress, as they are, through a queue
from a worker. SIGINT/SIGTERM/SIGHUP reach the sweep's process only: workers sit in their own
process group, so the terminal's Ctrl-C does not hit them behind our back. The first signal stops
submitting; it is passed on once to every worker, whose run stops at its next step and closes its
records as interrupted; a worker still setting a run up notes the signal and stops the run at step
0. A second signal is passed on too (a run stops at once). Workers die with the sweep's process: a
worker whose parent is gone (SIGKILL, a crash) stops its run as on SIGTERM and exits (Linux's
parent-death signal, and a thread that watches the parent's pid everywhere).

The sweep's own process never imports torch: the workers are started early (start_workers_early),
and what needs torch before the runs, the memory check, runs on one of them (on_early_worker).
"""

from __future__ import annotations

import os
import queue as queue_module
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradlab.orchestrate.member import MemberResult, MemberTask, one_line, run_member
from gradlab.orchestrate.progress import Progress, RunFinished, RunSubmitted
from gradlab.orchestrate.signals import POLL_S, SIGNALS, STOP, signals_held
from gradlab.vocab.errors import GradlabError

_QUEUE = None  # a worker's channel to the parent: progress events, as they are
# A worker's state for its parent watcher: whether a run is in flight, and whether the sweep's
# process is gone (then the worker exits the moment its run has closed its records).
_RUN_STATE = threading.Lock()
_IN_RUN = False
_ORPHANED = False


PARENT_POLL_S = 0.5  # how often a worker checks that the sweep's process is still alive
ORPHAN_GRACE_S = 5.0  # an orphaned worker's run gets this long to close its records, twice


def _die_with_parent() -> None:
    """Linux: the kernel sends this process SIGTERM when its parent (the forkserver, which itself
    ends with the sweep's process) dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the watcher thread alone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(parent: int) -> None:
    """A worker whose sweep process died (SIGKILL, a closed terminal, a crash) must not train on
    behind its back: its run is stopped as on SIGTERM (records closed as interrupted at the next
    logged step) and the process exits as soon as the run has closed them (_pool_member); the stop
    is insisted on after ORPHAN_GRACE_S, and the process exits after twice that, even if a result
    or an event it cannot deliver any more holds it up. An idle worker exits at once."""
    global _ORPHANED
    while _alive(parent):
        time.sleep(PARENT_POLL_S)
    if _QUEUE is not None:
        try:
            _QUEUE.cancel_join_thread()  # nobody reads the queue any more: do not wait for it at exit
        except Exception:
            pass
    with _RUN_STATE:
        _ORPHANED = True
        if not _IN_RUN:
            os._exit(128 + int(signal.SIGTERM))
    for _ in range(2):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)
    os._exit(128 + int(signal.SIGTERM))


def _init_worker(channel, parent: int | None = None) -> None:
    global _QUEUE
    _QUEUE = channel
    try:
        os.setpgrp()  # the terminal's Ctrl-C goes to the parent only; it passes it on once
    except (AttributeError, OSError):
        pass
    _die_with_parent()
    STOP.reset()
    for s in SIGNALS:
        signal.signal(s, STOP)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # held back since the parent started us
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), name="gradlab-parent-watch", daemon=True).start()
        if not _alive(parent):  # it died while this worker started
            os.kill(os.getpid(), signal.SIGTERM)
    import gradlab.orchestrate.train  # noqa: F401  (torch: paid once per worker, not by its first run)


# What a worker imports before its first run, loaded once in the forkserver so that every worker,
# a fork of it, starts with them: the run's own modules, and what the memory estimate's forward pass
# on the meta device pulls in (PyTorch's Python meta kernels and the sympy their type promotion
# imports; not torch._dynamo, which gradlab.build.meta_kernels keeps them from loading). Last, the
# server's own quick exit (gradlab.orchestrate.forkserver_exit).
WORKER_PRELOAD = (
    "gradlab.orchestrate.local_pool", "gradlab.orchestrate.runner", "gradlab.orchestrate.train", "gradlab.build.memory",
    "gradlab.build.meta_kernels", "torch._meta_registrations", "torch._decomp", "sympy", "gradlab.orchestrate.forkserver_exit",
)  # fmt: skip
def _context():
    """"forkserver" where there is one: a server process imports torch and gradlab once, and each
    worker is a fork of it (about a second to start two workers, where "spawn" takes three and
    imports the command's own main module again); "spawn" elsewhere. Never plain "fork" of a
    process that may have started torch's threads."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(WORKER_PRELOAD))
        return context
    return multiprocessing.get_context("spawn")


@dataclass
class _Pool:
    """`jobs` worker processes and the queue on which they report progress events."""

    executor: Any  # concurrent.futures.ProcessPoolExecutor
    channel: Any  # the context's Queue
    jobs: int

    @classmethod
    def create(cls, jobs: int) -> "_Pool":
        context = _context()
        channel = context.Queue()
        return cls(_new_executor(context, channel, jobs), channel, jobs)

    def restart(self) -> None:
        """A fresh executor on the same queue (after a worker died and broke the old one)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = _new_executor(_context(), self.channel, self.jobs)

    def kill(self) -> None:
        """Stop the workers now (the sweep ended before they were used)."""
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            process.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _new_executor(context, channel, jobs: int):
    from concurrent.futures import ProcessPoolExecutor

    with signals_held():  # the workers start with the signals held; _init_worker lets them in
        return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(channel, os.getpid()))


def _ready() -> None:
    """A worker's first task when the pool is started early: nothing (starting is the point)."""


_EARLY: _Pool | None = None  # the pool start_workers_early started, until run_pool takes it


def start_workers_early(executor: str = "local", jobs: int | None = 1) -> None:
    """Start the `jobs` workers now, on a thread of their own, so that the forkserver's imports and
    the workers' start overlap with what this process does before the runs (its own imports and
    planning the sweep); the sweep's memory check then runs on the first of them (on_early_worker),
    and its runs on all of them. No-op for serial and Ray. `discard_early_workers` stops them when
    the sweep does not run (a config error)."""
    global _EARLY
    if executor != "local" or (jobs or 1) <= 1:
        return
    pool = _Pool.create(jobs)

    def spawn() -> None:  # submit() forks a worker, and waits for the forkserver to have preloaded
        with signals_held():
            try:
                for _ in range(jobs):
                    pool.executor.submit(_ready)
            except RuntimeError:  # discarded meanwhile ("cannot schedule new futures after shutdown")
                pass

    threading.Thread(target=spawn, name="gradlab-start-workers", daemon=True).start()
    _EARLY = pool


def discard_early_workers() -> None:
    """Stop the workers start_workers_early started, if no sweep took them."""
    global _EARLY
    if _EARLY is not None:
        _EARLY.kill()
        _EARLY = None


def _call_reporting(function, args):
    """`function(*args)` in a worker; a GradlabError comes back as its class and lines (pickling
    the exception itself would join its lines into one)."""
    try:
        return function(*args), None
    except GradlabError as exc:
        return None, (type(exc), exc.lines)


def on_early_worker(function, *args):
    """`function(*args)` on one of the workers start_workers_early started (the first free one),
    where torch and the run's modules are already imported, so that this process never imports
    them (a sweep's memory check: a forward pass on the meta device). Its GradlabError is raised
    here, lines intact. Without early workers (--jobs 1, Ray, the API), or when a worker died under
    it, the call runs in this process."""
    from concurrent.futures.process import BrokenProcessPool

    pool = _EARLY
    if pool is not None:
        try:
            with signals_held():  # submit may start a worker process
                future = pool.executor.submit(_call_reporting, function, args)
            value, error = future.result()
        except BrokenProcessPool:  # a worker died (killed, out of memory)
            discard_early_workers()  # (run_pool starts fresh ones)
        else:
            if error is not None:
                cls, lines = error
                raise cls(*lines)
            return value
    return function(*args)


def _pool_member(task: MemberTask) -> MemberResult:
    global _IN_RUN
    with _RUN_STATE:
        if _ORPHANED:  # (the watcher is about to end this process)
            os._exit(128 + int(signal.SIGTERM))
        _IN_RUN = True
    try:
        return run_member(task, _QUEUE.put)
    finally:
        with _RUN_STATE:
            _IN_RUN = False
            if _ORPHANED:  # its records are closed; nobody can take the result
                os._exit(128 + int(signal.SIGTERM))


def run_pool(tasks: list[MemberTask], on_event: Progress, jobs: int) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    global _EARLY
    pool, _EARLY = (_EARLY, None) if _EARLY is not None and _EARLY.jobs == jobs else (_Pool.create(jobs), _EARLY)
    discard_early_workers()  # (started for another --jobs: not expected)
    pending = deque(tasks)
    running: dict[Any, MemberTask] = {}
    forwarded = 0

    def drain() -> None:
        while True:
            try:
                event = pool.channel.get_nowait()
            except queue_module.Empty:
                return
            on_event(event)

    try:
        while pending or running:
            while pending and len(running) < jobs and STOP.signum is None:
                task = pending.popleft()
                with signals_held():  # submit may start a worker process
                    running[pool.executor.submit(_pool_member, task)] = task
                on_event(RunSubmitted(task.index))
            done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
            if len(STOP.signals) > forwarded:
                for pid in list(getattr(pool.executor, "_processes", None) or {}):
                    for signum in STOP.signals[forwarded:]:
                        try:
                            os.kill(pid, signum)
                        except (ProcessLookupError, PermissionError):
                            pass
                forwarded = len(STOP.signals)
            drain()
            broken = False
            for future in done:
                task = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    result = _died(task, STOP.signum)
                except Exception as exc:  # not expected: run_member catches what a run raises
                    result = MemberResult(task.index, "failed", 0.0, one_line(f"{type(exc).__name__}: {exc}"))
                on_event(RunFinished(task.index, result))
            if broken:
                for future, task in list(running.items()):
                    on_event(RunFinished(task.index, _died(task, STOP.signum)))
                running.clear()
                pool.restart()
            if STOP.signum is not None and not running:
                break
    finally:
        pool.executor.shutdown(wait=True, cancel_futures=True)
        drain()
        pool.channel.close()
        pool.channel.join_thread()


def _died(task: MemberTask, signum: int | None) -> MemberResult:
    """A worker process that died under a run (killed, out of memory, crashed): failed, or
    interrupted when the sweep is being stopped. meta.json, if any, says so too."""
    from gradlab.records.write import close_abandoned

    status = "failed" if signum is None else "interrupted"
    error = "the worker process died during the run (killed, out of memory or crashed)" if signum is None else ""
    begun = close_abandoned(Path(task.run_dir), status, error or None)
    return MemberResult(task.index, status, 0.0, error, started=begun or signum is None, signum=signum)
