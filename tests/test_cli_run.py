"""`gradlab run`, `validate` and `components` through Typer's CliRunner: exact output, exit codes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gradlab.cli.app import app
from gradlab.vocab.specs import REGISTRIES
from gradlab.config.load import load_config
from run_factory import run_dirs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_run_quiet_prints_only_the_run_directory(tmp_path, invoke):
    result = invoke("run", SMOKE, "--out", tmp_path, "--quiet", "--steps", "10", "--set", "expect=null")
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    assert result.stdout == f"{run}\n"
    assert result.stderr == ""
    layers = pd.read_csv(run / "layers.csv")
    assert layers["step"].max() == 10


def test_run_prints_the_profile_table_and_the_path(tmp_path, invoke):
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
        (["--set", "data.name=npz", "--set", "data.path=/no/such/missing.npz"], "error: data.path: '/no/such/missing.npz' does not exist"),
        (["--set", "optim.lr"], "error: --set 'optim.lr': expected key.path=value, e.g. model.depth=30"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, line, invoke):
    out = tmp_path / "out"
    result = invoke("run", SMOKE, "--out", out, *args)
    assert result.exit_code == 2
    assert result.stderr == line + "\n"
    assert result.stdout == ""
    assert not out.exists() or run_dirs(out) == []


def test_out_pointing_at_a_file_fails_up_front(tmp_path, invoke):
    target = tmp_path / "a-file"
    target.write_text("x")
    result = invoke("run", SMOKE, "--out", target)
    assert result.exit_code == 2
    assert result.stderr == f"error: log.out: {str(target)!r} is a file, not a folder\n"


def test_missing_config_and_folder_as_config(tmp_path, invoke):
    result = invoke("run", tmp_path / "nope.yaml")
    assert (result.exit_code, result.stderr) == (2, f"error: config: {str(tmp_path / 'nope.yaml')!r} does not exist\n")
    result = invoke("validate", tmp_path)
    assert (result.exit_code, result.stderr) == (2, f"error: config: {str(tmp_path)!r} is a folder; give a YAML file\n")


def test_validate_prints_the_resolved_config(invoke):
    result = invoke("validate", SMOKE, "--set", "model.norm=bn")
    assert result.exit_code == 0
    assert result.stdout == load_config(SMOKE, ["model.norm=bn"]).to_yaml()
    assert "norm: {name: batchnorm, placement: pre, momentum: 0.1, eps: 1.0e-05, affine: true}" in result.stdout


def test_components_lists_every_name_with_its_parameters(invoke):
    result = invoke("components", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for title, registry in REGISTRIES.items():
        assert title in result.stdout
        for name in registry.names():
            assert name in result.stdout
    assert "negative_slope=0.01" in result.stdout and "momentum=0.1" in result.stdout


def test_every_shipped_config_validates():
    from gradlab.orchestrate.sweep_plan import load_experiments

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


def test_run_checks_the_expect_section_and_exits_1_when_violated(tmp_path, invoke):
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


@pytest.mark.slow
def test_run_plot_draws_the_figures_into_the_run_directory(tmp_path, invoke):
    result = invoke("run", SMOKE, "--out", tmp_path, "--steps", "10", "--plot", "--quiet", "--set", "expect=null")
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert len(pngs) == 5
    assert all((run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)


def test_components_show_bracketed_text(invoke):
    # issue 11: rich markup swallowed "[lower, upper]" (RReLU) and "[min_val, max_val]" (hardtanh)
    result = invoke("components", env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "random slope in [lower, upper] while training" in result.stdout
    assert "x clipped to [min_val, max_val]" in result.stdout


def test_help_shows_bracketed_text_as_written(invoke):
    # issue 11: `run --help` said pip install 'gradlab' where the source says 'gradlab[ray]'
    result = invoke("run", "--help", env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "pip install 'gradlab[ray]'" in " ".join(result.stdout.split())
    result = invoke("export", "--help", env={"COLUMNS": "250"})
    assert "pip install 'gradlab[tensorboard]'" in " ".join(result.stdout.split()) and "\\[" not in result.stdout
    # every option's help, as written in the source, appears in the rendered help (one line each at 250 columns)
    import typer.main

    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        rendered = " ".join(invoke(name, "--help", env={"COLUMNS": "250"}).stdout.split())
        for param in sub.params:
            if getattr(param, "help", None) and "[" in param.help:
                assert " ".join(param.help.split()) in rendered, (name, param.help)


def test_run_summary_shows_the_final_loss_and_accuracy(tmp_path, invoke):
    # issue 11: the end-of-run summary never showed the final loss or accuracy
    result = invoke("run", SMOKE, "--out", str(tmp_path), "--steps", "20", "--set", "expect=null", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    [run] = run_dirs(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    last = {split: metrics[metrics["split"] == split].iloc[-1] for split in ("train", "test")}
    expected = (f"final: train loss {last['train']['loss']:.3g}, accuracy {last['train']['accuracy']:.3g}; "
                f"test loss {last['test']['loss']:.3g}, accuracy {last['test']['accuracy']:.3g}")
    assert expected in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    "args, line",
    [
        # issue 11: these answered "unknown key (did you mean 'seed'?)"
        (["--set", "seeds=3"], "error: --set seeds: seeds makes a sweep, not a config value; sweep from the command line with "
                               "--sweep (e.g. --sweep seed=0,1,2 or --sweep model.depth=10,30), or write seeds: in the config file"),
        (["--set", "sweep={model.depth: [2, 3]}"], "error: --set sweep: sweep makes a sweep, not a config value; sweep from the command line with "
                                                  "--sweep (e.g. --sweep seed=0,1,2 or --sweep model.depth=10,30), or write sweep: in the config file"),
        # issue 11: the second --sweep of a key silently replaced the first
        (["--sweep", "model.depth=2,3", "--sweep", "model.depth=4"], "error: --sweep model.depth: given twice; give all its values in one, e.g. --sweep model.depth=2,3,4"),
        # issue 11: did-you-mean missed prefixes and the common names
        (["--set", "model.init.weight=he"], "error: model.init.weight: unknown initializer 'he' (did you mean 'he_normal' or 'he_uniform'?); allowed: "
                                            "normal, uniform, xavier_normal, xavier_uniform, kaiming_normal, kaiming_uniform, lecun_normal, orthogonal, identity, "
                                            "variance_scaling, constant, zeros, default, fixup"),
        # issue 11: an expectation at a step never logged failed only after training
        (["--set", "expect={gain: {step: 7, min: 0.1}}"], "error: expect.gain.step: step 7 is never logged (log.every 5, train.steps 60: "
                                                          "logged are 0, 5, 10, ... and 60); give a multiple of log.every up to 60, or last"),
        (["--set", "log.every=10", "--set", "expect={gain: {step: 15, min: 0.1}}"], "error: expect.gain.step: step 15 is never logged (log.every 10, "
                                                          "train.steps 60: logged are 0, 10, 20, ... and 60); give a multiple of log.every up to 60, or last"),
        (["--steps", "40", "--set", "expect={gain: {step: 50, min: 0.1}}"], "error: expect.gain.step: step 50 is never logged (log.every 5, "
                                                          "train.steps 40: logged are 0, 5, 10, ... and 40); give a multiple of log.every up to 40, or last"),
    ],
)
def test_rough_edges_are_one_line_exit_2(tmp_path, args, line, invoke):
    out = tmp_path / "out"
    result = invoke("run", SMOKE, "--out", out, *args)
    assert (result.exit_code, result.stderr) == (2, line + "\n")
    assert not out.exists() or run_dirs(out) == []


def test_validate_accepts_an_expectation_at_a_logged_step(invoke):
    for step in ("0", "30", "60", "last"):
        assert invoke("validate", SMOKE, "--set", f"expect={{gain: {{step: {step}, min: 0.1}}}}").exit_code == 0, step


def test_a_relative_data_path_that_does_not_exist_names_the_directory_it_was_read_from(tmp_path, monkeypatch, invoke):
    # issue 11: a relative data.path that does not exist did not say where it was looked for
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", SMOKE, "--set", "data.name=npz", "--set", "data.path=data/missing.npz")
    assert result.exit_code == 2
    assert result.stderr == f"error: data.path: 'data/missing.npz' does not exist (relative to the working directory {str(tmp_path)!r})\n"


def test_the_live_sweep_display_shows_bracketed_run_names():
    # issue 11 (rich markup swallowed bracketed text): a run named after a list value, probes=[weights+deltas]
    import io

    from rich.console import Console

    from gradlab.orchestrate.progress import RunStarted, SweepLines, SweepStarted

    out = io.StringIO()
    view = SweepLines(Console(file=out, force_terminal=True, width=150, color_system=None))
    view(SweepStarted(("probes=[weights+deltas]",), 1))
    view(RunStarted(0, 10))
    view.progress.refresh()
    view.progress.stop()
    assert "probes=[weights+deltas]" in out.getvalue()
