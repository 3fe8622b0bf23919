"""gradlab.show.export_mlflow: runs logged into a temporary SQLite tracking store and read back with
MLflow's own client (`mlflow.tracking.MlflowClient`), checked cell by cell against the CSV files
(read here with the csv module, not gradlab's reader) and against what `gradlab check` says."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

if importlib.util.find_spec("mlflow") is None:
    pytest.skip("the mlflow extra is not installed (pip install 'gradlab[mlflow]')", allow_module_level=True)

import gradlab  # noqa: E402
from gradlab.show import export_mlflow as exporting  # noqa: E402
from gradlab.show.plots import FIGURES  # noqa: E402
from gradlab.vocab import quantities  # noqa: E402
from gradlab.vocab.errors import RunError  # noqa: E402
from run_factory import STABLE, layer_rows, metric_rows, real_run, resolved_config, write_run  # noqa: E402

# SQLAlchemy 2.1 deprecates a loader option MLflow's SQL store still uses
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

LAYER_VALUES = [q.name for q in quantities.LAYER_QUANTITIES]
NOT_METRICS = ("step", "split", "time_s")


def mlflow_client(store: str):
    """MLflow's own client on `store`, imported at its first use: MLflow takes seconds to import,
    and every pytest-xdist worker collects this file."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(store)


@pytest.fixture(scope="module")
def new_store_file(tmp_path_factory) -> Path:
    """The database file of a new SQLite tracking store, made once per module: MLflow takes seconds
    to create a store's tables."""
    path = tmp_path_factory.mktemp("mlflow-new-store") / "mlflow.db"
    mlflow_client(f"sqlite:///{path}").search_experiments()  # the tables, and the Default experiment
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, new_store_file):
    """A new SQLite tracking store in tmp_path, which is also the working directory (MLflow puts
    the artifacts of a SQLite store's experiments in ./mlruns/). A copy of new_store_file whose
    Default experiment keeps its artifacts here, as MLflow sets it in a store it creates here."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mlflow.db"
    shutil.copyfile(new_store_file, path)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", [str(tmp_path / "mlruns" / "0")])
    return f"sqlite:///{path}"


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def expected_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """{metric key: {step: value}} from the CSV text: every non-empty cell, its number exactly.
    A layer's later call (`shared#1`) is `shared-1` in MLflow."""
    expected: dict[str, dict[int, float]] = {}
    for row in csv_rows(run_dir / "layers.csv"):
        for column in LAYER_VALUES:
            if row.get(column, "") != "":
                expected.setdefault(f"{column}/{row['name'].replace('#', '-')}", {})[int(row["step"])] = float(row[column])
    for row in csv_rows(run_dir / "metrics.csv"):
        for column, cell in row.items():
            if column not in NOT_METRICS and cell != "":
                expected.setdefault(f"{row['split']}/{column}", {})[int(row["step"])] = float(cell)
    return expected


def check_against_csv(client, run_id: str, run_dir: Path) -> None:
    expected = expected_metrics(run_dir)
    recorded = {k for k in client.get_run(run_id).data.metrics if not k.startswith("profile/")}
    assert recorded == set(expected)
    for key, by_step in expected.items():
        history = client.get_metric_history(run_id, key)
        assert {m.step: m.value for m in history} == by_step, key  # equal, not close
        assert len(history) == len(by_step), key  # no point logged twice


def synthetic_run(out: Path, name: str = "exp", status: str = "completed", expect=None, run_id: str = "000000") -> Path:
    layers = layer_rows(0, [1e-3, 1e-2, 1e-1], dead=[0.0, 0.25, 0.5]) + layer_rows(10, [2e-3, 3e-2, 2e-1], weight_grad=[0.5, 1.0, 4.0])
    metrics = metric_rows({0: (2.3, 0.1), 10: (1.25, 0.5)}, {10: (1.5, 0.375)})
    sections = {} if expect is None else {"expect": expect}
    return write_run(out / "results", resolved_config(name, depth=3, **sections), layers, metrics, status=status, run_id=run_id)


def exported(summary, run_dir: Path):
    (run,) = [r for r in summary.runs if r.run_dir.resolve() == run_dir.resolve()]
    return run


@pytest.mark.slow
def test_every_metric_equals_its_csv_cell(tmp_path, store):
    run_dir = synthetic_run(tmp_path)
    summary = exporting.export_mlflow([run_dir], store, "gradients")
    client = mlflow_client(store)
    (run,) = summary.runs
    assert (summary.tracking_uri, summary.experiment) == (store, "gradients")
    assert client.get_experiment_by_name("gradients").experiment_id == summary.experiment_id
    check_against_csv(client, run.run_id, run_dir)
    # empty cells logged nothing: update_ratio is empty at step 0, test rows have no grad_norm
    assert [m.step for m in client.get_metric_history(run.run_id, "update_ratio/blocks.0")] == [10]
    assert client.get_metric_history(run.run_id, "test/grad_norm") == []
    assert run.metrics == sum(len(client.get_metric_history(run.run_id, k)) for k in client.get_run(run.run_id).data.metrics)
    assert run.steps == 2


@pytest.mark.slow
def test_profile_is_first_over_last_hidden_layer(tmp_path, store):
    run_dir = synthetic_run(tmp_path)
    (run,) = exporting.export_mlflow([run_dir], store).runs
    client = mlflow_client(store)
    # by hand from the rows written above: gain = delta_norm(layer 0) / delta_norm(layer 2)
    gain = {m.step: m.value for m in client.get_metric_history(run.run_id, "profile/gain")}
    assert gain == pytest.approx({0: 1e-3 / 1e-1, 10: 2e-3 / 2e-1}, rel=1e-12)
    factor = {m.step: m.value for m in client.get_metric_history(run.run_id, "profile/layer_factor")}
    assert factor == pytest.approx({0: math.sqrt(1e-3 / 1e-1), 10: math.sqrt(2e-3 / 2e-1)}, rel=1e-12)


@pytest.mark.slow
def test_params_tags_status_and_times(tmp_path, store):
    run_dir = synthetic_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta.update(started="2024-01-01T00:00:00+00:00", ended="2024-01-01T00:01:30.250000+00:00")
    (run_dir / "meta.json").write_text(json.dumps(meta))
    (run,) = exporting.export_mlflow([run_dir], store).runs
    got = mlflow_client(store).get_run(run.run_id)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    params = got.data.params
    assert params["name"] == "exp" and params["seed"] == "0"
    assert params["model.depth"] == "3" and params["model.width"] == "8"
    assert params["optim.lr"] == str(config["optim"]["lr"])
    assert params["model.activation.name"] == config["model"]["activation"]["name"]  # every leaf its own param
    assert params["log.probes"] == "[" + ", ".join(config["log"]["probes"]) + "]"  # a list: one value
    assert run.params == len(params)
    tags = got.data.tags
    assert tags["mlflow.runName"] == got.info.run_name == run.label == "exp/20240101-000000-000000"
    assert tags["gradlab.status"] == "completed" and tags["gradlab.run_dir"] == str(run_dir.resolve())
    assert "gradlab.expect" not in tags  # no expect: section
    assert got.info.status == "FINISHED"
    assert (got.info.start_time, got.info.end_time) == (1704067200000, 1704067200000 + 90250)
    # a metric's time: the start plus the step's time_s (metrics.csv: 0.01 * step)
    assert [m.timestamp for m in mlflow_client(store).get_metric_history(run.run_id, "delta_norm/blocks.0")] == [1704067200000, 1704067200100]
    # the default experiment, MLflow's own
    assert got.info.experiment_id == mlflow_client(store).get_experiment_by_name("Default").experiment_id


@pytest.mark.slow
def test_statuses(tmp_path, store):
    runs = {status: synthetic_run(tmp_path / status, name=status, status=status) for status in ("diverged", "interrupted", "running")}
    summary = exporting.export_mlflow([tmp_path], store, "statuses")
    client = mlflow_client(store)
    mlflow_status = {status: client.get_run(exported(summary, run_dir).run_id).info.status for status, run_dir in runs.items()}
    assert mlflow_status == {"diverged": "FAILED", "interrupted": "KILLED", "running": "RUNNING"}


@pytest.mark.slow
def test_expect_results_are_tags_as_gradlab_check_says_them(tmp_path, store):
    expect = {"status": "completed", "gain": {"step": 0, "between": [0.001, 0.1]}, "final_test_accuracy": {"min": 0.9}}
    run_dir = synthetic_run(tmp_path, expect=expect)
    (run,) = exporting.export_mlflow([run_dir], store).runs
    tags = mlflow_client(store).get_run(run.run_id).data.tags
    outcomes = gradlab.check(run_dir)
    assert [o.passed for o in outcomes] == [True, True, False]
    assert tags["gradlab.expect"] == "failed"
    assert tags["gradlab.expect.status"] == outcomes[0].line()
    assert tags["gradlab.expect.gain_at_0"] == outcomes[1].line()
    assert tags["gradlab.expect.final_test_accuracy"] == outcomes[2].line()
    assert tags["gradlab.expect.final_test_accuracy"].startswith("FAIL  final_test_accuracy = 0.375")


@pytest.mark.slow
def test_records_and_figures_are_artifacts(tmp_path, store):
    run_dir = real_run(tmp_path / "results", "relu", STABLE, steps=10)
    (run,) = exporting.export_mlflow([run_dir], store).runs
    client = mlflow_client(store)
    check_against_csv(client, run.run_id, run_dir)  # a real run's numbers too
    records = sorted(a.path for a in client.list_artifacts(run.run_id, "records"))
    assert records == ["records/config.yaml", "records/layers.csv", "records/meta.json", "records/metrics.csv"]
    figures = sorted(a.path for a in client.list_artifacts(run.run_id, "figures"))
    assert figures == sorted(f"figures/{stem}.png" for stem in FIGURES)
    assert run.artifacts == len(records) + len(figures)
    copy = client.download_artifacts(run.run_id, "records/layers.csv", str(tmp_path / "back"))
    assert Path(copy).read_bytes() == (run_dir / "layers.csv").read_bytes()
    assert Path(client.download_artifacts(run.run_id, "figures/training_curves.png", str(tmp_path / "back"))).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_watch_runs_with_a_layer_called_twice(tmp_path, store):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.shared, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.inp(x)))))))

    torch.manual_seed(0)
    model = Shared()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlab.watch(model, out=tmp_path / "results", every=2, name="shared", optimizer=opt) as w:
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
            loss.backward()
            opt.step()
            w.step(loss=loss)
    (run,) = exporting.export_mlflow([w.run_dir], store).runs
    client = mlflow_client(store)
    check_against_csv(client, run.run_id, w.run_dir)
    assert [m.step for m in client.get_metric_history(run.run_id, "delta_norm/shared-1")] == [0, 2, 4]


def test_keys_mlflow_accepts_and_never_two_names_on_one_key():
    assert exporting.key("delta_norm/blocks.3") == "delta_norm/blocks.3"
    assert exporting.key("delta_norm/shared#1") == "delta_norm/shared-1"
    assert exporting.key("gradlab.expect.steps_to_target(loss<=0.5)") == "gradlab.expect.steps_to_target_loss__0.5_"
    assert exporting.key("a/../b") == "a/_/b"
    keys = exporting._Keys()
    assert [keys("x#1"), keys("x-1"), keys("x#1")] == ["x-1", "x-1-2", "x-1"]


@pytest.mark.slow
def test_folders_of_runs_and_problems(tmp_path, store):
    good = synthetic_run(tmp_path, name="good")
    cut = synthetic_run(tmp_path, name="cut", status="running")
    with open(cut / "layers.csv", "a", encoding="utf-8") as file:
        file.write("20,0,blocks.0,hidden,1.0,0.")  # killed mid-row
    summary = exporting.export_mlflow([tmp_path / "results", tmp_path / "nothing-here"], store)
    assert len(summary.runs) == 2
    assert any("nothing-here: does not exist" in line for line in summary.problems)
    assert any("partial row" in line for line in summary.problems)
    client = mlflow_client(store)
    check_against_csv(client, exported(summary, good).run_id, good)
    assert [m.step for m in client.get_metric_history(exported(summary, cut).run_id, "delta_norm/blocks.0")] == [0, 10]
    # a second export makes new MLflow runs (MLflow's way), it never changes the first ones
    again = exporting.export_mlflow([good], store)
    assert again.runs[0].run_id != exported(summary, good).run_id


def one_line(caught) -> str:
    (line,) = caught.value.lines
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_is_one_line(tmp_path, store):
    run_dir = synthetic_run(tmp_path)
    with pytest.raises(RunError, match="no run could be read"):
        exporting.export_mlflow([tmp_path / "nothing-here"], store)
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(RunError) as caught:
        exporting.export_mlflow([tmp_path / "not-a-run"], store)
    assert caught.value.lines[-1] == "no run could be read"
    # an unreachable server: said at once (MLflow alone retries for minutes)
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RunError) as caught:
        exporting.export_mlflow([run_dir], uri)
    assert one_line(caught) == f"--tracking-uri {uri}: cannot reach the tracking server (is it running, and is the address right?)"
    assert time.monotonic() - started < 30
    with pytest.raises(RunError) as caught:
        exporting.export_mlflow([run_dir], "nosuchscheme://somewhere")
    assert one_line(caught).startswith("--tracking-uri nosuchscheme://somewhere: ")
    (tmp_path / "afile").write_text("kept")
    with pytest.raises(RunError) as caught:
        exporting.export_mlflow([run_dir], f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}")
    assert one_line(caught).startswith(f"--tracking-uri sqlite:///{tmp_path / 'afile' / 'mlflow.db'}: ")
    assert (tmp_path / "afile").read_text() == "kept"
    with pytest.raises(RunError, match="^--tracking-uri: give a tracking URI"):
        exporting.export_mlflow([run_dir], " ")
    with pytest.raises(RunError, match="^--experiment: give an experiment name"):
        exporting.export_mlflow([run_dir], store, "")


@pytest.mark.slow
def test_a_deleted_experiment_is_refused(tmp_path, store):
    client = mlflow_client(store)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(RunError) as caught:
        exporting.export_mlflow([synthetic_run(tmp_path)], store, "gone")
    assert one_line(caught) == f"--experiment gone: deleted in the tracking store {store}; restore it or give another name"


def test_without_mlflow_one_line_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(RunError) as caught:
        exporting.export_mlflow([synthetic_run(tmp_path)], f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert one_line(caught) == "--mlflow: the mlflow package is not installed; pip install 'gradlab[mlflow]'"
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_the_python_api(tmp_path, store):
    run_dir = synthetic_run(tmp_path)
    summary = gradlab.export_mlflow([run_dir], tracking_uri=store, experiment="api")
    check_against_csv(mlflow_client(store), summary.runs[0].run_id, run_dir)


@pytest.mark.slow
def test_the_export_loads_no_torch(tmp_path, store):
    """Like every command that reads records: `gradlab export --mlflow` in a fresh interpreter."""
    run_dir = synthetic_run(tmp_path)
    probe = (
        "import sys\nfrom gradlab.cli.app import app\n"
        "try:\n    app(sys.argv[1:], prog_name='gradlab')\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", probe, "export", str(run_dir), "--mlflow", "--tracking-uri", store], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
    assert len(mlflow_client(store).search_runs([mlflow_client(store).get_experiment_by_name("Default").experiment_id])) == 1
