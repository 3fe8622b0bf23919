"""Facts about the machine a run is on: the cores this process may use and the memory free on a
device. One home, so that the thread rule, the sweep's --jobs check and the memory check agree."""

from __future__ import annotations

import os

from gradlab.vocab.errors import ConfigError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def check_threads(threads: int, where: str) -> None:
    """ConfigError when `threads` is more than 4 per core here: 100000 threads fail allocating them
    (after the run's folder exists), and beyond a few per core none helps."""
    cores = available_cores()
    if threads > 4 * cores:
        raise ConfigError(f"{where}: {threads} is more than 4 x the {cores} cores here; give at most {4 * cores}")


def available_bytes(device_type: str = "cpu") -> int | None:
    """Free memory on the device: MemAvailable for the CPU, the CUDA driver's free memory on a GPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # unknown: do not refuse


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"
