"""The tables `gradlab theory` prints: one prediction (its theory, inputs, headline numbers and one
line per block), or a row per combination of a sweep. The numbers are theory.predict's."""

from __future__ import annotations

import math
from typing import Any

from gradlab.theory.predict import SOURCES, STEP_AT_MOST, STEP_EQUALS, Prediction, jacobian_s2

TABLE_KEYS = ("q_star", "chi1", "predicted_factor", "xi_grad", "xi_c", "phase", "layer_factor")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:.6g}"
    return str(value)


def table_lines(prediction: Prediction) -> list[str]:
    """What `gradlab theory CONFIG` prints: the theory and its source, the numbers it started from,
    the predictions ('-' where the theory makes none), then one line per block."""
    p = prediction
    if p.theory == "none":
        return [f"no prediction: {p.reason}", *_jacobian_lines(p), *parametrization_lines(p)]
    lines = [f"theory: {p.theory} ({p.source})"]
    if p.inputs:
        lines.append("from: " + ", ".join(f"{key} = {_text(value)}" for key, value in p.inputs.items()))
    lines += [f"note: {note}" for note in p.notes]
    if p.reason:
        lines.append(f"no gradient prediction: {p.reason}")
    width = max(len(key) for key in (*TABLE_KEYS, *(k for k, v in p.extra.items() if not isinstance(v, (list, tuple)))))
    lines += [f"{key:<{width}}  {_text(getattr(p, key))}" for key in TABLE_KEYS]
    if p.theory == "recurrent":
        verb = {STEP_EQUALS: "equals", STEP_AT_MOST: "is at most"}.get(p.step_relation or "", "")
        relation = f" (the measured step_factor@0 {verb} this)" if verb else ""
        lines.append(f"{'step_factor':<{width}}  {_text(p.step_factor)}{relation}")
    for key, value in p.extra.items():
        if not isinstance(value, (list, tuple)) and not key.startswith("jacobian_"):
            lines.append(f"{key:<{width}}  {_text(value)}")
    if p.theory == "residual":
        # per block: the stream after it (second moment, variance), the stream gradient's factor
        # ||dL/dx_l|| / ||dL/dx_(l+1)|| into it (blocks 1 and up), and delta_norm's factor
        second, variance = p.extra["stream_second_moment"][1:], p.extra["stream_variance"][1:]
        stream_factors = [None, *p.extra["stream_factors"]]
        lines.append(f"{'layer':>5}  {'stream_q':>12}  {'stream_var':>12}  {'stream_factor':>13}  {'factor':>12}")
        for layer in range(len(second)):
            factor = _text(p.layers[layer]) if layer < len(p.layers) else "-"
            lines.append(f"{layer:>5}  {_text(second[layer]):>12}  {_text(variance[layer]):>12}  {_text(stream_factors[layer]):>13}  {factor:>12}")
    elif p.q or p.layers:
        lines.append(f"{'layer':>5}  {'q':>12}  {'factor':>12}")
        for layer in range(max(len(p.q), len(p.layers) + 1)):
            q = _text(p.q[layer]) if layer < len(p.q) else "-"
            factor = _text(p.layers[layer]) if layer < len(p.layers) else "-"
            lines.append(f"{layer:>5}  {q:>12}  {factor:>12}")
    return lines + _gate_lines(p) + _jacobian_lines(p) + parametrization_lines(p)


def _gate_lines(p: Prediction) -> list[str]:
    """lstm and gru: each gate's pre-activation mean and variance and its mean (stationary, and over
    the second half of the config's sequence), the direct-path factor, its timescale and E[h²]."""
    if not p.gates:
        return []
    window = p.gates["over_sequence"]
    first, last = window["steps"]
    lines = [f"gates (mean field, last recurrent layer): stationary, and over t = {first}..{last} from the zero state",
             f"{'gate':<15}  {'preact_mean':>12}  {'preact_var':>12}  {'mean':>12}  {'t>=' + str(first):>12}"]  # fmt: skip
    for gate, values in p.gates["gates"].items():
        lines.append(f"{gate:<15}  {_text(values['preact_mean']):>12}  {_text(values['preact_var']):>12}  {_text(values['mean']):>12}  {_text(window['gates'][gate]):>12}")
    for key in ("direct_factor", "timescale", "h_second_moment"):
        lines.append(f"{key:<15}  {'':>12}  {'':>12}  {_text(p.gates[key]):>12}  {_text(window[key]):>12}")
    return lines


_ROLE_NAMES = {"input": "input (blocks.0)", "hidden": "hidden (blocks.1+)", "output": "output (head)", "vector": "biases, norm", "fixed": "head bias"}


def parametrization_lines(p: Prediction) -> list[str]:
    """model.parametrization ntk or mup: per layer role, the variance its draw gets (against the
    standard one at this width), σw² = fan_in x variance (the head's with its multiplier), the
    multiplier and the learning-rate factor (theory/parametrization.py)."""
    if not p.parametrization:
        return []
    lines = ["parametrization (relative to standard at this width; m = width / base_width):",
             f"{'layer':<20}  {'variance':>12}  {'(standard)':>12}  {'sigma_w2':>10}  {'(standard)':>10}  {'multiplier':>10}  {'lr factor':>9}"]  # fmt: skip
    for row in p.parametrization:
        name = _ROLE_NAMES[row["role"]]
        if "variance" not in row:
            lines.append(f"{name:<20}  {'as drawn':>12}  {'':>12}  {'':>10}  {'':>10}  {'':>10}  {_text(row['lr_factor']):>9}")
            continue
        lines.append(f"{name:<20}  {_text(row['variance']):>12}  {_text(row['variance_standard']):>12}  {_text(row['sigma_w2']):>10}  "
                     f"{_text(row['sigma_w2_standard']):>10}  {_text(row['multiplier']):>10}  {_text(row['lr_factor']):>9}")  # fmt: skip
    return lines


def _jacobian_lines(p: Prediction) -> list[str]:
    """log.jacobian: the input-output Jacobian's m1 and s2 per block (theory/jacobian.py), or why none."""
    if "jacobian_reason" in p.extra:
        return [f"jacobian: no prediction: {p.extra['jacobian_reason']}"]
    if "jacobian_s2" not in p.extra:
        return []
    lines = ["jacobian (free probability, Pennington et al. 2017): J_l = d(block l output) / d(input)",
             f"{'layer':>5}  {'jacobian_m1':>12}  {'jacobian_s2':>12}"]  # fmt: skip
    for layer, (m1, s2) in enumerate(zip(p.extra["jacobian_m1"], p.extra["jacobian_s2"])):
        lines.append(f"{layer:>5}  {_text(m1):>12}  {_text(s2):>12}")
    return lines


SWEEP_KEYS = ("phase", "chi1", "predicted_factor", "layer_factor", "xi_grad", "step_factor")


def sweep_table_lines(named: list[tuple[str, Prediction]]) -> list[str]:
    """What `gradlab theory SWEEP` prints: a row per combination with its theory and the headline
    numbers (the columns some combination has), and the reason where a combination has none;
    `--format json` holds every number of every combination."""
    keys = [key for key in SWEEP_KEYS if any(getattr(p, key) is not None for _, p in named)]
    if any("jacobian_s2" in p.extra for _, p in named):  # log.jacobian: the last block's s2
        keys.append("jacobian_s2")
    if any(p.gates for _, p in named):  # lstm and gru: the gates' direct-path factor and its timescale
        keys += ["direct_factor", "timescale"]
    header = ["combination", "theory", *keys]
    def cell(p: Prediction, key: str) -> str:
        if key == "step_factor" and p.step_factor is not None and p.step_relation == STEP_AT_MOST:
            return f"<= {_text(p.step_factor)}"  # Pascanu's bound: the measurement is at most this
        if key == "jacobian_s2":
            return _text(jacobian_s2(p))
        if key in ("direct_factor", "timescale"):
            return _text(p.gates.get(key))
        return _text(getattr(p, key))

    rows = [[name, p.theory, *(cell(p, key) for key in keys)] for name, p in named]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    sources = dict.fromkeys(p.theory for _, p in named if p.theory != "none")
    lines += [f"{theory}: {SOURCES[theory]}" for theory in sources]
    lines += [f"{name}: no prediction: {p.reason}" for name, p in named if p.theory == "none" or (p.reason and p.theory == "recurrent" and p.step_factor is None)]
    lines += [f"{name}: no jacobian prediction: {p.extra['jacobian_reason']}" for name, p in named if "jacobian_reason" in p.extra]
    lines += [f"{name}: {p.narrow}: mean field is an infinite-width theory, these are the wide-network limit (docs/theory.md, Width)" for name, p in named if p.narrow]
    lines.append("per-layer factors and every other number: --format json")
    return lines
