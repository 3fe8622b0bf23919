"""`gradlab coordcheck`: the coordinate check of Yang & Hu 2021 (microsoft/mup's `coord_check`)
on any gradlab config, through the sweep machinery.

    run_coordcheck(config, widths, ...)    every width x seed (x the config's own sweep axes) run as
                                           one sweep (parallel jobs, resume, Ray), each a few steps
                                           on one fixed batch with the `coordinates` probes; their
                                           layers.csv rows gathered into coordcheck.csv; the slopes
                                           and verdicts of analysis/coordcheck.py

Each run is the config with model.width set (every hidden layer; the input and output sizes are the
data's), train.steps = --steps, a measurement at every step, no test evaluation but the last, and
train.fixed_batch (mup's check trains on one batch; --fresh-batches draws a new one per step).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradlab.orchestrate.progress import Progress
from gradlab.vocab.errors import ConfigError, RunError
from gradlab.vocab.parametrizations import WIDTH_SCALED_KINDS
from gradlab.vocab.quantities import COORDCHECK_TOLERANCE

WIDTH_KEY = "model.width"
PROBES = ["deltas", "coordinates"]  # delta_rms, and act_l1, act_rms, update_rms


def parse_widths(text: str) -> list[int]:
    """`64,128,256` as widths: whole numbers >= 1, at least two different ones, none twice."""
    widths = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            width = int(part)
        except ValueError:
            raise ConfigError(f"--widths: got {part!r}; give whole numbers separated by commas, e.g. 64,128,256,512") from None
        if width < 1:
            raise ConfigError(f"--widths: a width is at least 1, got {width}")
        if width in widths:
            raise ConfigError(f"--widths: {width} is given twice")
        widths.append(width)
    if len(widths) < 2:
        raise ConfigError(f"--widths: a slope against width needs at least two widths, got {text}; e.g. 64,128,256,512,1024")
    return sorted(widths)


def coordcheck_config(raw: dict[str, Any], steps: int, seeds: int, fresh_batches: bool) -> dict[str, Any]:
    """The sweep config of a coordinate check of `raw` (a config mapping, read from YAML)."""
    from gradlab.orchestrate.sweep_axes import SEEDS_KEY, SWEEP_KEY, split_sweep

    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    kind = model.get("kind", "mlp")
    if kind == "watch":
        raise ConfigError("model.kind watch: a gradlab.watch run records a model gradlab did not build, so it has no width to scale; "
                          "coordcheck runs gradlab configs of kind mlp or cnn")  # fmt: skip
    if kind not in WIDTH_SCALED_KINDS:
        raise ConfigError(f"model.kind {kind}: coordcheck scales the width of kinds {' and '.join(WIDTH_SCALED_KINDS)}; allowed: {', '.join(WIDTH_SCALED_KINDS)}")
    if steps < 1:
        raise ConfigError(f"--steps: at least 1 (the check is judged after updates), got {steps}")
    if seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {seeds}")
    _, axes = split_sweep(raw)
    for axis in axes:
        if axis.key in (WIDTH_KEY, "seed"):
            raise ConfigError(f"sweep: {axis.key} is coordcheck's own axis (--widths, --seeds); remove it from the config")
    data = copy.deepcopy(raw)
    data.pop(SEEDS_KEY, None)
    data["name"] = f"{data.get('name', 'experiment')}-coordcheck"
    train = data.setdefault("train", {})
    train.update({"steps": steps, "eval_every": steps, "fixed_batch": not fresh_batches})
    data.setdefault("log", {}).update({"every": 1, "probes": PROBES})
    expect = data.get("expect")
    if isinstance(expect, dict):  # a run of the check is a few steps: only the coordcheck verdicts apply
        data["expect"] = {"coordcheck": expect["coordcheck"]} if "coordcheck" in expect else None
    data.pop(SWEEP_KEY, None)
    if axes:
        data[SWEEP_KEY] = raw[SWEEP_KEY]
    data[SEEDS_KEY] = list(range(seeds))
    return data


@dataclass
class CoordcheckPlan:
    plan: Any  # SweepPlan
    index: Any  # SweepIndex of a resumed check, else None
    sweep_dir: Path


def gather(sweep_dir: Path, plan) -> Any:
    """coordcheck.csv's rows from the finished members' layers.csv, written into the sweep folder."""
    import pandas as pd

    from gradlab.analysis import coordcheck as analysis
    from gradlab.analysis.coordcheck import COLUMNS, COORDCHECK_FILE
    from gradlab.orchestrate.sweep_index import FINISHED, recorded_status
    from gradlab.records.output import write_output

    frames = []
    for member in plan.members:
        folder = sweep_dir / member.name
        if recorded_status(folder) not in FINISHED:
            continue
        layers = pd.read_csv(folder / "layers.csv")
        layers = layers.assign(variant=analysis.variant_of(member.values), width=member.config["model"]["width"], seed=member.config["seed"])
        frames.append(layers[COLUMNS])
    if not frames:
        raise RunError(f"{sweep_dir}: no run of the coordinate check finished; see its sweep.csv")
    coords = pd.concat(frames, ignore_index=True).sort_values(["variant", "width", "seed", "step", "layer"], kind="stable")
    write_output(sweep_dir / COORDCHECK_FILE, coords.to_csv(index=False), "coordcheck")
    return coords


def run_coordcheck(
    config: str | Path | None,
    widths: Sequence[int] = (),
    *,
    steps: int = 3,
    seeds: int = 2,
    fresh_batches: bool = False,
    overrides: Sequence[str] = (),
    resume: Path | None = None,
    jobs: int | None = 1,
    threads: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    tolerance: float = COORDCHECK_TOLERANCE,
    quantity: str = "act_l1",
    progress: Progress | None = None,
    on_planned=None,
):
    """Plan, run and judge a coordinate check (or, with `resume`, finish one); returns an
    analysis.coordcheck.CoordcheckResult. `on_planned(sweep_dir, runs)` is called before the runs."""
    from gradlab.config.load import read_yaml
    from gradlab.orchestrate.sweep import executor_session, run_sweep
    from gradlab.orchestrate.sweep_axes import parse_axis
    from gradlab.orchestrate.sweep_index import create_sweep_dir, open_sweep
    from gradlab.orchestrate.sweep_lock import sweep_lock
    from gradlab.orchestrate.sweep_plan import plan_sweep
    from gradlab.orchestrate.sweep_resources import check_resources

    if not tolerance > 0:
        raise ConfigError(f"--tolerance: a slope bound above 0, got {tolerance}")
    with executor_session(executor, jobs, ray_address):
        if resume is not None:
            if config is not None:
                raise ConfigError("--resume: give the coordcheck folder alone; it finishes the check as planned there")
            plan, index = open_sweep(resume)
            sweep_dir = Path(resume)
        else:
            if config is None:
                raise ConfigError("coordcheck: give CONFIG, an experiment YAML file (or --resume FOLDER)")
            raw = coordcheck_config(read_yaml(config), steps, seeds, fresh_batches)
            plan = plan_sweep(raw, list(overrides), [parse_axis(f"{WIDTH_KEY}={','.join(str(w) for w in widths)}")])
            if executor == "local":
                check_resources(plan, jobs or 1)
            sweep_dir, index = create_sweep_dir(plan), None
        if on_planned is not None:
            on_planned(sweep_dir, len(plan.members))
        outcome = run_sweep(plan, sweep_dir, jobs=jobs if executor == "ray" else (jobs or 1), threads=threads,
                            executor=executor, ray_address=ray_address, progress=progress, index=index)  # fmt: skip
    if outcome.signum is not None:
        stopped = RunError(f"interrupted; to finish the check: gradlab coordcheck --resume {sweep_dir}")
        stopped.exit_code = outcome.exit_code  # 130 for Ctrl-C, as gradlab run
        raise stopped
    with sweep_lock(sweep_dir):
        coords = gather(sweep_dir, plan)
    return judge(sweep_dir, coords, plan, tolerance, quantity, outcome)


def judge(sweep_dir: Path, coords, plan, tolerance: float, quantity: str, outcome=None):
    """The slopes and verdicts of gathered coordinates (of `quantity`, judged with `tolerance`: the
    table and the figure) and the outcomes of each variant's expect.coordcheck (with its own
    quantity and tolerance, as gradlab check judges them)."""
    from gradlab.analysis import coordcheck as analysis
    from gradlab.analysis.expectations import check_coordcheck

    table = analysis.slopes(coords, quantity, tolerance)
    failed = [] if outcome is None else [f"{row.run}: {row.error}" for row in outcome.rows if row.status == "failed"]
    return analysis.CoordcheckResult(Path(sweep_dir), coords, table, check_coordcheck(sweep_dir) or [], tolerance, quantity, failed)
