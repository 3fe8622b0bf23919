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
    assert any("a$\\frac{x$.npz" in t for t in texts), texts  # drawn as written


# --------------------------------------------------------------------------------------------
# issue 23, item 14: terminal escape sequences in names and values
# --------------------------------------------------------------------------------------------

ESCAPES = "\x1b]0;PWNED\x07\x1b[31m"


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
