"""configs/papers/: every config states its paper, figure or equation, quantity and published number,
validates (MNIST ones when the data is there), and carries an expect: section; tools/papers.py reads
them and one of them runs end to end here (`make papers` runs them all)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = sorted((ROOT / "configs" / "papers").glob("*.yaml"))


def papers_tool():
    spec = importlib.util.spec_from_file_location("papers_tool", ROOT / "tools" / "papers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", PAPERS, ids=[p.stem for p in PAPERS])
def test_each_paper_config_states_its_result_and_validates(path, monkeypatch):
    from gradlab.orchestrate import sweep_plan
    from gradlab.config.load import read_yaml

    meta = papers_tool().metadata(path)
    assert set(meta) >= {"paper", "where", "quantity", "published", "measured here"}, meta
    assert meta["quantity"] in ("layer_factor", "bias_speeds", "stream_variance_growth", "step_factor", "coordcheck", "s2")
    raw = read_yaml(path)
    assert "expect" in raw
    data_path = raw.get("data", {}).get("path")
    monkeypatch.chdir(ROOT)
    if data_path and not (ROOT / data_path).exists():
        pytest.skip(f"no {data_path}")
    for exp in sweep_plan.load_experiments(path):
        assert exp.train.steps <= 10 and exp.device == "cpu"  # a result at initialization: seconds on a CPU


def test_a_paper_runs_end_to_end(tmp_path):
    from gradlab.analysis.expectations import check
    from gradlab.records.run import load_run
    from gradlab.orchestrate.runner import run_experiment

    tool = papers_tool()
    (label, exp), (label2, exp2) = tool.experiments(ROOT / "configs" / "papers" / "he2015-relu-init.yaml", str(tmp_path))
    assert label == "model.init.weight=kaiming_normal" and label2 == "model.init.weight=xavier_normal"
    run = load_run(run_experiment(exp).run_dir)
    assert all(outcome.passed for outcome in check(run, exp.expect))
    predicted, measured = tool.measure("layer_factor", exp, run)
    assert predicted == "1 (chi1 1)" and abs(float(measured) - 1) < 0.02


def test_the_pascanu_config_measures_the_step_factor_against_its_theory(tmp_path):
    from gradlab.analysis.expectations import check
    from gradlab.records.run import load_run
    from gradlab.orchestrate.runner import run_experiment

    tool = papers_tool()
    members = dict(tool.experiments(ROOT / "configs" / "papers" / "pascanu2013-rnn-step-bound.yaml", str(tmp_path)))
    assert len(members) == 9
    linear = members["model.activation=identity, model.init.recurrent.gain=1.2"]
    sigmoid = members["model.activation=sigmoid, model.init.recurrent.gain=0.8"]
    for exp in (linear, sigmoid):
        run = load_run(run_experiment(exp).run_dir)
        assert all(outcome.passed for outcome in check(run, exp.expect))
        predicted, measured = tool.measure("step_factor", exp, run)
        if exp is linear:  # exactly lambda: each step multiplies ||dL/da_t|| by 1.2 (float32 rounding)
            assert predicted == "1.2" and abs(float(measured) - 1.2) < 1e-5
        else:  # Pascanu's bound gamma * lambda_1 = 0.8 / 4, and the sigmoid's slope is below 1/4 off 0
            assert predicted == "<= 0.2" and 0.15 < float(measured) < 0.2


def test_the_pennington_config_measures_s2_against_free_probability(tmp_path):
    from gradlab.analysis.expectations import check
    from gradlab.records.run import load_run
    from gradlab.orchestrate.runner import run_experiment

    tool = papers_tool()
    members = dict(tool.experiments(ROOT / "configs" / "papers" / "pennington2017-dynamical-isometry.yaml", str(tmp_path)))
    assert len(members) == 24
    relu = next(exp for label, exp in members.items() if label.startswith("model.depth=4, model.activation=relu, model.init.weight=kaiming"))
    linear = next(exp for label, exp in members.items() if label.startswith("model.depth=4, model.activation=identity, model.init.weight={name: orthogonal"))
    for exp, expected in ((relu, 8.0), (linear, 0.0)):  # ReLU Gaussian: 2L; linear orthogonal: 0 (an isometry)
        run = load_run(run_experiment(exp).run_dir)
        assert all(outcome.passed for outcome in check(run, exp.expect))
        predicted, measured = tool.measure("s2", exp, run)
        assert float(predicted) == pytest.approx(expected, abs=1e-9)
        assert abs(float(measured) - expected) < 0.1 * (1 + expected)
