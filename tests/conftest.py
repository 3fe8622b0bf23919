"""Fixtures shared by the test files.

`invoke` runs `gradlab ARGS...` through Typer's CliRunner, in this process: the arguments are turned
into strings (paths welcome) and the click Result comes back (exit_code, stdout, stderr, exception).
`invoke_wide` is the same on a 250-column terminal, for tests that compare rich's lines whole and
must never see one wrapped. Both take `env=` (more variables) and pass any other keyword to
CliRunner.invoke (`terminal_width=`, `input=`).

Plain helpers live in modules that tests import: run_factory.py (run directories, written from
chosen numbers or trained, and real `gradlab run` processes) and data_files.py (data files in the
formats the loaders read).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest

# Under pytest-xdist (`-n auto`, as `make test` runs) every worker gets one torch thread, and so
# does every process a test starts: two workers with torch's default thread count on two cores slow
# each other down by an order of magnitude. Set before any test module imports torch.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# The CLI's rich consoles are made when gradlab.cli.app is first imported, and a console made while
# COLUMNS is set keeps that width for good. pytest-xdist's workers run with COLUMNS=80, so drop it
# (and LINES) and import the CLI here: its width then follows each invocation's environment
# (tests that compare whole lines pass COLUMNS themselves), whatever runs the tests.
for _size in ("COLUMNS", "LINES"):
    os.environ.pop(_size, None)
import gradlab.cli.app  # noqa: E402, F401


def _invoker(base_env: dict[str, str]) -> Callable[..., Any]:
    from typer.testing import CliRunner

    from gradlab.cli.app import app

    def invoke(*args: Any, env: dict[str, str] | None = None, **extra: Any):
        merged = {**base_env, **(env or {})}
        return CliRunner().invoke(app, [str(arg) for arg in args], env=merged or None, **extra)

    return invoke


@pytest.fixture(scope="session")
def invoke() -> Callable[..., Any]:
    """`invoke("run", config, "--out", tmp_path)`: the Result of `gradlab run CONFIG --out TMP`."""
    return _invoker({})


@pytest.fixture(scope="session")
def invoke_wide() -> Callable[..., Any]:
    """`invoke` with COLUMNS=250, wide enough that rich never wraps a line the tests compare whole."""
    return _invoker({"COLUMNS": "250"})


def pytest_collection_modifyitems(config, items):
    """Files with the most end-to-end (slow-marked) tests first. pytest-xdist hands out whole files
    (`--dist loadfile`) in this order (`--no-loadscope-reorder`; its default orders files by their
    count of tests, long or short): a long file handed out last would keep one worker busy while
    the others have finished."""
    slow: dict[Any, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests stay together and in order
