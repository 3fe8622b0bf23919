"""moved: re-export until integration.

What this module held now lives by job: reading runs in `records`, summaries and verdicts in
`summaries`, config differences in `configdiff`, the comparison table in `compare`, rendering in
`display`, the quantities' meanings in `quantities`. The names below are looked up on first use,
so `from gradlab.analysis import PROFILE_QUANTITIES` imports neither pandas nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# moved: re-export until integration  (name -> "module" or "module:new name")
_MOVED = {
    # records
    "Run": "records", "Loaded": "records", "Step": "records", "load_run": "records", "load_runs": "records",
    "discover_runs": "records", "shown_path": "records", "parse_step": "records", "records": "gradlab.records",
    # quantities
    "PROFILE_QUANTITIES": "quantities", "FINAL_QUANTITIES": "quantities", "SUMMARY_QUANTITIES": "quantities",
    # summaries
    "Thresholds": "summaries", "DEFAULT_THRESHOLDS": "summaries", "Verdict": "summaries", "verdict": "summaries",
    "hidden_span": "summaries", "profile_at": "summaries", "run_verdict": "summaries", "final_metrics": "summaries",
    "step_label": "summaries", "column_name": "summaries", "summarize_run": "summaries", "missing_step_notes": "summaries",
    # configdiff
    "COMPONENT_KEYS": "configdiff", "NOT_EXPERIMENTAL": "configdiff", "flatten_config": "configdiff",
    "differing_keys": "configdiff", "format_value": "configdiff", "display_values": "configdiff",
    "describe_run": "configdiff:describe_config",
    # compare
    "OTHER_COLUMNS": "compare", "INTEGER_COLUMNS": "compare", "Comparison": "compare", "compare_runs": "compare",
    "describe_column": "compare", "explain": "compare",
    # display
    "format_number": "display", "display_cells": "display", "to_csv": "display", "to_json": "display",
    "to_markdown": "display", "render": "display", "rich_view": "display", "VERDICT_STYLES": "display",
}  # fmt: skip


def _configs(runs):
    return [run.config for run in runs]


def config_columns(runs):  # moved: re-export until integration (configdiff.config_columns takes configs)
    from gradlab import configdiff

    return configdiff.config_columns(_configs(runs))


def group_by_config(runs):  # moved: re-export until integration (configdiff.group_by_config takes configs)
    from gradlab import configdiff

    return configdiff.group_by_config(_configs(runs))


def run_labels(runs):  # moved: re-export until integration (configdiff.labels takes configs)
    from gradlab import configdiff

    return configdiff.labels(_configs(runs))


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'gradlab.analysis' has no attribute {name!r}")
    target = _MOVED[name]
    if target.startswith("gradlab."):
        return importlib.import_module(target)
    module, _, new_name = target.partition(":")
    return getattr(importlib.import_module(f"gradlab.{module}"), new_name or name)


def __dir__() -> list[str]:
    return sorted([*_MOVED, "config_columns", "group_by_config", "run_labels"])
