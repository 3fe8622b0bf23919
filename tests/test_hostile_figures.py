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
