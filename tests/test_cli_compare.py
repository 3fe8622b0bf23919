"""`gradlab compare`, `gradlab plot` and `gradlab check` through the Typer app: exact lines and
exit codes. The runs are written from chosen numbers, so every expected number is known by hand:

    relu      delta_norm [1, 1, 1]          -> gain 1, factor 1: stable
    sigmoid   delta_norm [1/1024, 1/32, 1]  -> gain 1/1024 = 0.0009765625, factor 1/32: vanishing
              weight_grad_norm [0.5, 1, 2]  -> weight-gradient gain 0.25
              dead_frac max 0.5, saturated_frac max 0.75
    relu      inactive_frac [0.5, 0.625, 0.5] -> max 0.625 (empty for sigmoid)
    both      train loss 2.0, 1.5, 0.75 at steps 0, 5, 10 (accuracy 0.625 at the end); test 0.8 / 0.6
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from run_factory import layer_rows, metric_rows, resolved_config, write_run

METRICS = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (0.75, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})
RELU = dict(delta=[1.0, 1.0, 1.0], inactive=[0.5, 0.625, 0.5])
SIGMOID = dict(delta=[1 / 1024, 1 / 32, 1.0], weight_grad=[0.5, 1.0, 2.0], dead=[0.0, 0.5, 0.25], saturated=[0.75, 0.5, 0.125])

HEADER_AT_0 = (
    "label,model.activation,status,seeds,last_step,first_delta_norm@0,last_delta_norm@0,gain@0,layer_factor@0,"
    "weight_grad_gain@0,dead_frac@0,inactive_frac@0,saturated_frac@0,verdict@0,final_train_loss,final_train_accuracy,final_test_loss,final_test_accuracy"
)
RELU_AT_0 = "relu,relu,completed,1,10,1.0,1.0,1.0,1.0,1.0,0.0,0.625,0.0,stable (×1/layer),0.75,0.625,0.8,0.6"
SIGMOID_AT_0 = 'sigmoid,sigmoid,completed,1,10,0.0009765625,1.0,0.0009765625,0.03125,0.25,0.5,,0.75,"vanishing (×0.0312/layer, 1/e every 0.3 layers)",0.75,0.625,0.8,0.6'


def add_run(name, profile, seed=0, expect=None, run_id=None, status="completed"):
    config = resolved_config(name, seed, depth=3, model__activation=name)
    if expect is not None:
        config["expect"] = expect
    layers = layer_rows(0, **profile) + layer_rows(10, **profile)
    return write_run(Path("runs"), config, layers, METRICS, status=status, run_id=run_id or f"{name[:3]}{seed:03d}")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """`runs/relu/...` and `runs/sigmoid/...`, with the working directory at tmp_path."""
    monkeypatch.chdir(tmp_path)
    return [add_run("relu", RELU), add_run("sigmoid", SIGMOID)]


def lines(text: str) -> list[str]:
    return text.splitlines()


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def test_compare_csv_exact_lines(runs, invoke):
    result = invoke("compare", "runs", "--format", "csv", "--step", "0")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [HEADER_AT_0, RELU_AT_0, SIGMOID_AT_0]
    assert result.stderr == ""


def test_compare_csv_at_0_and_last_with_a_target_loss(runs, invoke):
    result = invoke("compare", "runs/relu", "runs/sigmoid", "-f", "csv", "--target-loss", "1.5")
    assert result.exit_code == 0
    header, relu, sigmoid = lines(result.stdout)
    at_last = HEADER_AT_0.split(",")[5:14]
    assert header.split(",") == HEADER_AT_0.split(",")[:14] + [c.replace("@0", "@last") for c in at_last] + HEADER_AT_0.split(",")[14:] + ["steps_to_target"]
    assert relu == "relu,relu,completed,1,10,1.0,1.0,1.0,1.0,1.0,0.0,0.625,0.0,stable (×1/layer),1.0,1.0,1.0,1.0,1.0,0.0,0.625,0.0,stable (×1/layer),0.75,0.625,0.8,0.6,5"
    assert sigmoid.startswith('sigmoid,sigmoid,completed,1,10,0.0009765625,1.0,0.0009765625,0.03125,0.25,0.5,,0.75,"vanishing (×0.0312/layer, 1/e every 0.3 layers)",0.0009765625,')


def test_compare_other_thresholds_change_the_verdict(runs, invoke):
    # the gain 1/1024 is above --vanish 1e-4, but it falls 32x per layer: vanishing by its rate ...
    result = invoke("compare", "runs", "-f", "csv", "--step", "0", "--vanish", "1e-4")
    assert lines(result.stdout)[2] == SIGMOID_AT_0
    # ... which --depth-scale 0 turns off (gain thresholds alone), and --scales 7 asks more of (ln 1024 = 6.9)
    stable = SIGMOID_AT_0.replace('"vanishing (×0.0312/layer, 1/e every 0.3 layers)"', '"stable (×0.0312/layer, 1/e every 0.3 layers)"')
    for more in (["--depth-scale", "0"], ["--scales", "7"]):
        assert lines(invoke("compare", "runs", "-f", "csv", "--step", "0", "--vanish", "1e-4", *more).stdout)[2] == stable


def test_compare_averages_seeds_in_one_row(runs, invoke):
    add_run("relu", dict(delta=[0.5, 1.0, 1.0]), seed=1)
    result = invoke("compare", "runs", "-f", "csv", "--step", "0")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["label"], r["seeds"]) for r in rows] == [("relu", "2"), ("sigmoid", "1")]
    # gains and norms: the geometric mean of (1, 0.5) and its spread exp(sd(ln x)) (issue 11)
    assert float(rows[0]["first_delta_norm@0"]) == pytest.approx(0.5**0.5, rel=1e-15) and float(rows[0]["gain@0"]) == pytest.approx(0.5**0.5, rel=1e-15)
    assert float(rows[0]["gain@0_std"]) == pytest.approx(2 ** (0.5**0.5 / 1), rel=1e-15)  # exp(ln 2 / sqrt 2)
    assert rows[1]["gain@0_std"] == ""
    markdown = invoke("compare", "runs", "-f", "markdown", "--step", "0").stdout
    assert lines(markdown)[2].startswith("| relu | relu | completed | 2 | 10 | 0.707 ×/÷ 1.63 | 1 ×/÷ 1 | 0.707 ×/÷ 1.63 |")


def test_compare_markdown_and_json(runs, invoke):
    markdown = lines(invoke("compare", "runs", "-f", "markdown", "--step", "0").stdout)
    assert markdown[0] == "| " + HEADER_AT_0.replace(",", " | ") + " |"
    assert markdown[3] == "| sigmoid | sigmoid | completed | 1 | 10 | 0.000977 | 1 | 0.000977 | 0.0312 | 0.25 | 0.5 |  | 0.75 | vanishing (×0.0312/layer, 1/e every 0.3 layers) | 0.75 | 0.625 | 0.8 | 0.6 |"
    document = json.loads(invoke("compare", "runs", "-f", "json").stdout)
    assert document["steps"] == ["0", "last"] and document["config_keys"] == ["model.activation"]
    assert document["rows"][1]["gain@0"] == 1 / 1024 and document["rows"][1]["verdict@last"] == "vanishing (×0.0312/layer, 1/e every 0.3 layers)"
    assert document["thresholds"] == {"vanish": 0.01, "explode": 100.0, "depth_scale": 20.0, "scales": 2.0}


def test_compare_table_for_the_terminal_has_a_column_per_configuration(runs, invoke):
    result = invoke("compare", "runs", env={"COLUMNS": "100"})
    assert result.exit_code == 0
    rows = [line.strip() for line in lines(result.stdout)]
    assert rows[1].split() == ["relu", "sigmoid"]  # the header: one column per configuration
    for expected in (
        "model.activation             relu                sigmoid",
        "at step 0 (initialization)",
        "gain                         1                   0.000977",
        "layer_factor                 1                   0.0312",
        "verdict                      stable (×1/layer)   vanishing (×0.0312/layer, 1/e every 0.3 layers)",
        "at the last step (10)",
        "final_test_accuracy          0.6                 0.6",
    ):
        assert expected in rows, expected
    assert " ".join(rows[rows.index("final_test_accuracy          0.6                 0.6") + 2:]).startswith(
        "verdict: vanishing below gain 0.01, exploding above 100; or the rate: the signal changes by e in fewer than 20 steps"
    )


def test_compare_output_file(runs, invoke):
    result = invoke("compare", "runs", "-f", "csv", "--step", "0", "--output", "table.csv")
    assert result.exit_code == 0
    assert lines(result.stdout) == ["compared 2 runs in 2 rows: table.csv"]
    assert lines(Path("table.csv").read_text()) == [HEADER_AT_0, RELU_AT_0, SIGMOID_AT_0]


def test_compare_explain(runs, invoke):
    alone = invoke("compare", "--explain")
    assert alone.exit_code == 0
    assert "gain@<step>: gain across the stack = delta_rms of the first hidden layer / delta_rms of the last" in alone.stdout
    assert "dead_frac@<step>: largest dead_frac over the hidden layers" in alone.stdout and "a Leaky ReLU unit never is" in alone.stdout
    # with a machine format on stdout, the glossary goes to stderr and the CSV stays parseable
    result = invoke("compare", "runs", "-f", "csv", "--step", "0", "--explain")
    assert lines(result.stdout) == [HEADER_AT_0, RELU_AT_0, SIGMOID_AT_0]
    glossary = lines(result.stderr)
    assert [line.split(": ", 1)[0] for line in glossary] == HEADER_AT_0.split(",")
    assert glossary[1] == "model.activation: config value that differs between the compared runs"


def test_compare_names_bad_runs_and_compares_the_rest(runs, invoke):
    broken = add_run("tanh", RELU, run_id="broken")
    (broken / "metrics.csv").unlink()
    running = add_run("selu", RELU, status="running")
    Path("empty").mkdir()
    result = invoke("compare", "runs", "empty", "-f", "csv", "--step", "0")
    assert result.exit_code == 0
    assert lines(result.stderr) == [
        "warning: empty: no runs found (a run directory holds meta.json)",
        f"warning: {running}: still marked running (in progress, or killed before it could finish); compared up to step 10",
        f"warning: {broken}: no metrics.csv; skipped",
    ]
    assert [line.split(",")[0] for line in lines(result.stdout)[1:]] == ["relu", "selu", "sigmoid"]


def test_compare_exits_2_when_nothing_could_be_read(tmp_path, monkeypatch, invoke):
    monkeypatch.chdir(tmp_path)
    Path("empty").mkdir()
    result = invoke("compare", "empty", "missing")
    assert result.exit_code == 2
    assert lines(result.stderr) == [
        "error: empty: no runs found (a run directory holds meta.json)",
        "error: missing: does not exist",
        "error: no run could be read",
    ]
    assert result.stdout == ""
    assert invoke("compare").exit_code == 2  # no PATH at all


def test_compare_rejects_a_bad_step(runs, invoke):
    result = invoke("compare", "runs", "--step", "first")
    assert result.exit_code == 2
    assert "got 'first'; expected 0, last or a step number" in result.stderr


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plot_writes_the_figures_and_lists_them(runs, invoke):
    result = invoke("plot", "runs", "--output", "figures")
    assert result.exit_code == 0
    assert lines(result.stdout) == [
        "figures/depth_profile_delta_norm.png",
        "figures/depth_profile_weight_grad_norm.png",
        "figures/heatmap_delta_norm.png",
        "figures/training_curves.png",
        "figures/saturation.png",
    ]
    assert all(Path(line).read_bytes()[:4] == b"\x89PNG" for line in lines(result.stdout))
    assert invoke("plot", "runs").exit_code == 2  # --output is required


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------

PASSING = {"status": "completed", "gain": {"step": 0, "between": [0.01, 100]}, "final_test_accuracy": {"min": 0.5}}


def test_check_passes(tmp_path, monkeypatch, invoke):
    monkeypatch.chdir(tmp_path)
    run_dir = add_run("relu", RELU, expect=PASSING)
    result = invoke("check", "runs", "--junit", "reports/junit.xml")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        str(run_dir),
        "  ok    status = completed  (one of completed)",
        "  ok    gain@0 = 1  (between [0.01, 100])",
        "  ok    final_test_accuracy = 0.6  (min 0.5)",
        "3 expectations on 1 run: 3 passed, 0 failed",
        "JUnit report: reports/junit.xml",
    ]
    root = ET.parse("reports/junit.xml").getroot()
    assert [case.get("name") for case in root.iter("testcase")] == ["status one of completed", "gain@0 between [0.01, 100]", "final_test_accuracy min 0.5"]
    assert root.get("failures") == "0"


def test_check_fails_with_exit_1_naming_the_value_and_the_bound(tmp_path, monkeypatch, invoke):
    monkeypatch.chdir(tmp_path)
    relu = add_run("relu", RELU, expect=PASSING)
    sigmoid = add_run("sigmoid", SIGMOID, expect=PASSING)
    result = invoke("check", "runs", "--junit", "junit.xml")
    assert result.exit_code == 1
    assert "  FAIL  gain@0 = 0.0009766  (between [0.01, 100])" in lines(result.stdout)
    assert lines(result.stdout)[-2] == "6 expectations on 2 runs: 5 passed, 1 failed"
    assert lines(result.stderr) == [f"error: {sigmoid}: gain@0 = 0.0009766, expected between [0.01, 100]"]
    cases = list(ET.parse("junit.xml").getroot().iter("testcase"))
    assert len(cases) == 6
    assert [case.get("classname") for case in cases if case.find("failure") is not None] == [str(sigmoid)]
    assert relu.exists()


def test_check_exits_2_when_a_run_cannot_be_checked(tmp_path, monkeypatch, invoke):
    monkeypatch.chdir(tmp_path)
    add_run("relu", RELU, expect=PASSING)
    bad = add_run("sigmoid", SIGMOID, expect={"gain": {"betwen": [0, 1]}})
    result = invoke("check", "runs")
    assert result.exit_code == 2
    assert lines(result.stderr) == [
        f"error: {bad}/config.yaml: expect.gain.betwen: unknown key (did you mean 'between'?); allowed: min, max, between, step, target_loss, within_theory"
    ]


def test_check_without_expectations_warns_and_passes(runs, invoke):
    result = invoke("check", "runs")
    assert result.exit_code == 0
    assert lines(result.stderr) == [f"warning: {run}: its config has no expect section; nothing to check" for run in runs]
    assert lines(result.stdout) == ["0 expectations on 2 runs: 0 passed, 0 failed"]


def test_compare_table_at_80_columns_breaks_no_label_and_keeps_mean_and_std_together(tmp_path, monkeypatch, invoke):
    # issue 11: at 80 columns labels broke mid-word and "± std" was split across lines
    monkeypatch.chdir(tmp_path)
    for width in (16, 1024, 128, 1):
        for seed in (0, 1):
            config = resolved_config("widths", seed, depth=3, model__width=width)
            profile = dict(delta=[0.5 + seed / 8, 1.0, 1.0])
            metrics = metric_rows({0: (2.0, 0.25), 10: (0.75 + seed / 8, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})
            write_run(Path("runs"), config, layer_rows(0, **profile) + layer_rows(10, **profile), metrics, run_id=f"w{width}s{seed}")
    result = invoke("compare", "runs", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert max(len(line) for line in out) <= 80
    # the headings: each label whole, one key=value a line, widths in numeric order across the chunks
    headings = [line.split() for line in out if "width=" in line]
    assert [word for line in headings for word in line] == ["width=1", "width=16", "width=128", "width=1024"]
    assert sum(line.split() == ["model.width", *line.split()[1:]] for line in out) == len(headings)
    final_loss = [line.split(maxsplit=1)[1].split("   ") for line in out if line.strip().startswith("final_train_loss")]
    assert [cell.strip() for row in final_loss for cell in row if cell.strip()] == ["0.812 ± 0.0884"] * 4
    assert not any(line.rstrip().endswith(("±", "×/÷")) for line in out)


def test_a_swept_learning_rate_is_the_column_optim_lr(tmp_path, invoke):
    # issue 24: sweeping optim.lr named the column `optim`, its values sgd(lr=0.3)
    for lr, run_id in ((0.3, "a"), (0.1, "b")):
        config = resolved_config("lr", 0, depth=3, optim={"name": "sgd", "lr": lr})
        layers = layer_rows(0, **RELU) + layer_rows(10, **RELU)
        write_run(tmp_path, config, layers, METRICS, run_id=run_id)
    result = invoke("compare", tmp_path, "-f", "csv", "--step", "0")
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0])[:2] == ["label", "optim.lr"]
    assert [(row["label"], row["optim.lr"]) for row in table] == [("lr#lr=0.1", "0.1"), ("lr#lr=0.3", "0.3")]
