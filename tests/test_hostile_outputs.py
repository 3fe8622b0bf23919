"""What gradlab's output commands write, attacked (issue 23, items 3 and 7): an output never replaces a
run's records, and on a full or read-only disk every output command says one line (exit 74 for a
full disk, 2 for an unwritable path), leaves nothing half written, and a retry works.

The full-disk and read-only tests mount a small tmpfs (root with mount rights); elsewhere they are
skipped with the reason.
"""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import pytest

from run_factory import assert_one_error as one_error_line
from run_factory import fill_disk, one_run

OUTPUT_COMMANDS = ("schema", "compare", "check", "plot", "report", "export")

assert_one_error = partial(one_error_line, warnings=True)  # the output commands may warn beside their error


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "results"
    one_run(out, [1.0, 0.5, 0.25], name="a")
    one_run(out, [1.0, 1.0, 1.0], name="b", run_id="000001")
    return out


def _commands(runs: Path, target: Path) -> dict[str, list]:
    return {
        "schema": ["schema", "-o", target],
        "compare": ["compare", runs, "-o", target],
        "check": ["check", runs, "--junit", target],
        "report": ["report", runs, "-o", target],
    }


# --------------------------------------------------------------------------------------------
# 3. An output never replaces a record
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["schema", "compare", "check", "report"])
@pytest.mark.parametrize("record", ["meta.json", "config.yaml", "layers.csv", "metrics.csv"])
def test_an_output_onto_a_run_record_is_refused_and_the_run_is_kept(runs, invoke_wide, command, record):
    [run_dir] = [p.parent for p in runs.rglob("meta.json") if p.parent.parent.name == "a"]
    before = snapshot(runs)
    result = invoke_wide(*_commands(runs, run_dir / record)[command])
    assert_one_error(result, f"is the run record {record} of", "never writes over a run's records")
    assert snapshot(runs) == before
    assert invoke_wide("compare", runs).exit_code == 0


def test_a_link_to_a_record_and_a_sweep_index_are_records_too(runs, tmp_path, invoke_wide):
    [run_dir] = [p.parent for p in runs.rglob("meta.json") if p.parent.parent.name == "a"]
    link = tmp_path / "page.html"
    link.symlink_to(run_dir / "meta.json")
    before = snapshot(runs)
    assert_one_error(invoke_wide("report", runs, "-o", link), "is the run record meta.json of")
    (runs / "sweep.csv").write_text("run,status\n")
    assert_one_error(invoke_wide("schema", "-o", runs / "sweep.csv"), "is the sweep record sweep.csv of")
    assert {k: v for k, v in snapshot(runs).items() if k != "sweep.csv"} == before


@pytest.mark.slow
def test_outputs_beside_the_records_are_fine(runs, invoke_wide):
    [run_dir] = [p.parent for p in runs.rglob("meta.json") if p.parent.parent.name == "a"]
    assert invoke_wide("report", runs, "-o", run_dir / "report.html").exit_code == 0
    assert invoke_wide("schema", "-o", run_dir / "schema.json").exit_code == 0
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------------------------------
# 7. A full or read-only disk
# --------------------------------------------------------------------------------------------


def _mount(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); the full-disk tests need root")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    _mount(mount, "8m")  # room for the report and the figures once the filler is gone
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def read_only_disk(tmp_path):
    mount = tmp_path / "ro"
    _mount(mount, "256k")
    try:
        (mount / "out").mkdir()
        (mount / "out" / "keep.html").write_text("old")
        done = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only ({done.stderr.strip()})")
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp") or (p.is_file() and p.stat().st_size == 0))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["schema", "compare", "check", "report"])
def test_a_full_disk_keeps_the_old_file_whole_and_a_retry_works(runs, small_disk, invoke_wide, command):
    target = small_disk / "keep.out"
    target.write_text("the old content\n")
    fill_disk(small_disk)
    result = invoke_wide(*_commands(runs, target)[command])
    assert_one_error(result, "no space left on the device", str(target), code=74)
    assert target.read_text() == "the old content\n"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "keep.out"]
    (small_disk / "filler").unlink()
    retry = invoke_wide(*_commands(runs, target)[command])
    assert retry.exit_code == 0, retry.output
    assert target.read_text() != "the old content\n"


@pytest.mark.slow
def test_plot_on_a_full_disk_is_one_line_without_an_empty_png_and_a_retry_works(runs, small_disk, invoke_wide):
    (small_disk / "figures").mkdir()
    fill_disk(small_disk)
    assert_one_error(invoke_wide("plot", runs, "--output", small_disk / "figures"), "no space left on the device", code=74)
    assert leftovers(small_disk) == [] and list((small_disk / "figures").iterdir()) == []
    (small_disk / "filler").unlink()
    retry = invoke_wide("plot", runs, "--output", small_disk / "figures")
    assert retry.exit_code == 0, retry.output
    assert all(p.stat().st_size > 0 for p in (small_disk / "figures").iterdir())


def test_export_on_a_full_disk_is_one_line_without_an_events_file_and_a_retry_works(runs, small_disk, invoke_wide):
    pytest.importorskip("tensorboard")
    fill_disk(small_disk)
    assert_one_error(invoke_wide("export", runs, "--tensorboard", small_disk / "tb"), "no space left on the device", code=74)
    assert not list(small_disk.rglob("events.out.tfevents.*")) and leftovers(small_disk) == []
    (small_disk / "filler").unlink()
    retry = invoke_wide("export", runs, "--tensorboard", small_disk / "tb")
    assert retry.exit_code == 0, retry.output
    events = list(small_disk.rglob("events.out.tfevents.*"))
    assert len(events) == 2 and all(p.stat().st_size > 0 for p in events)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["schema", "compare", "check", "report", "plot", "export"])
def test_a_read_only_filesystem_is_one_line_with_exit_2(runs, read_only_disk, invoke_wide, command):
    if command == "export":
        pytest.importorskip("tensorboard")
    target = read_only_disk / "out" / "keep.html"
    args = {
        **_commands(runs, target),
        "plot": ["plot", runs, "--output", read_only_disk / "out" / "figures"],
        "export": ["export", runs, "--tensorboard", read_only_disk / "out" / "tb"],
    }[command]
    line = assert_one_error(invoke_wide(*args), code=2)
    assert any(word in line.lower() for word in ("read-only", "permission denied", "not writable")), line
    assert target.read_text() == "old"
