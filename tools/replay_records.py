"""Run a fixed set of experiments and fingerprint their records, to prove a restructuring changed no number.

    python tools/replay_records.py run OUT_DIR        # in the old tree, then in the new one
    python tools/replay_records.py diff OLD_DIR NEW_DIR
    python tools/replay_records.py cells OLD_DIR NEW_DIR     # every changed cell, and why it may change

`run` trains every shipped config (each sweep whole, its steps cut to keep this to minutes) and a
list of configs covering what the test suite exercises (CNNs with BatchNorm2d and pooling, LRN,
GroupNorm, LayerNorm, PReLU per channel, RReLU, GELU/SiLU/SELU, Adam, clipping, bce/mse, a run
that diverges), through the `gradlab run` command line, with one torch thread. `diff` compares
every cell of layers.csv, timesteps.csv and metrics.csv (time_s aside) in the columns both trees write,
and meta.json (times, ids and versions aside), byte for byte; columns only one tree writes are listed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CUT = ["train.steps=40", "train.eval_every=20"]
MNIST = ROOT.parent / "shared" / "data" / "mnist"

BASE = {
    "seed": 0, "device": "cpu",
    "data": {"name": "gaussian", "dim": 16, "classes": 4, "n_train": 256, "n_test": 128, "batch_size": 32},
    "model": {"depth": 4, "width": 16},
    "train": {"steps": 20, "eval_every": 10}, "log": {"every": 5},
}  # fmt: skip
IMAGES = {"name": "images", "classes": 4, "n_train": 128, "n_test": 64, "batch_size": 16}

TEST_CONFIGS: dict[str, dict] = {
    "mlp-sigmoid-lecun": {"model": {"activation": "sigmoid", "init": {"weight": "lecun_normal", "bias": "zeros"}}},
    "mlp-relu-he": {"model": {"activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}}},
    "mlp-bn-pre": {"model": {"depth": 8, "norm": "batchnorm", "init": {"weight": "kaiming_normal", "bias": "zeros"}}},
    "mlp-bn-post": {"model": {"activation": "sigmoid", "norm": {"name": "batchnorm", "placement": "post"}}},
    "mlp-layernorm": {"model": {"activation": "tanh", "norm": "layernorm"}},
    "mlp-groupnorm": {"model": {"activation": "gelu", "norm": {"name": "groupnorm", "groups": 4}}},
    "mlp-lrn": {"model": {"activation": "relu", "norm": "lrn"}},
    "mlp-prelu-unit": {"model": {"activation": {"name": "prelu", "shared": False}}},
    "mlp-rrelu": {"model": {"activation": "rrelu"}},
    "mlp-leaky": {"model": {"activation": {"name": "leaky_relu", "negative_slope": 0.01}}},
    "mlp-silu-adam": {"model": {"activation": "silu"}, "optim": {"name": "adam", "lr": 0.001}},
    "mlp-selu-clip": {"model": {"activation": "selu", "init": {"weight": "lecun_normal"}}, "optim": {"name": "sgd", "lr": 0.1, "grad_clip": 0.5}},
    "mlp-elu-bce": {"model": {"activation": "elu"}, "loss": "bce"},
    "mlp-softplus-mse": {"model": {"activation": "softplus"}, "loss": "mse", "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "mlp-hardtanh-ortho": {"model": {"activation": "hardtanh", "init": {"weight": {"name": "orthogonal", "gain": "auto"}}}},
    "mlp-identity-xavier": {"model": {"activation": "identity", "init": {"weight": "xavier_uniform"}}},
    "mlp-weights-only": {"log": {"every": 5, "probes": ["weights"]}},
    "mlp-no-bias": {"model": {"bias": False, "activation": "tanh"}},
    "mlp-diverges": {"model": {"activation": "relu", "init": {"weight": {"name": "normal", "std": 3.0}}}, "optim": {"name": "sgd", "lr": 10.0}},
    "mlp-sigmoid-depth50": {"model": {"depth": 50, "activation": "sigmoid", "init": {"weight": {"name": "normal", "std": 1.0}, "bias": "zeros"}}, "train": {"steps": 5, "eval_every": 5}},
    "mlp-teacher": {"data": {**BASE["data"], "name": "teacher"}},
    "mlp-spirals": {"data": {**BASE["data"], "name": "spirals", "dim": 2}},
    "cnn-bn-maxpool": {"data": IMAGES, "model": {"kind": "cnn", "depth": 4, "width": 8, "norm": "batchnorm", "pool_every": 2}},
    "cnn-lrn-avgpool": {"data": IMAGES, "model": {"kind": "cnn", "depth": 4, "width": 8, "norm": "lrn", "pool_every": 2, "pool": "avg"}},
    "cnn-gn-prelu": {"data": IMAGES, "model": {"kind": "cnn", "depth": 3, "width": 8, "norm": {"name": "groupnorm", "groups": 2}, "activation": {"name": "prelu", "shared": False}}},
    "cnn-ln-rrelu": {"data": IMAGES, "model": {"kind": "cnn", "depth": 3, "width": 8, "norm": "layernorm", "activation": "rrelu"}},
}  # fmt: skip


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def gradlab(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gradlab", "run", *args, "--quiet"], env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"gradlab run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        text = config.read_text()
        if "shared/data/mnist" in text and not MNIST.is_dir():
            print(f"skipped {config.name}: no MNIST at {MNIST}")
            continue
        sets = [f"log.out={out / 'shipped'}", *SHIPPED_CUT]
        if "shared/data/mnist" in text:
            sets.append(f"data.path={MNIST}")
        args = [str(config)]
        for item in sets:
            args += ["--set", item]
        gradlab(*args)
        print("ran", config.name)
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in TEST_CONFIGS.items():
            data = merged(BASE, extra)
            data["name"] = name
            data.setdefault("log", {})["out"] = str(out / "tests")
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(data))
            gradlab(str(path))
            print("ran", name)


IGNORED_META = {"run_id", "started", "ended", "versions"}


def read_runs(root: Path) -> dict[str, dict]:
    """{run key: {meta, metrics rows (time_s aside), table name: rows}}; the key is the run's path
    without its timestamped folders (a run's or a sweep's), which differ between replays."""
    runs: dict[str, dict] = {}
    for meta_path in sorted(root.rglob("meta.json")):
        run_dir = meta_path.parent
        key = "/".join(part for part in run_dir.relative_to(root).parts if not re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]+", part))
        meta = {k: v for k, v in json.loads(meta_path.read_text()).items() if k not in IGNORED_META}
        run = {"meta": meta}
        for table in ("layers.csv", "timesteps.csv", "metrics.csv"):
            if (run_dir / table).exists():
                run[table] = list(csv.DictReader(io.StringIO((run_dir / table).read_text())))
        for row in run.get("metrics.csv", []):
            row.pop("time_s", None)
        runs[key] = run
    return runs


def diff(old: Path, new: Path) -> int:
    """Byte-identical cells in every column both trees write; columns only one tree writes are listed
    (a deliberate change of the records, e.g. a new quantity), never compared."""
    a, b = read_runs(old), read_runs(new)
    bad, added, dropped = 0, set(), set()
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"only in {'old' if key in a else 'new'}: {key}")
            bad += 1
            continue
        problems = []
        if a[key]["meta"] != b[key]["meta"]:
            problems.append("meta.json")
        for table in ("layers.csv", "timesteps.csv", "metrics.csv"):
            rows_a, rows_b = a[key].get(table, []), b[key].get(table, [])
            if len(rows_a) != len(rows_b):
                problems.append(f"{table} has {len(rows_a)} rows, then {len(rows_b)}")
                continue
            if not rows_a:
                continue
            common = [c for c in rows_a[0] if c in rows_b[0]]
            added |= {f"{table}:{c}" for c in rows_b[0] if c not in rows_a[0]}
            dropped |= {f"{table}:{c}" for c in rows_a[0] if c not in rows_b[0]}
            changed = sorted({c for ra, rb in zip(rows_a, rows_b) for c in common if ra[c] != rb[c]})
            if changed:
                problems.append(f"{table} columns {', '.join(changed)}")
        if problems:
            print(f"differs: {key}: {'; '.join(problems)}")
            bad += 1
    if added:
        print(f"columns only the new records have: {', '.join(sorted(added))}")
    if dropped:
        print(f"columns only the old records have: {', '.join(sorted(dropped))}")
    print(f"{len(set(a) & set(b))} runs compared, {bad} differ or are missing")
    return 1 if bad else 0


FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32
# Where exact norms (gradlab.measure.norms) may change a number: float32 squared entries that
# underflowed (a norm below 1e-12 could lose digits) or overflowed (above 1e19).
EXACT_NORM_LOW, EXACT_NORM_HIGH = 1e-12, 1e19


def why_changed(old: str, new: str) -> str:
    """How one cell changed: a cell that did not exist before, a norm float32 could not hold (0,
    subnormal, infinite, or in the range where its squares underflow), or a plain difference."""
    if old == "":
        return "was empty"
    try:
        a, b = float(old), float(new) if new else math.nan
    except ValueError:
        return "text"
    if a == 0:
        return "was 0"
    if math.isinf(a):
        return "was inf"
    if abs(a) < FLOAT32_TINY:
        return "was subnormal"
    if abs(a) < EXACT_NORM_LOW or abs(b) < EXACT_NORM_LOW:
        return "below 1e-12 (float32 squares underflowed)"
    if abs(a) > EXACT_NORM_HIGH or abs(b) > EXACT_NORM_HIGH:
        return "above 1e19 (float32 squares overflowed)"
    return f"differs by {abs(a - b) / abs(a):.1e} relative"


def cells(old: Path, new: Path) -> int:
    """Every cell that changed, counted by run, table, column and reason; then every cell whose
    reason is a plain difference, in full."""
    a, b = read_runs(old), read_runs(new)
    counts: dict[tuple[str, str, str, str], int] = {}
    plain: list[str] = []
    for key in sorted(set(a) & set(b)):
        for table in ("layers.csv", "timesteps.csv", "metrics.csv"):
            rows_a, rows_b = a[key].get(table, []), b[key].get(table, [])
            if len(rows_a) != len(rows_b):
                counts[(key, table, "(rows)", f"{len(rows_a)} rows, then {len(rows_b)}")] = 1
                continue
            for ra, rb in zip(rows_a, rows_b):
                for column in (c for c in ra if c in rb and ra[c] != rb[c]):
                    reason = why_changed(ra[column], rb[column])
                    if reason.startswith("differs"):
                        reason = "differs"
                        plain.append(f"{key} {table} step {ra.get('step')} layer {ra.get('layer')} t {ra.get('t', '')} {column}: {ra[column]} -> {rb[column]}")
                    counts[(key, table, column, reason)] = counts.get((key, table, column, reason), 0) + 1
        if a[key]["meta"] != b[key]["meta"]:
            changed = sorted(k for k in set(a[key]["meta"]) | set(b[key]["meta"]) if a[key]["meta"].get(k) != b[key]["meta"].get(k))
            for k in changed:
                counts[(key, "meta.json", k, f"{a[key]['meta'].get(k)!r} -> {b[key]['meta'].get(k)!r}")] = 1
    for (key, table, column, reason), n in sorted(counts.items()):
        print(f"{key} | {table} | {column} | {reason} | {n}")
    if plain:
        print(f"\n{len(plain)} cells that differ by plain arithmetic:")
        for line in plain:
            print(" ", line)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(Path(sys.argv[2]).resolve())
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        sys.exit(diff(Path(sys.argv[2]), Path(sys.argv[3])))
    elif len(sys.argv) == 4 and sys.argv[1] == "cells":
        sys.exit(cells(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
