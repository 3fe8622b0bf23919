"""How far the measured layer_factor at step 0 scatters around mean field's prediction, by width
(issue 24, item 3): the measurement behind predict.MIN_WIDTH, the width below which `gradlab
theory` and `compare --theory` say that mean field (an infinite-width theory) does not apply.

Real runs through `gradlab run`'s own path (config -> run_experiment -> layers.csv ->
summaries.profile_at), train.steps 0, depth 20, batch 128, the gaussian data (dim 64), for three
unnormalized MLPs on different sides of the phase diagram, SEEDS seeds per width. For each run the
relative error |measured - predicted| / predicted of layer_factor; printed per (config, width): the
median and the 90th percentile over seeds, and the share of seeds that `departs` (5%) would flag.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/theory_width.py [--seeds 8] [--widths 1,2,4,...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

CONFIGS = {
    "tanh-critical": {"activation": "tanh", "init": {"weight": {"name": "variance_scaling", "scale": 1.76, "mode": "fan_in"},
                                                     "bias": {"name": "normal", "std": math.sqrt(0.05)}}},
    "relu-he": {"activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
    "sigmoid": {"activation": "sigmoid", "init": {"weight": {"name": "variance_scaling", "scale": 1.0, "mode": "fan_in"},
                                                  "bias": {"name": "normal", "std": 1.0}}},
}  # fmt: skip


def measure(out: str, model: dict, width: int, seed: int) -> tuple[float, float]:
    from gradlab.analysis.summaries import profile_at
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment
    from gradlab.records.run import load_run
    from gradlab.theory.predict import predict

    exp = validate({
        "name": "width", "seed": seed, "device": "cpu", "threads": 1,
        "data": {"name": "gaussian", "dim": 64, "n_train": 128, "n_test": 16, "batch_size": 128},
        "model": {"depth": 20, "width": width, **model}, "train": {"steps": 0, "eval_every": 1},
        "log": {"every": 1, "out": out, "probes": ["deltas"]},
    })  # fmt: skip
    run = load_run(run_experiment(exp).run_dir)
    return profile_at(run, 0)["layer_factor"], predict(exp, correlations=False).layer_factor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--widths", default="1,2,4,8,16,32,64,128,256")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    start = time.monotonic()
    print(f"{'config':<14} {'width':>5} {'median':>8} {'p90':>8} {'departs':>8}  (relative error of layer_factor@0, {args.seeds} seeds)")
    with tempfile.TemporaryDirectory() as out:
        for name, model in CONFIGS.items():
            for width in widths:
                errors = []
                for seed in range(args.seeds):
                    measured, predicted = measure(out, model, width, seed)
                    errors.append(abs(measured - predicted) / predicted if math.isfinite(measured) else math.inf)
                errors.sort()
                p90 = errors[min(len(errors) - 1, math.ceil(0.9 * len(errors)) - 1)]
                flagged = sum(e > 0.05 for e in errors) / len(errors)
                print(f"{name:<14} {width:>5} {statistics.median(errors):>8.3%} {p90:>8.3%} {flagged:>8.0%}", flush=True)
    print(f"({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
