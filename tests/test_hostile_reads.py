"""Damaged or hostile records read back, attacked (issue 23, items 9, 12, 13 and 14): a run whose
steps cannot exist, a table far larger than its config can produce, a sweep whose run folder was
replaced by a symbolic link, and terminal escape sequences in names and values. Each is one line
(a run skipped, or the command refused), the same in every command, and never a traceback."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from gradlab.records import layout
from run_factory import assert_one_error, write_yaml

BASE = {
    "name": "grid",
    "device": "cpu",
    "data": {"name": "gaussian", "dim": 16, "classes": 4, "n_train": 256, "n_test": 128, "batch_size": 64},
    "model": {"depth": 3, "width": 8, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"steps": 10, "eval_every": 10},
    "log": {"every": 5},
}



def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != ".gradlab.lock"}  # (the lock says who held it last)


# --------------------------------------------------------------------------------------------
# 13. --resume on a sweep whose run folder is a symbolic link
# --------------------------------------------------------------------------------------------


def test_resume_with_a_run_folder_replaced_by_a_link_is_one_line_and_touches_nothing(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "grid.yaml", {**BASE, "log": {**BASE["log"], "out": str(tmp_path / "out")}, "sweep": {"model.activation": ["relu", "tanh"]}, "seeds": [0]})
    sweep_dir = Path(invoke_wide("run", config, "--quiet").stdout.strip())
    with open(sweep_dir / layout.SWEEP_INDEX_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    rows[0]["status"] = "interrupted"
    with open(sweep_dir / layout.SWEEP_INDEX_FILE, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(sweep_dir / rows[0]["run"], elsewhere)
    (sweep_dir / rows[0]["run"]).symlink_to(elsewhere, target_is_directory=True)
    sweep_before, elsewhere_before = snapshot(sweep_dir), snapshot(elsewhere)
    result = invoke_wide("run", "--resume", sweep_dir)
    assert_one_error(result, "--resume:", "is a symbolic link", "nothing was touched")
    assert (sweep_dir / rows[0]["run"]).is_symlink()
    assert snapshot(sweep_dir) == sweep_before and snapshot(elsewhere) == elsewhere_before


# --------------------------------------------------------------------------------------------
# 9. A step that cannot be a step of the run
# --------------------------------------------------------------------------------------------


def _runs_with_a_damaged_step(tmp_path: Path, step: str) -> tuple[Path, Path]:
    from run_factory import one_run

    out = tmp_path / "results"
    one_run(out, [1.0, 0.5, 0.25], name="good", expect={"gain": {"min": 0}})
    damaged = one_run(out, [1.0, 0.5, 0.25], name="bad", run_id="000001", expect={"gain": {"min": 0}}).dir
    layers = damaged / "layers.csv"
    lines = layers.read_text().splitlines()
    lines = [lines[0]] + [(step + line[2:]) if line.startswith("10,") else line for line in lines[1:]]
    layers.write_text("\n".join(lines) + "\n")
    return out, damaged


HUGE_STEPS = ["1e20", "99999999999999999999999", "9223372036854775808", "-9223372036854775809", "-3", "501"]


@pytest.mark.parametrize("step", HUGE_STEPS)
def test_a_step_outside_the_run_is_damage(tmp_path, invoke_wide, step):
    out, damaged = _runs_with_a_damaged_step(tmp_path, step)
    from gradlab.records.run import load_run
    from gradlab.vocab.errors import RunError

    with pytest.raises(RunError, match="step"):
        load_run(damaged)
    result = invoke_wide("compare", out)
    assert result.exit_code == 0 and "Traceback" not in result.output
    said = [line for line in result.stderr.splitlines() if str(damaged.name) in line and "bad" in line]
    assert len(said) == 1 and "step" in said[0] and "left out" in said[0], result.stderr


# Every command reads runs through load_run: one kind of damage is enough to follow it through each.
@pytest.mark.slow
def test_a_run_with_a_step_outside_it_is_left_out_in_every_command(tmp_path, invoke_wide):
    out, damaged = _runs_with_a_damaged_step(tmp_path, "1e20")
    for args in (["compare", out], ["compare", out, "-f", "json"], ["plot", out, "--output", tmp_path / "figures"],
                 ["report", out, "-o", tmp_path / "r.html"], ["export", out, "--tensorboard", tmp_path / "tb"]):
        if args[0] == "export":
            pytest.importorskip("tensorboard")
        result = invoke_wide(*args)
        assert result.exit_code == 0, (args, result.output)
        assert "Traceback" not in result.output
        said = [line for line in result.stderr.splitlines() if str(damaged.name) in line and "bad" in line]
        assert len(said) == 1 and "step" in said[0] and "left out" in said[0], (args, result.stderr)
    checked = invoke_wide("check", out)
    assert checked.exit_code == 2 and "Traceback" not in checked.output
    assert sum("left out" in line and "bad" in line for line in checked.output.splitlines()) >= 1, checked.output
    assert "1 passed" in checked.output  # the good run is checked


# --------------------------------------------------------------------------------------------
# 12. A table far larger than its run can produce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2 * 2**30, 96 * 2**20])
def test_a_table_padded_with_nul_bytes_is_refused_at_once_in_one_line(tmp_path, invoke_wide, size):
    import time

    from run_factory import one_run
    from gradlab.records.run import load_run
    from gradlab.vocab.errors import RunError

    out = tmp_path / "results"
    one_run(out, [1.0, 0.5, 0.25], name="good")
    damaged = one_run(out, [1.0, 0.5, 0.25], name="bad", run_id="000001").dir
    os.truncate(damaged / "layers.csv", size)  # NUL bytes (a sparse file: no disk used)
    started = time.perf_counter()
    with pytest.raises(RunError, match="far beyond what the run's config can produce"):
        load_run(damaged)
    assert time.perf_counter() - started < 2
    result = invoke_wide("compare", out)
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if "bad" in line and "layers.csv" in line and "far beyond" in line]


def test_a_large_table_of_a_run_without_a_bound_is_scanned_for_nul_bytes_in_bounded_memory(tmp_path):
    import time
    import tracemalloc

    import yaml

    from run_factory import one_run
    from gradlab.records.run import load_run
    from gradlab.vocab.errors import RunError

    damaged = one_run(tmp_path / "results", [1.0, 0.5, 0.25], name="watched").dir
    config = yaml.safe_load((damaged / "config.yaml").read_text())
    del config["train"]  # as a run of watch writes it: no train.steps, so no bound from the config
    (damaged / "config.yaml").write_text(yaml.safe_dump(config))
    os.truncate(damaged / "layers.csv", 2 * 2**30)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(RunError, match="holds a NUL byte at offset"):
            load_run(damaged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2 and peak < 64 * 2**20
