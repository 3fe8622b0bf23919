"""The real peak resident memory of `gradlab run`s, for tests that hold the memory estimate to it.

    run_peaks(configs, tmp_path) -> {label: bytes}

One child process runs a tiny run first (the interpreter, torch and gradlab loaded once), then
each config in turn through the CLI, and reports for each the peak resident memory it reached
above what the process held when it began (VmHWM, reset between runs through
/proc/self/clear_refs). ru_maxrss of a child would not do: Linux starts it at the RSS of the
process that forked it, here the whole test session.

glibc's malloc serves large blocks from its heap once a large block has been freed (its mmap
threshold rises) and keeps freed heap memory, so without a fixed threshold a peak mixes the run's
tensors with the allocator's retention; a fixed threshold makes it follow the tensors, and
malloc_trim between runs hands the small blocks a run freed back before the next run begins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_RUN = {"data": {"dim": 4, "n_train": 64, "n_test": 32, "batch_size": 16, "classes": 3}, "model": {"depth": 1, "width": 4}}

_CHILD = """
import ctypes, gc, json, re, sys
from gradlab.cli.app import main

libc = ctypes.CDLL("libc.so.6")

def status(field):
    with open("/proc/self/status") as file:
        return int(re.search(field + r":\\s+(\\d+) kB", file.read()).group(1)) * 1024

out, paths = sys.argv[1], sys.argv[2:]
peaks = []
for path in paths:
    gc.collect()
    libc.malloc_trim(0)  # the last run's small freed blocks leave the heap: this run's peak is its own
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # the peak (VmHWM) starts again from the current RSS
    before = status("VmRSS")
    sys.argv = ["gradlab", "run", path, "--quiet"]
    try:
        main()
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
    peaks.append(status("VmHWM") - before)
with open(out, "w") as file:
    json.dump(peaks[1:], file)  # the tiny run only loaded what every run needs
"""


def run_peaks(configs: dict[str, dict[str, Any]], tmp_path: Path) -> dict[str, int]:
    """Each config's peak resident memory above the process's own, in bytes (two training steps,
    every one logged and evaluated)."""
    paths = []
    for i, config in enumerate([TINY_RUN, *configs.values()]):
        path = tmp_path / f"peak-{i}.yaml"
        path.write_text(yaml.safe_dump({
            "name": f"peak-{i}", "device": "cpu", "train": {"steps": 2, "eval_every": 1},
            "log": {"every": 1, "out": str(tmp_path / "out")}, **config,
        }))  # fmt: skip
        paths.append(str(path))
    out = tmp_path / "peaks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), *paths], check=False, cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(zip(configs, json.loads(out.read_text())))
