"""`make papers`: run every config in configs/papers/ (each a published result about gradients at
initialization) and print one table: paper, quantity, published, predicted, measured, held.

Each config states in its header comment `# paper:`, `# where:` (figure or equation), `# quantity:`
(what the table shows, below), `# published:` and what gradlab measured; its `expect:` section is
what must hold, and `held` says whether it did (exit code 1 when one did not). A config whose data
is missing (MNIST under ../shared/data/mnist) is skipped with a line saying so. Sweep configs give
one row per member. Runs go to a temporary folder and are deleted.

    quantity                 predicted (gradlab.theory.predict)         measured (the run's records at step 0)
    layer_factor             layer_factor of the prediction      layer_factor@0 = (first/last delta_norm)^(1/(depth-1))
    bias_speeds              (none: file data)                   bias_grad_norm of each hidden layer, input side first
    stream_variance_growth   stream variance last/first block    act_std^2 of the last block / of the first
    step_factor              step_factor: = lambda or <= bound   step_factor@0 = (delta_norm(t=0)/delta_norm(t=T-1))^(1/(T-1))
                             (Pascanu's gamma*lambda_1)          on the last recurrent layer (timesteps.csv)
    s2                       jacobian_s2 of the last block       s2@0 of the last hidden block (jacobian.csv: m2 / m1^2 - 1
                             (free probability)                  of the input-output Jacobian's squared singular values)
    coordcheck               width-stable under mup              gradlab coordcheck at widths 64-1024, 2 seeds: each variant's
                                                                 act_l1 slopes against width at steps 1 on (its expect.coordcheck)

Run with one thread per process: OMP_NUM_THREADS=1 python tools/papers.py
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPERS = ROOT / "configs" / "papers"
KEYS = ("paper", "where", "quantity", "published")


def metadata(path: Path) -> dict[str, str]:
    """The `# key: value` lines of a config's header (a value may continue on lines '#   ...')."""
    meta: dict[str, str] = {}
    key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*(paper|where|quantity|published|measured here)\s*(\([^)]*\))?:\s*(.*)", line)
        if match:  # 'measured here (width 512, step 0): ...' keeps its parenthesis in the value
            key = match.group(1)
            meta[key] = " ".join(part for part in (match.group(2), match.group(3).strip()) if part)
        elif key and line.startswith("#   "):
            meta[key] += " " + line[1:].strip()
        else:
            key = None
    return meta


def _hidden(run, column):
    layers = run.layers[(run.layers["step"] == 0) & (run.layers["kind"] == "hidden")].sort_values("layer")
    return layers[column].to_numpy(dtype=float)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def measure(quantity: str, exp, run) -> tuple[str, str]:
    """(predicted, measured) as text, for the table."""
    from gradlab.theory.predict import predict
    from gradlab.analysis.summaries import profile_at

    prediction = predict(exp, correlations=False)
    if quantity == "layer_factor":
        predicted = _number(prediction.layer_factor) if prediction.layer_factor is not None else f"none ({prediction.reason[:40]}...)"
        if prediction.chi1 is not None:
            predicted += f" (chi1 {prediction.chi1:.4g})"
        return predicted, _number(profile_at(run, 0)["layer_factor"])
    if quantity == "bias_speeds":
        speeds = _hidden(run, "bias_grad_norm")
        ratios = ", ".join(f"{a / b:.2g}" for a, b in zip(speeds[:-1], speeds[1:]))
        return "none (file data)", ", ".join(f"{v:.3g}" for v in speeds) + f" (ratios {ratios})"
    if quantity == "stream_variance_growth":
        variance = _hidden(run, "act_std") ** 2
        blocks = len(variance) - 1
        measured = variance[-1] / variance[0]
        predicted_variance = prediction.extra.get("stream_variance", [])
        if len(predicted_variance) < 2:
            return "-", f"{measured:.4g}"
        predicted = predicted_variance[-1] / predicted_variance[1]
        return f"{predicted:.4g} (x{predicted ** (1 / blocks):.3g}/block)", f"{measured:.4g} (x{measured ** (1 / blocks):.3g}/block)"
    if quantity == "step_factor":
        from gradlab.theory.predict import STEP_AT_MOST
        from gradlab.analysis.summaries import time_profile_at

        if prediction.step_factor is None:
            predicted = f"none ({prediction.reason[:40]}...)"
        else:
            predicted = ("<= " if prediction.step_relation == STEP_AT_MOST else "") + _number(prediction.step_factor)
        return predicted, f"{time_profile_at(run, 0)['step_factor']:.7g}"
    if quantity == "s2":
        from gradlab.analysis.summaries import jacobian_s2_at
        from gradlab.theory.predict import jacobian_s2

        predicted = jacobian_s2(prediction)
        text = _number(predicted) if predicted is not None else f"none ({prediction.extra.get('jacobian_reason', '')[:40]}...)"
        return text, _number(jacobian_s2_at(run, 0))
    raise ValueError(f"{quantity}: unknown quantity in a paper config; known: layer_factor, bias_speeds, stream_variance_growth, step_factor, s2")


def experiments(path: Path, out: str) -> list[tuple[str, object]]:
    """(member label, Experiment) for a config, its sweep expanded; runs written under `out`."""
    from gradlab.config.experiment import validate
    from gradlab.config.load import read_yaml
    from gradlab.orchestrate.sweep_axes import has_sweep
    from gradlab.orchestrate.sweep_plan import plan_sweep
    from gradlab.vocab.values import flow

    raw = read_yaml(path)
    raw.setdefault("log", {})["out"] = out
    if not has_sweep(raw):
        return [("", validate(raw))]
    plan = plan_sweep(raw)
    return [(", ".join(f"{key}={flow(value)}" for key, value in m.values.items() if key != "seed"), validate(m.config))
            for m in plan.members]  # fmt: skip


COORDCHECK_WIDTHS = (64, 128, 256, 512, 1024)
COORDCHECK_SEEDS = 2


def coordcheck_rows(path: Path, out: str, paper: str, meta: dict[str, str]) -> list[tuple[str, ...]]:
    """One row per variant of a coordinate check (gradlab coordcheck): the head's act_l1 slope
    against width at steps 1 on, and the largest |slope| of any layer there."""
    from gradlab.orchestrate.coordcheck import run_coordcheck

    result = run_coordcheck(path, COORDCHECK_WIDTHS, seeds=COORDCHECK_SEEDS, overrides=[f"log.out={out}"])
    judged = result.slopes[result.slopes["step"] >= 1]
    rows = []
    for variant, table in judged.groupby("variant", sort=False):
        head = table[table["name"] == "head"].sort_values("step")
        measured = "head " + ", ".join(f"{s:+.2f}" for s in head["slope"]) + f"; max |slope| {table['slope'].abs().max():.2f}"
        mine = [o for o in result.outcomes if o.name.startswith(f"{variant}: ")]
        failures = [o.failure() for o in mine if not o.passed]
        # what the variant's expect.coordcheck asks: 'grows: head', 'width-stable: blocks.0, ..., head'
        wants: dict[str, list[str]] = {}
        for o in mine:
            layer = o.name.rsplit(" ", 1)[-1].split("@")[0]
            wants.setdefault(o.bound.split(" (")[0], []).append(layer)
        predicted = "; ".join(f"{want}: {', '.join(dict.fromkeys(layers))}" for want, layers in wants.items()) or "-"
        rows.append((paper, f"coordcheck ({variant})", meta.get("published", ""), predicted, measured,
                     "yes" if not failures else "NO: " + "; ".join(failures)))  # fmt: skip
    return rows


def main() -> int:
    os.chdir(ROOT)  # data paths in the configs are relative to the repository root
    from gradlab.config.load import read_yaml
    from gradlab.analysis.expectations import check
    from gradlab.records.run import load_run
    from gradlab.orchestrate.runner import run_experiment

    rows = [("paper", "quantity", "published", "predicted", "measured", "held")]
    failed = 0
    with tempfile.TemporaryDirectory() as out:
        for path in sorted(PAPERS.glob("*.yaml")):
            meta = metadata(path)
            match = re.match(r"(.*?\d{4})", meta.get("paper", ""))
            paper = match.group(1) if match else path.stem
            data_path = read_yaml(path).get("data", {}).get("path")
            if data_path and not (ROOT / data_path).exists():
                rows.append((paper, meta.get("quantity", ""), meta.get("published", ""), "-", "-", f"skipped: no {data_path}"))
                continue
            if meta["quantity"] == "coordcheck":  # a coordinate check: every width x seed, judged together
                checked = coordcheck_rows(path, out, paper, meta)
                rows.extend(checked)
                failed += sum(not row[-1].startswith("yes") for row in checked)
                continue
            for label, exp in experiments(path, out):
                run = load_run(run_experiment(exp).run_dir)
                outcomes = check(run, exp.expect) if exp.expect is not None else []
                held = all(o.passed for o in outcomes)
                failed += not held
                predicted, measured = measure(meta["quantity"], exp, run)
                quantity = meta["quantity"] + (f" ({label})" if label else "")
                note = "yes" if held else "NO: " + "; ".join(o.failure() for o in outcomes if not o.passed)
                rows.append((paper, quantity, meta.get("published", ""), predicted, measured, note))
    # a markdown table: readable in a terminal, pasteable into a README
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "|".join("---" for _ in rows[0]) + "|")
    for row in rows[1:]:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
