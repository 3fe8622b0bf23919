"""The runner: one run start to end (read back once), its progress events, the stop handler, the
run-directory operations the executors use, and an orchestration without import cycles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradlab.records import layout, read, write
from gradlab.records import run as records
from gradlab.orchestrate import runner, signals
from gradlab.config.experiment import validate
from gradlab.orchestrate.progress import RunEnded, RunStarted, StepLogged, Throttled
from gradlab.vocab.errors import RunError

EXP = {
    "name": "r", "device": "cpu",
    "data": {"name": "gaussian", "dim": 12, "classes": 4, "n_train": 256, "n_test": 96, "batch_size": 32},
    "model": {"depth": 3, "width": 16, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"steps": 20, "eval_every": 10},
}  # fmt: skip


def experiment(tmp_path: Path, **changes) -> object:
    return validate({**EXP, "log": {"every": 5, "out": str(tmp_path)}, **changes})


def test_a_run_reports_typed_events_for_exactly_the_logged_steps(tmp_path):
    events = []
    result = runner.run_experiment(experiment(tmp_path), events.append, index=3)
    layers = pd.read_csv(result.run_dir / "layers.csv")
    train = pd.read_csv(result.run_dir / "metrics.csv").query("split == 'train'")
    assert events[0] == RunStarted(3, 20)
    assert events[-1] == RunEnded(3, "completed")
    steps = [event for event in events if isinstance(event, StepLogged)]
    # one event per logged step, in order, with the loss the records hold for that step
    assert [e.step for e in steps] == sorted(layers["step"].unique()) == [0, 5, 10, 15, 20]
    assert [e.loss for e in steps] == list(train["loss"])
    assert all(e.index == 3 for e in steps) and len(events) == len(steps) + 2


def test_the_finished_run_is_read_back_once_for_table_figures_and_expectations(tmp_path, monkeypatch):
    reads = []
    load_run = records.load_run
    monkeypatch.setattr(records, "load_run", lambda run_dir: reads.append(run_dir) or load_run(run_dir))
    exp = experiment(tmp_path, expect={"status": "completed", "final_test_accuracy": {"min": 1.01}})
    report = runner.run(exp, profile=True, plot=True)
    assert len(reads) == 1
    run_dir = report.result.run_dir
    assert sorted(p.name for p in report.figures) == sorted(p.name for p in run_dir.glob("*.png")) and len(report.figures) == 5
    accuracy = pd.read_csv(run_dir / "metrics.csv").query("split == 'test'")["accuracy"].iloc[-1]
    assert [(o.name, o.passed) for o in report.outcomes] == [("status", True), ("final_test_accuracy", False)]
    assert report.failed[0].measured == accuracy
    assert report.profile.row_count == 4  # 3 hidden blocks and the head
    # nothing to show or check: nothing is read
    reads.clear()
    plain = runner.run(experiment(tmp_path))
    assert reads == [] and plain.outcomes == [] and plain.profile is None and plain.figures == []


def test_a_stop_asked_for_at_the_start_closes_the_records_as_interrupted(tmp_path):
    events = []
    with pytest.raises(signals.RunInterrupted) as stopped:
        runner.run_experiment(experiment(tmp_path), events.append, stop_poll=lambda: signal.SIGTERM)
    assert stopped.value.exit_code == 143 and stopped.value.run_dir is not None
    meta = json.loads((stopped.value.run_dir / "meta.json").read_text())
    assert (meta["status"], meta["steps_done"]) == ("interrupted", 0)
    assert events == [RunStarted(0, 20), RunEnded(0, "interrupted")]


def test_a_stop_asked_for_after_a_logged_step_keeps_that_step_whole(tmp_path):
    asked = []

    def poll():
        asked.append(None)
        return signal.SIGINT if len(asked) == 3 else None  # the start, step 0, then step 5

    with pytest.raises(signals.RunInterrupted) as stopped:
        runner.run_experiment(experiment(tmp_path), stop_poll=poll)
    layers = pd.read_csv(stopped.value.run_dir / "layers.csv")
    meta = json.loads((stopped.value.run_dir / "meta.json").read_text())
    assert sorted(layers["step"].unique()) == [0, 5] and (layers.groupby("step").size() == 4).all()
    assert (meta["status"], meta["steps_done"]) == ("interrupted", 6)


def test_stop_signals_note_in_order_and_insist_on_the_second():
    noted = signals.StopSignals()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a process started in the background
    with noted.installed():
        assert signal.getsignal(signal.SIGINT) is noted and signal.getsignal(signal.SIGTERM) is noted
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert noted.signals == [signal.SIGTERM, signal.SIGINT] and noted.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is before  # restored
    noted.reset()
    assert noted.signum is None

    insisting = signals.StopSignals(insist=True)
    insisting(signal.SIGINT, None)
    with pytest.raises(signals.RunInterrupted) as stopped:
        insisting(signal.SIGINT, None)
    assert stopped.value.exit_code == 130


def test_throttled_progress_passes_steps_at_most_so_often_and_everything_else_at_once():
    seen = []
    throttled = Throttled(seen.append, every_s=3600)
    for event in [RunStarted(0, 9), StepLogged(0, 0, 1.0), StepLogged(0, 1, 0.5), RunEnded(0, "completed")]:
        throttled(event)
    assert seen == [RunStarted(0, 9), StepLogged(0, 0, 1.0), RunEnded(0, "completed")]


def test_run_directory_operations_of_the_executors(tmp_path):
    meta = records.run_meta("x", "m", 0, None, 10)
    write.write_stub(tmp_path / "sweep" / "m", "name: x\n", meta, "failed", "bad data")
    stub = tmp_path / "sweep" / "m"
    stored = read.read_meta(stub)
    assert (stored["status"], stored["error"], stored["steps_done"]) == ("failed", "bad data", 0) and stored["ended"]
    assert pd.read_csv(stub / "layers.csv").empty and list(pd.read_csv(stub / "layers.csv").columns) == layout.LAYERS_COLUMNS

    packed = write.pack_run(stub)
    assert sorted(packed) == ["config.yaml", "layers.csv", "meta.json", "metrics.csv"]
    copy = write.unpack_run(tmp_path / "elsewhere" / "m", packed)
    assert {name: (copy / name).read_bytes() for name in packed} == packed
    with pytest.raises(RunError):
        write.unpack_run(tmp_path / "elsewhere" / "m", packed)  # never into an existing directory
    with pytest.raises(RunError):
        write.unpack_run(tmp_path / "other", {"../escape": b""})

    # a run whose process died: still 'running' -> closed; anything else is left alone
    write.write_json_atomic(stub / "meta.json", {**stored, "status": "running", "ended": None})
    assert write.close_abandoned(stub, "failed", "the worker died")
    assert (read.read_meta(stub)["status"], read.read_meta(stub)["error"]) == ("failed", "the worker died")
    write.close_abandoned(stub, "interrupted")
    assert read.read_meta(stub)["status"] == "failed"
    assert not write.close_abandoned(tmp_path / "never-started", "interrupted")

    write.write_text_atomic(tmp_path / "index.csv", "a,b\n")
    assert (tmp_path / "index.csv").read_text() == "a,b\n" and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["index.csv"]


def test_orchestration_imports_point_down_without_a_cycle():
    """runner <- executors <- sweep <- cli: importing one never imports one above it, and none of
    them imports torch until a run starts."""
    code = (
        "import sys, importlib\n"
        "above = {'gradlab.orchestrate.runner': ['gradlab.orchestrate.executors', 'gradlab.orchestrate.sweep', 'gradlab.cli.app'],\n"
        "         'gradlab.orchestrate.executors': ['gradlab.orchestrate.sweep', 'gradlab.cli.app'], 'gradlab.orchestrate.sweep': ['gradlab.cli.app']}\n"
        "for module, higher in above.items():\n"
        "    for name in [m for m in sys.modules if m.startswith('gradlab')]: del sys.modules[name]\n"
        "    importlib.import_module(module)\n"
        "    print(module, [m for m in higher if m in sys.modules], 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["gradlab.orchestrate.runner [] False", "gradlab.orchestrate.executors [] False", "gradlab.orchestrate.sweep [] False"]
