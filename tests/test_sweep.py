"""Sweeps: the grid, its names, up-front validation, the sweep directory and sweep.csv, runs that
fail or diverge, --jobs, --resume, compare on a sweep, Ctrl-C of a real process, and Ray.

Every run here is tiny (depth <= 4, width <= 16, 20 steps, 256 examples) and takes milliseconds
once torch is loaded; the pool and Ray tests pay mostly for starting their worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gradlab.records import layout
from gradlab.orchestrate import sweep as sweeps
from gradlab.orchestrate import sweep_axes
from gradlab.orchestrate import sweep_names
from gradlab.orchestrate import sweep_plan
from gradlab.vocab.quantities import layers_columns
from gradlab.vocab.errors import ConfigError
from gradlab.orchestrate.member import MemberTask, default_threads, run_member
from gradlab.orchestrate.progress import RunStarted
from run_factory import SWEEP_BASE

ROOT = Path(__file__).resolve().parents[1]

BASE = SWEEP_BASE
GRID = {"model.activation": ["sigmoid", "relu"], "model.norm": ["none", {"name": "batchnorm", "placement": "post"}]}
NAMES = [
    "activation=sigmoid,norm=none,seed=0", "activation=sigmoid,norm=none,seed=1",
    "activation=sigmoid,norm=batchnorm(placement=post),seed=0", "activation=sigmoid,norm=batchnorm(placement=post),seed=1",
    "activation=relu,norm=none,seed=0", "activation=relu,norm=none,seed=1",
    "activation=relu,norm=batchnorm(placement=post),seed=0", "activation=relu,norm=batchnorm(placement=post),seed=1",
]  # fmt: skip


def write_config(path: Path, out: Path, **changes) -> Path:
    """The tiny grid (2 activations x 2 norms x 2 seeds) as a YAML file, with top-level changes."""
    data = {**BASE, "log": {**BASE["log"], "out": str(out)}, "sweep": GRID, "seeds": [0, 1], **changes}
    data = {key: value for key, value in data.items() if value is not None}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def the_sweep_dir(out: Path) -> Path:
    [sweep_dir] = [p.parent for p in out.rglob(layout.SWEEP_INDEX_FILE)]
    return sweep_dir


def read_index(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / layout.SWEEP_INDEX_FILE, newline="") as file:
        return list(csv.DictReader(file))


def statuses(sweep_dir: Path) -> dict[str, str]:
    return {row["run"]: row["status"] for row in read_index(sweep_dir)}


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory, invoke) -> Path:
    """The tiny grid run once, serially, through the CLI (shared by the read-only tests)."""
    tmp = tmp_path_factory.mktemp("serial")
    result = invoke("run", write_config(tmp / "grid.yaml", tmp / "out"), "--quiet")
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip())


# --------------------------------------------------------------------------------------------
# The grid and its names
# --------------------------------------------------------------------------------------------


def test_the_grid_is_the_product_of_the_axes_with_the_seed_last():
    plan = sweep_plan.plan_sweep({**BASE, "seeds": [0, 1], "sweep": GRID})
    assert [m.name for m in plan.members] == NAMES
    assert plan.shape() == "model.activation (2) x model.norm (2) x seed (2)"
    member = plan.members[3]
    assert member.values == {"model.activation": "sigmoid", "model.norm": {"name": "batchnorm", "placement": "post"}, "seed": 1}
    # the config it runs is resolved: every default filled, the sweep keys gone
    assert member.config["seed"] == 1 and member.config["model"]["activation"] == {"name": "sigmoid"}
    assert member.config["model"]["norm"] == {"name": "batchnorm", "placement": "post", "momentum": 0.1, "eps": 1e-05, "affine": True}
    assert "sweep" not in member.config and "seeds" not in member.config


def test_command_line_axes_replace_or_add_and_seeds_stay_last():
    axes = [sweep_axes.parse_axis("model.depth=2,3"), sweep_axes.parse_axis("model.activation=tanh"), sweep_axes.parse_axis("seeds=5,6,7")]
    plan = sweep_plan.plan_sweep({**BASE, "seeds": [0, 1], "sweep": GRID}, axes=axes)
    assert [(a.key, a.values) for a in plan.axes] == [
        ("model.activation", ("tanh",)),
        ("model.norm", ("none", {"name": "batchnorm", "placement": "post"})),
        ("model.depth", (2, 3)),
        ("seed", (5, 6, 7)),
    ]
    assert len(plan.members) == 1 * 2 * 2 * 3
    assert plan.members[0].name == "activation=tanh,norm=none,depth=2,seed=5"


def test_sweep_option_values_are_a_yaml_list_without_brackets():
    axis = sweep_axes.parse_axis("model.norm=none,{name: batchnorm, placement: post},layernorm")
    assert axis.values == ("none", {"name": "batchnorm", "placement": "post"}, "layernorm")
    assert sweep_axes.parse_axis("optim.lr=0.1,1e-3").values == (0.1, "1e-3")  # YAML 1.1: 1e-3 is a string; 1.0e-3 a float
    assert sweep_axes.parse_axis("log.probes=[weights],[weights, deltas]").values == (["weights"], ["weights", "deltas"])


@pytest.mark.parametrize(
    "value, text",
    [
        ("relu", "relu"), (30, "30"), (0.001, "0.001"), (1e-05, "1e-05"), (True, "true"), (None, "null"),
        ({"name": "batchnorm", "placement": "post"}, "batchnorm(placement=post)"),
        ({"name": "leaky_relu", "negative_slope": 0.2}, "leaky_relu(negative_slope=0.2)"),
        ({"weight": "orthogonal", "bias": "zeros"}, "(weight=orthogonal,bias=zeros)"),
        (["weights", "deltas"], "[weights+deltas]"),
        ("../data/x y.npz", ".._data_x_y.npz"),
    ],
)  # fmt: skip
def test_values_are_named_compactly_and_safely(value, text):
    assert sweep_names.render_value(value) == text


def test_labels_are_the_last_part_of_the_key_unless_that_is_ambiguous():
    assert sweep_names.axis_labels(["model.activation", "model.norm", "seed"]) == {"model.activation": "activation", "model.norm": "norm", "seed": "seed"}
    assert sweep_names.axis_labels(["data.name", "model.norm.name", "model.norm.placement"]) == {"data.name": "data", "model.norm.name": "norm", "model.norm.placement": "placement"}
    assert sweep_names.axis_labels(["model.depth", "data.depth"]) == {"model.depth": "model.depth", "data.depth": "data.depth"}


@pytest.mark.parametrize(
    "raw, line",
    [
        ({"sweep": {"model.depth": 10}}, "sweep.model.depth: expected a list of values, e.g. [10, 30], got 10"),
        ({"sweep": {"model.depth": []}}, "sweep.model.depth: the list of values is empty"),
        ({"sweep": {"model.depth": [2, 2]}}, "sweep.model.depth: 2 is listed twice"),
        ({"sweep": [1, 2]}, "sweep: expected a mapping of dotted keys to lists of values, e.g. {model.depth: [10, 30]}, got [1, 2]"),
        ({"sweep": {"name": ["a", "b"]}}, "sweep: name cannot be swept; every run of a sweep goes into one sweep directory (log.out/name)"),
        ({"seeds": [0, "one"]}, "seeds: got one; seeds are integers, e.g. [0, 1, 2]"),
        ({"seeds": [0], "sweep": {"seed": [1]}}, "seeds: the seeds are given twice (seeds: and sweep: {seed: ...}); keep one"),
    ],
)
def test_a_malformed_sweep_section_is_one_line(raw, line):
    with pytest.raises(ConfigError) as error:
        sweep_plan.plan_sweep({**BASE, **raw})
    assert error.value.lines == [line]


def test_seeds_as_a_count_are_range_n_and_a_list_is_kept():
    def seeds(value):
        return [run.config["seed"] for run in sweep_plan.plan_sweep({**BASE, "seeds": value}).members]

    assert seeds(3) == [0, 1, 2]
    assert seeds([5, 7]) == [5, 7]
    assert seeds(1) == [0]
    for bad, line in [(0, "seeds: a count of seeds is at least 1, got 0; or list them, e.g. [0, 1, 2]"),
                      (True, "seeds: expected a count (3: seeds 0, 1, 2) or a list of integer seeds, e.g. [0, 1, 2], got true"),
                      ("3", "seeds: expected a count (3: seeds 0, 1, 2) or a list of integer seeds, e.g. [0, 1, 2], got '3'")]:
        with pytest.raises(ConfigError) as error:
            sweep_plan.plan_sweep({**BASE, "seeds": bad})
        assert error.value.lines == [line]


def test_set_on_a_swept_key_is_refused():
    with pytest.raises(ConfigError) as error:
        sweep_plan.plan_sweep({**BASE, "sweep": GRID, "seeds": [0]}, overrides=["seed=3"])
    assert error.value.lines == ["seed: set by --set (or --seed/--steps/...) but also swept; change the axis with --sweep seed=v1,v2"]


@pytest.mark.slow
def test_shipped_configs_expand_validate_and_fit():
    from gradlab.build.memory import check_fits
    from gradlab.vocab.datasets import known_input_shape

    plan = sweep_plan.load_plan(ROOT / "configs" / "sweep-activations.yaml")
    assert len(plan.members) == 4 * 2 * 3
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if "mnist" in path.name and not (ROOT.parent / "shared" / "data" / "mnist").is_dir():
            continue
        for exp in sweep_plan.load_experiments(path):
            check_fits(exp, known_input_shape(exp.data), exp.data.classes)


# --------------------------------------------------------------------------------------------
# Validation up front
# --------------------------------------------------------------------------------------------


def test_a_bad_combination_fails_the_whole_sweep_up_front_naming_its_values(tmp_path, invoke):
    out = tmp_path / "out"
    config = write_config(tmp_path / "grid.yaml", out, sweep={"model.activation": ["relu", "tanh"], "model.norm": ["none", {"name": "groupnorm", "groups": 4}]})
    result = invoke("run", config, "--sweep", "model.width=16,10")
    assert result.exit_code == 2
    # the same for both activations and both seeds: named once, by the two values that matter
    assert result.stderr == "error: sweep model.norm={name: groupnorm, groups: 4}, model.width=10: model.norm.groups: groups=4 does not divide width=10\n"
    assert result.stdout == ""
    assert not out.exists()


def test_every_problem_of_every_combination_is_reported_at_once(tmp_path, invoke):
    out = tmp_path / "out"
    config = write_config(tmp_path / "grid.yaml", out, sweep={"model.depth": [0, 2, -1], "model.activation": ["relu", "rleu"]}, seeds=[0])
    result = invoke("run", config, "--set", "train.steps=-1")
    assert result.exit_code == 2
    # each line names only the values that cause it: the depth whatever the activation, the
    # activation whatever the depth, and the config's own problem nothing
    assert result.stderr.splitlines() == [
        "error: sweep model.depth=0: model.depth: got 0; must be >= 1",
        "error: train.steps: got -1; must be >= 0",
        "error: sweep model.activation=rleu: model.activation: unknown activation 'rleu' (did you mean 'relu'?); allowed: "
        "sigmoid, tanh, relu, leaky_relu, prelu, rrelu, elu, selu, gelu, silu, softplus, hardtanh, identity",
        "error: sweep model.depth=-1: model.depth: got -1; must be >= 1",
    ]
    assert not out.exists()


def test_validate_lists_the_combinations_and_what_differs(tmp_path, invoke):
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", seeds=None)
    result = invoke("validate", config, "--sweep", "model.depth=2,3", "--set", "model.width=8")
    assert result.exit_code == 0, result.output
    norm = "{name: batchnorm, placement: post, momentum: 0.1, eps: 1.0e-05, affine: true}"
    assert result.stdout.splitlines() == [
        "8 combinations (model.activation (2) x model.norm (2) x model.depth (2)), all valid",
        "activation=sigmoid,norm=none,depth=2: model.activation={name: sigmoid}, model.norm={name: none}, model.depth=2",
        "activation=sigmoid,norm=none,depth=3: model.activation={name: sigmoid}, model.norm={name: none}, model.depth=3",
        f"activation=sigmoid,norm=batchnorm(placement=post),depth=2: model.activation={{name: sigmoid}}, model.norm={norm}, model.depth=2",
        f"activation=sigmoid,norm=batchnorm(placement=post),depth=3: model.activation={{name: sigmoid}}, model.norm={norm}, model.depth=3",
        "activation=relu,norm=none,depth=2: model.activation={name: relu}, model.norm={name: none}, model.depth=2",
        "activation=relu,norm=none,depth=3: model.activation={name: relu}, model.norm={name: none}, model.depth=3",
        f"activation=relu,norm=batchnorm(placement=post),depth=2: model.activation={{name: relu}}, model.norm={norm}, model.depth=2",
        f"activation=relu,norm=batchnorm(placement=post),depth=3: model.activation={{name: relu}}, model.norm={norm}, model.depth=3",
    ]


def test_sweep_options_on_a_plain_config_are_refused(tmp_path, invoke):
    config = write_config(tmp_path / "plain.yaml", tmp_path / "out", sweep=None, seeds=None)
    result = invoke("run", config, "--jobs", "2")
    assert (result.exit_code, result.stderr) == (2, f"error: --jobs: applies to sweeps; {config} has no sweep: or seeds: (add --sweep key.path=v1,v2)\n")
    result = invoke("run", config, "--ray-address", "auto")
    assert (result.exit_code, result.stderr) == (2, "error: --ray-address: applies to --executor ray\n")
    result = invoke("run")
    assert (result.exit_code, result.stderr) == (2, "error: run: give CONFIG, an experiment YAML file (or --resume SWEEP_DIR)\n")


# --------------------------------------------------------------------------------------------
# The sweep directory
# --------------------------------------------------------------------------------------------


def test_the_sweep_directory_holds_an_index_and_a_normal_run_per_combination(serial_sweep):
    sweep_dir = serial_sweep
    assert sweep_dir.parent.name == "grid" and layout.SWEEP_SPEC_FILE in {p.name for p in sweep_dir.iterdir()}
    lines = (sweep_dir / layout.SWEEP_INDEX_FILE).read_text().splitlines()
    assert lines[0] == "run,model.activation,model.norm,seed,status,duration_s,error"
    rows = read_index(sweep_dir)
    assert [row["run"] for row in rows] == NAMES
    assert [(row["model.activation"], row["model.norm"], row["seed"]) for row in rows[2:4]] == [
        ("sigmoid", "{name: batchnorm, placement: post}", "0"),
        ("sigmoid", "{name: batchnorm, placement: post}", "1"),
    ]
    assert {row["status"] for row in rows} == {"completed"} and all(float(row["duration_s"]) >= 0 for row in rows)
    for row in rows:
        run = sweep_dir / row["run"]
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "layers.csv", "meta.json", "metrics.csv"]
        meta = json.loads((run / "meta.json").read_text())
        assert (meta["status"], meta["run_id"], meta["steps_done"]) == ("completed", row["run"], 20)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed"] == int(row["seed"]) and config["model"]["activation"]["name"] == row["model.activation"]
        has_norm = config["model"]["norm"]["name"] != "none"  # a norm adds its columns (quantities.NORM)
        assert list(pd.read_csv(run / "layers.csv").columns) == layers_columns(norm=has_norm)
    # sweep.yaml plans the same sweep again
    assert [m.name for m in sweep_plan.load_plan(sweep_dir / layout.SWEEP_SPEC_FILE).members] == NAMES


def test_run_prints_a_line_per_run_and_a_summary(tmp_path, invoke):
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", sweep={"model.activation": ["sigmoid", "relu"]}, seeds=None)
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    sweep_dir = the_sweep_dir(tmp_path / "out")
    err = result.stderr.splitlines()
    assert err[0] == f"sweep grid: 2 runs (model.activation (2)) in {sweep_dir}"
    assert [line.split()[:3] for line in err[1:]] == [["[1/2]", "completed", "activation=sigmoid"], ["[2/2]", "completed", "activation=relu"]]
    assert result.stdout.splitlines() == ["2 runs: 2 completed, 0 diverged, 0 failed, 0 interrupted", f"sweep directory: {sweep_dir}"]


def test_compare_on_the_sweep_directory_gives_the_grid_with_seeds_grouped(serial_sweep, invoke):
    result = invoke("compare", serial_sweep, "--format", "csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert len(table) == 4  # 2 activations x 2 norms; the seeds are averaged
    assert list(table["seeds"]) == [2, 2, 2, 2]
    assert sorted(zip(table["model.activation"], table["model.norm"])) == [
        ("relu", "batchnorm(placement=post, momentum=0.1, eps=1e-05, affine=true)"), ("relu", "none"),
        ("sigmoid", "batchnorm(placement=post, momentum=0.1, eps=1e-05, affine=true)"), ("sigmoid", "none"),
    ]  # fmt: skip
    assert set(table["status"]) == {"completed"} and "gain@0_std" in table


def test_a_failing_or_diverging_run_does_not_stop_the_sweep(tmp_path, invoke):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive")
    data = {**BASE["data"], "path": str(garbage)}
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", data=data, seeds=None,
                          sweep={"data.name": ["npz", "gaussian"], "optim.lr": [0.05, 1.0e6]})  # fmt: skip
    result = invoke("run", config)
    assert result.exit_code == 1, result.output  # a run failed
    sweep_dir = the_sweep_dir(tmp_path / "out")
    error = f"npz file {str(garbage)!r}: not an .npz archive (no zip signature at the start of the file)"
    rows = read_index(sweep_dir)
    assert [(row["run"], row["status"]) for row in rows] == [
        ("data=npz,lr=0.05", "failed"), ("data=npz,lr=1000000.0", "failed"),
        ("data=gaussian,lr=0.05", "completed"), ("data=gaussian,lr=1000000.0", "diverged"),
    ]  # fmt: skip
    assert rows[0]["error"] == error and rows[3]["error"].startswith("diverged at step ")
    failed = json.loads((sweep_dir / "data=npz,lr=0.05" / "meta.json").read_text())
    assert (failed["status"], failed["error"]) == ("failed", error)
    assert json.loads((sweep_dir / "data=gaussian,lr=1000000.0" / "meta.json").read_text())["divergence"]
    assert result.stdout.splitlines() == [
        "4 runs: 1 completed, 1 diverged, 2 failed, 0 interrupted",
        f"failed: data=npz,lr=0.05: {error}",
        f"failed: data=npz,lr=1000000.0: {error}",
        f"to run what is left: gradlab run --resume {sweep_dir}",
        f"sweep directory: {sweep_dir}",
    ]
    assert "Traceback" not in result.output


def test_each_run_of_a_sweep_is_checked_against_expect_and_again_on_resume(tmp_path, invoke):
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", seeds=None, sweep={"optim.lr": [0.05, 1.0e6]},
                          expect={"status": "completed", "gain": {"step": 0, "between": [0.01, 100]}})  # fmt: skip
    result = invoke("run", config, "--quiet")
    assert result.exit_code == 1, result.output
    sweep_dir = Path(result.stdout.strip())
    assert statuses(sweep_dir) == {"lr=0.05": "completed", "lr=1000000.0": "diverged"}
    # the runs checked themselves (one reading each); the lines are those of gradlab check on the records
    check = invoke("check", sweep_dir / "lr=1000000.0")
    [failure] = [line.split("FAIL", 1)[1].strip() for line in check.stdout.splitlines() if "FAIL" in line]
    name, _, rest = failure.partition(" = ")
    measured, _, bound = rest.partition("  (")
    assert result.stderr == f"error: expectation failed: lr=1000000.0: {name} = {measured}, expected {bound.rstrip(')')}\n"
    # --resume runs nothing here (both runs finished) and checks them from their records
    again = invoke("run", "--resume", sweep_dir, "--quiet")
    assert (again.exit_code, again.stdout, again.stderr) == (1, f"{sweep_dir}\n", result.stderr)


# --------------------------------------------------------------------------------------------
# Parallel runs, resume
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_jobs_2_writes_the_same_records_as_jobs_1(tmp_path, serial_sweep, invoke):
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out")
    result = invoke("run", config, "--jobs", "2", "--quiet")
    assert result.exit_code == 0, result.output
    parallel = Path(result.stdout.strip())
    assert statuses(parallel) == {name: "completed" for name in NAMES}
    for name in NAMES:
        assert (parallel / name / "layers.csv").read_bytes() == (serial_sweep / name / "layers.csv").read_bytes(), name
        # config.yaml too, but for log.out (the two sweeps went into different folders)
        assert (parallel / name / "config.yaml").read_text().replace(str(tmp_path), "") == \
            (serial_sweep / name / "config.yaml").read_text().replace(str(serial_sweep.parents[2]), ""), name


def test_each_run_computes_with_the_threads_it_is_given(tmp_path):
    """The thread count is what makes records depend on --jobs (torch splits its sums by thread),
    so a run uses MemberTask.threads, whatever the process had, and gives the process its own back."""
    import torch

    seen = []

    def spy(event):
        if isinstance(event, RunStarted):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    plan = sweep_plan.plan_sweep({**BASE, "seeds": [0]})
    task = MemberTask(0, "seed=0", str(tmp_path / "seed=0"), plan.members[0].config, threads=1)
    assert run_member(task, spy).status == "completed"
    assert seen == [1] and torch.get_num_threads() == before
    assert default_threads() == 1


def test_resume_runs_only_what_is_not_completed_or_diverged(tmp_path, monkeypatch, invoke):
    monkeypatch.setattr(sweeps, "ORPHANS_SETTLE_S", 0.0)  # (the run marked running here has no worker left)
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out")
    sweep_dir = Path(invoke("run", config, "--quiet").stdout.strip())
    rows = read_index(sweep_dir)
    # what an interrupted, a failed, a killed and a diverged run leave behind
    for row, status in zip(rows, ["interrupted", "failed", "running", "diverged"]):
        row["status"] = status
        if status != "diverged":  # a run's own records outrank the index: they say so too
            meta_path = sweep_dir / row["run"] / "meta.json"
            meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "status": status}))
    (sweep_dir / rows[1]["run"] / "layers.csv").unlink()
    with open(sweep_dir / layout.SWEEP_INDEX_FILE, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    kept = {row["run"]: (sweep_dir / row["run"] / "meta.json").read_text() for row in rows[3:]}

    result = invoke("run", "--resume", sweep_dir)
    assert result.exit_code == 0, result.output
    err = result.stderr.splitlines()
    assert err[0] == f"sweep grid: 3 of 8 runs to run (model.activation (2) x model.norm (2) x seed (2)) in {sweep_dir}"
    assert [line.split()[2] for line in err[1:]] == NAMES[:3]
    assert statuses(sweep_dir) == {**{name: "completed" for name in NAMES}, NAMES[3]: "diverged"}
    for name in NAMES[:3]:  # fresh run directories
        assert json.loads((sweep_dir / name / "meta.json").read_text())["status"] == "completed"
        assert (sweep_dir / name / "layers.csv").is_file()
    assert {name: (sweep_dir / name / "meta.json").read_text() for name in kept} == kept  # untouched

    again = invoke("run", "--resume", sweep_dir, "--quiet")
    assert (again.exit_code, again.stdout) == (0, f"{sweep_dir}\n")
    assert invoke("run", config, "--resume", sweep_dir).stderr.startswith("error: --resume: give the sweep directory alone")
    assert invoke("run", "--resume", tmp_path).stderr == f"error: --resume: {str(tmp_path)!r} has no sweep.yaml; give a sweep directory (results/<name>/<timestamp>-<id>)\n"


@pytest.mark.slow
def test_ctrl_c_of_a_parallel_sweep_interrupts_the_runs_in_flight(tmp_path):
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", train={"steps": 1_000_000, "eval_every": 100_000})
    process = subprocess.Popen([sys.executable, "-m", "gradlab", "run", str(config), "--jobs", "2", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # both workers are training
            logging = [p for p in (tmp_path / "out").rglob("layers.csv") if p.read_text().count(",head,") >= 5]
            if len(logging) == 2:
                break
            time.sleep(0.1)
        assert len(logging) == 2, "the runs logged nothing in time"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    sweep_dir = Path(stdout.strip())
    index = statuses(sweep_dir)
    assert index == {**{name: "pending" for name in NAMES}, NAMES[0]: "interrupted", NAMES[1]: "interrupted"}
    for name in NAMES[:2]:
        meta = json.loads((sweep_dir / name / "meta.json").read_text())
        layers = pd.read_csv(sweep_dir / name / "layers.csv")
        assert meta["status"] == "interrupted"
        assert (layers.groupby("step").size() == 5).all()  # 4 blocks + head: whole steps only
        assert layers["step"].max() < meta["steps_done"] <= layers["step"].max() + 5  # logged every 5 steps
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(NAMES[:2])


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_runs_through_ray_into_the_same_layout(tmp_path, serial_sweep, invoke):
    pytest.importorskip("ray", reason="Ray is not installed; pip install 'gradlab[ray]' to run this test")
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out")
    result = invoke("run", config, "--executor", "ray", "--quiet")
    assert result.exit_code == 0, result.output
    sweep_dir = Path(result.stdout.strip())
    assert statuses(sweep_dir) == {name: "completed" for name in NAMES}
    for name in NAMES:
        assert sorted(p.name for p in (sweep_dir / name).iterdir()) == ["config.yaml", "layers.csv", "meta.json", "metrics.csv"]
        assert (sweep_dir / name / "layers.csv").read_bytes() == (serial_sweep / name / "layers.csv").read_bytes(), name
        assert json.loads((sweep_dir / name / "meta.json").read_text())["run_id"] == name


@pytest.mark.slow
def test_duration_s_starts_after_the_workers_start_up(tmp_path):
    # issue 11: sweep.csv's duration_s of the first run in a worker included its start-up (15 s
    # against 0.4 s for the next run of the same size): the clock starts after the modules a run
    # needs are imported and torch's kernels are set up. Checked in a fresh interpreter.
    import os
    import subprocess
    import sys

    script = f"""
import sys, time
from gradlab.orchestrate import member
from gradlab.config.experiment import validate
seen = []
real = time.perf_counter
def clock():
    seen.append(sorted(m for m in member.WARM_MODULES if m in sys.modules))
    return real()
member.time.perf_counter = clock
config = validate({{"name": "w", "device": "cpu", "data": {{"name": "gaussian", "dim": 4, "classes": 2, "n_train": 16, "n_test": 8, "batch_size": 8}},
                    "model": {{"depth": 1, "width": 4}}, "train": {{"steps": 2, "eval_every": 2}}, "log": {{"every": 1}}}}).model_dump(mode="json")
result = member.run_member(member.MemberTask(0, "w", {str(tmp_path / 'w')!r}, config, 1))
assert result.status == "completed", result
assert seen[0] == sorted(member.WARM_MODULES), seen[0]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_workers_started_early_are_stopped_when_the_sweep_does_not_run(tmp_path, invoke):
    # --jobs N starts its workers before the sweep is planned, so that their start-up overlaps the
    # planning and the memory check; a sweep refused by that check must not leave them behind.
    from gradlab.orchestrate import local_pool

    killed = []
    real_kill = local_pool._Pool.kill

    def kill(pool):
        killed.append((pool, list((pool.executor._processes or {}).values())))
        real_kill(pool)

    out = tmp_path / "out"
    config = write_config(tmp_path / "grid.yaml", out, sweep={"model.activation": ["relu", "tanh"], "model.norm": ["none", {"name": "groupnorm", "groups": 4}]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_pool._Pool, "kill", kill)
        result = invoke("run", config, "--sweep", "model.width=16,10", "--jobs", "2")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: sweep model.norm={name: groupnorm, groups: 4}, model.width=10: ")
    assert not out.exists()
    [(pool, processes)] = killed
    assert local_pool._EARLY is None
    manager = pool.executor._executor_manager_thread
    if manager is not None:  # a worker still starting when it was killed is sent away by the manager
        manager.join(timeout=120)
        assert not manager.is_alive()
    for process in processes:
        process.join(timeout=60)
        assert not process.is_alive()


def test_a_parallel_sweep_runs_on_the_workers_started_early(tmp_path, serial_sweep, invoke):
    from gradlab.orchestrate import local_pool

    created = []
    real_create = local_pool._Pool.create

    def create(jobs):
        created.append(jobs)
        return real_create(jobs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_pool._Pool, "create", staticmethod(create))
        result = invoke("run", write_config(tmp_path / "grid.yaml", tmp_path / "out"), "--quiet", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert created == [2]  # one pool: the one started before planning
    sweep_dir = Path(result.stdout.strip())
    for name in NAMES:
        assert (sweep_dir / name / "layers.csv").read_bytes() == (serial_sweep / name / "layers.csv").read_bytes(), name


def test_the_forkserver_ends_without_finalizing_so_a_pipe_on_the_output_closes_with_the_sweep():
    # the forkserver holds the command's stdout and stderr; finalizing an interpreter with torch
    # loaded kept a reader's pipe open ~1.5 s after `gradlab run --jobs 2` had exited
    from gradlab.orchestrate import local_pool

    assert local_pool.WORKER_PRELOAD[-1] == "gradlab.orchestrate.forkserver_exit"
    script = "import atexit\natexit.register(print, 'finalized')\nimport gradlab.orchestrate.forkserver_exit\nraise SystemExit(3)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# The parent of a `--jobs N` sweep (issue 22): planning, the memory check on a worker, collecting.
_MODULES_AT_EXIT = """
import atexit, json, sys
out = sys.argv.pop(1)
def write_modules():
    with open(out, "w") as file:
        json.dump(sorted(name for name in ("torch", "pandas", "numpy", "matplotlib") if name in sys.modules), file)
atexit.register(write_modules)
from gradlab.cli.app import main
sys.argv[0] = "gradlab"
main()
"""


def _cli_with_modules(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`gradlab ARGS` in a fresh process; also the heavy modules that process had imported at exit."""
    import os

    modules = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", _MODULES_AT_EXIT, str(modules), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return done, json.loads(modules.read_text())


@pytest.mark.slow
def test_the_parent_of_a_parallel_sweep_imports_neither_torch_nor_pandas(tmp_path):
    # the memory check (a forward pass on the meta device) runs on a worker, which has torch; the
    # runs' expect: sections are checked by their members; the parent plans and collects
    expect = {"status": "completed", "gain": {"step": 0, "between": [0.0, 1.0e9]}}
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", sweep=None, expect=expect)
    done, modules = _cli_with_modules(tmp_path, "run", str(config), "--jobs", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 runs: 2 completed" in done.stdout
    assert not {"torch", "pandas", "matplotlib"} & set(modules), modules  # (numpy: the members' expect: outcomes, unpickled)
    assert {row["status"] for row in read_index(the_sweep_dir(tmp_path / "out"))} == {"completed"}


@pytest.mark.slow
def test_a_parallel_sweep_refused_by_the_memory_check_on_a_worker_says_so_in_one_line(tmp_path):
    config = write_config(tmp_path / "grid.yaml", tmp_path / "out", sweep=None, model={**BASE["model"], "depth": 10000, "width": 100000})
    serial, _ = _cli_with_modules(tmp_path, "run", str(config), "--jobs", "1")
    done, modules = _cli_with_modules(tmp_path, "run", str(config), "--jobs", "2")
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = done.stderr.splitlines()
    assert line.startswith("error: model: this experiment needs up to ") and "Traceback" not in done.stderr
    assert (serial.returncode, serial.stderr.split(" but ")[0]) == (2, line.split(" but ")[0])  # as checked in this process (free memory aside)
    assert not {"torch", "pandas"} & set(modules) and not (tmp_path / "out").exists()
