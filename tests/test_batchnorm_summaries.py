"""compare, expect:, plot and the docs for BatchNorm's train/test gap (issue 24, item 8):
bn_stat_distance at each step and the test accuracy with batch statistics (log.test_batch_stats)."""

from __future__ import annotations

import math

import pytest

from run_factory import real_run

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("bn")
    bn = real_run(out, "bn", {"depth": 3, "activation": "relu", "norm": "batchnorm"}, steps=20,
                  log={"every": 5, "out": str(out), "test_batch_stats": True})
    plain = real_run(out, "plain", {"depth": 3, "activation": "relu"}, steps=20)
    return out, bn, plain


def test_compare_has_bn_stat_distance_and_the_batch_statistics_accuracy(runs):
    from gradlab.analysis.compare import compare_runs, explain
    from gradlab.records.run import load_run

    out, bn, plain = runs
    comparison = compare_runs([load_run(bn), load_run(plain)])
    table = comparison.table.set_index("label")
    for column in ("bn_stat_distance@0", "bn_stat_distance@last", "final_test_batch_stats_accuracy"):
        assert column in table.columns
        assert math.isnan(table.at["plain", column]) and table.at["bn", column] >= 0
    layers = load_run(bn).layers
    assert table.at["bn", "bn_stat_distance@0"] == pytest.approx(layers[(layers.step == 0) & (layers.kind == "hidden")]["bn_stat_distance"].max())
    metrics = load_run(bn).metrics
    batch = metrics[metrics.split == "test_batch_stats"].sort_values("step")
    assert table.at["bn", "final_test_batch_stats_accuracy"] == pytest.approx(batch["accuracy"].iloc[-1])
    meanings = dict(explain(comparison))
    assert "bn_stat_distance@0" in meanings or any(key.startswith("bn_stat_distance") for key in meanings)
    assert "final_test_batch_stats_accuracy" in meanings
    # a comparison without BatchNorm leaves the columns out
    assert not [c for c in compare_runs([load_run(plain)]).table.columns if "bn_stat" in c or "batch_stats" in c]


def test_expect_bounds_bn_stat_distance_and_the_docs_list_both(runs, invoke_wide):
    from pathlib import Path

    from gradlab.config.experiment import validate

    exp = validate({"expect": {"bn_stat_distance": {"step": 0, "max": 100.0}, "final_test_batch_stats_accuracy": {"min": 0.0}}})
    assert exp.expect is not None
    explained = invoke_wide("compare", "--explain").stdout
    assert "bn_stat_distance" in explained and "final_test_batch_stats_accuracy" in explained
    docs = (Path(__file__).resolve().parents[1] / "docs").rglob("*.md")
    text = "".join(page.read_text(encoding="utf-8") for page in docs)
    assert "final_test_batch_stats_accuracy" in text


@pytest.mark.slow
def test_plot_draws_a_batchnorm_figure_where_a_run_has_batchnorm(runs, tmp_path, invoke_wide):
    out, bn, plain = runs
    result = invoke_wide("plot", out, "--output", tmp_path / "figures")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "batchnorm.png").stat().st_size > 0
    assert invoke_wide("plot", plain, "--output", tmp_path / "plain").exit_code == 0
    assert not (tmp_path / "plain" / "batchnorm.png").exists()
