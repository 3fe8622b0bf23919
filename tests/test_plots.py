"""gradlab.show.plots: the five figures, inspected as objects and as written PNG files."""

from __future__ import annotations

import math

import matplotlib.image
import pytest

from gradlab.show import plots
from gradlab.records import run as records
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


def test_saturation_has_dead_inactive_and_saturated_at_both_steps(tmp_path):
    runs = make_runs(tmp_path)  # recorded without inactive_frac: its row says so, the others draw
    figure = plots.saturation(runs)
    assert len(figure.axes) == 6
    assert [a.get_ylabel() for a in figure.axes] == ["dead_frac", "", "inactive_frac", "", "saturated_frac", ""]
    for axes in figure.axes[:2] + figure.axes[4:]:
        assert len(data_lines(axes)) == 3
    assert list(data_lines(figure.axes[0])[0].get_ydata()) == [0.0, 0.5, 1.0, 0.0]
    for axes in figure.axes[2:4]:
        assert data_lines(axes) == [] and [t.get_text() for t in axes.texts] == ["no inactive_frac recorded"]


def test_a_relu_runs_inactive_units_are_drawn_where_saturated_frac_is_empty(tmp_path):
    # the ReLU family has no saturating tail (saturated_frac empty): what blocks its gradient is
    # the zero side, inactive_frac, drawn from the run's own layers.csv
    config = resolved_config("relu", 0, depth=4, model__activation="relu")
    inactive = [0.5, 0.25, 0.75, 1.0]
    layers = []
    for step in (0, 5):
        rows = layer_rows(step, [1.0, 1.0, 1.0, 1.0], saturated=[math.nan] * 4)
        for row in rows:
            row["inactive_frac"] = inactive[row["layer"]] if row["kind"] == "hidden" else math.nan
        layers += rows
    [run] = records.load_runs([write_run(tmp_path, config, layers, METRICS, run_id="relu0")]).runs
    figure = plots.saturation([run])
    inactive_axes, saturated_axes = figure.axes[2], figure.axes[4]
    [line] = data_lines(inactive_axes)
    expected = run.layers[(run.layers["step"] == 0) & (run.layers["kind"] == "hidden")].sort_values("layer")["inactive_frac"]
    assert list(line.get_ydata()) == list(expected) == inactive
    assert data_lines(saturated_axes) == [] and [t.get_text() for t in saturated_axes.texts] == ["no saturated_frac recorded"]


@pytest.mark.slow
def test_saved_figures_are_valid_pngs_of_sensible_size(tmp_path):
    runs = make_runs(tmp_path / "runs")
    paths = plots.save_figures(plots.build_figures(records.load_runs([run.dir for run in runs]).runs), tmp_path / "figures")
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


def test_plot_refuses_unreadable_runs(tmp_path, invoke):
    config = resolved_config("broken", depth=2)
    run_dir = write_run(tmp_path, config, layer_rows(0, [1.0, 1.0]), METRICS)
    (run_dir / "metrics.csv").unlink()
    result = invoke("plot", run_dir, "--output", tmp_path / "figures")
    assert result.exit_code == 2 and "no metrics.csv" in result.stderr
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").iterdir())


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


def _inside_canvas(figure) -> list[str]:
    """The texts of the figure (suptitle, legend) that reach beyond the canvas once drawn."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    canvas = figure.bbox
    outside = []
    items = [figure._suptitle] + list(figure.legends)
    for item in items:
        box = item.get_window_extent(renderer)
        if box.x0 < canvas.x0 - 1 or box.x1 > canvas.x1 + 1 or box.y0 < canvas.y0 - 1 or box.y1 > canvas.y1 + 1:
            outside.append(item.get_text() if hasattr(item, "get_text") else "legend")
    return outside


def test_a_single_run_figure_keeps_title_and_legend_on_the_canvas(tmp_path):
    # issue 11: `gradlab run --plot` cut off the subtitle and the legend at both edges
    config = resolved_config("a-long-experiment-name-for-a-single-run", 0, depth=4, model__activation={"name": "leaky_relu", "negative_slope": 0.2},
                             model__norm={"name": "batchnorm", "placement": "post", "momentum": 0.3},
                             model__init={"weight": {"name": "kaiming_normal", "nonlinearity": "leaky_relu", "a": 0.2, "mode": "fan_out"}, "bias": "zeros"})
    write_run(tmp_path, config, layer_rows(0, [1.0, 1.0, 1.0, 1.0]) + layer_rows(10, [1.0, 1.0, 1.0, 1.0]), METRICS)
    for name, figure in plots.build_figures(records.load_runs([tmp_path]).runs).items():
        assert _inside_canvas(figure) == [], name


def test_ten_runs_do_not_squash_the_panels(tmp_path):
    # issue 11: a legend of 10 runs (one entry per line) left the panels a sliver
    for width in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        config = resolved_config("widths", 0, depth=4, model__width=width)
        write_run(tmp_path, config, layer_rows(0, [1.0, 1.0, 1.0, 1.0]) + layer_rows(10, [1.0, 1.0, 1.0, 1.0]), METRICS, run_id=f"w{width}")
    figures = plots.build_figures(records.load_runs([tmp_path]).runs)
    for name in ("depth_profile_delta_norm", "training_curves"):
        figure = figures[name]
        assert _inside_canvas(figure) == [], name
        figure.canvas.draw()
        panel = figure.axes[0].get_window_extent(figure.canvas.get_renderer())
        assert panel.height >= 0.4 * 4.8 * figure.dpi, (name, panel.height)  # at least 40% of the figure's original height
        # the legend lists the widths in numeric order
        legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
        widths = [int(text.split("=")[1]) for text in legend_texts if text.startswith("model.width=")]
        assert widths == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], name


def test_a_diverged_run_ends_with_a_marker_and_the_heatmap_names_its_grey(tmp_path):
    # issue 11: diverged runs just stopped; the heatmap's grey for zero/non-finite was in no legend
    config = resolved_config("blowup", 0, depth=4)
    metrics = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (math.nan, 0.1)}, {0: (2.1, 0.2)})
    write_run(tmp_path, config, layer_rows(0, [1.0, 0.0, 1.0, 1.0]) + layer_rows(5, [1.0, 1.0, 1.0, 1.0]), metrics, status="diverged")
    figures = plots.build_figures(records.load_runs([tmp_path]).runs)
    loss_axes = figures["training_curves"].axes[0]
    [marker] = [line for line in loss_axes.get_lines() if line.get_gid() == plots.DIVERGED_GID]
    assert ([float(x) for x in marker.get_xdata()], [float(y) for y in marker.get_ydata()]) == ([5.0], [1.5])  # the last finite train loss
    legend = [text.get_text() for text in figures["training_curves"].legends[0].get_texts()]
    assert "X: diverged (its last finite value)" in legend
    heatmap_legend = [text.get_text() for text in figures["heatmap_delta_norm"].legends[0].get_texts()]
    assert heatmap_legend == [plots.GAP_LABEL]
    assert figures["heatmap_delta_norm"].axes[0].get_facecolor()[:3] == pytest.approx((0.85, 0.85, 0.85))


def test_a_single_layer_is_drawn_at_whole_layer_numbers(tmp_path):
    # a one-layer stack (a recurrent layer and its head): no fractional layer ticks such as -0.045
    config = resolved_config("one", 0, depth=1)
    [run] = records.load_runs([write_run(tmp_path, config, layer_rows(0, [1.0]) + layer_rows(5, [0.5]), METRICS, run_id="one0")]).runs
    figure = plots.saturation([run])
    figure.canvas.draw()
    for axes in figure.axes:
        assert [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]] == [0.0]
