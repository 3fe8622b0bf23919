"""Where the runs of a sweep happen: in this process, in a pool of local processes, or on Ray.

    execute(tasks, on_event, executor="local", jobs=1)   runs every MemberTask, reporting progress events
        jobs 1      serial, in this process
        jobs N      N worker processes, a run each (local_pool.py)
        "ray"       one Ray task per run on a cluster, or a local instance (ray_tasks.py)

Every run goes through member.run_member, which never raises. Every process notes signals with
signals.STOP; the first stops submitting, and each executor passes signals on to its runs.
"""

from __future__ import annotations

from gradlab.orchestrate.local_pool import run_pool
from gradlab.orchestrate.member import MemberTask, run_member
from gradlab.orchestrate.progress import Progress, RunFinished, RunSubmitted
from gradlab.orchestrate.signals import STOP
from gradlab.vocab.errors import RunError

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
        from gradlab.orchestrate.ray_tasks import run_ray

        return run_ray(tasks, on_event, jobs, ray_address)
    if executor != "local":
        raise RunError(f"--executor: got {executor!r}; allowed: local, ray")
    STOP.reset()
    with STOP.installed():
        if (jobs or 1) <= 1:
            _run_serial(tasks, on_event)
        else:
            run_pool(tasks, on_event, jobs)
    return STOP.signum


def _run_serial(tasks: list[MemberTask], on_event: Progress) -> None:
    for task in tasks:
        if STOP.signum is not None:
            break
        on_event(RunSubmitted(task.index))
        result = run_member(task, on_event)
        if result.signum is not None and not STOP.signals:
            STOP.signals.append(result.signum)  # the run's own handler took the signal during the run
        on_event(RunFinished(task.index, result))
