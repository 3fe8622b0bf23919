"""A combination's name: the run directory's (`activation=relu,norm=batchnorm,seed=1`) and how
error lines and listings name its values."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Sequence

from gradlab.analysis.configdiff import short_keys
from gradlab.vocab.values import flow

MAX_NAME = 200  # characters of a run directory's name (file systems allow 255 bytes)


def axis_labels(keys: Sequence[str]) -> dict[str, str]:
    """The shortest trailing part of each axis key that tells the axes apart (configdiff.short_keys)."""
    return short_keys(keys)


def _safe(text: str) -> str:
    """Letters, digits and . _ + - only; anything else becomes _ (no / or spaces in a folder name)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_"


def render_value(value: Any) -> str:
    """A value as a compact, file-system-safe part of a folder name:
    relu, 30, 0.001, batchnorm(placement=post), (weight=orthogonal,bias=zeros), [weights+deltas]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _safe(repr(value))
    if isinstance(value, str):
        return _safe(value)
    if isinstance(value, dict):
        args = ",".join(f"{_safe(str(k))}={render_value(v)}" for k, v in value.items() if k != "name")
        name = render_value(value["name"]) if "name" in value else ""
        return f"{name}({args})" if args or not name else name
    if isinstance(value, (list, tuple)):
        return "[" + "+".join(render_value(v) for v in value) + "]"
    return _safe(str(value))


def run_name(values: dict[str, Any], labels: dict[str, str]) -> str:
    """`activation=relu,norm=batchnorm,seed=1`; cut with a hash when it would be too long."""
    name = ",".join(f"{_safe(labels[key])}={render_value(value)}" for key, value in values.items()) or "run"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 10]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def describe_values(values: dict[str, Any]) -> str:
    """`model.norm=groupnorm, model.width=30`: how error lines and listings name a combination."""
    return ", ".join(f"{key}={flow(value)}" for key, value in values.items())
