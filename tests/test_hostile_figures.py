"""Figures and tables for hostile or mixed sets of runs (issue 23, items 8 and 14; issue 24, item 5):
user text drawn as text, never as mathtext; control characters never reach a terminal; legends and
layouts that hold for any mix of runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from run_factory import one_run


def _set_config(run_dir: Path, **values) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for dotted, value in values.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------------------------
# issue 23, item 8: `$...$` in a config value
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dollar_signs_in_config_values_and_names_are_drawn_as_text(tmp_path, invoke_wide):
    out = tmp_path / "results"
    for i, path in enumerate(["a$\\frac{x$.npz", "b$\\x$.npz"]):
        run = one_run(out, [1.0, 0.5, 0.25], name="dollars", run_id=f"00000{i}").dir
        _set_config(run, data__path=path)
    result = invoke_wide("plot", out, "--output", tmp_path / "figures")
    assert result.exit_code == 0, result.output
    assert invoke_wide("report", out, "-o", tmp_path / "r.html").exit_code == 0
    from gradlab.records.run import load_runs
    from gradlab.show import plots

    figures = plots.build_figures(load_runs([out]).runs)
    texts = [t.get_text() for f in figures.values() for t in f.findobj(lambda a: hasattr(a, "get_text"))]
    assert any("a\\$\\frac{x\\$.npz" in t for t in texts), texts  # `$` escaped: drawn as written
    # (gradlab's own mathtext, the log axes' tick labels, is still parsed: no '\\mathdefault' drawn)
    figure = figures["depth_profile_delta_norm"]
    plots.png_bytes(figure)
    ticks = [t for axes in figure.axes for t in axes.get_yticklabels() if t.get_text()]
    assert ticks and all(t.get_parse_math() for t in ticks)


# --------------------------------------------------------------------------------------------
# issue 23, item 14: terminal escape sequences in names and values
# --------------------------------------------------------------------------------------------

ESCAPES = "\x1b]0;PWNED\x07\x1b[31m"


@pytest.mark.slow
def test_escape_sequences_never_reach_a_terminal_or_markdown_but_csv_keeps_them(tmp_path, invoke_wide):
    out = tmp_path / "results"
    for i, path in enumerate([f"a{ESCAPES}.npz", "b.npz"]):
        run = one_run(out, [1.0, 0.5, 0.25], name="escapes", run_id=f"00000{i}").dir
        _set_config(run, data__path=path, **{f"x{ESCAPES}": 1})
    damaged = out / "escapes" / "20240101-000000-000000"
    layers = (damaged / "layers.csv").read_text().splitlines()
    (damaged / "layers.csv").write_text("\n".join([layers[0] + f",col{ESCAPES}"] + [line + ",1" for line in layers[1:]]) + "\n")
    for args in (["compare", out], ["compare", out, "-f", "markdown"], ["check", out], ["plot", out, "-o", tmp_path / "f"]):
        result = invoke_wide(*args)
        assert "Traceback" not in result.output, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output, (args, repr(result.output))
    table = invoke_wide("compare", out).stdout
    assert "\\x1b]0;PWNED\\x07\\x1b[31m" in table  # shown as visible escapes, not swallowed
    csv_text = invoke_wide("compare", out, "-f", "csv").stdout
    assert ESCAPES in csv_text  # csv keeps the bytes (quoted where csv needs it)


def test_printable_escapes_controls_and_bidirectional_overrides():
    from gradlab.vocab.text import printable

    assert printable(ESCAPES) == "\\x1b]0;PWNED\\x07\\x1b[31m"
    assert printable("relu\u202eevil") == "relu\\u202eevil"
    assert printable("tanh\tσ\nb", keep_newlines=False) == "tanh\tσ\\nb"
    assert printable("plain text, µ and ü") == "plain text, µ and ü"


# --------------------------------------------------------------------------------------------
# issue 24, item 5: a mixed set of runs (a gradlab run beside watch runs of other models)
# --------------------------------------------------------------------------------------------


def mixed_runs(out: Path) -> None:
    """One `gradlab run` (a tanh MLP) and two `watch` runs of other models: they differ in ~35 keys."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import gradlab
    from run_factory import real_run

    real_run(out, "gradlab-mlp", {"depth": 4, "activation": "tanh"}, steps=10)
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    models = {
        "watch-mlp": nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)),
        "watch-deep": nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(16, 16), nn.Tanh())], nn.Linear(16, 4)),
    }
    for name, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradlab.watch(model, out=out, every=2, name=name, optimizer=optimizer) as w:
            for _ in range(10):
                optimizer.zero_grad()
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                optimizer.step()
                w.step(loss=loss, accuracy=(logits.argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("mixed")
    mixed_runs(out)
    return out


@pytest.mark.slow
def test_a_mixed_set_is_labelled_by_run_name_with_bounded_legends_and_no_layout_warning(mixed):
    from gradlab.records.run import load_runs
    from gradlab.show import plots

    runs = load_runs([mixed]).runs
    assert len(runs) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied", a missing glyph: errors
        figures = plots.build_figures(runs)
        for figure in figures.values():
            plots.png_bytes(figure)
    for stem, figure in figures.items():
        [legend] = figure.legends or [None]
        if legend is not None:
            texts = [t.get_text() for t in legend.get_texts()]
            assert len(texts) <= plots.MAX_LEGEND_ENTRIES and sum(map(len, texts)) < 400, (stem, texts)
            assert all(len(text) <= plots.MAX_LABEL_CHARS for text in texts), (stem, texts)
            if stem in ("depth_profile_delta_norm", "training_curves"):
                assert {"gradlab-mlp", "watch-mlp", "watch-deep"} <= set(texts), (stem, texts)
        title = figure._suptitle.get_text()
        assert len(title) < 200 and "config keys" in title, (stem, title)
        for axes in figure.axes:
            assert len(axes.get_title()) <= 2 * plots.MAX_LABEL_CHARS, (stem, axes.get_title())


def test_many_configurations_get_a_capped_legend(mixed):
    from gradlab.records.run import load_runs
    from gradlab.show import plots

    runs = load_runs([mixed]).runs
    clones = []  # 18 configurations, told apart by one key
    for i in range(18):
        run = runs[0]
        clone = type(run)(run.dir, {**run.config, "model": {**run.config["model"], "width": 8 + i}}, run.meta, run.layers, run.metrics)
        clones.append(clone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plots.build_figures(clones)["depth_profile_delta_norm"]
        plots.png_bytes(figure)
    texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert len(texts) == plots.MAX_LEGEND_ENTRIES + 1  # 11 configurations, "... and 7 more", theory's line
    assert any(text.startswith("... and 7 more") for text in texts)


def test_markdown_of_a_mixed_set_leaves_the_config_keys_out(mixed, invoke_wide):
    result = invoke_wide("compare", mixed, "-f", "markdown")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0]
    assert header.count("|") - 1 <= 32, header
    assert "config keys, left out here" in result.stdout
    csv_header = invoke_wide("compare", mixed, "-f", "csv").stdout.splitlines()[0]
    assert "model.class" in csv_header  # csv keeps every column


@pytest.mark.slow
@pytest.mark.parametrize("count", [1, 5, 40])
def test_the_heatmap_layout_holds_for_any_count_of_mixed_runs(mixed, count):
    from gradlab.records.run import load_runs
    from gradlab.show import plots

    runs = (load_runs([mixed]).runs * 14)[:count]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        figure = plots.heatmap(runs)
        plots.png_bytes(figure)
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    heights = {round(axes.get_position().height, 3) for axes in panels}
    assert len(heights) == 1 and min(heights) > 0  # every panel the same, none collapsed
    assert all(axes.get_title().count("\n") <= 1 for axes in panels)
