"""A real `gradlab run` process, signalled mid-run: records closed, status interrupted, whole steps."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from gradlab.records.layout import LAYERS_COLUMNS
from run_factory import start_long_run, wait_for_rows


def assert_whole_steps(run: Path) -> pd.DataFrame:
    layers = pd.read_csv(run / "layers.csv")
    assert list(layers.columns) == LAYERS_COLUMNS
    per_step = layers.groupby("step").size()
    assert (per_step == 7).all(), per_step[per_step != 7]  # 6 hidden blocks + head, every step whole
    return layers


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_closes_the_records_as_interrupted(tmp_path, signum, code):
    process = start_long_run(tmp_path)
    run = wait_for_rows(tmp_path, steps=20)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert f"records kept in {run}" in stderr and "Traceback" not in stderr
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["ended"]
    layers = assert_whole_steps(run)
    assert meta["steps_done"] == layers["step"].max() + 1
    metrics = pd.read_csv(run / "metrics.csv")
    assert set(metrics[metrics.split == "train"].step) == set(layers.step)


@pytest.mark.slow
def test_after_sigkill_the_csvs_still_parse_up_to_the_last_step(tmp_path):
    process = start_long_run(tmp_path)
    run = wait_for_rows(tmp_path, steps=20)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert json.loads((run / "meta.json").read_text())["status"] == "running"
    assert_whole_steps(run)
