"""gradlab.plots: the five figures, inspected as objects and as written PNG files."""

from __future__ import annotations

import math

import matplotlib.image
import pytest

from gradlab import plots, records
from gradlab.errors import RunError
from run_factory import layer_rows, metric_rows, real_run, resolved_config, write_run, STABLE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (0.75, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})


def make_runs(tmp_path):
    """A relu run and two sigmoid seeds (in the sorted order they are found), 4 hidden layers,
    logged at steps 0, 5 and 10."""
    runs = []
    for name, seed, activation in (("sig", 0, "sigmoid"), ("sig", 1, "sigmoid"), ("relu", 0, "relu")):
        config = resolved_config(name, seed, depth=4, model__activation=activation)
        layers = []
        for step in (0, 5, 10):
            layers += layer_rows(step, [0.1 * (seed + 1), 0.2, 0.0, 1.0], weight_grad=[1.0, 2.0, 3.0, 4.0], dead=[0.0, 0.5, 1.0, 0.0])
        runs.append(write_run(tmp_path, config, layers, METRICS, run_id=f"{name}{seed}"))
    return records.load_runs([tmp_path]).runs


def data_lines(axes):
    """The measured lines (theory's dashed predictions aside: see test_theory_is_drawn_dashed...)."""
    return [line for line in axes.get_lines() if len(line.get_xdata()) and line.get_gid() != plots.THEORY_GID]


def test_depth_profiles_have_one_line_per_run_at_step_0_and_the_last_step(tmp_path):
    runs = make_runs(tmp_path)
    for column in ("delta_norm", "weight_grad_norm"):
        figure = plots.depth_profile(runs, column)
        assert len(figure.axes) == 2
        for axes in figure.axes:
            assert len(data_lines(axes)) == 3
            assert axes.get_yscale() == "log"
            assert axes.get_xlabel() == "hidden layer (0 = nearest the input)"
        assert [a.get_title() for a in figure.axes] == ["step 0 (initialization)", "last step (10)"]
        # seeds of one configuration share a colour and a legend entry
        (legend,) = figure.legends
        legend = [t.get_text() for t in legend.get_texts()]
        theory = ["theory at initialization (dashed, in each run's colour)"] if column == "delta_norm" else []  # both configs have a prediction
        assert legend == ["model.activation=relu", "model.activation=sigmoid (2 seeds)", *theory]
        title = figure.get_suptitle()
        assert title == f"{column} by layer\nruns differ in model.activation"
        assert "20240101" not in title  # labelled by config, not by directory
    profile = plots.depth_profile(runs, "delta_norm").axes[0]
    first_line = data_lines(profile)[0]
    assert list(first_line.get_xdata()) == [0, 1, 2, 3]
    y = list(first_line.get_ydata())
    assert y[:2] == [0.1, 0.2] and math.isnan(y[2]) and y[3] == 1.0  # a zero is a gap on a log axis, never faked


def test_heatmap_has_one_panel_per_run_on_one_colour_scale(tmp_path):
    runs = make_runs(tmp_path)
    figure = plots.heatmap(runs)
    panels = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 3 and len(figure.axes) == 4  # plus the shared colour bar
    meshes = [panel.collections[0] for panel in panels]
    assert {mesh.get_clim() for mesh in meshes} == {(math.log10(0.1), 0.0)}
    assert meshes[0].get_array().shape == (4, 3)  # layers x steps
    assert [p.get_title() for p in panels] == ["model.activation=relu (seed 0)", "model.activation=sigmoid (seed 0)", "model.activation=sigmoid (seed 1)"]


def test_training_curves_draw_train_and_test_of_every_run(tmp_path):
    runs = make_runs(tmp_path)
    loss, accuracy = plots.training_curves(runs).axes
    for axes in (loss, accuracy):
        assert len(data_lines(axes)) == 6  # 3 runs x (train, test)
    assert loss.get_yscale() == "log"
    train = data_lines(accuracy)[0]
    assert list(train.get_xdata()) == [0, 5, 10] and list(train.get_ydata()) == [0.25, 0.5, 0.625]
    assert data_lines(accuracy)[1].get_linestyle() == "--"


def test_saturation_has_dead_and_saturated_at_both_steps(tmp_path):
    runs = make_runs(tmp_path)
    figure = plots.saturation(runs)
    assert len(figure.axes) == 4
    for axes in figure.axes:
        assert len(data_lines(axes)) == 3
    assert [a.get_ylabel() for a in figure.axes] == ["dead_frac", "", "saturated_frac", ""]
    assert list(data_lines(figure.axes[0])[0].get_ydata()) == [0.0, 0.5, 1.0, 0.0]


def test_plot_runs_writes_valid_pngs_of_sensible_size(tmp_path):
    runs = make_runs(tmp_path / "runs")
    paths = plots.plot_runs([run.dir for run in runs], tmp_path / "figures")
    assert [p.name for p in paths] == [f"{stem}.png" for stem in plots.FIGURES]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width = matplotlib.image.imread(path).shape[:2]
        assert 300 <= height <= 2000 and 600 <= width <= 2000, (path.name, width, height)


def test_a_single_real_run_is_titled_by_its_config(tmp_path):
    run_dir = real_run(tmp_path, "solo", STABLE, steps=10)
    figures = plots.build_figures(records.load_runs([run_dir]).runs)
    assert set(figures) == set(plots.FIGURES)
    title = figures["depth_profile_delta_norm"].get_suptitle()
    assert title.splitlines()[1].startswith("solo: mlp depth 10 x 32, activation relu, norm none, init kaiming_normal(")
    assert len(data_lines(figures["depth_profile_delta_norm"].axes[0])) == 1


def test_runs_without_delta_norm_say_so_instead_of_drawing(tmp_path):
    config = resolved_config("nodeltas", depth=3)
    write_run(tmp_path, config, layer_rows(0, [math.nan] * 3) + layer_rows(5, [math.nan] * 3), METRICS)
    figure = plots.depth_profile(records.load_runs([tmp_path]).runs, "delta_norm")
    assert not data_lines(figure.axes[0])
    assert [t.get_text() for t in figure.axes[0].texts] == ["no delta_norm recorded"]


def test_plot_runs_refuses_unreadable_runs(tmp_path):
    config = resolved_config("broken", depth=2)
    run_dir = write_run(tmp_path, config, layer_rows(0, [1.0, 1.0]), METRICS)
    (run_dir / "metrics.csv").unlink()
    with pytest.raises(RunError, match="no metrics.csv"):
        plots.plot_runs([run_dir], tmp_path / "figures")


def test_theory_is_drawn_dashed_at_step_0_anchored_at_the_last_hidden_layer(tmp_path):
    from run_factory import one_run

    he = {"model__activation": "relu", "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}
    run = one_run(tmp_path / "he", [4.0, 2.0, 1.0], **he)  # predicted factor 1: a flat line at the last value
    bn = one_run(tmp_path / "bn", [1.0, 1.0, 1.0], name="bn", model__norm="layernorm")  # no prediction
    figure = plots.depth_profile([run, bn], "delta_norm")
    step0, last = figure.axes[0], figure.axes[1]
    theory = [line for line in step0.get_lines() if line.get_gid() == plots.THEORY_GID]
    assert len(theory) == 1 and theory[0].get_linestyle() == "--"
    assert list(theory[0].get_xdata()) == [0, 1, 2]
    assert list(theory[0].get_ydata()) == pytest.approx([1.0, 1.0, 1.0])
    assert not [line for line in last.get_lines() if line.get_gid() == plots.THEORY_GID]
