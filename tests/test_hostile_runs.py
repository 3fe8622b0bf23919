"""Hostile conditions around single runs (test_config_fuzz.py fuzzes configs, and
test_hostile_sweeps_disks_and_files.py attacks sweeps and files): a run that explodes, a run killed outright, run directories that must never be reused or overflowed, broken data files at
the command line, and byte-for-byte determinism. Nothing may be lost and nothing may show a
traceback; bad input is one `error: ` line, exit code 2, and nothing written.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from gradlab.records import layout
from gradlab.config.experiment import validate
from gradlab.vocab.errors import RunError
from gradlab.records.layout import LAYERS_COLUMNS, METRICS_COLUMNS, new_run_dir
from gradlab.orchestrate.runner import run_experiment
from data_files import idx_bytes
from run_factory import run_dirs, start_long_run, wait_for_rows, write_yaml

# A warning (numpy's 'overflow encountered in cast', say) is one more line on a user's stderr;
# pytest captures warnings instead of letting them through, so here they are errors.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning", "error::UserWarning")

TINY = {
    "name": "tiny",
    "device": "cpu",
    "data": {"name": "gaussian", "dim": 12, "classes": 4, "n_train": 256, "n_test": 96, "batch_size": 32},
    "model": {"depth": 4, "width": 16, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"steps": 4, "eval_every": 2},
    "log": {"every": 2},
}
# test_train.py's exploding run: N(0, 3^2) weights and learning rate 10 blow up after the first
# update (step 1); the same config with gradient clipping stays finite (tested there).
EXPLODING = {
    **TINY,
    "name": "exploding",
    "model": {"depth": 6, "width": 16, "activation": "relu", "init": {"weight": {"name": "normal", "std": 3.0}, "bias": "zeros"}},
    "optim": {"name": "sgd", "lr": 10.0},
    "train": {"steps": 50, "eval_every": 10},
    "log": {"every": 1},
}
# So deep that the forward pass at initialization overflows float32: ReLU with N(0, 3^2) weights
# multiplies the signal by about 3 * sqrt(32 / 2) = 12 per layer, and 12^40 > 3.4e38.
EXPLODING_AT_STEP_0 = {**EXPLODING, "name": "overflow", "model": {**EXPLODING["model"], "depth": 40, "width": 32}}


def tree(root: Path) -> dict[str, tuple]:
    """Every path below `root`: folders as ('dir',), files as ('file', bytes, mtime_ns)."""
    return {
        str(p.relative_to(root)): ("dir",) if p.is_dir() else ("file", p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


def assert_bad_input(result, *fragments: str) -> str:
    """Exit 2, one 'error: ' line on stderr holding the fragments, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return lines[0]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------


def test_run_of_an_exploding_config_exits_0_and_says_where_it_diverged(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "exploding.yaml", EXPLODING)
    result = invoke_wide("run", config, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    [run] = run_dirs(tmp_path / "out")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "diverged"
    d = meta["divergence"]
    assert set(d) == {"step", "layer", "name", "tensor"} and 0 < d["step"] < 50
    out_lines = result.stdout.splitlines()
    assert f"diverged at step {d['step']}: first non-finite value in {d['tensor']}" in out_lines
    assert out_lines[-1] == f"run directory: {run}"
    # every step before the divergence is in the records, whole: 6 hidden blocks and the head
    layers = (run / "layers.csv").read_text().splitlines()
    assert layers[0] == ",".join(LAYERS_COLUMNS)
    steps = [int(line.split(",")[0]) for line in layers[1:]]
    assert steps == [step for step in range(d["step"]) for _ in range(7)]


def test_compare_shows_a_diverged_run_as_diverged(tmp_path, invoke_wide):
    run = run_experiment(validate({**EXPLODING, "log": {"every": 1, "out": str(tmp_path)}})).run_dir
    divergence = json.loads((run / "meta.json").read_text())["divergence"]
    result = invoke_wide("compare", run, "--format", "csv")
    assert result.exit_code == 0, result.output
    [row] = csv_rows(result.stdout)
    # issue 11: the finals are said to be from before the divergence; the verdict is the gain's at
    # that step (the run's fate is its status)
    assert result.stderr == f"warning: {row['label']}: diverged; its final_* values are the last ones logged before it diverged (step {row['last_step']})\n"
    assert row["status"] == "diverged"
    from gradlab.analysis.summaries import stack_length, verdict, word_of
    from gradlab.records.run import load_run

    assert word_of(row["verdict@last"]) == verdict(float(row["gain@last"]), length=stack_length(load_run(run)))
    assert int(row["last_step"]) == divergence["step"] - 1  # the last finite measurement
    table = invoke_wide("compare", run)
    assert table.exit_code == 0
    assert [line.split() for line in table.stdout.splitlines() if line.split()[:1] == ["status"]] == [["status", "diverged"]]


def test_run_that_diverges_at_initialization_exits_0_and_says_where(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "overflow.yaml", EXPLODING_AT_STEP_0)
    result = invoke_wide("run", config, "--out", tmp_path / "out")
    [run] = run_dirs(tmp_path / "out")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "diverged" and meta["divergence"]["step"] == 0  # the records are right
    assert result.exit_code == 0, result.output
    assert f"diverged at step 0: first non-finite value in {meta['divergence']['tensor']}" in result.stdout.splitlines()


def test_compare_shows_a_run_that_diverged_at_initialization(tmp_path, invoke_wide):
    run = run_experiment(validate({**EXPLODING_AT_STEP_0, "log": {"every": 1, "out": str(tmp_path)}})).run_dir
    assert json.loads((run / "meta.json").read_text())["divergence"]["step"] == 0
    result = invoke_wide("compare", run, "--format", "csv")
    assert result.exit_code == 0, result.output
    [row] = csv_rows(result.stdout)
    assert row["status"] == "diverged"


# --------------------------------------------------------------------------------------------
# A run killed outright
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_after_sigkill_shows_the_run_as_running_with_a_warning(tmp_path, invoke_wide):
    process = start_long_run(tmp_path)
    try:
        run = wait_for_rows(tmp_path, steps=5)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    assert json.loads((run / "meta.json").read_text())["status"] == "running"
    last = int((run / "layers.csv").read_text().splitlines()[-1].split(",")[0])
    result = invoke_wide("compare", run, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"warning: {run.resolve()}: still marked running (in progress, or killed before it could finish); compared up to step {last}\n"
    )
    [row] = csv_rows(result.stdout)
    assert row["status"] == "running" and int(row["last_step"]) == last


# --------------------------------------------------------------------------------------------
# Never overwrite
# --------------------------------------------------------------------------------------------


def test_new_run_dir_gives_a_new_directory_every_time_within_one_second(tmp_path):
    made = [new_run_dir(tmp_path, "same") for _ in range(500)]
    assert len(set(made)) == 500
    assert all(path.is_dir() and path.parent == tmp_path / "same" and not any(path.iterdir()) for path in made)
    stamps = {path.name.rsplit("-", 1)[0] for path in made}
    assert len(stamps) <= 3  # 500 calls take well under a second or two: the id tells them apart


class FrozenClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2030, 1, 2, 3, 4, 5, tzinfo=tz)


def test_new_run_dir_never_reuses_an_existing_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "datetime", FrozenClock)
    ids = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(layout.secrets, "token_hex", lambda n: next(ids))
    first = new_run_dir(tmp_path, "exp")
    (first / "meta.json").write_text("{}")
    second = new_run_dir(tmp_path, "exp")  # the same second and, at first, the same id
    assert (first.name, second.name) == ("20300102-030405-aaaaaa", "20300102-030405-bbbbbb")
    assert (first / "meta.json").read_text() == "{}"
    monkeypatch.setattr(layout.secrets, "token_hex", lambda n: "aaaaaa")
    with pytest.raises(RunError, match="could not create a new run directory"):
        new_run_dir(tmp_path, "exp")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [first.name, second.name]


def test_a_run_writes_only_inside_its_own_directory(tmp_path, monkeypatch, invoke_wide):
    monkeypatch.chdir(tmp_path)  # a stray write to the working directory would show in the tree
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    earlier = invoke_wide("run", config, "--out", "out", "--quiet")
    assert earlier.exit_code == 0, earlier.output
    (tmp_path / "out" / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    result = invoke_wide("run", config, "--out", "out", "--quiet")
    assert result.exit_code == 0, result.output
    new_run = Path(result.stdout.strip())
    after = tree(tmp_path)
    assert {path: entry for path, entry in after.items() if path in before} == before  # nothing else touched
    assert sorted(set(after) - set(before)) == sorted(
        [str(new_run)] + [str(new_run / name) for name in ("config.yaml", "layers.csv", "meta.json", "metrics.csv")]
    )
    assert new_run.parent == Path("out/tiny")


def test_out_below_a_file_fails_up_front(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = tree(tmp_path)
    result = invoke_wide("run", config, "--out", blocker / "sub")
    assert_bad_input(result)
    assert result.stderr == f"error: log.out: cannot create {str(blocker / 'sub')!r}: {str(blocker)!r} is a file, not a folder\n"
    assert tree(tmp_path) == before


def test_a_file_named_like_the_experiment_under_out_fails_and_stays(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny").write_text("not a folder")
    before = tree(tmp_path)
    result = invoke_wide("run", config, "--out", tmp_path / "out")
    assert_bad_input(result)
    assert result.stderr == (
        f"error: log.out: {str(tmp_path / 'out' / 'tiny')!r} is a file, not a folder (the runs of experiment 'tiny' go there)\n"
    )
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o500 does not stop root from writing (test_out_below_a_file_fails_up_front covers an uncreatable out)")
def test_unwritable_out_fails_up_front(tmp_path, invoke_wide):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = invoke_wide("run", config, "--out", locked)
        assert_bad_input(result)
        assert result.stderr == f"error: log.out: {str(locked)!r} is not writable\n"
        result = invoke_wide("run", config, "--out", locked / "sub")
        assert_bad_input(result)
        assert result.stderr == f"error: log.out: cannot create {str(locked / 'sub')!r}: {str(locked)!r} is not writable\n"
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------------------------
# What the fuzzer found (test_config_fuzz.py), pinned with their exact lines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, line",
    [
        # a torch ValueError traceback from manual_seed, after validation had passed
        (["seed=1000000000000000000000000000000"], "error: seed: got 1000000000000000000000000000000; must be <= 9223372036854775807"),
        # synthetic features overflowing float32 passed as a run diverged at step 0
        (["data.noise=1.0e+300"], "error: data.noise: 1e+300 makes the gaussian features overflow float32 (NaN or inf); use a smaller noise"),
        # a RuntimeError from max_pool2d in the middle of the run
        (["model.kind=cnn", "data.name=images", "model.depth=6", "model.pool_every=1"],
         "error: model.pool_every: 6 2x2 poolings (one after every 1 of the 6 blocks) would shrink the 28x28 images below 1x1; "
         "at most 4 fit: raise model.pool_every or lower model.depth"),
        # ValueError from BatchNorm in the first training step: one value per channel
        (["data.batch_size=1", "model.norm=batchnorm"],
         "error: data.batch_size: batchnorm needs at least 2 examples per batch (the statistics of one example are undefined)"),
        (["data.batch_size=1", "model.norm=batchnorm", "model.kind=cnn", "data.name=images", "model.depth=9", "model.pool_every=2"],
         "error: data.batch_size: batchnorm in the last block sees 1 value per channel (1 example of 1x1); it needs at least 2"),
    ],
    ids=["huge-seed", "noise-beyond-float32", "pooled-to-nothing", "batchnorm-of-one-example", "batchnorm-of-one-pixel"],
)  # fmt: skip
def test_run_refuses_impossible_numbers_up_front(tmp_path, sets, line, invoke_wide):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    before = tree(tmp_path)
    result = invoke_wide("run", config, "--out", tmp_path / "out", *[arg for item in sets for arg in ("--set", item)])
    assert_bad_input(result)
    assert result.stderr == line + "\n"
    assert tree(tmp_path) == before


def test_a_huge_lrn_window_is_refused_by_the_memory_estimate(tmp_path, invoke_wide):
    # F.pad overflowed (TypeError) for 10**27 and tried to allocate a terabyte for 10**9
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    before = tree(tmp_path)
    for size in (10**9, 10**27):
        result = invoke_wide("run", config, "--out", tmp_path / "out", "--set", f"model.norm={{name: lrn, size: {size}}}")
        line = assert_bad_input(result, "error: model: this experiment needs ")
        assert line.endswith("reduce model.depth, model.width, model.norm.size, data.batch_size, data.classes or data.n_train"), line
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "content, line",
    [
        ("model: {init: {weight: {name: xavier_normal, gain: autox}}}\n", "model.init.weight.gain: got 'autox'; expected a number or 'auto'"),
        ("model: {activation: {name: relu, 3: 1}}\n", "model.activation.3: unknown parameter of activation 'relu'; allowed: none"),
        ("optim: {name: adam, lr: 1e-3}\n", "optim.lr: got '1e-3'; expected a number (YAML reads 1e-3 as text; write 1.0e-3)"),
        ("optim: {name: adam, lr: " + "9" * 400 + "}\n", "optim.lr: got 999999999999999999999999999999999999999999999999999999999...; expected a number between -1.8e308 and 1.8e308 (a 64-bit float)"),
        ("log: {out: ''}\n", "log.out: got ''; must not be empty"),
        ("model: {norm: 3}\n", "model.norm: got 3; expected a normalization name or a mapping with 'name' (allowed names: none, batchnorm, layernorm, groupnorm, lrn)"),
        ("seed: 1\nmodel: {depth: 3}\nseed: 2\n", "config: {path} is not valid YAML at line 3, column 1: found duplicate key 'seed' (first given at line 1)"),
        ("name: " + "[" * 3000 + "]" * 3000 + "\n", "config: {path} is not valid YAML: nested too deeply"),
        ("seed: " + "9" * 5000 + "\n", "config: {path} is not valid YAML: an integer has too many digits"),
    ],
    ids=["union-parameter", "non-string-parameter", "yaml-1.1-float", "beyond-float", "empty-out", "component-article", "duplicate-key", "deep", "5000-digits"],
)  # fmt: skip
def test_validate_exact_lines_for_inputs_the_fuzzer_found(tmp_path, content, line, invoke_wide):
    path = tmp_path / "config.yaml"
    path.write_text(content, encoding="utf-8")
    result = invoke_wide("validate", path)
    assert_bad_input(result)
    assert result.stderr == "error: " + line.format(path=repr(str(path))) + "\n"


# --------------------------------------------------------------------------------------------
# Broken data files at the command line
# --------------------------------------------------------------------------------------------


def mnist_folder(folder: Path) -> Path:
    """Self-made gzipped IDX files: 4 training and 2 test images."""
    folder.mkdir()
    for prefix, n in (("train", 4), ("t10k", 2)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((n, 28, 28)))))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(n))))
    return folder


def truncated_idx(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = mnist_folder(tmp_path / "mnist")
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.arange(2))[:-1]))
    return folder, bad, "truncated: header says 2 = 2 payload bytes, found 1"


def corrupt_gzip(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = mnist_folder(tmp_path / "mnist")
    bad = folder / "train-images-idx3-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 trailer
    bad.write_bytes(bytes(data))
    return folder, bad, "corrupt gzip data"


def npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def truncated_npz(tmp_path: Path) -> tuple[Path, Path, str]:
    path = npz(tmp_path, x=np.zeros((12, 2)), y=np.zeros(12, int))
    path.write_bytes(path.read_bytes()[:-40])
    return path, path, "cannot read"


def wrong_shape_npz(tmp_path: Path) -> tuple[Path, Path, str]:
    path = npz(tmp_path, x=np.zeros((12, 2, 2, 2, 2)), y=np.zeros(12, int))
    return path, path, "x has shape (12, 2, 2, 2, 2)"


def labels_outside_npz(tmp_path: Path) -> tuple[Path, Path, str]:
    path = npz(tmp_path, x=np.zeros((12, 2)), y=np.array([0, 1, 2, 0, 1, 2, 3, 0, 0, 0, 0, 0]))
    return path, path, "y[6] = 3 is outside [0, 3)"


def nan_npz(tmp_path: Path) -> tuple[Path, Path, str]:
    x = np.zeros((12, 2))
    x[9, 1] = np.nan
    path = npz(tmp_path, x=x, y=np.zeros(12, int))
    return path, path, "x[9] has NaN or inf features"


def beyond_float32_npz(tmp_path: Path) -> tuple[Path, Path, str]:
    x = np.zeros((12, 2))
    x[4, 0] = 1e39  # a fine float64, inf as float32 (numpy warned about the cast on stderr)
    path = npz(tmp_path, x=x, y=np.zeros(12, int))
    return path, path, "x[4] has NaN or inf features"


def csv_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path


def text_in_csv(tmp_path: Path) -> tuple[Path, Path, str]:
    path = csv_file(tmp_path, "a,label\n" + "1,0\n" * 4 + "x1,1\n" + "2,2\n" * 6)
    return path, path, "line 6, column 'a': 'x1' is not a number"


def labels_outside_csv(tmp_path: Path) -> tuple[Path, Path, str]:
    path = csv_file(tmp_path, "a,label\n" + "1,0\n" * 7 + "1,7\n" + "2,2\n" * 4)
    return path, path, "line 9, column 'label' = 7 is outside [0, 3)"


def nan_csv(tmp_path: Path) -> tuple[Path, Path, str]:
    path = csv_file(tmp_path, "a,label\n" + "1,0\n" * 2 + "nan,1\n" + "2,2\n" * 9)
    return path, path, "line 4 has NaN or inf features"


def beyond_float32_csv(tmp_path: Path) -> tuple[Path, Path, str]:
    path = csv_file(tmp_path, "a,label\n" + "1,0\n" * 5 + "1e39,1\n" + "2,2\n" * 6)
    return path, path, "line 7 has NaN or inf features"


def ragged_csv(tmp_path: Path) -> tuple[Path, Path, str]:
    path = csv_file(tmp_path, "a,label\n" + "1,0\n" * 2 + "1,2,3\n" + "2,2\n" * 9)
    return path, path, "line 4 has 3 cells but the header has 2"


def empty_csv(tmp_path: Path) -> tuple[Path, Path, str]:
    path = csv_file(tmp_path, "")
    return path, path, "is empty"


BROKEN = {
    "truncated-idx": ("mnist", truncated_idx),
    "corrupt-gzip-idx": ("mnist", corrupt_gzip),
    "truncated-npz": ("npz", truncated_npz),
    "wrong-shape-npz": ("npz", wrong_shape_npz),
    "labels-outside-npz": ("npz", labels_outside_npz),
    "nan-npz": ("npz", nan_npz),
    "beyond-float32-npz": ("npz", beyond_float32_npz),
    "text-in-csv": ("csv", text_in_csv),
    "labels-outside-csv": ("csv", labels_outside_csv),
    "nan-csv": ("csv", nan_csv),
    "beyond-float32-csv": ("csv", beyond_float32_csv),
    "ragged-csv": ("csv", ragged_csv),
    "empty-csv": ("csv", empty_csv),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_data_file_is_one_error_line_naming_it_and_nothing_is_written(tmp_path, case, invoke_wide):
    kind, make = BROKEN[case]
    data_path, bad_file, problem = make(tmp_path)
    sizes = {"classes": 10, "n_train": 4, "n_test": 2, "batch_size": 2} if kind == "mnist" else {"classes": 3, "n_train": 6, "n_test": 4, "batch_size": 2}
    config = write_yaml(tmp_path / "data.yaml", {**TINY, "data": {"name": kind, "path": str(data_path), **sizes}})
    before = tree(tmp_path)
    result = invoke_wide("run", config, "--out", tmp_path / "out")
    line = assert_bad_input(result, problem)
    where = "mnist file" if kind == "mnist" else f"{kind} file"
    assert line.startswith(f"error: {where} {str(bad_file)!r}"), line
    assert tree(tmp_path) == before  # not even the out folder


# --------------------------------------------------------------------------------------------
# Determinism, byte for byte
# --------------------------------------------------------------------------------------------


def without_time(metrics: bytes) -> list[str]:
    lines = metrics.decode().splitlines()
    assert lines[0] == ",".join(METRICS_COLUMNS) and METRICS_COLUMNS[-1] == "time_s"
    return [line.rsplit(",", 1)[0] for line in lines]


@pytest.mark.parametrize(
    "model, data",
    [
        ({"depth": 3, "width": 8, "activation": "rrelu", "norm": "batchnorm"}, {}),
        ({"kind": "cnn", "depth": 2, "width": 4, "activation": "rrelu", "norm": "batchnorm", "pool_every": 1},
         {"name": "images", "n_train": 32, "n_test": 16, "batch_size": 8}),
    ],
    ids=["mlp-rrelu-bn", "cnn-rrelu-bn"],
)
def test_same_config_and_seed_write_byte_identical_records(tmp_path, model, data):
    config = {**TINY, "model": model, "data": {**TINY["data"], **data}, "train": {"steps": 6, "eval_every": 3},
              "log": {"every": 1, "out": str(tmp_path)}}  # fmt: skip
    first, second = (run_experiment(validate(config)).run_dir for _ in range(2))
    assert first != second
    for name in ("layers.csv", "config.yaml"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert without_time((first / "metrics.csv").read_bytes()) == without_time((second / "metrics.csv").read_bytes())
    assert len((first / "layers.csv").read_bytes().splitlines()) == 1 + 7 * (model["depth"] + 1)
    other = run_experiment(validate({**config, "seed": 1})).run_dir
    assert (other / "layers.csv").read_bytes() != (first / "layers.csv").read_bytes()


def test_plot_draws_a_run_that_diverged_at_initialization_beside_a_normal_one(tmp_path, invoke_wide):
    diverged = run_experiment(validate({**EXPLODING_AT_STEP_0, "log": {"every": 1, "out": str(tmp_path)}})).run_dir
    result = invoke_wide("plot", diverged, "--output", tmp_path / "alone")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "alone").glob("*.png"))) == 5
