"""`gradlab run`, `validate` and `components` through Typer's CliRunner: exact output, exit codes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.specs import REGISTRIES
from gradlab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("meta.json"))


def test_run_quiet_prints_only_the_run_directory(tmp_path):
    result = invoke("run", SMOKE, "--out", tmp_path, "--quiet", "--steps", "10", "--set", "expect=null")
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    assert result.stdout == f"{run}\n"
    assert result.stderr == ""
    layers = pd.read_csv(run / "layers.csv")
    assert layers["step"].max() == 10


def test_run_prints_the_profile_table_and_the_path(tmp_path):
    result = invoke("run", SMOKE, "--out", tmp_path, "--seed", "3", "--set", "model.depth=3")
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    out = result.stdout
    for text in ["delta_norm @ step 0", "delta_norm @ step 60", "blocks.0", "blocks.2", "head", "gain across the stack"]:
        assert text in out
    assert "blocks.3" not in out
    assert out.rstrip().endswith(f"run directory: {run}")
    config = load_config(run / "config.yaml")
    assert config.seed == 3 and config.model.depth == 3 and config.log.out == str(tmp_path)


@pytest.mark.parametrize(
    "args, line",
    [
        (["--set", "model.depth=0"], "error: model.depth: got 0; must be >= 1"),
        (["--set", "model.activation=rleu"], "error: model.activation: unknown activation 'rleu' (did you mean 'relu'?); allowed: "
                                             "sigmoid, tanh, relu, leaky_relu, prelu, rrelu, elu, selu, gelu, silu, softplus, hardtanh, identity"),
        (["--steps", "-1"], "error: train.steps: got -1; must be >= 0"),
        (["--device", "tpu"], "error: device: got 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
        (["--set", "data.name=npz", "--set", "data.path=missing.npz"], "error: data.path: 'missing.npz' does not exist"),
        (["--set", "optim.lr"], "error: --set 'optim.lr': expected key.path=value, e.g. model.depth=30"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, line):
    out = tmp_path / "out"
    result = invoke("run", SMOKE, "--out", out, *args)
    assert result.exit_code == 2
    assert result.stderr == line + "\n"
    assert result.stdout == ""
    assert not out.exists() or run_dirs(out) == []


def test_out_pointing_at_a_file_fails_up_front(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    result = invoke("run", SMOKE, "--out", target)
    assert result.exit_code == 2
    assert result.stderr == f"error: log.out: {str(target)!r} is a file, not a folder\n"


def test_missing_config_and_folder_as_config(tmp_path):
    result = invoke("run", tmp_path / "nope.yaml")
    assert (result.exit_code, result.stderr) == (2, f"error: config: {str(tmp_path / 'nope.yaml')!r} does not exist\n")
    result = invoke("validate", tmp_path)
    assert (result.exit_code, result.stderr) == (2, f"error: config: {str(tmp_path)!r} is a folder; give a YAML file\n")


def test_validate_prints_the_resolved_config():
    result = invoke("validate", SMOKE, "--set", "model.norm=bn")
    assert result.exit_code == 0
    assert result.stdout == load_config(SMOKE, ["model.norm=bn"]).to_yaml()
    assert "norm: {name: batchnorm, placement: pre, momentum: 0.1, eps: 1.0e-05, affine: true}" in result.stdout


def test_components_lists_every_name_with_its_parameters():
    result = runner.invoke(app, ["components"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for title, registry in REGISTRIES.items():
        assert title in result.stdout
        for name in registry.names():
            assert name in result.stdout
    assert "negative_slope=0.01" in result.stdout and "momentum=0.1" in result.stdout


def test_every_shipped_config_validates():
    from gradlab.sweep import load_experiments

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if "mnist" in path.name and not (ROOT.parent / "shared" / "data" / "mnist").is_dir():
            continue
        assert load_experiments(path)  # one experiment, or one per sweep combination


EXPECT = """
name: expect
data: {name: gaussian, dim: 16, classes: 4, n_train: 256, n_test: 128, batch_size: 32}
model: {depth: 4, width: 16, activation: relu, init: {weight: kaiming_normal, bias: zeros}}
optim: {name: sgd, lr: 0.05, momentum: 0.9}
train: {steps: 20, eval_every: 10}
expect:
  status: completed
  gain: {step: 0, between: [0.01, 100]}
  final_test_accuracy: {min: MIN}
"""


def test_run_checks_the_expect_section_and_exits_1_when_violated(tmp_path):
    config = tmp_path / "expect.yaml"
    config.write_text(EXPECT.replace("MIN", "0.0"))
    result = invoke("run", config, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "expect ok    status = completed  (one of completed)" in result.stdout
    config.write_text(EXPECT.replace("MIN", "1.01"))
    result = invoke("run", config, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 1
    [run] = [p for p in run_dirs(tmp_path / "out") if p.name in result.stdout]
    assert result.stdout == f"{run}\n"
    accuracy = pd.read_csv(run / "metrics.csv").query("split == 'test'")["accuracy"].iloc[-1]
    assert result.stderr == f"error: expectation failed: final_test_accuracy = {accuracy:.4g}, expected min 1.01\n"


def test_run_plot_draws_the_figures_into_the_run_directory(tmp_path):
    result = invoke("run", SMOKE, "--out", tmp_path, "--steps", "10", "--plot", "--quiet", "--set", "expect=null")
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert len(pngs) == 5
    assert all((run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)


def test_components_show_bracketed_text():
    # issue 11: rich markup swallowed "[lower, upper]" (RReLU) and "[min_val, max_val]" (hardtanh)
    result = runner.invoke(app, ["components"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "random slope in [lower, upper] while training" in result.stdout
    assert "x clipped to [min_val, max_val]" in result.stdout


def test_help_shows_bracketed_text_as_written():
    # issue 11: `run --help` said pip install 'gradlab' where the source says 'gradlab[ray]'
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "pip install 'gradlab[ray]'" in " ".join(result.stdout.split())
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "250"})
    assert "pip install 'gradlab[tensorboard]'" in " ".join(result.stdout.split()) and "\\[" not in result.stdout
    # every option's help, as written in the source, appears in the rendered help (one line each at 250 columns)
    import typer.main

    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        rendered = " ".join(runner.invoke(app, [name, "--help"], env={"COLUMNS": "250"}).stdout.split())
        for param in sub.params:
            if getattr(param, "help", None) and "[" in param.help:
                assert " ".join(param.help.split()) in rendered, (name, param.help)


def test_run_summary_shows_the_final_loss_and_accuracy(tmp_path):
    # issue 11: the end-of-run summary never showed the final loss or accuracy
    result = runner.invoke(app, ["run", SMOKE, "--out", str(tmp_path), "--steps", "20", "--set", "expect=null"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    last = {split: metrics[metrics["split"] == split].iloc[-1] for split in ("train", "test")}
    expected = (f"final: train loss {last['train']['loss']:.3g}, accuracy {last['train']['accuracy']:.3g}; "
                f"test loss {last['test']['loss']:.3g}, accuracy {last['test']['accuracy']:.3g}")
    assert expected in " ".join(result.stdout.split())
