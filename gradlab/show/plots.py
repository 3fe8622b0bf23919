"""Figures from run records: matplotlib with the Agg canvas, pandas data, no torch.

    build_figures(runs)          {file stem: Figure}, nothing written (tests inspect these)
    save_figures(figures, dir)   the PNG paths

Figures are `matplotlib.figure.Figure` objects drawn on an Agg canvas, never pyplot: no GUI
backend is needed or touched (a notebook's backend is left alone), and nothing is kept in
pyplot's global figure list, so drawing many runs does not leak memory.

Runs are labelled by the config values that differ between them (configdiff.labels), not by
directory names. Runs that differ only by seed share a colour and a legend entry.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from gradlab.analysis import configdiff
from gradlab.records.output import output_error, write_output
from gradlab.records.write import is_disk_full
from gradlab.records.run import Run
from gradlab.vocab.errors import RunError
from gradlab.vocab.text import printable

if TYPE_CHECKING:  # pandas is loaded by the records reader, when a table is first read
    import pandas as pd

FIGURES = {
    "depth_profile_delta_norm": "delta_norm (log scale) against hidden layer, at step 0 and at the last step; at step 0 theory's prediction dashed, where one exists",
    "depth_profile_weight_grad_norm": "weight_grad_norm (log scale) against hidden layer, at step 0 and at the last step",
    "heatmap_delta_norm": "log10 delta_norm over hidden layer x step, one panel per run",
    "training_curves": "loss and accuracy against step, train (solid) and test (dashed)",
    "saturation": "dead_frac, inactive_frac and saturated_frac against hidden layer, at step 0 and at the last step",
}
# Drawn where some run has what they show (BatchNorm; the recurrent figures: recurrent runs).
OPTIONAL_FIGURES = {
    "batchnorm": "BatchNorm runs: bn_stat_distance against hidden layer at step 0 and at the last step, and test accuracy against step with running and with batch statistics",
    "noise": "runs with the noise group: grad_noise_scale and gsnr (log scales) against layer, the head last, at one step (plot --step, default the last)",
}

HEATMAP_COLUMNS = 3
GAP_GREY = "0.85"  # a heatmap cell with no log10 value: zero, negative or non-finite
GAP_LABEL = "grey: zero or non-finite (no log10), or not measured"
DIVERGED_GID = "diverged"  # the marker at the end of a diverged run's curves (tests find it by gid)


# Labels for any mix of runs. Runs that differ in at most MAX_LABEL_KEYS config keys are labelled by
# those values (`model.activation=relu`); runs that differ in more (a gradlab run beside watch runs
# differs in ~40) are labelled by their names, and the title says how many keys differ: the full
# differences are compare's and the report's, not the legend's. A label is cut at MAX_LABEL_CHARS,
# a legend lists at most MAX_LEGEND_ENTRIES entries (then "... and N more").
MAX_LABEL_KEYS = 4
MAX_LABEL_CHARS = 80
MAX_LEGEND_ENTRIES = 12
MAX_TITLE_KEYS = 6


def plain(text: object) -> str:
    """User text as matplotlib draws it literally: control characters as visible escapes, and `$`
    escaped, so that a config value such as data.path 'a$\\frac{x$.npz' is never parsed as
    mathtext (whose errors sank plot and report). gradlab's own labels use no mathtext."""
    return printable(text).replace("$", "\\$")


def _cut(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def by_name(runs: Sequence[Run]) -> bool:
    """Whether the runs are labelled by name: they differ in more than MAX_LABEL_KEYS config keys."""
    return len(configdiff.differing_keys([run.config for run in runs])) > MAX_LABEL_KEYS


def run_labels(runs: Sequence[Run]) -> list[str]:
    """A label per run, drawn as text (plain): the config values that differ, or, where the runs
    differ in more than MAX_LABEL_KEYS keys, the run's name (with its id where names repeat)."""
    if by_name(runs):
        names = [str(run.name) for run in runs]
        configs = [run.config for run in runs]
        group_of = {i: g for g, group in enumerate(configdiff.group_by_config(configs)) for i in group}
        first_of_name: dict[str, set[int]] = {}
        for i, name in enumerate(names):
            first_of_name.setdefault(name, set()).add(group_of[i])
        labels = [name if len(first_of_name[name]) == 1 else f"{name} ({run.short_id})" for name, run in zip(names, runs)]
    else:
        labels = configdiff.labels([run.config for run in runs])
    return [plain(_cut(label)) for label in labels]


# legend entries that explain the drawing rather than name a run: never cut
KEY_ENTRIES = ("theory at initialization", "X: diverged", "10-90% of the runs")
LEGEND_CHARS_PER_INCH = 15  # characters of legend text (fontsize small) per inch of figure width
TITLE_CHARS_PER_INCH = 11  # characters of a suptitle line (fontsize large) per inch of figure width
LEGEND_ROW_INCHES = 0.22


def _legend(figure: Figure, extra: Sequence[tuple[object, str]] = ()) -> None:
    """One legend for the figure, below the panels: config labels are long, and inside a panel
    they would hide the lines or squeeze the axes. As many columns as the figure's width holds,
    labels wrapped to it, and the figure made taller by the legend's rows, so that ten runs do not
    squash the panels and no label runs off the canvas."""
    import textwrap

    entries: dict[str, object] = {}
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    keys = {label: handle for label, handle in entries.items() if label.startswith(KEY_ENTRIES)}
    runs = {label: handle for label, handle in entries.items() if label not in keys}
    if len(runs) > MAX_LEGEND_ENTRIES:  # (the report's table lists every run)
        kept = dict(list(runs.items())[: MAX_LEGEND_ENTRIES - 1])
        kept[f"... and {len(runs) - len(kept)} more (gradlab report lists every run)"] = Patch(visible=False)
        entries = {**kept, **keys}
    for handle, label in extra:
        entries.setdefault(label, handle)
    if not entries:
        return
    chars = int(figure.get_figwidth() * LEGEND_CHARS_PER_INCH)
    widest = max(len(label) for label in entries)
    ncols = max(1, min(len(entries), chars // (min(widest, chars) + 6)))
    width = max(20, chars // ncols - 6)
    labels = [textwrap.fill(label, width, break_on_hyphens=False) for label in entries]
    rows = math.ceil(len(labels) / ncols)
    lines = sum(max(label.count("\n") + 1 for label in labels[r::rows]) for r in range(rows)) if rows else 0
    figure.set_figheight(figure.get_figheight() + LEGEND_ROW_INCHES * lines)
    figure.legend(list(entries.values()), labels, loc="outside lower center", fontsize="small", ncols=ncols)


def _suptitle(figure: Figure, text: str) -> None:
    """The figure's title, each line wrapped to the figure's width (a single run's description
    is one long line that ran off both edges)."""
    import textwrap

    chars = int(figure.get_figwidth() * TITLE_CHARS_PER_INCH)
    figure.suptitle("\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n")))


def _integer_ticks() -> MaxNLocator:
    """Ticks at whole numbers only (layers, time steps, steps), even where one value is all there is
    (a single recurrent layer): matplotlib's default falls back to fractions below two integers."""
    return MaxNLocator(integer=True, min_n_ticks=1)


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


class _Legend:
    """One colour and one legend label per configuration; seeds of a configuration share them
    (the figure legend lists each label once)."""

    def __init__(self, runs: Sequence[Run]):
        configs = [run.config for run in runs]
        labels = run_labels(runs)
        self.color: dict[int, str] = {}
        self.label: dict[int, str] = {}
        for number, group in enumerate(configdiff.group_by_config(configs)):
            seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
            for i in group:
                self.color[i] = f"C{number % 10}"
                self.label[i] = labels[i] + seeds


def _title(runs: Sequence[Run], what: str) -> str:
    keys = configdiff.differing_keys([run.config for run in runs])
    if len(keys) > MAX_TITLE_KEYS or by_name(runs):
        return plain(f"{what}\nruns differ in {len(keys)} config keys: labelled by run name (gradlab report lists every difference)")
    if keys:
        return plain(f"{what}\nruns differ in {', '.join(keys)}")
    return plain(f"{what}\n{_cut(configdiff.describe_config(runs[0].config), 2 * MAX_LABEL_CHARS)}")


def _hidden_at(run: Run, step: int, column: str) -> tuple[np.ndarray, np.ndarray]:
    rows = run.layers[(run.layers["step"] == step) & (run.layers["kind"] == "hidden")].sort_values("layer")
    if column not in rows:  # a run recorded before the column existed: nothing to draw
        return rows["layer"].to_numpy(), np.full(len(rows), np.nan)
    return rows["layer"].to_numpy(), rows[column].to_numpy(dtype=float)


def _positive(values: np.ndarray) -> np.ndarray:
    """Values a log axis can show; zero, negative and non-finite become gaps, never fake numbers."""
    values = values.astype(float).copy()
    values[~np.isfinite(values) | (values <= 0)] = np.nan
    return values


def _profile_panels(figure: Figure, runs: Sequence[Run], legend: _Legend, column: str, log: bool, ylabel: str, row=None):
    """Two panels, step 0 and the last step: `column` against hidden layer, one line per run."""
    axes_pair = figure.subplots(1, 2, sharey=True) if row is None else row
    for axes, which in zip(axes_pair, (0, "last")):
        drawn = False
        for i, run in enumerate(runs):
            layers, values = _hidden_at(run, run.resolve_step(which), column)
            values = _positive(values) if log else values
            if np.isnan(values).all():
                continue
            axes.plot(layers, values, marker="o", markersize=3, color=legend.color[i], label=legend.label[i])
            drawn = True
        if log and drawn:
            axes.set_yscale("log")
        if not drawn:
            axes.text(0.5, 0.5, f"no {column} recorded", ha="center", va="center", transform=axes.transAxes)
        last_steps = sorted({run.last_step for run in runs if run.last_step is not None})
        when = "step 0 (initialization)" if which == 0 else (
            f"last step ({last_steps[0]})" if len(last_steps) == 1 else "each run's last step"
        )  # fmt: skip
        axes.set_title(when)
        axes.set_xlabel("hidden layer (0 = nearest the input)")
        axes.xaxis.set_major_locator(_integer_ticks())
        axes.grid(True, which="both", alpha=0.3)
    axes_pair[0].set_ylabel(ylabel)
    return axes_pair


def depth_profile(runs: Sequence[Run], column: str) -> Figure:
    figure = _figure(11, 4.8)
    legend = _Legend(runs)
    axes_pair = _profile_panels(figure, runs, legend, column, log=True, ylabel=f"{column} (log scale)")
    if column == "delta_norm":
        _theory_lines(axes_pair[0], runs, legend)
    _legend(figure)
    _suptitle(figure, _title(runs, f"{column} by layer"))
    return figure


THEORY_GID = "theory"  # the gid of a predicted curve (tests tell them from measured lines by it)


def _theory_lines(axes, runs: Sequence[Run], legend: _Legend) -> None:
    """Theory's delta_norm profile at initialization as a dashed line in each configuration's colour
    (once per configuration), anchored at the measured last hidden layer: delta[l] = last ·
    Π_{k>=l} predicted factor[k] (predict.predicted_profile). Configurations without a prediction
    get none."""
    from gradlab.theory import predict

    drawn: set[str] = set()
    for i, run in enumerate(runs):
        if legend.color[i] in drawn:
            continue
        layers, values = _hidden_at(run, 0, "delta_norm")
        if not len(values) or not np.isfinite(values[-1]) or values[-1] <= 0:
            continue
        profile = predict.predicted_profile(predict.for_config(run.config), values[-1])
        if len(profile) != len(layers):
            continue
        drawn.add(legend.color[i])
        axes.plot(layers, _positive(np.array(profile)), linestyle="--", linewidth=1, color=legend.color[i], gid=THEORY_GID)
    if drawn:  # one grey legend entry for every configuration's dashed line (an empty line: no data)
        axes.plot([], [], linestyle="--", linewidth=1, color="0.4", label="theory at initialization (dashed, in each run's colour)")


def heatmap(runs: Sequence[Run], column: str = "delta_norm") -> Figure:
    """log10 of `column` over (step, hidden layer), one panel per run, on one shared colour scale
    so that panels compare."""
    ncols = min(len(runs), HEATMAP_COLUMNS)
    nrows = math.ceil(len(runs) / ncols)
    figure = _figure(4.2 * ncols + 1.2, 3.4 * nrows + 0.8)
    axes_grid = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    tables = [
        run.layers[run.layers["kind"] == "hidden"].pivot_table(index="layer", columns="step", values=column, aggfunc="last", dropna=False)
        for run in runs
    ]
    mesh = _heatmap_panels(axes_grid, runs, tables, "hidden layer")
    for axes in axes_grid[: len(runs)]:
        axes.yaxis.set_major_locator(_integer_ticks())
    for axes in axes_grid[len(runs) :]:
        axes.remove()
    if mesh is not None:
        figure.colorbar(mesh, ax=axes_grid[: len(runs)].tolist(), label=f"log10 {column}")
    _legend(figure, [(Patch(facecolor=GAP_GREY, edgecolor="0.5"), GAP_LABEL)])
    _suptitle(figure, _title(runs, f"log10 {column} by layer and step"))
    return figure


def _heatmap_panels(axes_grid, runs: Sequence[Run], tables: Sequence["pd.DataFrame"], ylabel: str):
    """One panel per run of log10 of its (row x step) table, on one colour scale shared by every
    panel so that panels compare; cells without a log10 value (zero, negative, non-finite) show
    GAP_GREY. Returns the last mesh drawn (for the colour bar), or None."""
    labels = run_labels(runs) if runs else []
    grids = [
        (table.columns.to_numpy(dtype=float), table.index.to_numpy(dtype=float), np.log10(_positive(table.to_numpy(dtype=float))))
        for table in tables
    ]
    finite = np.concatenate([g[2][np.isfinite(g[2])] for g in grids]) if grids else np.array([])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    mesh = None
    for axes, run, label, (steps, rows, values) in zip(axes_grid, runs, labels, grids):
        if values.size:
            mesh = axes.pcolormesh(_edges(steps), _edges(rows), np.ma.masked_invalid(values), vmin=vmin, vmax=vmax, cmap="viridis", shading="flat")
        seed = f" (seed {run.config.get('seed')})" if len(runs) > 1 and run.config.get("seed") is not None else ""
        axes.set_title(_wrap(label + plain(seed)), fontsize="small")
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.set_facecolor(GAP_GREY)
    return mesh


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around (possibly unevenly spaced) centres, for pcolormesh."""
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    middle = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[centers[0] - (middle[0] - centers[0])], middle, [centers[-1] + (centers[-1] - middle[-1])]])


def _wrap(text: str, width: int = 48) -> str:
    words, lines, line = text.split(", "), [], ""
    for word in words:
        if line and len(line) + len(word) + 2 > width:
            lines.append(line + ",")
            line = word
        else:
            line = f"{line}, {word}" if line else word
    return "\n".join([*lines, line])


def training_curves(runs: Sequence[Run]) -> Figure:
    """Loss and accuracy against step: train solid, test dashed with markers (it is sparser)."""
    figure = _figure(11, 4.8)
    loss_axes, accuracy_axes = figure.subplots(1, 2, sharex=True)
    legend = _Legend(runs)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for i, run in enumerate(runs):
            for split, style in (("train", dict(linestyle="-")), ("test", dict(linestyle="--", marker="o", markersize=3))):
                rows = run.metrics[run.metrics["split"] == split].sort_values("step")
                if rows.empty:
                    continue
                label = legend.label[i] if split == "train" else "_"  # the dashes say test
                axes.plot(rows["step"], rows[metric], color=legend.color[i], label=label, **style)
                if run.status == "diverged" and split == "train":
                    _mark_divergence(axes, rows, metric, legend.color[i])
        axes.set_xlabel("step")
        axes.set_ylabel(metric)
        axes.grid(True, alpha=0.3)
    _label_training_axes(loss_axes, accuracy_axes, np.concatenate([run.metrics["loss"].to_numpy(dtype=float) for run in runs]))
    _legend(figure)
    _suptitle(figure, _title(runs, "training curves"))
    return figure


def _label_training_axes(loss_axes, accuracy_axes, losses: np.ndarray) -> None:
    """Titles, and a log scale for the loss where every finite loss drawn is positive."""
    losses = losses[np.isfinite(losses)]
    if losses.size and (losses > 0).all():
        loss_axes.set_yscale("log")
        loss_axes.set_ylabel("loss (log scale)")
    loss_axes.set_title("loss: train solid, test dashed")
    accuracy_axes.set_title("accuracy: train solid, test dashed")


def _mark_divergence(axes, rows, metric: str, color: str) -> None:
    """A cross where a diverged run's curve ends (its last finite value): the line does not just stop."""
    finite = rows[np.isfinite(rows[metric].to_numpy(dtype=float))]
    if finite.empty:
        return
    last = finite.iloc[-1]
    axes.plot([last["step"]], [last[metric]], marker="X", markersize=10, markeredgecolor="black", color=color, linestyle="none",
              gid=DIVERGED_GID, label="X: diverged (its last finite value)")  # fmt: skip


# Units through which the gradient does not pass, per activation family (docs/records.md):
# dead units (no example), inactive pairs (the ReLU family's zero side), saturated pairs (flat tails)
SATURATION_ROWS = ("dead_frac", "inactive_frac", "saturated_frac")


def has_batchnorm(runs: Sequence[Run]) -> bool:
    """Whether some run measured bn_stat_distance (BatchNorm): the batchnorm figure is drawn then."""
    return any("bn_stat_distance" in run.layers and run.layers["bn_stat_distance"].notna().any() for run in runs)


def batchnorm(runs: Sequence[Run]) -> Figure:
    """BatchNorm's train/test gap: bn_stat_distance per hidden layer at step 0 and the last step (how
    far the batch statistics are from the running ones), and test accuracy against step with the
    running statistics (solid) and, where log.test_batch_stats was on, each batch's own (dashed)."""
    figure = _figure(15, 4.8)
    axes = figure.subplots(1, 3)
    legend = _Legend(runs)
    _profile_panels(figure, runs, legend, "bn_stat_distance", log=False, ylabel="bn_stat_distance", row=axes[:2])
    accuracy_axes = axes[2]
    for i, run in enumerate(runs):
        for split, style in (("test", dict(linestyle="-", marker="o", markersize=3)), ("test_batch_stats", dict(linestyle="--", marker="s", markersize=3))):
            rows = run.metrics[run.metrics["split"] == split].sort_values("step")
            if not rows.empty:
                accuracy_axes.plot(rows["step"], rows["accuracy"], color=legend.color[i], label=legend.label[i] if split == "test" else "_", **style)
    accuracy_axes.set_title("test accuracy: running statistics solid,\nbatch statistics dashed (log.test_batch_stats)", fontsize="medium")
    accuracy_axes.set_xlabel("step")
    accuracy_axes.set_ylabel("test accuracy")
    accuracy_axes.grid(True, alpha=0.3)
    _legend(figure)
    _suptitle(figure, _title(runs, "BatchNorm: batch statistics against running statistics"))
    return figure


def has_noise(runs: Sequence[Run]) -> bool:
    """Whether some run measured the noise group: the noise figure is drawn then."""
    return any("gsnr" in run.layers and run.layers["gsnr"].notna().any() for run in runs)


def noise(runs: Sequence[Run], step: int | str = "last") -> Figure:
    """The noise group at one step: grad_noise_scale (left) and gsnr (right) against layer, every
    layer with a weight, the head last, one line per run; log scales (both are ratios that span
    decades between layers), a gap where a cell is empty."""
    figure = _figure(11, 4.8)
    axes_pair = figure.subplots(1, 2)
    legend = _Legend(runs)
    steps = set()
    for axes, column in zip(axes_pair, ("grad_noise_scale", "gsnr")):
        drawn = False
        for i, run in enumerate(runs):
            target = run.resolve_step(step)
            rows = run.layers[run.layers["step"] == target].sort_values("layer") if target is not None else run.layers.iloc[:0]
            if column not in rows or rows.empty:
                continue
            values = _positive(rows[column].to_numpy(dtype=float))
            if np.isnan(values).all():
                continue
            steps.add(target)
            axes.plot(rows["layer"].to_numpy(), values, marker="o", markersize=3, color=legend.color[i], label=legend.label[i])
            drawn = True
        if drawn:
            axes.set_yscale("log")
        else:
            axes.text(0.5, 0.5, f"no {column} recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel("layer (0 = nearest the input, the head last)")
        axes.xaxis.set_major_locator(_integer_ticks())
        axes.grid(True, which="both", alpha=0.3)
    axes_pair[0].set_ylabel("grad_noise_scale B_simple (log scale)")
    axes_pair[1].set_ylabel("gsnr (log scale)")
    axes_pair[1].axhline(1.0, color="0.4", linestyle=":", linewidth=1)  # gsnr 1: signal and noise alike
    when = f"step {steps.pop()}" if len(steps) == 1 else ("each run's last step" if step == "last" else f"step {step}")
    _legend(figure)
    _suptitle(figure, _title(runs, f"gradient noise by layer at {when}"))
    return figure


def has_jacobian(runs: Sequence[Run]) -> bool:
    """Whether some run measured log.jacobian: the Jacobian figure is drawn then."""
    return any(run.jacobian is not None and len(run.jacobian) for run in runs)


def _jacobian_families(runs: Sequence[Run]) -> list[list[int]]:
    """The runs grouped by their config without model.depth (and seed): one family per line
    against depth, a sweep over depth drawn as one curve."""
    def without_depth(config: dict) -> dict:
        model = config.get("model")
        return {**config, "model": {**model, "depth": 0}} if isinstance(model, dict) else config

    return configdiff.group_by_config([without_depth(run.config) for run in runs])


def jacobian(runs: Sequence[Run]) -> Figure:
    """The input-output Jacobian (jacobian.csv) against depth L = block + 1: s2 of the last hidden
    block of each run (left; a sweep over model.depth is one curve per configuration) and m1 of every
    block (right, log scale); step 0 solid, the last step dotted, free probability's prediction at
    initialization dashed (theory/jacobian.py), one colour per configuration apart from its depth."""
    from gradlab.theory import predict

    figure = _figure(11, 4.8)
    s2_axes, m1_axes = figure.subplots(1, 2)
    families = _jacobian_families(runs)
    labels = configdiff.labels([{**run.config, "model": {**run.config["model"], "depth": 0}} for run in runs]) if len(families) > 1 else ["" for _ in runs]
    for number, family in enumerate(families):
        color = f"C{number % 10}"
        members = sorted((runs[i] for i in family if runs[i].jacobian is not None), key=lambda run: run.config["model"]["depth"])
        if not members:
            continue
        for step, style, marker in ((0, "-", "o"), ("last", ":", "x")):
            depths, s2s = [], []
            for run in members:
                table = run.jacobian[run.jacobian["step"] == run.resolve_step(step)].sort_values("layer")
                if table.empty:
                    continue
                m1_axes.plot(table["layer"].to_numpy() + 1, _positive(table["m1"].to_numpy(dtype=float)), linestyle=style, marker=marker,
                             markersize=3, linewidth=1, color=color)  # fmt: skip
                last = table[table["s2"].notna()]
                if len(last):
                    depths.append(int(last["layer"].iloc[-1]) + 1)
                    s2s.append(float(last["s2"].iloc[-1]))
            s2_axes.plot(depths, s2s, linestyle=style, marker=marker, markersize=4, color=color,
                         label=(labels[family[0]] or "measured") if step == 0 else None)  # fmt: skip
        prediction = predict.for_config(members[-1].config)  # the deepest member: its blocks cover every depth
        for axes, key in ((s2_axes, "jacobian_s2"), (m1_axes, "jacobian_m1")):
            values = prediction.extra.get(key)
            if values:
                axes.plot(np.arange(1, len(values) + 1), np.asarray(values, dtype=float) if key == "jacobian_s2" else _positive(np.asarray(values, dtype=float)),
                          linestyle="--", linewidth=1, color=color, gid=THEORY_GID)  # fmt: skip
    for label, style, marker in (("step 0 (solid)", "-", "o"), ("last step (dotted)", ":", "x"), ("theory at initialization (dashed)", "--", "")):
        s2_axes.plot([], [], linestyle=style, marker=marker or None, color="0.4", label=label)
    s2_axes.set_ylabel("s2 = m2 / m1^2 - 1 of the last block")
    m1_axes.set_ylabel("m1 = tr(J^T J) / n_in (log scale)")
    if any(line.get_xydata().size for line in m1_axes.get_lines()):
        m1_axes.set_yscale("log")
    for axes in (s2_axes, m1_axes):
        axes.set_xlabel("depth L (blocks from the input)")
        axes.xaxis.set_major_locator(_integer_ticks())
        axes.grid(True, which="both", alpha=0.3)
    _legend(figure)
    _suptitle(figure, _title(runs, "input-output Jacobian: the spread s2 and the mean m1 of its squared singular values"))
    return figure


def saturation(runs: Sequence[Run]) -> Figure:
    """dead_frac, inactive_frac and saturated_frac (top to bottom) per hidden layer, at step 0 and
    the last step: a ReLU run's blocked units show in the second row, a sigmoid run's in the third."""
    figure = _figure(11, 11)
    grid = figure.subplots(len(SATURATION_ROWS), 2, sharex=True, sharey=True)
    legend = _Legend(runs)
    for row, column in zip(grid, SATURATION_ROWS):
        _profile_panels(figure, runs, legend, column, log=False, ylabel=column, row=row)
    grid[0][0].set_ylim(-0.03, 1.03)
    _legend(figure)
    _suptitle(figure, _title(runs, "dead, inactive and saturated units by layer"))
    return figure


# --------------------------------------------------------------------------------------------
# Many runs: the distribution over runs instead of a line (or a panel) per run
# --------------------------------------------------------------------------------------------

MAX_RUNS_DRAWN = 40  # more runs than this: each figure draws their median and 10-90% band


def _aggregate_note(runs: Sequence[Run]) -> str:
    return f"{len(runs)} runs, too many to draw one by one: the median over the runs (line) and 10-90% of them (band)"


STACKED = ("delta_norm", "weight_grad_norm", *SATURATION_ROWS)


def _stacked(runs: Sequence[Run]) -> "pd.DataFrame":
    """The hidden layers' rows of every run in one table (step, layer, the plotted columns, and
    `last`: the run's last step), built column by column: filtering a thousand small tables one
    by one costs seconds each time."""
    import pandas as pd

    parts = [run.layers for run in runs]
    lengths = [len(part) for part in parts]
    def column_of(part: "pd.DataFrame", column: str) -> np.ndarray:  # (a run recorded before the column existed: gaps)
        return part[column].to_numpy() if column in part else np.full(len(part), np.nan)

    data = {column: np.concatenate([column_of(part, column) for part in parts]) if parts else np.array([]) for column in ("step", "layer", "kind", *STACKED)}
    data["last"] = np.repeat([-1 if run.last_step is None else run.last_step for run in runs], lengths)
    table = pd.DataFrame(data)
    return table[table["kind"] == "hidden"]


def _hidden_rows(stack: "pd.DataFrame", step=None) -> "pd.DataFrame":
    """The stacked rows at each run's `step` (0 or 'last'; every step when None)."""
    if step is None:
        return stack
    return stack[stack["step"] == (stack["last"] if step == "last" else step)]


def _band(axes, grouped, x_label: str, color: str = "C0", label: str = "median of the runs", **style) -> bool:
    """Median line and 10-90% band of `grouped` (a pandas SeriesGroupBy keyed by x); whether drawn."""
    quantiles = grouped.quantile([0.1, 0.5, 0.9]).unstack()
    quantiles = quantiles.dropna(how="all")
    if quantiles.empty:
        return False
    x = quantiles.index.to_numpy(dtype=float)
    axes.fill_between(x, quantiles[0.1].to_numpy(dtype=float), quantiles[0.9].to_numpy(dtype=float), color=color, alpha=0.25, linewidth=0, label=f"10-90% of the runs{'' if label == 'median of the runs' else ' (' + label + ')'}")
    axes.plot(x, quantiles[0.5].to_numpy(dtype=float), color=color, label=label, **style)
    axes.set_xlabel(x_label)
    return True


def _aggregated_profile_panels(stack, column: str, log: bool, ylabel: str, axes_pair) -> None:
    for axes, which in zip(axes_pair, (0, "last")):
        rows = _hidden_rows(stack, which)
        values = rows[column].to_numpy(dtype=float)
        rows = rows.assign(**{column: _positive(values) if log else values})
        drawn = _band(axes, rows.groupby("layer")[column], "hidden layer (0 = nearest the input)", marker="o", markersize=3)
        if log and drawn:
            axes.set_yscale("log")
        if not drawn:
            axes.text(0.5, 0.5, f"no {column} recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_title("step 0 (initialization)" if which == 0 else "each run's last step")
        axes.xaxis.set_major_locator(_integer_ticks())
        axes.grid(True, which="both", alpha=0.3)
    axes_pair[0].set_ylabel(ylabel)


def aggregated_depth_profile(runs: Sequence[Run], column: str, stack=None) -> Figure:
    figure = _figure(11, 4.8)
    _aggregated_profile_panels(_stacked(runs) if stack is None else stack, column, True, f"{column} (log scale)", figure.subplots(1, 2, sharey=True))
    _legend(figure)
    figure.suptitle(f"{column} by layer\n{_aggregate_note(runs)}")
    return figure


def aggregated_heatmap(runs: Sequence[Run], column: str = "delta_norm", stack=None) -> Figure:
    """The median over runs of log10 `column` on (hidden layer, step): one panel instead of one per run."""
    figure = _figure(7, 4.6)
    axes = figure.subplots()
    rows = _stacked(runs) if stack is None else stack
    rows = rows.assign(value=np.log10(_positive(rows[column].to_numpy(dtype=float))))
    table = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="median", dropna=False)
    if table.size:
        mesh = axes.pcolormesh(_edges(table.columns.to_numpy(dtype=float)), _edges(table.index.to_numpy(dtype=float)), np.ma.masked_invalid(table.to_numpy(dtype=float)), cmap="viridis", shading="flat")
        figure.colorbar(mesh, ax=axes, label=f"median over runs of log10 {column}")
    axes.set_xlabel("step")
    axes.set_ylabel("hidden layer")
    axes.yaxis.set_major_locator(_integer_ticks())
    axes.set_facecolor("0.85")
    figure.suptitle(f"log10 {column} by layer and step\n{len(runs)} runs, too many for a panel each: the median over the runs")
    return figure


def aggregated_training_curves(runs: Sequence[Run]) -> Figure:
    import pandas as pd

    figure = _figure(11, 4.8)
    loss_axes, accuracy_axes = figure.subplots(1, 2, sharex=True)
    metrics = pd.concat([run.metrics for run in runs], ignore_index=True)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for split, color, style in (("train", "C0", {"linestyle": "-"}), ("test", "C1", {"linestyle": "--"})):
            rows = metrics[metrics["split"] == split]
            _band(axes, rows.groupby("step")[metric], "step", color=color, label=f"{split}: median of the runs", **style)
        axes.set_ylabel(metric)
        axes.grid(True, alpha=0.3)
    _label_training_axes(loss_axes, accuracy_axes, metrics["loss"].to_numpy(dtype=float))
    _legend(figure)
    figure.suptitle(f"training curves\n{_aggregate_note(runs)}")
    return figure


def aggregated_saturation(runs: Sequence[Run], stack=None) -> Figure:
    figure = _figure(11, 11)
    grid = figure.subplots(len(SATURATION_ROWS), 2, sharex=True, sharey=True)
    stack = _stacked(runs) if stack is None else stack
    for row, column in zip(grid, SATURATION_ROWS):
        _aggregated_profile_panels(stack, column, False, column, row)
    grid[0][0].set_ylim(-0.03, 1.03)
    _legend(figure)
    figure.suptitle(f"dead, inactive and saturated units by layer\n{_aggregate_note(runs)}")
    return figure


# --------------------------------------------------------------------------------------------
# Along time: recurrent runs (timesteps.csv)
# --------------------------------------------------------------------------------------------

def _time_rows(run: Run):
    """The last recurrent layer's rows of timesteps.csv (None for a feed-forward run)."""
    timesteps = run.timesteps
    if timesteps is None or timesteps.empty:
        return None
    return timesteps[timesteps["layer"] == timesteps["layer"].max()]


def time_profile(runs: Sequence[Run], column: str = "hidden_delta_norm") -> Figure:
    """`column` against t, one line per recurrent run, at step 0 and at the last step: the figure
    of Hochreiter (1991) and Pascanu et al. (2013), the gradient reaching ever earlier inputs."""
    figure = _figure(11, 4.8)
    legend = _Legend(runs)
    axes_pair = figure.subplots(1, 2, sharey=True)
    for axes, which in zip(axes_pair, (0, "last")):
        drawn = False
        for i, run in enumerate(runs):
            rows = _time_rows(run)
            step = run.resolve_step(which)
            if rows is None or step is None:
                continue
            at = rows[rows["step"] == step].sort_values("t")
            values = _positive(at[column].to_numpy(dtype=float))
            if np.isnan(values).all():
                continue
            axes.plot(at["t"].to_numpy(), values, color=legend.color[i], label=legend.label[i])
            drawn = True
        if drawn:
            axes.set_yscale("log")
        else:
            axes.text(0.5, 0.5, f"no {column} recorded", ha="center", va="center", transform=axes.transAxes)
        last_steps = sorted({run.last_step for run in runs if run.last_step is not None})
        axes.set_title("step 0 (initialization)" if which == 0 else (f"last step ({last_steps[0]})" if len(last_steps) == 1 else "each run's last step"))
        axes.set_xlabel("time step t (0 = first input)")
        axes.xaxis.set_major_locator(_integer_ticks())
        axes.grid(True, which="both", alpha=0.3)
    axes_pair[0].set_ylabel(f"{column} (log scale)")
    _legend(figure)
    figure.suptitle(_title(runs, f"{column} through time (last recurrent layer)"))
    return figure


def time_heatmap(runs: Sequence[Run], column: str = "hidden_delta_norm") -> Figure:
    """log10 of `column` over (training step, time step t) of the last recurrent layer, one panel per
    recurrent run, on one shared colour scale."""
    runs = [run for run in runs if _time_rows(run) is not None]
    ncols = max(1, min(len(runs), HEATMAP_COLUMNS))
    nrows = max(1, math.ceil(len(runs) / ncols))
    figure = _figure(4.2 * ncols + 1.2, 3.4 * nrows + 0.8)
    axes_grid = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    tables = [_time_rows(run).pivot_table(index="t", columns="step", values=column, aggfunc="last", dropna=False) for run in runs]
    mesh = _heatmap_panels(axes_grid, runs, tables, "time step t")
    for axes in axes_grid[len(runs) :]:
        axes.remove()
    if mesh is not None:
        figure.colorbar(mesh, ax=axes_grid[: len(runs)].tolist(), label=f"log10 {column}")
    figure.suptitle(_title(runs, f"log10 {column} by time step and training step") if runs else "no recurrent runs")
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes (drawn in memory: written whole or not at all by the caller)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def build_figures(runs: Sequence[Run], step: int | str = "last") -> dict[str, Figure]:
    """Every figure of FIGURES for `runs` (drawn, not written), and those of OPTIONAL_FIGURES that
    some run has data for (`step`: the noise figure's). More than MAX_RUNS_DRAWN runs are drawn as
    their distribution (median and 10-90% band, one median heatmap), as each figure says: a
    thousand lines (or panels) show nothing and take minutes to draw."""
    if not runs:
        raise RunError("no runs to plot")
    if len(runs) > MAX_RUNS_DRAWN:
        stack = _stacked(runs)
        return {
            "depth_profile_delta_norm": aggregated_depth_profile(runs, "delta_norm", stack),
            "depth_profile_weight_grad_norm": aggregated_depth_profile(runs, "weight_grad_norm", stack),
            "heatmap_delta_norm": aggregated_heatmap(runs, "delta_norm", stack),
            "training_curves": aggregated_training_curves(runs),
            "saturation": aggregated_saturation(runs, stack),
        }
    # configurations in the order of their values (numbers numerically): the legends follow it
    runs = [runs[i] for group in configdiff.group_by_config([run.config for run in runs]) for i in group]
    return {
        "depth_profile_delta_norm": depth_profile(runs, "delta_norm"),
        "depth_profile_weight_grad_norm": depth_profile(runs, "weight_grad_norm"),
        "heatmap_delta_norm": heatmap(runs, "delta_norm"),
        "training_curves": training_curves(runs),
        "saturation": saturation(runs),
        **({"batchnorm": batchnorm(runs)} if has_batchnorm(runs) else {}),  # BatchNorm runs: train/test statistics
        **({"noise": noise(runs, step)} if has_noise(runs) else {}),  # runs with the noise group
        **({"jacobian": jacobian(runs)} if has_jacobian(runs) else {}),  # runs with log.jacobian
        **({  # recurrent runs: the gradient along time
            "time_profile_hidden_delta_norm": time_profile(runs),
            "heatmap_time_hidden_delta_norm": time_heatmap(runs),
        } if any(_time_rows(run) is not None for run in runs) else {}),
    }


def save_figures(figures: dict[str, Figure], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise output_error(exc, out_dir, "--output") from None
        raise RunError(f"--output: cannot create {str(out_dir)!r}: {exc.strerror}") from None
    paths = []
    for stem, figure in figures.items():
        path = out_dir / f"{stem}.png"
        # drawn in memory, then written whole or not at all: a full disk is one line, never a 0-byte PNG
        write_output(path, png_bytes(figure), "--output")
        paths.append(path)
    return paths


def coordcheck(coords: "pd.DataFrame", quantity: str = "act_l1", variant: str = "") -> Figure:
    """The coordinate check of one variant, as microsoft/mup's plot_coord_data draws it: one panel
    per step, width on a log2 axis, `quantity` (its mean over the seeds) on a log axis, one line per
    layer; flat lines are width-stable."""
    rows = coords[coords["variant"] == variant]
    steps = sorted(rows["step"].unique())
    figure = _figure(3.2 * max(1, len(steps)), 3.4)
    axes_row = figure.subplots(1, max(1, len(steps)), sharey=True, squeeze=False)[0]
    means = rows.groupby(["step", "layer", "name", "width"])[quantity].mean().reset_index()
    for axes, step in zip(axes_row, steps):
        at = means[means["step"] == step]
        for number, (name, line) in enumerate(at.sort_values("layer").groupby("layer", sort=True)):
            axes.plot(line["width"], _positive(line[quantity].to_numpy(dtype=float)), marker="o", color=f"C{number % 10}",
                      label=plain(line["name"].iloc[0]))  # fmt: skip
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_title(f"step {step}")
        axes.set_xlabel("width")
    axes_row[0].set_ylabel(f"{quantity} (mean over seeds)")
    handles, labels = axes_row[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", title="layer")
    _suptitle(figure, "coordinate check" + (f": {plain(variant)}" if variant else ""))
    return figure


def coordcheck_figures(coords: "pd.DataFrame", quantity: str = "act_l1") -> dict[str, Figure]:
    """{file stem: figure}: `coordcheck` alone, or one `coordcheck-<values>` per variant (the values
    of the config's own sweep axes, as a file name)."""
    import re

    variants = list(dict.fromkeys(coords["variant"]))
    if len(variants) == 1:
        return {"coordcheck": coordcheck(coords, quantity, variants[0])}
    stems = {}
    for variant in variants:
        values = ",".join(part.split("=", 1)[-1] for part in variant.split(", "))
        stems["coordcheck-" + re.sub(r"[^A-Za-z0-9._,=-]+", "_", values)[:80]] = coordcheck(coords, quantity, variant)
    return stems
