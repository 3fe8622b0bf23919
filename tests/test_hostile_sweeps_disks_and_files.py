"""Hostile conditions around sweeps and files: concurrent commands on one sweep, orphaned workers,
full disks, hostile files and silently wrong numbers (test_hostile_runs.py has the runs). Each test reproduces what broke: bad input is one
`error: ` line and exit 2, nothing already written is lost, and no number is made up.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from gradlab.orchestrate import sweep as sweeps
from gradlab.records import layout
from gradlab.orchestrate import sweep_lock
from gradlab.orchestrate import sweep_plan
from gradlab.orchestrate import sweep_resources
from gradlab.vocab.errors import ConfigError
from run_factory import SWEEP_BASE, assert_one_error, fill_disk, start_long_run, wait_for_rows, write_yaml

ROOT = Path(__file__).resolve().parents[1]

BASE = SWEEP_BASE


def sweep_config(tmp_path: Path, **changes) -> Path:
    data = {**BASE, "log": {**BASE["log"], "out": str(tmp_path / "out")}, "sweep": {"model.activation": ["relu", "tanh"]}, "seeds": [0], **changes}
    return write_yaml(tmp_path / "grid.yaml", data)


def read_index(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with open(sweep_dir / layout.SWEEP_INDEX_FILE, newline="") as file:
        return {row["run"]: row for row in csv.DictReader(file)}



def python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gradlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def wait_until(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------------------------
# 1. One owner per sweep directory
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_command_on_a_running_sweep_is_refused_naming_the_holder(tmp_path, invoke_wide):
    config = sweep_config(tmp_path, train={"steps": 1_000_000, "eval_every": 100_000})
    first = python("run", str(config), "--quiet")
    try:
        layers = wait_until(lambda: [p for p in (tmp_path / "out").rglob("layers.csv") if p.read_text().count(",head,") >= 2], what="the first run logging")
        sweep_dir = layers[0].parent.parent
        before = {p.name: p.stat().st_ino for p in sweep_dir.iterdir()}
        result = invoke_wide("run", "--resume", sweep_dir)
        assert_one_error(result, str(sweep_dir), f"in use by another gradlab command (pid {first.pid} on host ", " since ")
        assert result.stdout == ""
        assert {p.name: p.stat().st_ino for p in sweep_dir.iterdir()} == before  # nothing deleted or replaced
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130
    assert "running" not in {row["status"] for row in read_index(sweep_dir).values()}


def test_the_lock_dies_with_a_killed_owner_and_resume_keeps_completed_runs(tmp_path, invoke_wide):
    config = sweep_config(tmp_path)
    sweep_dir = Path(invoke_wide("run", config, "--quiet").stdout.strip())
    # what a killed command leaves: the index says running, the runs' own records say completed
    rows = read_index(sweep_dir)
    for row in rows.values():
        row["status"], row["duration_s"] = "running", "not a number"
    with open(sweep_dir / layout.SWEEP_INDEX_FILE, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(next(iter(rows.values()))), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows.values())
    meta_before = {name: (sweep_dir / name / "meta.json").read_text() for name in rows}
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(sweep_dir / sweep_lock.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert_one_error(invoke_wide("run", "--resume", sweep_dir), "in use by another gradlab command")
    finally:
        holder.kill()
        holder.wait()
    result = invoke_wide("run", "--resume", sweep_dir)
    assert result.exit_code == 0, result.output
    assert {name: row["status"] for name, row in read_index(sweep_dir).items()} == {name: "completed" for name in rows}
    assert {name: (sweep_dir / name / "meta.json").read_text() for name in rows} == meta_before  # trusted, not run again


# --------------------------------------------------------------------------------------------
# 2. Workers die with their parent; SIGHUP is SIGTERM
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_of_a_killed_parallel_sweep_stop_and_close_their_records(tmp_path):
    config = sweep_config(tmp_path, train={"steps": 1_000_000, "eval_every": 100_000})
    parent = python("run", str(config), "--jobs", "2", "--quiet")
    try:
        wait_until(lambda: len([p for p in (tmp_path / "out").rglob("layers.csv") if p.read_text().count(",head,") >= 2]) == 2, what="both runs logging")
        below = descendants(parent.pid)
        assert below
        parent.kill()
        parent.wait()
        # each run closes its records at its next step and its worker exits then, long before the
        # 10 s after which an orphaned worker is ended whatever its run does
        wait_until(lambda: not any(alive(pid) for pid in below), timeout=8, what="the workers ending")
    finally:
        parent.kill()
    sweep_dir = next((tmp_path / "out").rglob(layout.SWEEP_INDEX_FILE)).parent
    for run in sweep_dir.iterdir():
        if run.is_dir():
            assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_sighup_closes_a_run_as_interrupted(tmp_path):

    process = start_long_run(tmp_path)
    try:
        run = wait_for_rows(tmp_path, 3)
        process.send_signal(signal.SIGHUP)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 129, stderr
    assert "Traceback" not in stderr
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"


# --------------------------------------------------------------------------------------------
# 4. Overlapping sweep axes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axes, line",
    [
        ({"model.depth": [1, 2], "model": [{"width": 4}]}, "sweep: the axes model and model.depth overlap (model sets model.depth too); sweep each key once, e.g. model.depth alone or a list of whole model values"),
        ({"model.norm": ["none", "batchnorm"], "model.norm.placement": ["pre", "post"]}, "sweep: the axes model.norm and model.norm.placement overlap (model.norm sets model.norm.placement too); sweep each key once, e.g. model.norm.placement alone or a list of whole model.norm values"),
    ],
)
def test_overlapping_sweep_axes_are_a_config_error(tmp_path, axes, line, invoke_wide):
    with pytest.raises(ConfigError) as error:
        sweep_plan.plan_sweep({**BASE, "sweep": axes})
    assert error.value.lines == [line]
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "sweep": {"model.depth": [1, 2]}})
    assert_one_error(invoke_wide("validate", config, "--sweep", "model={width: 4}"), "sweep: the axes model and model.depth overlap")


# --------------------------------------------------------------------------------------------
# 3. A full disk
# --------------------------------------------------------------------------------------------

TINY = {**BASE, "name": "tiny", "train": {"steps": 100_000, "eval_every": 1000}, "log": {"every": 1}}


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KB tmpfs (root only); skipped with the reason where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); the full-disk tests need root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


def assert_whole_steps(run: Path, layers_per_step: int = 5) -> int:
    text = (run / "layers.csv").read_text()
    assert text.endswith("\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    steps: dict[str, int] = {}
    for row in rows:
        steps[row["step"]] = steps.get(row["step"], 0) + 1
    assert set(steps.values()) <= {layers_per_step}, steps
    return len(steps)


def test_a_full_disk_is_an_error_of_its_own_with_its_documented_exit_code():
    from gradlab.vocab import errors
    from gradlab.records import run as records

    assert issubclass(errors.DiskFull, errors.GradlabError) and errors.DiskFull.exit_code == errors.DISK_FULL_EXIT == 74
    assert not hasattr(records, "DISK_FULL_EXIT")  # one home: gradlab.vocab.errors
    # the exit code the documentation gives a failed run on a full disk (docs/troubleshooting.md)
    page = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    failed = next(line for line in page.splitlines() if line.startswith("| `failed` |"))
    assert f"{errors.DISK_FULL_EXIT} (disk full)" in failed.rsplit("|", 2)[1]


def test_a_disk_that_fills_during_a_run_is_one_line_and_a_failed_run_with_whole_steps(tmp_path, small_disk, invoke_wide):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    result = invoke_wide("run", config, "--out", small_disk / "out", "--quiet")
    line = assert_one_error(result, "no space left on the device while writing", code=74)
    [run] = [p.parent for p in (small_disk / "out").rglob("meta.json")]
    assert str(run) in line
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "failed" and "no space left" in meta["error"]
    assert assert_whole_steps(run) > 1
    assert leftovers(small_disk) == []


def test_a_full_disk_at_the_start_leaves_no_half_made_run_directory(tmp_path, small_disk, invoke_wide):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    (small_disk / "out").mkdir()
    fill_disk(small_disk)
    result = invoke_wide("run", config, "--out", small_disk / "out", "--quiet")
    assert_one_error(result, "no space left on the device while writing", code=74)
    assert not [p for p in (small_disk / "out").rglob("*") if p.is_file()]
    assert leftovers(small_disk) == []


def test_a_sweep_on_a_disk_that_fills_leaves_no_running_row_and_no_temporary_file(tmp_path, small_disk, invoke_wide):
    config = sweep_config(tmp_path, train={"steps": 100_000, "eval_every": 1000}, log={"every": 1, "out": str(small_disk / "out")})
    result = invoke_wide("run", config, "--quiet")
    assert result.exit_code in (1, 74), result.output
    assert "Traceback" not in result.output
    sweep_dir = next((small_disk / "out").rglob(layout.SWEEP_SPEC_FILE)).parent
    assert "running" not in {row["status"] for row in read_index(sweep_dir).values()}
    for run in sweep_dir.iterdir():
        if (run / "layers.csv").exists():
            assert_whole_steps(run)
    assert leftovers(small_disk) == []


# --------------------------------------------------------------------------------------------
# 5. A step with fewer rows than the run's layers
# --------------------------------------------------------------------------------------------


def finished_run(tmp_path: Path, **changes) -> Path:
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment

    config = {**BASE, "name": "cut", "model": {**BASE["model"], "depth": 5}, "log": {"every": 5, "out": str(tmp_path / "runs")}, **changes}
    return run_experiment(validate(config)).run_dir


@pytest.mark.parametrize("keep", [1, 2, 5])
def test_a_completed_run_cut_at_a_row_boundary_inside_its_last_step_says_so_and_excludes_it(tmp_path, keep, invoke_wide):
    run = finished_run(tmp_path, expect={"dead_frac": {"max": 1.0}})
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    lines = (run / "layers.csv").read_text().splitlines(keepends=True)
    whole = tmp_path / "whole"
    (whole / "runs").mkdir(parents=True)
    reference = whole / "runs" / run.name
    import shutil

    shutil.copytree(run, reference)
    (reference / "layers.csv").write_text("".join(lines[:-6]))  # the last step never written
    (run / "layers.csv").write_text("".join(lines[: -6 + keep]))  # cut after `keep` of its 6 rows
    cut = invoke_wide("compare", run, "--format", "csv")
    assert cut.exit_code == 0, cut.output
    assert f"warning: {run}: step 20 of layers.csv has only {keep} of 6 layers; that step is left out" in cut.stderr.splitlines()
    expected = invoke_wide("compare", reference, "--format", "csv")
    assert cut.stdout == expected.stdout  # the numbers of the whole steps, not of a third of a network
    check = invoke_wide("check", run)
    assert "step 20 of layers.csv has only" in check.stderr


# --------------------------------------------------------------------------------------------
# 6. Alias bombs, huge files, FIFOs and devices
# --------------------------------------------------------------------------------------------

# nine levels of ten: 10^9 values from 300 bytes
BOMB_ANCHORS = "".join(
    f"x{level}: &l{level} [{', '.join([f'*l{level - 1}' if level else 'x'] * 10)}]\n" for level in range(9)
)
FLOW_BOMB = "[" + ", ".join(
    f"&f{level} [{', '.join([f'*f{level - 1}' if level else 'x'] * 10)}]" for level in range(9)
) + "]"
TOO_LARGE = "expands to more than 100,000 values (YAML aliases repeat anchors); gradlab refuses documents that large"


def bomb_config(tmp_path: Path, where: str) -> Path:
    """The tiny config with the bomb's last level at `where` (a dotted key); the anchors ride along
    under a key the config forbids, so the bomb is built before any validation."""
    lines = [f"{line}" for line in BOMB_ANCHORS.splitlines()]
    data = {**BASE, "log": {**BASE["log"], "out": str(tmp_path / "out")}}
    text = yaml.safe_dump(data, sort_keys=False)
    parts = where.split(".")
    value = "*l8"
    for part in reversed(parts[1:]):
        value = f"{{{part}: {value}}}"
    text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{parts[0]}:")) + f"\n{parts[0]}: {value}\n"
    path = tmp_path / f"bomb-{where}.yaml"
    path.write_text("\n".join(lines) + "\n" + text)
    return path


@pytest.mark.parametrize("where", ["name", "log.probes", "model.activation", "expect.status", "seeds", "sweep.model.depth"])
def test_an_alias_bomb_anywhere_in_a_config_is_refused_at_once(tmp_path, where, invoke_wide):
    config = bomb_config(tmp_path, where)
    for command in ("validate", "run"):
        began = time.perf_counter()
        result = invoke_wide(command, config)
        assert_one_error(result, f"config: {str(config)!r} {TOO_LARGE}")
        assert time.perf_counter() - began < 5
    assert not (tmp_path / "out").exists()


def test_alias_bombs_in_set_and_sweep_values_are_refused(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "log": {**BASE["log"], "out": str(tmp_path / "out")}})
    assert_one_error(invoke_wide("validate", config, "--set", f"name={FLOW_BOMB}"), f"--set name: the value {TOO_LARGE}")
    assert_one_error(invoke_wide("validate", config, "--sweep", f"model.depth={FLOW_BOMB}"), f"--sweep model.depth: the values {TOO_LARGE}")
    assert_one_error(invoke_wide("validate", config, "--set", "name=&a [*a]"), "--set name")


def test_a_huge_value_is_never_formatted_whole_in_an_error(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "name": "n" * 500_000, "device": "d" * 500_000})
    began = time.perf_counter()
    result = invoke_wide("validate", config)
    assert time.perf_counter() - began < 5
    assert result.exit_code == 2
    assert max(len(line) for line in result.stderr.splitlines()) < 300, result.stderr[:500]


def test_a_config_that_is_too_large_a_fifo_or_a_device_is_one_line(tmp_path, invoke_wide):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# padding\n" * 250_000)
    assert_one_error(invoke_wide("validate", big), f"config: {str(big)!r} is 2.5 MB; gradlab reads YAML files of at most 1 MB")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    began = time.perf_counter()
    assert_one_error(invoke_wide("validate", fifo), f"config: {str(fifo)!r} is a FIFO, not a regular file")
    assert time.perf_counter() - began < 5
    assert_one_error(invoke_wide("validate", "/dev/zero"), "config: '/dev/zero' is a device, not a regular file")


def test_keys_1_and_true_are_named_as_written(tmp_path, invoke_wide):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  1: a\n  true: b\n")
    assert_one_error(invoke_wide("validate", config), "found key 'true', the same key as '1' (first given at line 2)")
    config.write_text("name: a\nname: b\n")
    assert_one_error(invoke_wide("validate", config), "found duplicate key 'name' (first given at line 1)")


def test_a_hostile_run_config_does_not_block_compare_of_the_others(tmp_path, invoke_wide):
    good = finished_run(tmp_path)
    hostile = good.parent / "20990101-000000-bomb00"
    import shutil

    shutil.copytree(good, hostile)
    (hostile / "config.yaml").write_text(BOMB_ANCHORS)
    began = time.perf_counter()
    result = invoke_wide("compare", tmp_path / "runs", "--format", "csv")
    assert time.perf_counter() - began < 10
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"warning: {hostile}: config.yaml {TOO_LARGE}; skipped"]
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 1


@pytest.mark.parametrize("dense", ["{" + "a," * 24_998 + "a}", "[" + "[]," * 16_000 + "[]]", "-\n" * 24_999, "? \n" * 16_000, "a:\n" * 16_666, "- - - - - -\n" * 4_000])
def test_a_document_without_aliases_below_the_small_size_cannot_be_too_large(dense):
    """load_guarded counts no size for a document without aliases under SMALL_WITHOUT_ALIASES
    characters: the densest YAML holds at most one value per character, far under MAX_NODES."""
    from gradlab.vocab import yamlio

    assert len(dense) < yamlio.SMALL_WITHOUT_ALIASES
    values, chars = yamlio.expanded_size(yaml.compose(dense, Loader=yaml.SafeLoader))
    assert values <= len(dense) + 1 < yamlio.MAX_NODES and chars <= len(dense) < yamlio.MAX_CHARS


@pytest.mark.slow
def test_a_large_document_without_aliases_is_still_counted():
    from gradlab.vocab import yamlio

    with pytest.raises(yamlio.TooLarge):
        yamlio.load_guarded("[" + "0," * 150_000 + "0]", yamlio.RecordLoader)


def test_the_record_loader_reads_what_the_safe_loader_reads():
    """RecordLoader remembers scalars' tags: the same documents, read twice (remembered) included."""
    from gradlab.vocab import yamlio

    texts = [path.read_text() for path in sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.yaml"))]
    texts.append("a: [1, 1.5, .inf, -.inf, 0x10, 0o7, 1_000, 1:30, yes, No, ~, null, '1', 2024-01-01, 2001-12-14t21:59:43.10-05:00]\n")
    texts.append("b: {x: 1e3, y: 1.0e+3, z: !!str 5, w: !!float 2, '<<': {m: 1}}\n")
    for _ in range(2):
        for text in texts:
            expected = yaml.load(text, Loader=yaml.SafeLoader)
            assert repr(yamlio.load_guarded(text, yamlio.RecordLoader)) == repr(expected)


# --------------------------------------------------------------------------------------------
# 9. One damaged run among good ones
# --------------------------------------------------------------------------------------------


def damage(run: Path, how: str) -> str:
    if how == "meta_list":
        (run / "meta.json").write_text("[1, 2, 3]")
        return f"{run}: meta.json holds list, not an object of run facts; skipped"
    if how == "empty_step":
        lines = (run / "layers.csv").read_text().splitlines(keepends=True)
        (run / "layers.csv").write_text(lines[0] + "".join("," + line.split(",", 1)[1] for line in lines[1:]))
        return f"{run}: layers.csv: column step holds empty or non-integer values; the rows cannot be placed in steps; skipped"
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("model:\n", "model: 5\nmodel_was:\n", 1))
    return f"{run}: config.yaml: model is int, not a mapping (not a config gradlab wrote); skipped"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["meta_list", "empty_step", "model_5"])
def test_one_damaged_run_is_skipped_with_one_line_by_compare_check_and_plot(tmp_path, how, invoke_wide):
    import shutil

    good = finished_run(tmp_path, expect={"status": "completed"})
    other = good.parent / "20990101-000000-other0"
    shutil.copytree(good, other)
    bad = good.parent / "20990101-000000-broken"
    shutil.copytree(good, bad)
    line = damage(bad, how)
    compared = invoke_wide("compare", tmp_path / "runs", "--format", "csv")
    assert compared.exit_code == 0, compared.output
    assert compared.stderr.splitlines() == [f"warning: {line}"]
    [row] = list(csv.DictReader(io.StringIO(compared.stdout)))  # the two good runs, one configuration
    assert row["seeds"] == "2"
    plotted = invoke_wide("plot", tmp_path / "runs", "--output", tmp_path / "figures")
    assert plotted.exit_code == 0, plotted.output
    assert plotted.stderr.splitlines() == [f"warning: {line}"]
    checked = invoke_wide("check", tmp_path / "runs")
    assert "Traceback" not in checked.output
    assert checked.exit_code == 2  # a run that cannot be checked is said, the others checked
    assert f"  ERROR  {line.removesuffix('; skipped')}" in checked.stdout.splitlines()
    assert checked.stdout.splitlines()[-1] == "2 expectations on 3 runs: 2 passed, 0 failed"


# --------------------------------------------------------------------------------------------
# 7. Numbers beyond float32, a CNN on vectors
# --------------------------------------------------------------------------------------------

BEYOND = "beyond float32's range: the value must be at most 3.4e+38 in magnitude (the network computes in float32)"


@pytest.mark.parametrize(
    "change, key",
    [
        ({"optim": {"name": "sgd", "lr": 1e300}}, "optim.lr: got 1e+300"),
        ({"optim": {"name": "adam", "weight_decay": 1e39}}, "optim.weight_decay: got 1e+39"),
        ({"model": {"activation": {"name": "leaky_relu", "negative_slope": 1e300}}}, "model.activation.negative_slope: got 1e+300"),
        ({"model": {"activation": {"name": "elu", "alpha": 1e300}}}, "model.activation.alpha: got 1e+300"),
        ({"model": {"activation": {"name": "hardtanh", "min_val": -1e300}}}, "model.activation.min_val: got -1e+300"),
        ({"model": {"activation": {"name": "rrelu", "upper": 1e300}}}, "model.activation.upper: got 1e+300"),
        ({"model": {"activation": {"name": "prelu", "init": -1e300}}}, "model.activation.init: got -1e+300"),
        ({"model": {"init": {"weight": {"name": "constant", "value": 1e300}}}}, "model.init.weight.value: got 1e+300"),
        ({"model": {"init": {"weight": {"name": "uniform", "a": -1e300}}}}, "model.init.weight.a: got -1e+300"),
        ({"model": {"init": {"weight": {"name": "kaiming_normal", "a": 1e300}}}}, "model.init.weight.a: got 1e+300"),
    ],
)
def test_a_float_parameter_beyond_float32_is_refused_at_validation(tmp_path, change, key, invoke_wide):
    config = {**BASE, "log": {**BASE["log"], "out": str(tmp_path / "out")}, **change}
    if "model" in change:
        config["model"] = {**BASE["model"], **change["model"]}
    path = write_yaml(tmp_path / "c.yaml", config)
    assert_one_error(invoke_wide("validate", path), f"{key}; {BEYOND}")
    assert_one_error(invoke_wide("run", path), f"{key}; {BEYOND}")
    assert not (tmp_path / "out").exists()


def test_a_uniform_interval_wider_than_float32_is_refused(tmp_path, invoke_wide):
    config = {**BASE, "model": {**BASE["model"], "init": {"weight": {"name": "uniform", "a": -3e38, "b": 3e38}}}}
    assert_one_error(invoke_wide("validate", write_yaml(tmp_path / "c.yaml", config)), "b - a (6e+38) must be at most 3.4e+38, float32's largest number")


def test_a_cnn_on_vectors_from_an_npz_is_the_shape_error(tmp_path, invoke_wide):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x_train=rng.random((64, 10), dtype=np.float32), y_train=np.arange(64) % 3, x_test=rng.random((32, 10), dtype=np.float32), y_test=np.arange(32) % 3)
    config = {**BASE, "data": {"name": "npz", "path": str(tmp_path / "v.npz"), "classes": 3, "n_train": 64, "n_test": 32, "batch_size": 32},
              "model": {"kind": "cnn", "depth": 2, "width": 4}, "log": {"every": 5, "out": str(tmp_path / "out")}}  # fmt: skip
    assert_one_error(invoke_wide("run", write_yaml(tmp_path / "c.yaml", config)), "model.kind cnn needs (channels, height, width) inputs; the data has shape (10,)")


# --------------------------------------------------------------------------------------------
# 10. Output paths that cannot be written
# --------------------------------------------------------------------------------------------


def test_bad_output_paths_are_one_line_before_any_work(tmp_path, invoke_wide):
    run = finished_run(tmp_path, expect={"status": "completed"})
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (("compare", run, "--output", folder), f"--output: {str(folder)!r} is a folder; give the file to write"),
        (("compare", run, "--output", tmp_path / "missing" / "t.txt"), f"--output: cannot write {str(tmp_path / 'missing' / 't.txt')!r}: the folder {str(tmp_path / 'missing')!r} does not exist"),
        (("compare", run, "--output", a_file / "t.txt"), f"--output: cannot write {str(a_file / 't.txt')!r}: {str(a_file)!r} is a file, not a folder"),
        (("check", run, "--junit", folder), f"--junit: {str(folder)!r} is a folder; give the file to write"),
        (("check", run, "--junit", a_file / "j.xml"), f"--junit: cannot write {str(a_file / 'j.xml')!r}: {str(a_file)!r} is a file, not a folder"),
        (("plot", run, "--output", a_file / "figs"), f"--output: cannot create {str(a_file / 'figs')!r}: {str(a_file)!r} is a file, not a folder"),
        (("plot", run, "--output", a_file), f"--output: {str(a_file)!r} is a file, not a folder"),
    ]
    for args, line in cases:
        result = invoke_wide(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr == f"error: {line}\n", args
        assert result.stdout == "", args  # checked before any work: nothing compared, checked or drawn
    assert sorted(p.name for p in folder.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 8. Data files whose declared shapes are huge; N runs at once
# --------------------------------------------------------------------------------------------


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})  # magic included
    return buffer.getvalue()


def lying_npz(path: Path, rows_declared: int, features: int, rows_present: int) -> Path:
    """An .npz whose x and y declare `rows_declared` rows but hold only the first `rows_present`."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_header((rows_declared, features), "<f4") + rng.random((rows_present, features), dtype=np.float32).tobytes())
        archive.writestr("y.npy", npy_header((rows_declared,), "<i8") + (np.arange(rows_present) % 4).astype("<i8").tobytes())
    return path


def npz_config(tmp_path: Path, path: Path, **data) -> Path:
    return write_yaml(tmp_path / "c.yaml", {**BASE, "data": {"name": "npz", "path": str(path), "classes": 4, "n_train": 256, "n_test": 64, "batch_size": 64, **data}, "log": {"every": 5, "out": str(tmp_path / "out")}})


def test_an_npz_declaring_gigabytes_is_read_only_as_far_as_the_examples_used(tmp_path, invoke_wide):
    path = lying_npz(tmp_path / "big.npz", rows_declared=1_000_000, features=1000, rows_present=400)  # declares 4 GB
    assert path.stat().st_size < 2_000_000
    result = invoke_wide("run", npz_config(tmp_path, path, dim=1000), "--quiet")
    assert result.exit_code == 0, result.output  # 320 rows read; the 4 GB never allocated


@pytest.mark.slow
def test_an_npz_whose_used_rows_cannot_fit_is_refused_from_its_declared_shape(tmp_path, invoke_wide):
    path = lying_npz(tmp_path / "huge.npz", rows_declared=10**7, features=10**8, rows_present=0)  # 4 PB declared, nothing present: refused from the header alone
    result = invoke_wide("run", npz_config(tmp_path, path), "--quiet")
    assert_one_error(result, "npz file", "x declares shape (10000000, 100000000) of float32; its first 320 rows need", "lower data.n_train/n_test")
    assert not (tmp_path / "out").exists()


def idx_header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


def test_an_idx_file_declaring_or_inflating_to_gigabytes_is_refused_without_decompressing_it(tmp_path, invoke_wide):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 256), ("t10k", 64)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_header(2051, n, 28, 28) + bytes(n * 784)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_header(2049, n) + bytes(i % 10 for i in range(n))))
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "data": {"name": "mnist", "path": str(folder), "classes": 10, "n_train": 256, "n_test": 64, "batch_size": 64}, "log": {"every": 5, "out": str(tmp_path / "out")}})
    images = folder / "train-images-idx3-ubyte.gz"
    labels = folder / "train-labels-idx1-ubyte.gz"
    # declares 3 TB and holds the 256 images used: only those are read
    images.write_bytes(gzip.compress(idx_header(2051, 4_000_000_000, 28, 28) + bytes(256 * 784)))
    labels.write_bytes(gzip.compress(idx_header(2049, 4_000_000_000) + bytes(i % 10 for i in range(256))))
    result = invoke_wide("run", config, "--quiet")
    assert result.exit_code == 0, result.output
    # declares images whose first 256 alone cannot fit: refused before anything is read
    images.write_bytes(gzip.compress(idx_header(2051, 4_000_000_000, 100_000, 100_000)))
    assert_one_error(invoke_wide("run", config), f"mnist file {str(images)!r}: its header declares 4000000000x100000x100000; the first 256 examples used are ", "more than fits in the")
    labels.write_bytes(gzip.compress(idx_header(2049, 256) + bytes(i % 10 for i in range(256))))
    # an honest header, then a stream that inflates on and on: stopped one chunk past the payload
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = stream.compress(idx_header(2051, 256, 28, 28) + bytes(256 * 784)) + b"".join(stream.compress(bytes(1 << 20)) for _ in range(256)) + stream.flush()
    images.write_bytes(body)  # 256 MB of zeros past the payload, in a quarter of a megabyte
    began = time.perf_counter()
    assert_one_error(invoke_wide("run", config), f"mnist file {str(images)!r}: has trailing bytes: header says 256x28x28 = 200704 payload bytes, found ")
    assert time.perf_counter() - began < 10


def test_jobs_n_checks_that_n_runs_fit_in_memory_together(tmp_path, monkeypatch):
    from gradlab.build import memory

    plan = sweep_plan.plan_sweep({**BASE, "sweep": {"model.width": [16, 32, 64]}})
    sizes = []
    for member in plan.members:
        from gradlab.config.experiment import validate
        from gradlab.vocab.datasets import known_input_shape

        exp = validate(member.config)
        need = memory.estimate(exp, known_input_shape(exp.data), exp.data.classes)
        sizes.append(max(need.total, max(need.peak_training, need.peak_evaluation)))
    free = sorted(sizes)[-1] + sorted(sizes)[-2] - 1  # the two largest do not fit together; each alone does
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": free)
    sweep_resources.check_resources(plan, 1)
    with pytest.raises(ConfigError) as error:
        sweep_resources.check_resources(plan, 2)
    [line] = error.value.lines
    assert line.startswith("--jobs 2: 2 runs at once need up to ") and line.endswith("; use --jobs 1 or fewer"), line
    assert "model.width=64" in line


# --------------------------------------------------------------------------------------------
# 12. Scale: many runs are drawn as their distribution
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plot_of_many_runs_draws_their_median_and_band_and_says_so(tmp_path):
    from run_factory import one_run

    from gradlab.show import plots

    count = plots.MAX_RUNS_DRAWN + 1
    runs = [one_run(tmp_path, [2.0 ** (k + i % 5) for k in range(3)], run_id=f"{i:06d}", seed=i) for i in range(count)]
    figures = plots.build_figures(runs)
    assert set(figures) == set(plots.FIGURES)
    for stem, figure in figures.items():
        assert f"{count} runs, too many" in figure.get_suptitle(), stem
    step0 = figures["depth_profile_delta_norm"].axes[0]
    [median] = [line for line in step0.get_lines() if line.get_label() == "median of the runs"]
    expected = [float(np.median([2.0 ** (k + i % 5) for i in range(count)])) for k in range(3)]
    assert median.get_ydata().tolist() == expected  # the median over the runs, layer by layer
    assert len(step0.get_lines()) == 1  # not a line per run
    assert len(figures["heatmap_delta_norm"].axes) == 2  # one panel and its colour bar, not one per run
    paths = plots.save_figures(figures, tmp_path / "figures")
    assert [p.name for p in paths] == [f"{stem}.png" for stem in figures]


# --------------------------------------------------------------------------------------------
# 11. The smaller ones
# --------------------------------------------------------------------------------------------


def test_sweep_values_nested_thousands_deep_or_with_duplicate_keys_are_one_line(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "c.yaml", BASE)
    deep = "[" * 3000 + "]" * 3000
    assert_one_error(invoke_wide("validate", config, "--sweep", f"model.depth={deep}"), "--sweep model.depth: ", "is not a comma-separated list of YAML values (nested too deeply)")
    line = assert_one_error(invoke_wide("validate", config, "--sweep", "model.activation={name: elu, alpha: 1, alpha: 2}"), "--sweep model.activation: ")
    assert "duplicate key 'alpha'" in line


def test_odd_layer_and_kind_values_in_layers_csv_are_said(tmp_path, invoke_wide):
    run = finished_run(tmp_path)
    text = (run / "layers.csv").read_text()
    lines = text.splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[1] = "1.5"
    lines[1] = ",".join(fields)
    lines[-2] = lines[-2].replace(",hidden,", ",HIDDEN,")  # (another row: the last step's last hidden layer)
    (run / "layers.csv").write_text("".join(lines))
    result = invoke_wide("compare", run, "--format", "csv")
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert f"warning: {run}: layers.csv: 1 rows have a layer that is not a whole number (e.g. 1.5); they are left out" in warnings
    assert any(line.startswith(f"warning: {run}: layers.csv: kind 'HIDDEN' in 1 rows is not one gradlab writes") for line in warnings), warnings


def test_a_dangling_symlink_as_log_out_is_called_a_link(tmp_path, invoke_wide):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "log": {**BASE["log"], "out": str(tmp_path / "out")}})
    assert_one_error(invoke_wide("run", config), f"log.out: {str(tmp_path / 'out')!r} is a symbolic link to {str(tmp_path / 'nowhere')!r}, which does not exist")


def test_a_planted_symlink_at_out_name_is_followed_and_the_real_path_printed(tmp_path, invoke_wide):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "tiny").symlink_to(tmp_path / "elsewhere")
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "name": "tiny", "log": {**BASE["log"], "out": str(tmp_path / "out")}})
    result = invoke_wide("run", config, "--quiet")
    assert result.exit_code == 0, result.output
    printed = Path(result.stdout.strip())
    assert printed.parent == (tmp_path / "elsewhere").resolve() and (printed / "meta.json").is_file()


def test_absurd_threads_are_refused_before_anything_is_written(tmp_path, invoke_wide):
    config = sweep_config(tmp_path)
    assert_one_error(invoke_wide("run", config, "--threads", "100000"), "--threads: 100000 is more than 4 x the ")
    assert not (tmp_path / "out").exists()


def test_a_run_of_zero_steps_shows_step_0_once(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "c.yaml", {**BASE, "train": {"steps": 0, "eval_every": 10}, "log": {**BASE["log"], "out": str(tmp_path / "out")}})
    result = invoke_wide("run", config)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("delta_norm @ step 0") == 1, result.stdout


def test_resume_right_after_a_kill_lets_the_dying_workers_close_their_records_first(tmp_path, monkeypatch):
    """A run still marked running and written a moment ago may belong to a worker of a sweep killed
    a moment ago (it stops within local_pool.ORPHAN_GRACE_S x 2): --resume waits before removing it."""
    run = tmp_path / "sweep" / "activation=relu,seed=0"
    run.mkdir(parents=True)
    for name in ("layers.csv", "metrics.csv"):
        (run / name).write_text("step\n")
    (run / "meta.json").write_text(json.dumps({"status": "running"}))
    slept = []
    monkeypatch.setattr(sweeps.time, "sleep", slept.append)
    sweeps._let_orphans_finish(tmp_path / "sweep", [run.name])
    assert len(slept) == 1 and 0 < slept[0] <= sweeps.ORPHANS_SETTLE_S
    (run / "meta.json").write_text(json.dumps({"status": "interrupted"}))  # closed: nobody writes there
    sweeps._let_orphans_finish(tmp_path / "sweep", [run.name])
    assert len(slept) == 1
