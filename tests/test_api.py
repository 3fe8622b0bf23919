"""The Python API (`import gradlab`): light to import, and the same numbers as the CLI, because it
calls the same functions."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import gradlab
from gradlab.vocab.errors import ConfigError, RunError
from run_factory import TINY_DATA, layer_rows, metric_rows, resolved_config, write_run


def tiny(name: str, out: Path, **model) -> dict:
    return {
        "name": name, "seed": 0, "device": "cpu", "data": TINY_DATA,
        "model": {"depth": 4, "width": 16, **model}, "train": {"steps": 6, "eval_every": 3},
        "log": {"every": 3, "out": str(out)},
    }  # fmt: skip


@pytest.mark.slow
def test_import_gradlab_loads_neither_torch_nor_pandas():
    code = (
        "import sys, gradlab\n"
        "names = [gradlab.run, gradlab.load, gradlab.comparison, gradlab.plot, gradlab.check]\n"  # the API resolves lazily too
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))\n"
        "import gradlab.measure.watch\n"  # the watcher imports torch (it needs it)
        "print(gradlab.watch is gradlab.measure.watch.watch, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "True True"]


def test_the_api_names():
    assert {"run", "load", "load_runs", "comparison", "render", "figures", "plot", "check", "watch", "Watch", "Run", "Experiment"} <= set(dir(gradlab))
    with pytest.raises(AttributeError, match="module 'gradlab' has no attribute 'nope'"):
        gradlab.nope  # noqa: B018


def test_run_from_a_dict_a_path_and_an_experiment_agree(tmp_path):
    config = tiny("api", tmp_path / "a")
    from_dict = gradlab.run(config)
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(tiny("api", tmp_path / "b")))
    from_path = gradlab.run(path)
    from_experiment = gradlab.run(gradlab.experiment(config), {"log.out": str(tmp_path / "c")})
    for run in (from_dict, from_path, from_experiment):
        assert isinstance(run, gradlab.Run) and run.status == "completed"
        assert sorted(run.layers["step"].unique()) == [0, 3, 6]
    # the same experiment, the same numbers (the records differ only in time columns)
    for other in (from_path, from_experiment):
        assert from_dict.layers.equals(other.layers)
        assert from_dict.metrics.drop(columns="time_s").equals(other.metrics.drop(columns="time_s"))
    # what run returns is what load reads
    again = gradlab.load(from_dict.dir)
    assert again.layers.equals(from_dict.layers) and again.config == from_dict.config and again.meta == from_dict.meta


def test_overrides_as_strings_or_a_mapping(tmp_path):
    config = tiny("api", tmp_path)
    assert gradlab.experiment(config, ["model.depth=7", "train.steps=3"]).train.steps == 3
    exp = gradlab.experiment(config, {"model.depth": 7, "model.activation": "tanh"})
    assert exp.model.depth == 7 and exp.model.activation["name"] == "tanh"
    assert config["model"]["depth"] == 4  # the caller's mapping is left as it was
    with pytest.raises(ConfigError) as caught:
        gradlab.run(config, {"model.activaton": "tanh"})
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith("model.activaton: unknown key (did you mean 'activation'?)")
    assert not (tmp_path / "api").exists()  # nothing written


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = metric_rows({0: (2.0, 0.25), 10: (0.75, 0.625)}, {10: (0.8, 0.6)})
    made = []
    for name, delta in (("relu", [1.0, 1.0, 1.0]), ("sigmoid", [1 / 1024, 1 / 32, 1.0])):
        config = resolved_config(name, 0, depth=3, model__activation=name)
        config["expect"] = {"gain": {"step": 0, "min": 0.01}}
        made.append(write_run(Path("runs"), config, layer_rows(0, delta) + layer_rows(10, delta), metrics, run_id=f"{name[:3]}000"))
    return made


def test_comparison_and_render_are_the_clis(runs, invoke):
    comparison = gradlab.comparison(["runs"], steps=[0])
    assert list(comparison.table["label"]) == ["relu", "sigmoid"]
    assert list(comparison.table["gain@0"]) == [1.0, 1 / 1024]
    cli = invoke("compare", "runs", "--step", "0", "--format", "csv")
    assert gradlab.render(comparison, "csv") == cli.stdout
    # runs already loaded, and a mix of both
    loaded = [gradlab.load(path) for path in runs]
    assert gradlab.comparison(loaded, steps=[0]).table.equals(comparison.table)
    assert gradlab.comparison([loaded[0], runs[1]], steps=[0]).table.equals(comparison.table)
    verdicts = gradlab.comparison(["runs"], steps=[0], vanish=1e-4).table["verdict@0"]
    assert [text.split()[0] for text in verdicts] == ["stable", "vanishing"]  # the second falls 32x per layer: vanishing by its rate
    verdicts = gradlab.comparison(["runs"], steps=[0], vanish=1e-4, depth_scale=0).table["verdict@0"]  # the gain alone
    assert [text.split()[0] for text in verdicts] == ["stable", "stable"]


def test_figures_and_plot(runs, tmp_path):
    figures = gradlab.figures(["runs"])
    assert list(figures) == ["depth_profile_delta_norm", "depth_profile_weight_grad_norm", "heatmap_delta_norm", "training_curves", "saturation"]
    paths = gradlab.plot(["runs"], "figures")
    assert [p.name for p in paths] == [f"{name}.png" for name in figures]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_check_a_run_or_a_path(runs):
    relu, sigmoid = runs
    assert [o.passed for o in gradlab.check(relu)] == [True]
    assert [o.passed for o in gradlab.check(gradlab.load(sigmoid))] == [False]
    assert gradlab.check(sigmoid)[0].line() == gradlab.check(gradlab.load(sigmoid))[0].line()


def test_load_runs_warns_and_raises(runs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = gradlab.load_runs(["runs", "nothing-here"])
    assert len(loaded) == 2
    assert [str(w.message) for w in caught] == ["nothing-here: does not exist"]
    with pytest.raises(RunError) as error:
        gradlab.load("nothing-here")
    assert error.value.lines == ["nothing-here: no meta.json"]


def test_report_and_export_are_reexported(runs):
    report = gradlab.write_report(["runs"], "report.html")
    assert (report.runs, report.rows) == (2, 2)
    assert Path("report.html").read_text().startswith("<!DOCTYPE html>")
    pytest.importorskip("tensorboard")
    summary = gradlab.export_tensorboard(["runs"], "tb")
    assert [str(r.log_dir) for r in summary.runs] == ["tb/relu/20240101-000000-rel000", "tb/sigmoid/20240101-000000-sig000"]
    json.dumps([r.scalars for r in summary.runs])


def test_run_reports_progress_events_and_draws_figures(tmp_path):
    from gradlab.orchestrate.progress import RunEnded, RunStarted, StepLogged

    events = []
    run = gradlab.run(tiny("api", tmp_path), progress=events.append, plot=True)
    assert [type(e) for e in events] == [RunStarted, StepLogged, StepLogged, StepLogged, RunEnded]
    assert [e.step for e in events if isinstance(e, StepLogged)] == [0, 3, 6]
    assert [e.loss for e in events if isinstance(e, StepLogged)] == list(run.metrics.query("split == 'train'")["loss"])
    assert sorted(p.name for p in run.dir.glob("*.png")) == sorted(f"{name}.png" for name in gradlab.figures([run]))
    assert gradlab.run(tiny("bar", tmp_path), progress=True).status == "completed"


def test_a_recurrent_run_has_its_timesteps_table(tmp_path):
    """gradlab.load gives a recurrent run's timesteps.csv as `.timesteps` (None for the others),
    row for row what the file holds (read here with the csv module)."""
    import csv

    config = {
        "name": "rnn", "seed": 0, "device": "cpu",
        "data": {"name": "adding", "seq_len": 6, "n_train": 128, "n_test": 64, "batch_size": 32},
        "model": {"kind": "rnn", "depth": 1, "width": 8, "activation": "tanh"},
        "loss": "mse", "train": {"steps": 4, "eval_every": 2}, "log": {"every": 2, "out": str(tmp_path)},
    }  # fmt: skip
    run = gradlab.run(config)
    assert gradlab.load(run.dir).timesteps is not None
    with open(run.dir / "timesteps.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    table = run.timesteps
    assert len(table) == len(rows) == 3 * 6  # steps 0, 2, 4 x one layer x 6 time steps
    assert list(table["t"]) == [int(row["t"]) for row in rows]
    assert list(table["delta_norm"]) == [float(row["delta_norm"]) for row in rows]
    assert gradlab.run(tiny("ff", tmp_path)).timesteps is None
