"""Run records as TensorBoard event files (`gradlab export RUN_OR_FOLDER --tensorboard DIR`).

    export_tensorboard(paths, out_dir)   every run found under `paths`, one event folder each

Each run gets its own folder under `out_dir`, named by what tells the runs apart (the config name
and the run directory, or a sweep member's values), so TensorBoard lists them side by side:

    <quantity>/<layer name>        every layers.csv column at every logged step: delta_norm/blocks.3
    <split>/<metric>               train/loss, train/accuracy, train/grad_norm, train/lr, test/loss, ...
    profile/<quantity>             the gradient profile of `gradlab compare` at every logged step:
                                   profile/gain (first over last hidden layer), profile/layer_factor, ...
    hidden_layers/<quantity>       histograms over the hidden layers at every logged step: how the
                                   per-layer values spread (log10 for the norms, which span decades)
    config                         the run's resolved config.yaml, as text

Nothing is recomputed: the scalars are the CSV cells, and the profile comes from the same function
`gradlab compare` uses. An empty cell (a value that cannot exist) writes no point, never a zero.
TensorBoard stores a scalar as a 32-bit float, so a value is rounded to float32 (7 digits; a norm
beyond 3.4e38 reads as inf there); the CSV keeps full precision.

The events are encoded with TensorBoard's own record writer (`tensorboard.summary.writer`) and its protocol
buffers, not `torch.utils.tensorboard`: exporting reads records, and like every module on this floor
it imports no torch. TensorBoard is an optional extra: `pip install 'gradlab[tensorboard]'`.
"""

from __future__ import annotations

import io
import math
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from gradlab.analysis.summaries import profile_at
from gradlab.records.output import output_error, write_output
from gradlab.records.run import Run, load_runs
from gradlab.records.write import is_disk_full
from gradlab.vocab import quantities
from gradlab.vocab.errors import GradlabError, RunError

if TYPE_CHECKING:
    from tensorboard.compat.proto import summary_pb2

# The layers.csv quantities whose per-layer values span orders of magnitude (vanishing and
# exploding gradients): their histograms bin log10 of the value. The others (means, spreads,
# shares of units) are binned as they are.
LOG_HISTOGRAMS = ("weight_norm", "weight_grad_norm", "bias_grad_norm", "delta_norm", "delta_rms", "update_ratio")
METRICS = ("loss", "accuracy", "grad_norm", "lr")
HISTOGRAM_BINS = 30  # at most; fewer when there are fewer hidden layers
CONFIG_TAG = "config"


@dataclass
class ExportedRun:
    run_dir: Path
    log_dir: Path
    steps: int  # logged steps written
    scalars: int  # scalar points written
    histograms: int  # histograms written


@dataclass
class ExportSummary:
    out_dir: Path
    runs: list[ExportedRun]
    problems: list[str] = field(default_factory=list)  # lines to show the user (skipped or partial runs)


def _tensorboard():
    """TensorBoard's writer and protocol buffers, or one line saying how to install them."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise RunError("--tensorboard: the tensorboard package is not installed; pip install 'gradlab[tensorboard]'") from None
    return event_pb2, summary_pb2, TensorProto, TensorShapeProto, RecordWriter


def run_labels(runs: list[Run]) -> list[str]:
    """A folder name per run, unique among `runs`: its path below the folder the runs share, with the
    config name in front where that path is one folder (a lone run: `sigmoid-vs-relu/20240101-...`;
    a sweep's members: `relu-family/activation=relu,optim.lr=0.01`)."""
    dirs = [run.dir.resolve() for run in runs]
    common = Path(os.path.commonpath([d.parent for d in dirs]))
    labels = []
    for run, run_dir in zip(runs, dirs):
        relative = run_dir.relative_to(common)
        labels.append(str(Path(run.name) / relative) if len(relative.parts) == 1 else str(relative))
    return labels


def wall_times(run: Run) -> dict[int, float]:
    """Seconds since the epoch of each logged step: the run's start plus the train row's time_s.
    TensorBoard's 'relative' axis then shows training time, as it would have live."""
    started = run.meta.get("started")
    try:
        start = datetime.fromisoformat(started).timestamp() if isinstance(started, str) else None
    except ValueError:
        start = None
    if start is None:
        start = (run.dir / "meta.json").stat().st_mtime if (run.dir / "meta.json").exists() else 0.0
    train = run.metrics[run.metrics["split"] == "train"].dropna(subset=["time_s"])
    offsets = dict(zip(train["step"].astype(int), train["time_s"].astype(float)))
    steps = set(run.layers["step"].astype(int)) | set(run.metrics["step"].astype(int))
    return {step: start + offsets.get(step, 0.0) for step in steps}


def _histogram(values: np.ndarray, summary_pb2) -> summary_pb2.HistogramProto | None:
    """A TensorBoard histogram of the finite `values`, in TensorFlow's layout: bucket i holds the
    values in [bucket_limit[i-1], bucket_limit[i]), the first from `min`, the last up to and with `max`.
    Equal values make one bucket [min, max] of width zero."""
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = float(values.min()), float(values.max())
    if low == high:
        counts, limits = np.array([values.size]), np.array([high])
    else:
        counts, edges = np.histogram(values, bins=min(HISTOGRAM_BINS, values.size), range=(low, high))
        limits = edges[1:]
    return summary_pb2.HistogramProto(
        min=low, max=high, num=float(values.size), sum=float(values.sum()), sum_squares=float(np.square(values).sum()),
        bucket_limit=[float(limit) for limit in limits], bucket=[float(count) for count in counts],
    )  # fmt: skip


def _run_events(run: Run, summary_pb2) -> tuple[dict[int, list], int, int]:
    """{step: [Summary.Value]} of one run, and the numbers of scalars and histograms in it."""
    values: dict[int, list] = {}
    scalars = histograms = 0

    def scalar(step: int, tag: str, number: float) -> None:
        nonlocal scalars
        if math.isnan(number):  # an empty cell: no point, never a made-up zero
            return
        values.setdefault(step, []).append(summary_pb2.Summary.Value(tag=tag, simple_value=number))
        scalars += 1

    layers = run.layers.sort_values(["step", "layer"], kind="stable")
    present = [q.name for q in quantities.LAYER_QUANTITIES if q.name in layers.columns]
    for row in layers.itertuples(index=False):
        for name in present:
            scalar(int(row.step), f"{name}/{row.name}", float(getattr(row, name)))

    for row in run.metrics.sort_values(["step"], kind="stable").itertuples(index=False):
        for metric in METRICS:
            scalar(int(row.step), f"{row.split}/{metric}", float(getattr(row, metric)))

    hidden = layers[layers["kind"] == "hidden"]
    for step, at in hidden.groupby("step", sort=True):
        step = int(step)
        for name, number in profile_at(run, step).items():  # as `gradlab compare` computes it
            scalar(step, f"profile/{name}", float(number))
        for name in present:
            column = at[name].to_numpy(dtype=float)
            tag = f"hidden_layers/{name}"
            if name in LOG_HISTOGRAMS:
                positive = column[np.isfinite(column) & (column > 0)]
                column, tag = np.log10(positive), f"hidden_layers/log10_{name}"
            histogram = _histogram(column, summary_pb2)
            if histogram is not None:
                values.setdefault(step, []).append(summary_pb2.Summary.Value(tag=tag, histo=histogram))
                histograms += 1
    return values, scalars, histograms


def _config_text(run: Run, summary_pb2, TensorProto, TensorShapeProto):
    """The run's config.yaml as a text summary (the Text tab renders markdown: a code block)."""
    text = (run.dir / "config.yaml").read_text(encoding="utf-8")
    markdown = "\n".join("    " + line for line in text.splitlines())
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    tensor = TensorProto(dtype=7, string_val=[markdown.encode("utf-8")], tensor_shape=TensorShapeProto())  # 7: DT_STRING
    return summary_pb2.Summary.Value(tag=CONFIG_TAG, metadata=metadata, tensor=tensor)


def _remove_if_empty(folder: Path, top: Path) -> None:
    """Remove `folder` and the folders above it up to `top` (kept) while they are empty: a failed
    export leaves no empty folder behind (quietly: on a read-only disk nothing was made)."""
    top = top.absolute()
    folder = folder.absolute()
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def export_tensorboard(paths: Iterable[str | Path], out_dir: str | Path) -> ExportSummary:
    """Write TensorBoard event files for every run found under `paths` into `out_dir`/<label>/.

    Runs that cannot be read are reported in `problems` and left out (as in `gradlab compare`);
    raises RunError when no run can be read, when TensorBoard is not installed, or when a run's
    folder under `out_dir` already holds events (a second export would show every point twice in
    TensorBoard; nothing is written then).
    """
    event_pb2, summary_pb2, TensorProto, TensorShapeProto, RecordWriter = _tensorboard()
    loaded = load_runs(paths)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--tensorboard: {str(out_dir)!r} is a file, not a folder")
    labels = run_labels(loaded.runs)
    taken = [out_dir / label for label in labels if any((out_dir / label).glob("events.out.tfevents.*"))]
    if taken:
        raise RunError(*(f"--tensorboard: {path} already holds TensorBoard events; export into a new folder or delete it" for path in taken))

    exported = []
    for run, label in zip(loaded.runs, labels):
        events, scalars, histograms = _run_events(run, summary_pb2)
        times = wall_times(run)
        log_dir = out_dir / label
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _remove_if_empty(log_dir.parent, out_dir)
            if is_disk_full(exc):
                raise output_error(exc, log_dir, "--tensorboard") from None
            raise RunError(f"--tensorboard: cannot create {str(log_dir)!r}: {exc.strerror}") from None
        # The events are encoded in memory with TensorBoard's record format and the file written
        # whole (a temporary file renamed): a full disk is one line, never a writer thread's
        # traceback and a 0-byte events file that would block the retry.
        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        first = min(times.values(), default=0.0)
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2", source_metadata=event_pb2.SourceMetadata(writer="gradlab export"))
        records.write(header.SerializeToString())
        config = _config_text(run, summary_pb2, TensorProto, TensorShapeProto)
        records.write(event_pb2.Event(wall_time=first, step=0, summary=summary_pb2.Summary(value=[config])).SerializeToString())
        for step in sorted(events):
            summary = summary_pb2.Summary(value=events[step])
            records.write(event_pb2.Event(wall_time=times.get(step, first), step=step, summary=summary).SerializeToString())
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{len(exported)}"
        try:
            write_output(log_dir / name, buffer.getvalue(), "--tensorboard")
        except GradlabError:
            _remove_if_empty(log_dir, out_dir)
            raise
        exported.append(ExportedRun(run.dir, log_dir, len(events), scalars, histograms))
    return ExportSummary(out_dir, exported, list(loaded.problems))
