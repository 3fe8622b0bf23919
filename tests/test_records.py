"""gradlab.records: the run directory written and read back, torn rows included, and the contract
that its headers, the declarations of gradlab.vocab.quantities and the records reference (docs/records.md) agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradlab.vocab import quantities
from gradlab.records import layout, read, write
from gradlab.records import run as records
from gradlab.vocab.errors import RunError
from run_factory import METRICS, layer_rows, one_run, resolved_config, write_run

RECORDS_REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "records.md"


# --------------------------------------------------------------------------------------------
# The columns: one declaration, the same everywhere
# --------------------------------------------------------------------------------------------


def reference_table(heading: str) -> list[tuple[str, str]]:
    """(column, meaning) rows of the first `| column | ...` table after `heading` in the records
    reference, docs/records.md (generated from the declarations by docs/hooks/records_reference.py)."""
    text = RECORDS_REFERENCE.read_text(encoding="utf-8")
    lines = text[text.index(heading) :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| column |"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        name = re.fullmatch(r"`([^`]+)`", cells[0])
        assert name, f"one column per row of the records reference: {line}"
        rows.append((name[1], cells[-1]))
    return rows


STALE = "docs/records.md is stale: python docs/hooks/records_reference.py rewrites it"


def test_the_records_reference_layers_table_is_the_declarations():
    declared = [*quantities.LAYERS_KEYS.items(), *((q.name, q.meaning) for q in quantities.LAYER_QUANTITIES)]
    assert reference_table("## layers.csv") == declared, STALE
    assert [name for name, _ in declared] == quantities.LAYERS_COLUMNS


def test_the_records_reference_defines_the_metrics_columns():
    assert reference_table("## metrics.csv") == list(quantities.METRICS_COLUMNS.items()), STALE


def test_the_written_headers_are_the_declared_columns(tmp_path):
    run_dir = write_run(tmp_path, resolved_config(), layer_rows(0, [1.0, 1.0]), METRICS)
    assert (run_dir / layout.LAYERS_FILE).read_text().splitlines()[0].split(",") == quantities.LAYERS_COLUMNS
    assert (run_dir / layout.METRICS_FILE).read_text().splitlines()[0].split(",") == list(quantities.METRICS_COLUMNS)
    assert layout.LAYERS_COLUMNS == quantities.LAYERS_COLUMNS
    assert layout.METRICS_COLUMNS == list(quantities.METRICS_COLUMNS)


def test_writing_a_run_imports_neither_pandas_nor_torch(tmp_path):
    code = (
        "import sys; from pathlib import Path; from gradlab.records.layout import new_run_dir; from gradlab.records.write import RunRecords\n"
        f"records = RunRecords(new_run_dir({str(tmp_path)!r}, 'x'), 'name: x\\n', {{'seed': 0}})\n"
        "records.layers.write([{'step': 0, 'layer': 0, 'delta_norm': 0.5}]); records.close('completed')\n"
        "print('pandas' in sys.modules, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"
    (run_dir,) = (tmp_path / "x").iterdir()
    assert read.read_meta(run_dir)["status"] == "completed"


# --------------------------------------------------------------------------------------------
# Reading runs back
# --------------------------------------------------------------------------------------------


def test_a_run_reads_back_as_written(tmp_path):
    run = one_run(tmp_path, [0.5, 2.0], seed=3, run_id="abcdef")
    assert run.name == "exp" and run.status == "completed" and run.short_id == "abcdef"
    assert run.config["seed"] == 3 and run.meta["seed"] == 3
    assert list(run.layers.columns) == quantities.LAYERS_COLUMNS and list(run.metrics.columns) == list(quantities.METRICS_COLUMNS)
    assert run.layers["delta_norm"].tolist() == [0.5, 2.0, 99.0] * 2
    assert run.last_step == 10 and run.resolve_step("last") == 10 and run.resolve_step(0) == 0
    assert run.notes == []


def test_steps_parse(tmp_path):
    assert [records.parse_step(text) for text in ("0", " last ", "LAST", "25", 7)] == [0, "last", "last", 25, 7]
    for bad, message in (("-1", "a step is 0 or more"), ("x", "expected 0, last or a step number"), (True, "expected 0, last")):
        with pytest.raises(ValueError, match=message):
            records.parse_step(bad)


def test_bad_runs_are_named_and_the_rest_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = one_run(Path("runs"), [1.0, 1.0], run_id="good00").dir
    no_layers = one_run(Path("runs"), [1.0, 1.0], run_id="nolayr").dir
    (no_layers / "layers.csv").unlink()
    header_only = one_run(Path("runs"), [1.0, 1.0], run_id="header").dir
    (header_only / "layers.csv").write_text(",".join(layout.LAYERS_COLUMNS) + "\n")
    cut = one_run(Path("runs"), [1.0, 2.0], run_id="cutoff").dir
    text = (cut / "layers.csv").read_text()
    (cut / "layers.csv").write_text(text[: text.rindex("\n") - 5])  # the head row at step 10, half written
    running = one_run(Path("runs"), [1.0, 1.0], status="running", run_id="runnin").dir
    Path("empty").mkdir()

    loaded = records.load_runs(["runs", "empty", "nowhere"])
    assert [run.dir for run in loaded.runs] == [cut, good, running]
    assert loaded.problems == [
        "empty: no runs found (a run directory holds meta.json)",
        "nowhere: does not exist",
        f"{cut}: layers.csv ends in a partial row (the run was cut off while writing it); that row is left out",
        f"{cut}: step 10 of layers.csv has only 2 of 3 layers; that step is left out",
        f"{header_only}: layers.csv has no rows (the run logged nothing); skipped",
        f"{no_layers}: no layers.csv; skipped",
        f"{running}: still marked running (in progress, or killed before it could finish); compared up to step 10",
    ]
    assert loaded.skipped == loaded.problems[:2] + loaded.problems[4:6]
    assert loaded.runs[0].last_step == 0


def test_a_partial_last_row_of_metrics_is_left_out(tmp_path):
    run_dir = one_run(tmp_path, [1.0, 1.0]).dir
    text = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(text[:-3])  # the last row (test, step 10) cut mid-number
    run = records.load_run(run_dir)
    assert run.notes == [f"{run.dir}: metrics.csv ends in a partial row (the run was cut off while writing it); that row is left out"]
    assert run.metrics["step"].tolist() == [0, 0, 5, 10] and run.metrics["loss"].dtype == float


def test_a_step_torn_at_a_line_boundary_is_left_out_of_a_run_still_marked_running(tmp_path):
    run_dir = one_run(tmp_path, [1.0, 2.0, 4.0], last=[8.0, 2.0, 4.0], status="running").dir
    lines = (run_dir / "layers.csv").read_text().splitlines(keepends=True)
    (run_dir / "layers.csv").write_text("".join(lines[:-2]))  # killed after two of step 10's four rows
    run = records.load_run(run_dir)
    assert run.notes == [
        f"{run.dir}: step 10 of layers.csv has only 2 of 4 layers; that step is left out",
        f"{run.dir}: still marked running (in progress, or killed before it could finish); compared up to step 0",
    ]
    assert run.last_step == 0
    # a run closed as completed whose file was cut at a line boundary (issue 14): the same
    closed = one_run(tmp_path / "closed", [1.0, 2.0, 4.0])
    (closed.dir / "layers.csv").write_text("".join((closed.dir / "layers.csv").read_text().splitlines(keepends=True)[:-2]))
    run = records.load_run(closed.dir)
    assert run.notes == [f"{run.dir}: step 10 of layers.csv has only 2 of 4 layers; that step is left out"] and run.last_step == 0


def test_a_cell_that_is_not_a_number_is_an_error_naming_the_column(tmp_path):
    run_dir = one_run(tmp_path, [1.0, 1.0]).dir
    text = (run_dir / "layers.csv").read_text()
    (run_dir / "layers.csv").write_text(text.replace(",99.0,", ",lots,", 1))
    with pytest.raises(RunError) as info:
        records.load_run(run_dir)
    assert info.value.lines == [f"{layout.shown_path(run_dir)}: layers.csv: column delta_norm holds values that are not numbers"]


def test_nothing_readable_is_an_error_naming_every_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("empty").mkdir()
    with pytest.raises(RunError) as info:
        records.load_runs(["empty"])
    assert info.value.lines == ["empty: no runs found (a run directory holds meta.json)", "no run could be read"]
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------------------------
# The fast reader (records.read._parse_written) against pd.read_csv
# --------------------------------------------------------------------------------------------

EDGE_FLOATS = ["0.1", "-0.0", "1e-05", "1.5e-07", "1e+16", "1.2345678901234568e+17", "1.7976931348623157e+308",
               "2.2250738585072014e-308", "5e-324", "1e-320", "4.9406564584124654e-324", "inf", "-inf", "",
               "3", "-7", "123456789012345678", "0.30000000000000004", "1e+308", "9.999999999999999e+22"]
# cells the writers never write: the fast path must hand them to pandas (or read them as pandas does)
ODD_CELLS = ["1e+400", "1e-400", "2.5e-324", "3e-324", "7e-324", "1e-323", "1e+309", "-1e+309", "1234567890123456789.5", "1e+1000", "99999999999999999999", "+3", " 3", "3 ", "1_000", "nan", "NaN", "NA", "None",
             "True", "1.", ".5", "1E5", "0x10", "Infinity", "-nan", "1e5", "١"]


def _frames_equal_on(tmp_path, text: str, which: str = layout.LAYERS_FILE) -> None:
    import pandas as pd

    path = tmp_path / which
    path.write_bytes(text.encode("utf-8"))
    expected = pd.read_csv(path)
    columns = read._parse_written(text.encode("utf-8"), layout.TEXT_COLUMNS[which])
    if columns is not None:  # (None: the fast path declines; pd.read_csv reads it, as before)
        pd.testing.assert_frame_equal(read.Table(columns).frame(), expected, check_exact=True)


def test_the_fast_reader_makes_what_read_csv_makes_of_every_cell_the_writers_write(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(3000), rng.lognormal(0, 40, 3000), -rng.random(1000) * 1e-300, np.exp(rng.uniform(-740, 709, 3000))])
    cells = [write.format_cell(float(v)) for v in values] + EDGE_FLOATS
    rows = [f"{i // 7},{i % 7},blocks.{i % 7},{'head' if i % 7 == 6 else 'hidden'},{cell},{cells[-1 - i]}" for i, cell in enumerate(cells)]
    text = "step,layer,name,kind,delta_norm,act_mean\n" + "\n".join(rows) + "\n"
    columns = read._parse_written(text.encode(), layout.TEXT_COLUMNS[layout.LAYERS_FILE])
    assert columns is not None  # every cell as the writers write it: the fast path reads it
    _frames_equal_on(tmp_path, text)
    assert columns["delta_norm"][-len(EDGE_FLOATS):].tolist()[:3] == [0.1, -0.0, 1e-05]


@pytest.mark.parametrize("cell", ODD_CELLS)
@pytest.mark.parametrize("column", ["step", "delta_norm", "name"])
def test_a_cell_the_writers_never_write_is_read_as_read_csv_reads_it(tmp_path, cell, column):
    header = "step,layer,name,kind,delta_norm"
    row = {"step": "0", "layer": "0", "name": "blocks.0", "kind": "hidden", "delta_norm": "0.5"}
    odd = {**row, column: cell}
    text = header + "\n" + "\n".join(",".join(r.values()) for r in (row, odd, row)) + "\n"
    _frames_equal_on(tmp_path, text)


@pytest.mark.parametrize("text", [
    "step,layer\n0,1\n\n1,2\n", "step,layer\n0,1\n1,2", "step,layer\r\n0,1\r\n", 'step,name\n0,"blocks.0"\n', "step,layer\n0,1,2\n",
    "step,layer\n0\n", "step,step\n0,1\n", "\ufeffstep,layer\n0,1\n", "step,layer\n", "step,layer", "step, layer\n0,1\n",
    "step,name\n0,\n", "step,name\n0,blocks 0\n", "step,name\n0,1\n",
])  # fmt: skip
def test_a_table_the_writers_never_write_is_read_as_read_csv_reads_it(tmp_path, text):
    _frames_equal_on(tmp_path, text)


def test_a_run_reads_the_same_from_the_fast_reader_and_from_pandas(tmp_path, monkeypatch):
    """load_run on a written run: the same frames, notes and summaries whichever path read it."""
    import pandas as pd

    from gradlab.analysis import summaries

    layers = [row for step in (0, 5, 10) for row in layer_rows(step, [0.01 * (k + 1) for k in range(4)])]
    run_dir = write_run(tmp_path, resolved_config("exp", depth=4), layers[:-2], METRICS, status="running")
    fast = records.load_run(run_dir)
    assert isinstance(fast._layers, read.Table) and isinstance(fast._metrics, read.Table)
    summary = summaries.summarize_run(fast, (0, 5, "last"), target_loss=1.0)
    monkeypatch.setattr(read, "_parse_written", lambda data, text_columns: None)
    slow = records.load_run(run_dir)
    assert isinstance(slow._layers, pd.DataFrame)
    assert fast.notes == slow.notes and fast.last_step == slow.last_step == 5
    pd.testing.assert_frame_equal(fast.layers, slow.layers, check_exact=True)
    pd.testing.assert_frame_equal(fast.metrics, slow.metrics, check_exact=True)
    assert repr(summaries.summarize_run(slow, (0, 5, "last"), target_loss=1.0)) == repr(summary)


def test_checking_runs_as_written_imports_no_pandas(tmp_path):
    """`gradlab check` reads the tables into numpy columns: pandas (0.4 s to import) is not loaded."""
    expect = {"status": "completed", "gain": {"step": 0, "between": [1e-9, 1e9]}}
    for seed in (0, 1):
        write_run(tmp_path, resolved_config("exp", seed, depth=3, expect=expect), layer_rows(0, [0.1, 0.2, 0.4]), METRICS, run_id=f"00000{seed}")
    code = (
        "import sys\n"
        "from gradlab.analysis import expectations\n"
        f"checks, problems = expectations.check_paths([{str(tmp_path)!r}])\n"
        "assert len(checks) == 2 and all(c.outcomes and not c.failed for c in checks), checks\n"
        "assert 'pandas' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_random_tables_read_the_same_by_the_fast_reader_and_by_read_csv(tmp_path):
    """Tables drawn from cells the writers write and cells they never do, mixed in any column."""
    import random

    rng = random.Random(0)
    numbers = ["0", "7", "-3", "0.5", "-0.0", "1e-05", "2.5e+20", "inf", "-inf", "", "123456789012345678", "1.7976931348623157e+308"]
    odd = ["nan", "NA", "True", "1e5", "+1", "1.", "x", "1e+999", "1e-999", "blocks.1", "HEAD", "None", " 1", "99999999999999999999"]
    names = ["blocks.0", "head", "hidden", "train", "test", "rnn_0", "_x"]
    fast = 0
    for trial in range(300):
        header = ["step", "layer", "name", "kind", "delta_norm", "act_mean"][: rng.randint(2, 6)]
        rows = []
        for _ in range(rng.randint(1, 6)):
            row = []
            for column in header:
                pool = names if column in ("name", "kind") else numbers
                row.append(rng.choice(odd) if rng.random() < 0.05 else rng.choice(pool))
            rows.append(",".join(row))
        text = ",".join(header) + "\n" + "\n".join(rows) + "\n"
        path = tmp_path / f"t{trial}.csv"
        path.write_text(text)
        fast += read._parse_written(text.encode(), layout.TEXT_COLUMNS[layout.LAYERS_FILE]) is not None
        _frames_equal_on(tmp_path, text)
    assert fast > 100  # (most tables hold only what the writers write: the fast path read them)
