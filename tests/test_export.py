"""gradlab.show.export: TensorBoard event files, read back with TensorBoard's own event reader and
checked cell by cell against the CSV files (read here with the csv module, not gradlab's reader)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'gradlab[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from gradlab.show import export
from gradlab.vocab import quantities  # noqa: E402
from gradlab.vocab.errors import RunError  # noqa: E402
from run_factory import STABLE, layer_rows, metric_rows, real_run, resolved_config, write_run  # noqa: E402

LAYER_VALUES = [q.name for q in quantities.LAYER_QUANTITIES]  # a synthetic run written without the newer ones has fewer
METRIC_VALUES = ["loss", "accuracy", "grad_norm", "lr"]


def read_back(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def expected_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the CSV text: every non-empty cell, rounded to float32 as
    TensorBoard stores it."""
    expected: dict[str, dict[int, float]] = {}
    for row in csv_rows(run_dir / "layers.csv"):
        for column in LAYER_VALUES:
            if row.get(column, "") != "":
                expected.setdefault(f"{column}/{row['name']}", {})[int(row["step"])] = float(np.float32(float(row[column])))
    for row in csv_rows(run_dir / "metrics.csv"):
        for column in METRIC_VALUES:
            if row[column] != "":
                expected.setdefault(f"{row['split']}/{column}", {})[int(row["step"])] = float(np.float32(float(row[column])))
    return expected


def check_against_csv(run_dir: Path, log_dir: Path) -> EventAccumulator:
    events = read_back(log_dir)
    expected = expected_scalars(run_dir)
    recorded = {tag for tag in events.Tags()["scalars"] if not tag.startswith("profile/")}
    assert recorded == set(expected)
    for tag, by_step in expected.items():
        points = events.Scalars(tag)
        assert {p.step: p.value for p in points} == by_step, tag
        assert len(points) == len(by_step), tag  # no point written twice
    return events


def synthetic_run(out: Path, name: str = "exp", run_id: str = "000000", status: str = "completed") -> Path:
    layers = layer_rows(0, [1e-3, 1e-2, 1e-1], dead=[0.0, 0.25, 0.5]) + layer_rows(10, [2e-3, 3e-2, 2e-1], weight_grad=[0.5, 1.0, 4.0])
    metrics = metric_rows({0: (2.3, 0.1), 10: (1.25, 0.5)}, {10: (1.5, 0.375)})
    return write_run(out / "results", resolved_config(name, depth=3), layers, metrics, status=status, run_id=run_id)


def test_every_scalar_matches_the_csv(tmp_path):
    run_dir = synthetic_run(tmp_path)
    summary = export.export_tensorboard([run_dir], tmp_path / "tb")
    (run,) = summary.runs
    assert run.log_dir == tmp_path / "tb" / "exp" / "20240101-000000-000000"
    assert run.steps == 2
    events = check_against_csv(run_dir, run.log_dir)
    # Empty cells write no point: update_ratio is empty at step 0, the head has no act_mean.
    assert [p.step for p in events.Scalars("update_ratio/blocks.0")] == [10]
    assert "act_mean/head" not in events.Tags()["scalars"]
    assert "test/grad_norm" not in events.Tags()["scalars"]
    assert run.scalars == sum(len(events.Scalars(tag)) for tag in events.Tags()["scalars"])


def test_profile_is_first_over_last_hidden_layer(tmp_path):
    run_dir = synthetic_run(tmp_path)
    (run,) = export.export_tensorboard([run_dir], tmp_path / "tb").runs
    events = read_back(run.log_dir)
    # by hand from the rows written above: gain = delta_norm(layer 0) / delta_norm(layer 2)
    gain = {p.step: p.value for p in events.Scalars("profile/gain")}
    assert gain == {0: float(np.float32(1e-3 / 1e-1)), 10: float(np.float32(2e-3 / 2e-1))}
    factor = {p.step: p.value for p in events.Scalars("profile/layer_factor")}
    assert factor == {0: float(np.float32(math.sqrt(1e-3 / 1e-1))), 10: float(np.float32(math.sqrt(2e-3 / 2e-1)))}
    weight_grad_gain = {p.step: p.value for p in events.Scalars("profile/weight_grad_gain")}
    assert weight_grad_gain == {0: 1.0, 10: float(np.float32(0.5 / 4.0))}
    assert {p.step: p.value for p in events.Scalars("profile/dead_frac")} == {0: 0.5, 10: 0.0}


def test_histograms_over_the_hidden_layers(tmp_path):
    run_dir = synthetic_run(tmp_path)
    (run,) = export.export_tensorboard([run_dir], tmp_path / "tb").runs
    events = read_back(run.log_dir)
    rows = [r for r in csv_rows(run_dir / "layers.csv") if r["kind"] == "hidden"]
    histograms = 0
    for tag in events.Tags()["histograms"]:
        quantity = tag.removeprefix("hidden_layers/").removeprefix("log10_")
        log = tag.startswith("hidden_layers/log10_")
        assert log == (quantity in export.LOG_HISTOGRAMS)
        for event in events.Histograms(tag):
            values = np.array([float(r[quantity]) for r in rows if int(r["step"]) == event.step and r[quantity] != ""])
            values = np.log10(values) if log else values
            h = event.histogram_value
            assert h.num == len(values) == 3
            assert (h.min, h.max) == (values.min(), values.max())
            assert h.sum == pytest.approx(values.sum(), rel=1e-12, abs=1e-15)
            assert h.sum_squares == pytest.approx(np.square(values).sum(), rel=1e-12, abs=1e-15)
            # each value in its bucket: [limit[i-1], limit[i]), the first from min, the last with max
            lefts = [h.min, *h.bucket_limit[:-1]]
            assert h.bucket_limit[-1] == h.max
            counted = [sum(left <= v < right or v == right == h.max for v in values) for left, right in zip(lefts, h.bucket_limit)]
            assert counted == list(h.bucket) and sum(h.bucket) == 3
            histograms += 1
    # update_ratio has no values at step 0, so no histogram there
    assert [e.step for e in events.Histograms("hidden_layers/log10_update_ratio")] == [10]
    recorded = [c for c in LAYER_VALUES if any(r[c] != "" for r in rows)]  # the synthetic run leaves the newer columns empty
    assert histograms == run.histograms == 2 * len(recorded) - 1


def test_config_travels_as_text(tmp_path):
    run_dir = synthetic_run(tmp_path)
    (run,) = export.export_tensorboard([run_dir], tmp_path / "tb").runs
    (event,) = read_back(run.log_dir).Tensors(export.CONFIG_TAG)
    text = event.tensor_proto.string_val[0].decode("utf-8")
    assert text == "\n".join("    " + line for line in (run_dir / "config.yaml").read_text().splitlines())


def test_real_runs_in_a_folder(tmp_path):
    out = tmp_path / "results"
    runs = [real_run(out, "relu", STABLE, steps=10), real_run(out, "sigmoid", {**STABLE, "activation": "sigmoid"}, steps=10)]
    summary = export.export_tensorboard([out], tmp_path / "tb")
    assert summary.problems == []
    assert sorted(r.run_dir.name for r in summary.runs) == sorted(r.name for r in runs)
    labels = {r.log_dir.relative_to(tmp_path / "tb").parts[0] for r in summary.runs}
    assert labels == {"relu", "sigmoid"}
    for exported in summary.runs:
        events = check_against_csv(exported.run_dir, exported.log_dir)
        assert [p.step for p in events.Scalars("delta_norm/blocks.9")] == [0, 5, 10]


def test_sweep_members_are_named_by_their_values(tmp_path):
    sweep = tmp_path / "results" / "sw" / "20240101-000000-abcdef"
    sweep.mkdir(parents=True)
    for member in ("activation=relu,seed=0", "activation=tanh,seed=0"):
        synthetic_run(tmp_path / "scratch" / member).rename(sweep / member)
    summary = export.export_tensorboard([sweep], tmp_path / "tb")
    assert sorted(str(r.log_dir.relative_to(tmp_path / "tb")) for r in summary.runs) == ["exp/activation=relu,seed=0", "exp/activation=tanh,seed=0"]


def test_run_labels_are_unique_for_runs_of_one_name(tmp_path):
    first = synthetic_run(tmp_path / "a", run_id="aaaaaa")
    second = synthetic_run(tmp_path / "b", run_id="aaaaaa")  # same name, same folder name, elsewhere
    summary = export.export_tensorboard([first, second], tmp_path / "tb")
    labels = [str(r.log_dir.relative_to(tmp_path / "tb")) for r in summary.runs]
    assert labels == ["a/results/exp/20240101-000000-aaaaaa", "b/results/exp/20240101-000000-aaaaaa"]


def test_a_second_export_into_the_same_folder_is_refused(tmp_path):
    run_dir = synthetic_run(tmp_path)
    (run,) = export.export_tensorboard([run_dir], tmp_path / "tb").runs
    before = sorted(run.log_dir.iterdir())
    with pytest.raises(RunError, match=r"already holds TensorBoard events; export into a new folder or delete it"):
        export.export_tensorboard([run_dir], tmp_path / "tb")
    assert sorted(run.log_dir.iterdir()) == before


def test_unreadable_and_partial_runs(tmp_path):
    good = synthetic_run(tmp_path, name="good")
    cut = synthetic_run(tmp_path, name="cut", status="running")
    with open(cut / "layers.csv", "a", encoding="utf-8") as file:
        file.write("20,0,blocks.0,hidden,1.0,0.")  # killed mid-row
    summary = export.export_tensorboard([tmp_path / "results", tmp_path / "nothing-here"], tmp_path / "tb")
    assert len(summary.runs) == 2
    assert any("nothing-here: does not exist" in line for line in summary.problems)
    assert any("partial row" in line for line in summary.problems)
    by_dir = {r.run_dir.resolve(): r for r in summary.runs}
    check_against_csv(good, by_dir[good.resolve()].log_dir)
    # the cut-off row is left out, every whole row is there
    events = read_back(by_dir[cut.resolve()].log_dir)
    assert [p.step for p in events.Scalars("delta_norm/blocks.0")] == [0, 10]
    assert [p.step for p in events.Scalars("weight_norm/blocks.0")] == [0, 10]
    with pytest.raises(RunError, match="no run could be read"):
        export.export_tensorboard([tmp_path / "nothing-here"], tmp_path / "tb2")
    assert not (tmp_path / "tb2").exists()


def test_without_tensorboard_one_line_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.record_writer", None)
    with pytest.raises(RunError) as caught:
        export.export_tensorboard([synthetic_run(tmp_path)], tmp_path / "tb")
    assert caught.value.lines == ["--tensorboard: the tensorboard package is not installed; pip install 'gradlab[tensorboard]'"]
    assert not (tmp_path / "tb").exists()


def test_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "tb").write_text("x")
    with pytest.raises(RunError, match="is a file, not a folder"):
        export.export_tensorboard([synthetic_run(tmp_path)], tmp_path / "tb")


@pytest.mark.slow
def test_tensorboard_itself_serves_them(tmp_path):
    """TensorBoard's own server (with its default, Rust data loader) reads the export: the scalars,
    histograms and text it serves over HTTP are the CSV's."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.parse
    import urllib.request

    run_dir = synthetic_run(tmp_path)
    (run,) = export.export_tensorboard([run_dir], tmp_path / "tb").runs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "tb"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip

    def get(path: str, **query):
        url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    try:
        label = str(run.log_dir.relative_to(tmp_path / "tb"))
        deadline = time.monotonic() + 90
        while True:  # the server starts, then loads the events in the background
            try:
                if label in get("/data/runs") and get("/data/plugin/scalars/scalars", run=label, tag="train/loss"):
                    break
            except (OSError, ValueError):
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "TensorBoard did not serve the run within 90 s"
            time.sleep(1)
        expected = expected_scalars(run_dir)
        tags = get("/data/plugin/scalars/tags")[label]
        assert {tag for tag in tags if not tag.startswith("profile/")} == set(expected)
        for tag in ("delta_norm/blocks.0", "delta_norm/head", "update_ratio/blocks.2", "train/loss", "test/accuracy"):
            served = {step: value for _, step, value in get("/data/plugin/scalars/scalars", run=label, tag=tag)}
            assert served == expected[tag], tag
        (step0, step10) = get("/data/plugin/histograms/histograms", run=label, tag="hidden_layers/log10_delta_norm")
        assert [step0[1], step10[1]] == [0, 10]
        assert sum(count for _, _, count in step0[2]) == 3
        (text,) = get("/data/plugin/text/text", run=label, tag="config")
        assert "name: exp" in text["text"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # TensorBoard and its data server, started above
        server.wait(timeout=30)
