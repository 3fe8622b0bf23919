"""Config values in one line: how a value is written (`flow`) and when two values are the same
(`canonical`). The sweep's folder names, index and error lines, the claims, and the config
differences of `gradlab compare` all write and compare values this way."""

from __future__ import annotations

import json
from typing import Any

import yaml


def flow(value: Any) -> str:
    """A value as a one-line YAML flow (`{name: batchnorm, placement: post}`, `[weights]`, `0.1`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    if text.endswith("\n..."):  # a plain scalar ends its document explicitly
        text = text[: -len("\n...")].strip()
    return text


def canonical(value: Any) -> str:
    """A text equal for equal values (mappings in any key order)."""
    return json.dumps(value, sort_keys=True, default=str)
