"""Where the runs of a sweep happen: in this process, in a pool of local processes, or on Ray.

    execute(tasks, on_event, executor="local", jobs=1)   runs every MemberTask, reporting progress events
        jobs 1      serial, in this process
        jobs N      N worker processes (ProcessPoolExecutor, "forkserver" or "spawn"), a run each
        "ray"       one Ray task per run on a cluster (or a local instance); each task writes its
                    records in a temporary folder on its machine and sends the files back, so the
                    sweep directory lives on the submitting machine

Every run goes through `run_member`, which never raises: it trains with gradlab.orchestrate.runner, and a run
that fails is a `failed` result (meta.json says why), a diverged run a `diverged` one, and a run
stopped by a signal an `interrupted` one; a finished run with an expect: section is read back once
and checked there. Each run computes with `MemberTask.threads` torch threads. Progress travels as
the typed events of gradlab.orchestrate.progress, as they are: through a queue from a pool worker, through a
control actor from a Ray task. What a run directory holds is gradlab.records' business (stubs,
abandoned runs, packing a run to send it back from Ray).

Stopping. SIGINT/SIGTERM/SIGHUP reach this process only: pool workers sit in their own process
group, so the terminal's Ctrl-C does not hit them behind our back. Workers die with this process:
a worker whose parent is gone (SIGKILL, a crash) stops its run as on SIGTERM and exits (Linux's
parent-death signal, and a thread that watches the parent's pid everywhere). Every process notes signals with
runner.StopSignals. The first signal stops submitting; it is passed on once to every worker, whose
run stops at its next step and closes its records as interrupted; a worker still setting a run
up notes the signal and stops the run at step 0. Ray tasks poll a small control actor instead. A
second signal is passed on too (a run stops at once); with Ray it cancels the tasks outright.
Nothing here imports torch at module level: the Ray control actor imports this module.
"""

from __future__ import annotations

import logging
import math
import os
import queue as queue_module
import signal
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gradlab.build.system import available_cores
from gradlab.orchestrate.progress import (
    Event,
    Progress,
    RunFinished,
    RunStarted,
    RunSubmitted,
    StepLogged,
    Throttled,
    silent,
)
from gradlab.orchestrate.runner import SIGNALS, RunInterrupted, StopPoll, StopSignals
from gradlab.records.layout import META_FILE
from gradlab.vocab.errors import GradlabError, RunError

RAY_POLL_EVERY_S = 1.0  # a Ray task asks the control actor whether to stop at most this often
POLL_S = 0.1  # how often the parent looks at finished runs, progress and signals


@dataclass(frozen=True)
class MemberTask:
    index: int  # row of sweep.csv
    name: str  # the run directory's name
    run_dir: str  # where the records go (created by the run; must not exist)
    config: dict[str, Any]  # the resolved config
    threads: int  # torch threads for this run


@dataclass
class MemberResult:
    index: int
    status: str  # completed | diverged | failed | interrupted; "pending" when not started
    duration_s: float
    error: str = ""
    started: bool = True
    signum: int | None = None  # the signal that interrupted the run
    files: dict[str, bytes] | None = None  # Ray: the records, to be written on this machine
    outcomes: list | None = None  # expect: checked on the finished run; None when not checked here


def default_threads() -> int:
    """Torch threads per run of a sweep: 1, whatever --jobs is. PyTorch's CPU kernels split their
    sums by thread, so the last bits of every measurement depend on the thread count; one fixed
    count keeps a sweep's records the same serial or parallel."""
    return 1


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------


_STOP = StopSignals()  # this process's, noting only: the parent's in a sweep, a worker's in a pool
_SIGNALS = set(SIGNALS)


@contextmanager
def _signals_held():
    """SIGINT/SIGTERM held back (not lost) in this thread while it starts worker processes: a new
    worker inherits the mask, so a signal cannot hit it while it imports, before its handler is
    installed (a KeyboardInterrupt traceback); it waits until `_init_worker` lets it in."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stop_noted() -> int | None:
    return _STOP.signum


def run_member(task: MemberTask, progress: Progress | None = None, stop_poll: StopPoll | None = None) -> MemberResult:
    """Train one combination into `task.run_dir`, then check its expect: section on the records.
    Never raises for a run that goes wrong.

    `progress` gets the run's events (steps at most every progress.STEP_EVENTS_EVERY_S); `stop_poll`
    (default: a signal this process noted) stops the run, at its start or after a logged step."""
    import torch

    from gradlab.config.experiment import validate
    from gradlab.orchestrate import runner
    from gradlab.vocab.errors import GradlabError

    stop_poll = stop_poll or _stop_noted
    if stop_poll() is not None:
        return MemberResult(task.index, "pending", 0.0, started=False)
    _warm_up()  # a worker's start-up is not the run's: sweep.csv's duration_s is the run alone
    begin = time.perf_counter()
    run_dir = Path(task.run_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    error, signum, exp, result = "", None, None, None
    try:
        exp = validate(task.config)
        result = runner.run_experiment(exp, Throttled(progress or silent), run_dir=run_dir, index=task.index, stop_poll=stop_poll, threads=task.threads)
        status, error = result.status, result.divergence_text()
    except RunInterrupted as exc:
        status, signum = "interrupted", exc.signum
    except KeyboardInterrupt:  # Ray's cancel, or a signal where no handler of ours was installed
        status, signum = "interrupted", signal.SIGINT
    except GradlabError as exc:
        status, error = "failed", _one_line("; ".join(exc.lines))
    except Exception as exc:  # a bug or a resource problem: recorded, the sweep goes on
        status, error = "failed", _one_line(f"{type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    if status in ("failed", "interrupted") and not (run_dir / META_FILE).exists():
        _write_stub(run_dir, task, status, error)
    member = MemberResult(task.index, status, time.perf_counter() - begin, error, signum=signum)
    if result is not None and exp.expect is not None:
        try:
            member.outcomes = runner.report(exp, result).outcomes
        except Exception:  # records that cannot be read back: the sweep checks them again and says why
            member.outcomes = None
    elif result is not None:
        member.outcomes = []
    return member


WARM_MODULES = ("gradlab.build.data", "gradlab.build.memory", "gradlab.build.models", "gradlab.measure.probe", "gradlab.orchestrate.train", "gradlab.records.run")


def _warm_up() -> None:
    """What the first run in a fresh worker would otherwise pay inside its duration (the first of
    a worker's runs showed 15 s, the next of the same size 0.4 s): the modules a run imports, and
    torch's lazy set-up of its CPU kernels and thread pool, done once per process."""
    import importlib

    import torch

    for name in WARM_MODULES:
        importlib.import_module(name)
    with torch.no_grad():
        x = torch.ones(8, 8)
        (x @ x).sum().item()


def _write_stub(run_dir: Path, task: MemberTask, status: str, error: str) -> None:
    """Records for a run that stopped before it could write any (bad data file, memory check)."""
    import yaml

    from gradlab.records.run import run_meta
    from gradlab.records.write import write_stub

    config = task.config
    try:
        write_stub(
            run_dir, yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100),
            run_meta(config.get("name"), run_dir.name, config.get("seed"), None, config.get("train", {}).get("steps")),
            status, error or None,
        )  # fmt: skip
    except (OSError, GradlabError):
        pass  # (a full disk) the index still says what happened


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------


def execute(
    tasks: list[MemberTask],
    on_event: Progress,
    *,
    executor: str = "local",
    jobs: int | None = 1,
    ray_address: str | None = None,
) -> int | None:
    """Run `tasks`, reporting every progress event to `on_event` (in this thread): the runs' own,
    RunSubmitted and RunFinished. Returns the signal that stopped the sweep, or None when every
    task ran."""
    if executor == "ray":
        return _run_ray(tasks, on_event, jobs, ray_address)
    if executor != "local":
        raise RunError(f"--executor: got {executor!r}; allowed: local, ray")
    _STOP.reset()
    with _STOP.installed():
        if (jobs or 1) <= 1:
            _run_serial(tasks, on_event)
        else:
            _run_pool(tasks, on_event, jobs)
    return _STOP.signum


def _run_serial(tasks: list[MemberTask], on_event: Progress) -> None:
    for task in tasks:
        if _STOP.signum is not None:
            break
        on_event(RunSubmitted(task.index))
        result = run_member(task, on_event)
        if result.signum is not None and not _STOP.signals:
            _STOP.signals.append(result.signum)  # the run's own handler took the signal during the run
        on_event(RunFinished(task.index, result))


# The pool's workers -----------------------------------------------------------------------

_QUEUE = None  # a worker's channel to the parent: progress events, as they are


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
    logged step), insisted on after ORPHAN_GRACE_S, and the process exits after twice that, even
    if a result or an event it cannot deliver any more holds it up."""
    while _alive(parent):
        time.sleep(PARENT_POLL_S)
    if _QUEUE is not None:
        try:
            _QUEUE.cancel_join_thread()  # nobody reads the queue any more: do not wait for it at exit
        except Exception:
            pass
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
    _STOP.reset()
    for s in _SIGNALS:
        signal.signal(s, _STOP)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # held back since the parent started us
    if parent is not None:
        import threading

        threading.Thread(target=_watch_parent, args=(parent,), name="gradlab-parent-watch", daemon=True).start()
        if not _alive(parent):  # it died while this worker started
            os.kill(os.getpid(), signal.SIGTERM)
    import gradlab.orchestrate.train  # noqa: F401  (torch: paid once per worker, not by its first run)


# What a worker imports before its first run, loaded once in the forkserver so that every worker,
# a fork of it, starts with them: the run's own modules, and what the memory estimate's forward pass
# on the meta device pulls in (PyTorch's Python meta kernels, whose wrappers import torch._dynamo: a
# second and more that each worker's first run otherwise paid while the other waited). Last, the
# server's own quick exit (gradlab.orchestrate.forkserver_exit).
WORKER_PRELOAD = (
    "gradlab.orchestrate.executors", "gradlab.orchestrate.runner", "gradlab.orchestrate.train", "gradlab.build.memory",
    "torch._meta_registrations", "torch._decomp", "torch._dynamo", "gradlab.orchestrate.forkserver_exit",
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

    with _signals_held():  # the workers start with the signals held; _init_worker lets them in
        return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(channel, os.getpid()))


def _ready() -> None:
    """A worker's first task when the pool is started early: nothing (starting is the point)."""


_EARLY: _Pool | None = None  # the pool start_workers_early started, until _run_pool takes it


def start_workers_early(executor: str = "local", jobs: int | None = 1) -> None:
    """Start the `jobs` workers now, on a thread of their own, so that the forkserver's imports and
    the workers' start overlap with what this process does before the runs (its own imports,
    planning the sweep and checking its memory); the sweep then finds them ready. No-op for serial
    and Ray. `discard_early_workers` stops them when the sweep does not run (a config error)."""
    global _EARLY
    if executor != "local" or (jobs or 1) <= 1:
        return
    import threading

    pool = _Pool.create(jobs)

    def spawn() -> None:  # submit() forks a worker, and waits for the forkserver to have preloaded
        with _signals_held():
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


def _pool_member(task: MemberTask) -> MemberResult:
    return run_member(task, _QUEUE.put)


def _run_pool(tasks: list[MemberTask], on_event: Progress, jobs: int) -> None:
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
            while pending and len(running) < jobs and _STOP.signum is None:
                task = pending.popleft()
                with _signals_held():  # submit may start a worker process
                    running[pool.executor.submit(_pool_member, task)] = task
                on_event(RunSubmitted(task.index))
            done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
            if len(_STOP.signals) > forwarded:
                for pid in list(getattr(pool.executor, "_processes", None) or {}):
                    for signum in _STOP.signals[forwarded:]:
                        try:
                            os.kill(pid, signum)
                        except (ProcessLookupError, PermissionError):
                            pass
                forwarded = len(_STOP.signals)
            drain()
            broken = False
            for future in done:
                task = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    result = _died(task, _STOP.signum)
                except Exception as exc:  # not expected: run_member catches what a run raises
                    result = MemberResult(task.index, "failed", 0.0, _one_line(f"{type(exc).__name__}: {exc}"))
                on_event(RunFinished(task.index, result))
            if broken:
                for future, task in list(running.items()):
                    on_event(RunFinished(task.index, _died(task, _STOP.signum)))
                running.clear()
                pool.restart()
            if _STOP.signum is not None and not running:
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


# Ray ---------------------------------------------------------------------------------------


class RayControl:
    """A Ray actor between the submitting process and its tasks: progress one way, stop the other."""

    def __init__(self):
        self.signum: int | None = None
        self.events: list[Event] = []

    def report(self, event: Event | None) -> int | None:
        """A task's progress event (None: only asking), answered with the signal to stop on."""
        if event is not None:
            self.events.append(event)
        return self.signum

    def stop(self, signum: int) -> None:
        self.signum = signum

    def drain(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class _RayLink:
    """A Ray task's progress and stop poll, both through the control actor: one round trip at most
    every RAY_POLL_EVERY_S (but the start, which is always reported)."""

    def __init__(self, control):
        self.control = control
        self.last = -math.inf
        self.signum: int | None = None

    def _report(self, event: Event | None) -> None:
        import ray

        self.signum = ray.get(self.control.report.remote(event))
        self.last = time.monotonic()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) or (isinstance(event, StepLogged) and time.monotonic() - self.last >= RAY_POLL_EVERY_S):
            self._report(event)

    def stop_signal(self) -> int | None:
        if time.monotonic() - self.last >= RAY_POLL_EVERY_S:
            self._report(None)
        return self.signum


def ray_member(task: MemberTask, control) -> MemberResult:
    """The Ray task: the run in a temporary folder on whichever machine runs it, and its records
    sent back as file contents."""
    import tempfile

    from gradlab.records.write import pack_run

    with tempfile.TemporaryDirectory(prefix="gradlab-") as tmp:
        local = Path(tmp) / task.name
        link = _RayLink(control)
        result = run_member(replace(task, run_dir=str(local)), link, link.stop_signal)
        if local.is_dir():
            result.files = pack_run(local)
    return result


def connect_ray(address: str | None):
    """Import Ray and connect: to `address`, to $RAY_ADDRESS, or to a new local instance.
    Returns (ray, whether this call connected and so should disconnect)."""
    try:
        import ray
    except ImportError:
        raise RunError("--executor ray: Ray is not installed; install it with pip install 'gradlab[ray]'") from None
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_reachable(address)
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        options.update(num_cpus=available_cores(), include_dashboard=False)
    try:
        # "local": a new instance even where `ray start` left a cluster behind (ray.init(None) would join it)
        ray.init(address=address or "local", **options)
    except Exception as exc:
        where = f"--ray-address {address}" if address else "--executor ray"
        raise RunError(f"{where}: cannot start or reach Ray: {_one_line(exc, 200)}") from None
    return ray, True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an address where nothing listens for minutes; a quick TCP connection first
    turns that into one line. `auto` (and anything without host:port) is left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RunError(f"--ray-address {address}: nothing answers at {host}:{port} ({reason}); is the cluster up (ray start --head)?") from None


@contextmanager
def ray_session(address: str | None):
    """Connected to Ray for the block (see connect_ray); disconnects if it connected. The command
    line connects before it writes anything, so that a missing Ray or an unreachable cluster is
    bad input (exit 2) and leaves no sweep directory behind."""
    ray, connected = connect_ray(address)
    try:
        yield ray
    finally:
        if connected:
            ray.shutdown()


def _run_ray(tasks: list[MemberTask], on_event: Progress, jobs: int | None, address: str | None) -> int | None:
    ray, connected = connect_ray(address)
    control = None
    try:
        control = ray.remote(num_cpus=0)(RayControl).remote()
        remote = ray.remote(max_retries=0)(ray_member)
        threads = max((task.threads for task in tasks), default=1)
        capacity = jobs or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        pending = deque(tasks)
        running: dict[Any, MemberTask] = {}
        told = 0
        _STOP.reset()
        with _STOP.installed():
            while pending or running:
                while pending and len(running) < capacity and _STOP.signum is None:
                    task = pending.popleft()
                    running[remote.options(num_cpus=task.threads).remote(task, control)] = task
                    on_event(RunSubmitted(task.index))
                ready = []
                if running:
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S * 2)
                if len(_STOP.signals) > told:
                    if told == 0:
                        ray.get(control.stop.remote(_STOP.signum))
                    else:  # a second signal: stop at once
                        for ref in running:
                            ray.cancel(ref, force=True)
                    told = len(_STOP.signals)
                for event in ray.get(control.drain.remote()):
                    on_event(event)
                for ref in ready:
                    task = running.pop(ref)
                    on_event(RunFinished(task.index, _gather(ray, ref, task)))
                if _STOP.signum is not None and not running:
                    break
        return _STOP.signum
    finally:
        if control is not None:
            try:
                ray.kill(control)
            except Exception:
                pass
        if connected:
            ray.shutdown()


def _gather(ray, ref, task: MemberTask) -> MemberResult:
    """A Ray task's result, its records written into the sweep directory on this machine."""
    from gradlab.records.write import unpack_run

    try:
        result: MemberResult = ray.get(ref)
    except Exception as exc:  # cancelled, worker died, node lost
        cancelled = type(exc).__name__ in ("TaskCancelledError", "WorkerCrashedError") and _STOP.signum is not None
        if cancelled:
            return MemberResult(task.index, "interrupted", 0.0, "cancelled", signum=_STOP.signum)
        return MemberResult(task.index, "failed", 0.0, _one_line(f"{type(exc).__name__}: {exc}"))
    if result.files:
        unpack_run(Path(task.run_dir), result.files)
        result.files = None
    return result
