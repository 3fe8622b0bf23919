"""One owner per sweep directory: the command that runs a sweep holds an OS lock on it."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from gradlab.vocab.errors import RunError

LOCK_FILE = ".gradlab.lock"  # flock()ed by the command that runs the sweep; says who that is
_HELD: dict[Path, int] = {}  # sweep directories this process holds: the lock file's descriptor


class SweepLocked(RunError):
    """Another command holds the sweep directory (exit 2: nothing was touched)."""


def _lock_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8")[:1000])
        return f"pid {int(holder['pid'])} on host {str(holder['host'])[:100]} since {str(holder['since'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@contextmanager
def sweep_lock(sweep_dir: str | Path):
    """The sweep directory held by this process for the block: an OS lock (flock) on its lock file,
    which the kernel releases when the process ends however it ends (SIGKILL, a crash, a closed
    terminal), so a lock never outlives its owner. A second command gets SweepLocked naming the
    holder (pid, host, since). Re-entrant within one process. Where flock does not exist (not a
    POSIX system) nothing is locked."""
    key = Path(sweep_dir).resolve()
    if key in _HELD:
        yield
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = key / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunError(f"{sweep_dir}: cannot create its lock file {LOCK_FILE}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SweepLocked(
            f"{sweep_dir}: in use by another gradlab command ({_lock_holder(path)}); "
            "wait for it to end or stop it, then run gradlab run --resume again"
        ) from None
    try:
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
    except OSError:
        pass  # a full disk: the lock holds all the same; the second command cannot say who
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiting command)
