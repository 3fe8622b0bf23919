"""Ray: a sweep's runs as Ray tasks on a cluster (or a local instance), one task per run.

Each task writes its records in a temporary folder on its machine and sends the files back, so the
sweep directory lives on the submitting machine. Progress and stop requests travel through a small
control actor (RayControl), which tasks poll; a second signal cancels the tasks outright. The
control actor imports this module: nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradlab.build.system import available_cores
from gradlab.orchestrate.member import MemberResult, MemberTask, one_line, run_member
from gradlab.orchestrate.progress import Event, Progress, RunFinished, RunStarted, RunSubmitted, StepLogged
from gradlab.orchestrate.signals import POLL_S, STOP
from gradlab.vocab.errors import RunError

RAY_POLL_EVERY_S = 1.0  # a Ray task asks the control actor whether to stop at most this often


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
        raise RunError(f"{where}: cannot start or reach Ray: {one_line(exc, 200)}") from None
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


def run_ray(tasks: list[MemberTask], on_event: Progress, jobs: int | None, address: str | None) -> int | None:
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
        STOP.reset()
        with STOP.installed():
            while pending or running:
                while pending and len(running) < capacity and STOP.signum is None:
                    task = pending.popleft()
                    running[remote.options(num_cpus=task.threads).remote(task, control)] = task
                    on_event(RunSubmitted(task.index))
                ready = []
                if running:
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S * 2)
                if len(STOP.signals) > told:
                    if told == 0:
                        ray.get(control.stop.remote(STOP.signum))
                    else:  # a second signal: stop at once
                        for ref in running:
                            ray.cancel(ref, force=True)
                    told = len(STOP.signals)
                for event in ray.get(control.drain.remote()):
                    on_event(event)
                for ref in ready:
                    task = running.pop(ref)
                    on_event(RunFinished(task.index, _gather(ray, ref, task)))
                if STOP.signum is not None and not running:
                    break
        return STOP.signum
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
        cancelled = type(exc).__name__ in ("TaskCancelledError", "WorkerCrashedError") and STOP.signum is not None
        if cancelled:
            return MemberResult(task.index, "interrupted", 0.0, "cancelled", signum=STOP.signum)
        return MemberResult(task.index, "failed", 0.0, one_line(f"{type(exc).__name__}: {exc}"))
    if result.files:
        unpack_run(Path(task.run_dir), result.files)
        result.files = None
    return result
