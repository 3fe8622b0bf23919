"""One run of a sweep (a member), as every executor runs it: in the sweep's process, in a pool
worker, or in a Ray task.

`run_member` never raises: it trains with gradlab.orchestrate.runner, and a run that fails is a
`failed` result (meta.json says why), a diverged run a `diverged` one, and a run stopped by a
signal an `interrupted` one; a finished run with an expect: section is read back once and checked
there. Each run computes with `MemberTask.threads` torch threads. Nothing here imports torch at
module level.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradlab.orchestrate import runner
from gradlab.orchestrate.progress import Progress, Throttled, silent
from gradlab.orchestrate.signals import RunInterrupted, StopPoll, stop_noted
from gradlab.records.layout import META_FILE
from gradlab.vocab.errors import GradlabError

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


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_member(task: MemberTask, progress: Progress | None = None, stop_poll: StopPoll | None = None) -> MemberResult:
    """Train one combination into `task.run_dir`, then check its expect: section on the records.
    Never raises for a run that goes wrong.

    `progress` gets the run's events (steps at most every progress.STEP_EVENTS_EVERY_S); `stop_poll`
    (default: a signal this process noted) stops the run, at its start or after a logged step."""
    import torch

    from gradlab.config.experiment import validate

    stop_poll = stop_poll or stop_noted
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
        status, error = "failed", one_line("; ".join(exc.lines))
    except Exception as exc:  # a bug or a resource problem: recorded, the sweep goes on
        status, error = "failed", one_line(f"{type(exc).__name__}: {exc}")
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
