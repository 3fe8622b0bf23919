"""`gradlab export`, `gradlab schema` and `gradlab report` through the Typer app: exact lines and
exit codes, errors as one `error:` line each (exit 2, no traceback), and nothing already there lost.
What the files hold is tested in test_export.py, test_schema.py and test_report.py; here, that the
commands say what they did, and that what they wrote is what the library functions write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from run_factory import layer_rows, metric_rows, resolved_config, write_run

METRICS = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (0.75, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})
RELU_DIR = "runs/relu/20240101-000000-rel000"
SIGMOID_DIR = "runs/sigmoid/20240101-000000-sig000"


def add_run(name: str, delta: list[float]) -> Path:
    config = resolved_config(name, 0, depth=3, model__activation=name)
    return write_run(Path("runs"), config, layer_rows(0, delta) + layer_rows(10, delta), METRICS, run_id=f"{name[:3]}000")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """`runs/relu/...` (stable) and `runs/sigmoid/...` (vanishing), the working directory at tmp_path."""
    monkeypatch.chdir(tmp_path)
    return [add_run("relu", [1.0, 1.0, 1.0]), add_run("sigmoid", [1 / 1024, 1 / 32, 1.0])]


def assert_error(result, *lines: str) -> None:
    """Exit 2, the given `error:` lines on stderr and nothing else: no traceback, no stdout."""
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {line}" for line in lines]
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)  # an exit, not a traceback


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

# Each run has 3 logged steps in its events (0, 5 from metrics, 10): 91 scalars, 17 histograms.
EXPORTED_RELU = f"tb/relu/20240101-000000-rel000: 3 steps, 91 scalars, 17 histograms (from {RELU_DIR})"
EXPORTED_SIGMOID = f"tb/sigmoid/20240101-000000-sig000: 3 steps, 91 scalars, 17 histograms (from {SIGMOID_DIR})"


@pytest.fixture
def tensorboard():
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'gradlab[tensorboard]')")


def test_export_exact_lines(runs, tensorboard, invoke):
    result = invoke("export", "runs", "--tensorboard", "tb")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [EXPORTED_RELU, EXPORTED_SIGMOID, "exported 2 runs; view them with: tensorboard --logdir tb"]
    assert result.stderr == ""
    # the counts printed are those of the files: one event file per run, in the folders named
    for label in ("relu/20240101-000000-rel000", "sigmoid/20240101-000000-sig000"):
        assert len(list((Path("tb") / label).glob("events.out.tfevents.*"))) == 1


def test_export_one_run_says_run(runs, tensorboard, invoke):
    result = invoke("export", RELU_DIR, "--tensorboard", "tb")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "exported 1 run; view them with: tensorboard --logdir tb"


def test_export_warns_about_a_path_without_runs(runs, tensorboard, invoke):
    result = invoke("export", "runs/relu", "nothing-here", "--tensorboard", "tb")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["warning: nothing-here: does not exist"]
    assert result.stdout.splitlines() == [EXPORTED_RELU, "exported 1 run; view them with: tensorboard --logdir tb"]


def test_export_twice_into_one_folder_is_refused_and_keeps_the_first(runs, tensorboard, invoke):
    assert invoke("export", "runs", "--tensorboard", "tb").exit_code == 0
    before = sorted(p.read_bytes() for p in Path("tb").rglob("events.out.tfevents.*"))
    result = invoke("export", "runs", "--tensorboard", "tb")
    assert_error(
        result,
        "--tensorboard: tb/relu/20240101-000000-rel000 already holds TensorBoard events; export into a new folder or delete it",
        "--tensorboard: tb/sigmoid/20240101-000000-sig000 already holds TensorBoard events; export into a new folder or delete it",
    )
    assert sorted(p.read_bytes() for p in Path("tb").rglob("events.out.tfevents.*")) == before


def test_export_errors(runs, tensorboard, invoke):
    assert_error(invoke("export", "runs"), "export: say where to: --tensorboard DIR or --mlflow")
    assert_error(invoke("export", "--tensorboard", "tb"), "export: give at least one PATH (a run directory or a folder holding runs)")
    assert_error(invoke("export", "nothing-here", "--tensorboard", "tb"), "nothing-here: does not exist", "no run could be read")
    Path("afile").write_text("kept")
    assert_error(invoke("export", "runs", "--tensorboard", "afile"), "--tensorboard: 'afile' is a file, not a folder")
    assert Path("afile").read_text() == "kept"
    assert not Path("tb").exists()


def test_export_without_tensorboard_says_how_to_install(runs, monkeypatch, invoke):
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.record_writer", None)
    assert_error(
        invoke("export", "runs", "--tensorboard", "tb"),
        "--tensorboard: the tensorboard package is not installed; pip install 'gradlab[tensorboard]'",
    )
    assert not Path("tb").exists()


# --------------------------------------------------------------------------------------------
# export --mlflow
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_client():
    """MLflow's own client, to read back what was logged."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'gradlab[mlflow]')")
    from mlflow.tracking import MlflowClient

    return MlflowClient


# SQLAlchemy 2.1 deprecates a loader option MLflow's SQL store still uses
MLFLOW_WARNINGS = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
MLFLOW_LINE = r"(?P<label>[\w/-]+): MLflow run (?P<id>[0-9a-f]{32}), 3 steps, (?P<points>\d+) metric points, (?P<params>\d+) params, 9 artifacts \(from (?P<dir>\S+)\)"


@pytest.mark.slow
@MLFLOW_WARNINGS
def test_export_mlflow_exact_lines(runs, mlflow_client, invoke):
    import re

    result = invoke("export", "runs", "--mlflow", "--tracking-uri", "sqlite:///mlflow.db", "--experiment", "cli")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    *lines, last = result.stdout.splitlines()
    assert last == "exported 2 runs to MLflow experiment 'cli'; view them with: mlflow ui --backend-store-uri sqlite:///mlflow.db"
    matches = [re.fullmatch(MLFLOW_LINE, line) for line in lines]
    assert all(matches), lines
    assert [(m["label"], m["dir"]) for m in matches] == [("relu/20240101-000000-rel000", RELU_DIR), ("sigmoid/20240101-000000-sig000", SIGMOID_DIR)]
    # the counts printed are those of the store: every point, every param
    client = mlflow_client("sqlite:///mlflow.db")
    for m in matches:
        run = client.get_run(m["id"])
        assert run.info.run_name == m["label"] and run.info.experiment_id == client.get_experiment_by_name("cli").experiment_id
        assert int(m["points"]) == sum(len(client.get_metric_history(m["id"], key)) for key in run.data.metrics)
        assert int(m["params"]) == len(run.data.params)


@pytest.mark.slow
@MLFLOW_WARNINGS
def test_export_to_tensorboard_and_mlflow_at_once(runs, tensorboard, mlflow_client, invoke):
    result = invoke("export", RELU_DIR, "nothing-here", "--tensorboard", "tb", "--mlflow", "--tracking-uri", "sqlite:///mlflow.db")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["warning: nothing-here: does not exist"]  # said once
    out = result.stdout.splitlines()
    assert out[:2] == [EXPORTED_RELU, "exported 1 run; view them with: tensorboard --logdir tb"]
    assert out[-1] == "exported 1 run to MLflow experiment 'Default'; view them with: mlflow ui --backend-store-uri sqlite:///mlflow.db"


@MLFLOW_WARNINGS
def test_export_mlflow_errors(runs, mlflow_client, invoke):
    import socket

    assert_error(invoke("export", "runs", "--tracking-uri", "sqlite:///mlflow.db"), "export: --tracking-uri goes with --mlflow")
    assert_error(invoke("export", "runs", "--experiment", "x"), "export: --experiment goes with --mlflow")
    assert_error(invoke("export", "nothing-here", "--mlflow", "--tracking-uri", "sqlite:///mlflow.db"), "nothing-here: does not exist", "no run could be read")
    Path("empty").mkdir()
    assert_error(invoke("export", "empty", "--mlflow", "--tracking-uri", "sqlite:///mlflow.db"), "empty: no runs found (a run directory holds meta.json)", "no run could be read")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_error(invoke("export", "runs", "--mlflow", "--tracking-uri", uri), f"--tracking-uri {uri}: cannot reach the tracking server (is it running, and is the address right?)")
    assert not Path("mlflow.db").exists() and not Path("mlruns").exists()  # nothing written anywhere


def test_export_mlflow_without_mlflow_says_how_to_install(runs, monkeypatch, invoke):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    assert_error(invoke("export", "runs", "--mlflow"), "--mlflow: the mlflow package is not installed; pip install 'gradlab[mlflow]'")


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------


def test_schema_to_stdout_is_the_schema(tmp_path, invoke):
    from gradlab.config.json_schema import schema_json

    result = invoke("schema")
    assert result.exit_code == 0, result.output
    assert result.stdout == schema_json()
    assert json.loads(result.stdout)["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert result.stderr == ""


def test_schema_to_a_file(tmp_path, monkeypatch, invoke):
    from gradlab.config.json_schema import schema_json

    monkeypatch.chdir(tmp_path)
    result = invoke("schema", "-o", "gradlab.config.json_schema.json")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["JSON Schema of a gradlab config: gradlab.config.json_schema.json"]
    assert Path("gradlab.config.json_schema.json").read_text(encoding="utf-8") == schema_json()


def test_schema_to_a_folder_that_does_not_exist(tmp_path, monkeypatch, invoke):
    monkeypatch.chdir(tmp_path)
    assert_error(invoke("schema", "-o", "nodir/s.json"), "--output: cannot write 'nodir/s.json': No such file or directory")
    assert not Path("nodir").exists()


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_exact_line_and_the_page_is_the_librarys(runs, invoke):
    from gradlab.show.report import build_report

    result = invoke("report", "runs", "-o", "report.html")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["report of 2 runs in 2 configurations: report.html"]
    assert result.stderr == ""
    page = Path("report.html").read_text(encoding="utf-8")
    expected = build_report(["runs"]).html
    # the same page but for the minute it was written in
    def strip(text):
        return [line for line in text.splitlines() if "written " not in line]

    assert strip(page) == strip(expected)


def test_report_one_run_says_run(runs, invoke):
    result = invoke("report", RELU_DIR, "-o", "report.html")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["report of 1 run in 1 configuration: report.html"]


def test_report_errors_keep_what_was_there(runs, invoke):
    Path("report.html").write_text("the old report")
    assert_error(invoke("report", "-o", "report.html"), "report: give at least one PATH (a run directory or a folder holding runs)")
    assert_error(invoke("report", "nothing-here", "-o", "report.html"), "nothing-here: does not exist", "no run could be read")
    assert_error(invoke("report", "runs", "-o", "nodir/report.html"), "--output: the folder 'nodir' does not exist")
    assert_error(invoke("report", "runs", "-o", "runs"), "--output: 'runs' is a folder; give the HTML file to write, e.g. report.html")
    assert Path("report.html").read_text() == "the old report"
    assert not Path("nodir").exists()


def test_report_without_output_is_a_usage_error(runs, invoke):
    result = invoke("report", "runs")
    assert result.exit_code == 2
    assert "Missing option '--output' / '-o'." in result.stderr
    assert "Traceback" not in result.output
