"""log.jacobian: jacobian.csv's columns against the dense Jacobian (torch.autograd.functional.jacobian
and torch.linalg.svdvals) on small MLP, CNN, residual and BatchNorm stacks; the Hutchinson error
shrinking as 1/sqrt(K); a run with it writes the same other records as one without; bad input is one
line and exit 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from gradlab.build.models import build_model
from gradlab.config.experiment import ModelConfig
from gradlab.measure.jacobian import block_outputs, jacobian_spectrum

torch.set_default_dtype(torch.float32)


def dense(model, x):
    """Per example e: the singular values of every block's J_l, from the dense Jacobian (eval mode)."""
    model.eval()
    shape = tuple(x.shape[1:])
    per_example = []
    for e in range(x.shape[0]):
        jacobians = torch.autograd.functional.jacobian(lambda z: block_outputs(model, z, shape), x[e].reshape(1, -1))
        per_example.append([torch.linalg.svdvals(j.reshape(j.shape[1], -1)) for j in jacobians])
    model.train()
    return per_example


def exact_columns(model, x):
    """m1 per block, m2, s2 (of the means) and sv_max (mean over examples) of the last block."""
    n_in = x[0].numel()
    values = dense(model, x)
    m1 = torch.stack([torch.stack([(sv**2).sum() / n_in for sv in example]) for example in values]).mean(0)
    m2 = torch.stack([(example[-1] ** 4).sum() / n_in for example in values]).mean()
    sv_max = torch.stack([example[-1].max() for example in values]).mean()
    return m1.tolist(), m2.item(), (m2 / m1[-1] ** 2 - 1).item(), sv_max.item()


MODELS = {
    "mlp": (dict(kind="mlp", activation="tanh"), (6,)),
    "cnn": (dict(kind="cnn", activation="tanh", pool_every=2), (2, 4, 4)),
    "residual": (dict(kind="mlp", activation="relu", residual=True, branch_depth=2), (6,)),
    "batchnorm": (dict(kind="mlp", activation="relu", norm="batchnorm"), (6,)),
}


@pytest.mark.parametrize("which", MODELS)
def test_every_column_agrees_with_the_dense_jacobian(which):
    settings, shape = MODELS[which]
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=3, width=5, **settings), shape, 3).double()
    if which == "batchnorm":  # running statistics that are not the initial ones
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, *shape, dtype=torch.double) * 2 + 1)
    x = torch.randn(3, *shape, dtype=torch.double)
    m1, m2, s2, sv_max = exact_columns(model, x)
    got = jacobian_spectrum(model, x, probes=4000, power_iterations=300, generator=torch.Generator().manual_seed(0))
    # Hutchinson with K probes: relative error about sqrt(2 (1 + s2) / (n_in K)) per example, a few % here
    assert got.m1 == pytest.approx(m1, rel=0.04)
    assert got.m2 == pytest.approx(m2, rel=0.08)
    assert got.s2 == pytest.approx(s2, rel=0.1, abs=0.05)
    assert got.sv_max == pytest.approx(sv_max, rel=1e-6)  # power iteration converged
    assert got.probes == 4000
    assert model.training  # the mode is put back


def test_rows_leave_m2_s2_and_sv_max_to_the_last_block():
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=3, width=5), (4,), 2)
    rows = jacobian_spectrum(model, torch.randn(2, 4), 2, 3, torch.Generator().manual_seed(0)).rows(7)
    assert [r["layer"] for r in rows] == [0, 1, 2] and {r["step"] for r in rows} == {7}
    assert all(r[c] is None for r in rows[:-1] for c in ("m2", "s2", "sv_max"))
    assert all(r[c] is not None for c in ("m1", "m2", "s2", "sv_max") for r in rows[-1:])


def test_the_estimators_error_shrinks_as_one_over_sqrt_k():
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=3, width=8, activation="tanh"), (8,), 2).double()
    x = torch.randn(1, 8, dtype=torch.double)
    exact, exact_m2, _, _ = exact_columns(model, x)

    def rms_error(probes):
        m1 = [jacobian_spectrum(model, x, probes, 1, torch.Generator().manual_seed(seed)).m1[-1] for seed in range(60)]
        return math.sqrt(np.mean((np.array(m1) - exact[-1]) ** 2))

    few, many = rms_error(4), rms_error(64)
    assert 4 / 1.6 < few / many < 4 * 1.6  # sqrt(64 / 4) = 4


def test_sv_max_is_the_largest_singular_value_not_less():
    torch.manual_seed(1)
    model = build_model(ModelConfig(depth=2, width=6, activation="relu"), (6,), 2).double()
    x = torch.randn(2, 6, dtype=torch.double)
    _, _, _, sv_max = exact_columns(model, x)
    few = jacobian_spectrum(model, x, 1, 2, torch.Generator().manual_seed(0)).sv_max
    assert few <= sv_max * (1 + 1e-9)  # a Rayleigh quotient: a lower bound that converges from below


def base(out, **log):
    return {
        "name": "jac", "seed": 3, "device": "cpu",
        "data": {"name": "gaussian", "dim": 8, "classes": 3, "n_train": 64, "n_test": 16, "batch_size": 16},
        "model": {"depth": 3, "width": 8, "activation": "tanh", "dropout": 0.2},
        "train": {"steps": 5, "eval_every": 5}, "log": {"every": 2, "out": str(out), **log},
    }  # fmt: skip


def test_a_run_with_it_records_everything_else_exactly_as_without(tmp_path):
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment
    from gradlab.records.run import load_run

    plain = run_experiment(validate(base(tmp_path / "a"))).run_dir
    measured = run_experiment(validate(base(tmp_path / "b", jacobian={"every": 4, "probes": 3, "examples": 2}))).run_dir
    assert (plain / "layers.csv").read_bytes() == (measured / "layers.csv").read_bytes()  # dropout's draws untouched
    drop_time = lambda path: [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # noqa: E731
    assert drop_time(plain / "metrics.csv") == drop_time(measured / "metrics.csv")
    assert not (plain / "jacobian.csv").exists()
    assert "jacobian" not in yaml.safe_load((plain / "config.yaml").read_text())["log"]
    run = load_run(measured)
    assert run.jacobian["step"].tolist() == [0, 0, 0, 4, 4, 4, 5, 5, 5]  # every 4 steps, and the last
    assert run.jacobian["probes"].eq(3).all() and run.jacobian["s2"].notna().sum() == 3
    assert load_run(plain).jacobian is None


@pytest.mark.parametrize(
    "log, model, line",
    [
        ({"jacobian": {"every": 2, "probes": 0}}, {}, "error: log.jacobian.probes: got 0; must be >= 1"),
        ({"jacobian": {"every": 3}}, {}, "error: log.jacobian.every: 3 is not a multiple of log.every 2: the Jacobian is measured on logged steps only"),
        ({"jacobian": {"probes": 4}}, {}, "error: log.jacobian.every: needs every: a multiple of log.every"),
        ({"jacobian": {"every": 2}}, {"kind": "rnn"},
         "error: log.jacobian: the input-output Jacobian is measured on the mlp and cnn stacks; model.kind rnn feeds one input per time step, "
         "so there is no single block output to map the input to: use kind mlp or cnn, or leave it out"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_and_exit_2(tmp_path, invoke, log, model, line):
    config = base(tmp_path / "out", **log)
    config["model"].update(model)
    if model.get("kind") == "rnn":
        config["data"] = {"name": "adding", "n_train": 64, "n_test": 16, "batch_size": 16}
        config["model"].pop("dropout")
        config["loss"] = "mse"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert result.stderr == line + "\n"


def test_the_figure_draws_s2_and_m1_against_depth_with_the_prediction_dashed(tmp_path):
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment
    from gradlab.records.run import load_run
    from gradlab.show import plots

    runs = []
    for depth in (2, 3):
        config = base(tmp_path, jacobian={"every": 2, "probes": 2, "examples": 2})
        config["model"] = {"depth": depth, "width": 8, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}}
        runs.append(load_run(run_experiment(validate(config)).run_dir))
    assert plots.has_jacobian(runs)  # build_figures draws it then
    figure = plots.jacobian(runs)
    s2_axes, m1_axes = figure.axes[:2]
    measured = [line for line in s2_axes.get_lines() if line.get_gid() != plots.THEORY_GID and line.get_xydata().size]
    assert [list(line.get_xdata()) for line in measured] == [[2, 3], [2, 3]]  # step 0 and the last step, one point per run's depth
    assert [line.get_ydata()[-1] for line in measured][0] == pytest.approx(runs[1].jacobian.query("step == 0")["s2"].dropna().iloc[0])
    theory = [line for line in s2_axes.get_lines() if line.get_gid() == plots.THEORY_GID]
    assert len(theory) == 1 and list(theory[0].get_ydata()) == pytest.approx([2, 4, 6])  # ReLU, Gaussian, width = dim: 2L
    assert not plots.has_jacobian([load_run(run_experiment(validate(base(tmp_path / "plain"))).run_dir)])


def test_compare_theory_sets_predicted_s2_beside_s2_at_0_and_says_why_where_none(tmp_path, invoke):
    from gradlab.analysis.compare import compare_runs
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment
    from gradlab.records.run import load_run

    mlp = base(tmp_path, jacobian={"every": 4, "probes": 4, "examples": 4})
    mlp["model"] = {"depth": 3, "width": 8, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}}
    cnn = base(tmp_path, jacobian={"every": 4, "probes": 2, "power_iterations": 2, "examples": 2})
    cnn["data"] = {"name": "images", "classes": 3, "n_train": 32, "n_test": 8, "batch_size": 8}
    cnn["model"] = {"kind": "cnn", "depth": 2, "width": 2, "pool_every": 1}
    runs = [load_run(run_experiment(validate(config)).run_dir) for config in (mlp, cnn)]
    comparison = compare_runs(runs, theory=True)
    table = comparison.table.set_index("model.kind")
    assert table.loc["mlp", "predicted_s2"] == pytest.approx(6.0)  # ReLU, Gaussian, width = dim: 2L
    assert table.loc["mlp", "s2@0"] == pytest.approx(runs[0].jacobian.query("step == 0")["s2"].dropna().iloc[0])
    assert table.loc["mlp", "s2_departs"] in ("yes", "no") and math.isnan(table.loc["cnn", "predicted_s2"])
    assert any("no predicted_s2: model.kind cnn" in note for note in comparison.notes)
    # gradlab theory prints the prediction per block
    path = tmp_path / "mlp.yaml"
    path.write_text(yaml.safe_dump(mlp))
    lines = invoke("theory", path).stdout.splitlines()
    table_at = lines.index(next(line for line in lines if line.startswith("jacobian (free probability")))
    assert lines[table_at + 2 :] == ["    0             1             2", "    1             1             4", "    2             1             6"]


def test_an_s2_expectation_needs_log_jacobian(tmp_path, invoke):
    config = base(tmp_path)
    config["expect"] = {"s2": {"within_theory": 0.2}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert result.stderr == "error: expect.s2: s2 is measured by log.jacobian (jacobian.csv), which this config leaves off: set log.jacobian: {every: N}\n"


def test_a_step_cut_off_in_jacobian_csv_is_left_out_with_a_note(tmp_path):
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment
    from gradlab.records.run import load_run

    run_dir = run_experiment(validate(base(tmp_path, jacobian={"every": 2, "probes": 2, "examples": 2}))).run_dir
    path = run_dir / "jacobian.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # the last step lost its last block
    run = load_run(run_dir)
    assert sorted(set(run.jacobian["step"])) == [0, 2, 4] and len(run.jacobian) == 9
    assert any("step 5 of jacobian.csv has only 2 of 3 rows" in note for note in run.notes)


def watched_loop(tmp_path, name, jacobian=None, steps=3, model_maker=None, call=None):
    """A user's loop under gradlab.watch (dropout in the model, so that the RNG would show a disturbance)."""
    import gradlab
    from torch import nn

    torch.manual_seed(0)
    model = (model_maker or (lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3))))()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with gradlab.watch(model, out=tmp_path, every=1, name=name, optimizer=opt, seed=5, jacobian=jacobian) as w:
        for _ in range(steps):
            x, y = torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy((call or model)(x), y)
            loss.backward()
            opt.step()
            w.step(loss=loss)
    return w.run_dir, model


def test_watch_takes_the_jacobian_of_the_output_and_disturbs_nothing(tmp_path):
    from gradlab.records.run import load_run

    plain, _ = watched_loop(tmp_path, "plain")
    measured, _ = watched_loop(tmp_path, "jac", jacobian={"every": 2, "probes": 3, "examples": 2})
    assert (plain / "layers.csv").read_bytes() == (measured / "layers.csv").read_bytes()
    drop_time = lambda path: [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # noqa: E731
    assert drop_time(plain / "metrics.csv") == drop_time(measured / "metrics.csv")
    run = load_run(measured)
    assert run.jacobian["step"].tolist() == [0, 2] and run.jacobian["layer"].tolist() == [1, 1]  # the head's row (two Linear sites)
    assert run.config["log"]["jacobian"] == {"every": 2, "probes": 3, "power_iterations": 20, "examples": 2}


def test_watch_jacobian_agrees_with_the_dense_jacobian_of_the_model(tmp_path):
    from torch import nn

    from gradlab.records.run import load_run

    saved = {}

    def maker():
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        saved["state"] = {k: v.clone() for k, v in model.state_dict().items()}  # the network step 0 measures
        return model

    run_dir, model = watched_loop(tmp_path, "dense", jacobian={"every": 5, "probes": 3000, "power_iterations": 200, "examples": 2},
                                  steps=1, model_maker=maker)  # fmt: skip
    model.load_state_dict(saved["state"])
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))[:2]
    values = [torch.linalg.svdvals(torch.autograd.functional.jacobian(model, x[e : e + 1]).reshape(3, 6)) for e in range(2)]
    m1 = torch.stack([(sv**2).sum() / 6 for sv in values]).mean()
    m2 = torch.stack([(sv**4).sum() / 6 for sv in values]).mean()
    row = load_run(run_dir).jacobian.iloc[0]
    assert row["m1"] == pytest.approx(m1.item(), rel=0.05) and row["m2"] == pytest.approx(m2.item(), rel=0.1)
    assert row["sv_max"] == pytest.approx(torch.stack([sv.max() for sv in values]).mean().item(), rel=1e-4)


def test_watch_without_a_known_input_says_why_and_bad_settings_are_one_line(tmp_path):
    from torch import nn

    import gradlab
    from gradlab.records.run import load_run
    from gradlab.vocab.errors import ConfigError

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, x, scale):
            return self.linear(x) * scale

    two = TwoInputs()
    run_dir, _ = watched_loop(tmp_path, "two", jacobian={"every": 1}, model_maker=lambda: two, call=lambda x: two(x, 2.0))
    run = load_run(run_dir)
    assert run.jacobian is not None and run.jacobian.empty
    assert run.config["log"]["jacobian_note"].startswith("the model's forward takes other than one floating-point tensor")
    model = nn.Linear(2, 2)
    for settings, line in (({"every": 3}, "watch: jacobian.every 3 is not a multiple of every 2: the Jacobian is measured on measured steps only"),
                           ({"every": 2, "probes": 0}, "watch: jacobian.probes: got 0; must be >= 1"),
                           ([2], "watch: jacobian got [2]; a mapping such as {'every': 10, 'probes': 16}, or None")):  # fmt: skip
        with pytest.raises(ConfigError) as error:
            gradlab.watch(model, out=tmp_path / "refused", every=2, jacobian=settings)
        assert error.value.lines == (line,) or list(error.value.lines) == [line]
    assert not (tmp_path / "refused").exists()


def test_a_vanishing_jacobian_is_a_small_number_not_zero():
    # 40 sigmoid blocks: m1 ~ 1e-44, whose float32 squares of J v's entries would be 0 or denormal
    torch.manual_seed(0)
    cfg = ModelConfig(depth=40, width=6, activation="sigmoid", init={"weight": "lecun_normal", "bias": "zeros"})
    model = build_model(cfg, (6,), 2)
    x = torch.randn(2, 6)
    got = jacobian_spectrum(model, x, 2000, 50, torch.Generator().manual_seed(0))
    m1, m2, s2, sv_max = exact_columns(model.double(), x.double())
    assert 0 < m1[-1] < 1e-30
    assert got.m1[-1] == pytest.approx(m1[-1], rel=0.1) and got.sv_max == pytest.approx(sv_max, rel=1e-3)
    assert got.s2 == pytest.approx(s2, rel=0.2, abs=0.05)
