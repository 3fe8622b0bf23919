"""One self-contained HTML page for a sweep or a set of runs (`gradlab report FOLDER -o report.html`).

    build_report(paths, ...)         the page as text, and what went into it (a `Report`)
    write_report(paths, out_file)    the page written to `out_file` (replaced whole, never half written)

The page holds the comparison table of `gradlab compare` (the same numbers, formatted by the same
function), verdicts in colour, every figure of `gradlab plot` as an inline PNG, what each row means,
the runs behind each column, and a note for every damaged or partial run. Everything is inline: no
script, no external stylesheet, font or image, and a Content-Security-Policy that forbids loading
anything from anywhere, so the file opens the same offline, attached to a mail or in a CI artifact.

Computing nothing itself, it sits beside compare and plots on the read-and-show floor: pandas and
matplotlib, no torch.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from gradlab.analysis.compare import Comparison, compare_runs, explain
from gradlab.analysis.summaries import DEFAULT_THRESHOLDS, Thresholds, column_name
from gradlab.records.output import refuse_records, write_output
from gradlab.records.run import Step, load_runs
from gradlab.show.display import display_cells, step_heading
from gradlab.vocab.errors import RunError
from gradlab.vocab.quantities import FINAL_QUANTITIES, PROFILE_QUANTITIES
from gradlab.vocab.version import __version__

# Nothing may be fetched: images are data: URLs, styles inline, and there are no scripts.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
VERDICT_CLASSES = ("vanishing", "stable", "exploding", "diverged", "dead")

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2125; margin: 2em auto; max-width: 1180px; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d7dbe0; padding-bottom: 0.2em; }
.meta { color: #5b636b; margin-top: 0; }
.notes { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 1em 0.6em 2em; }
.notes li { margin: 0.2em 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.7em; text-align: right; border-bottom: 1px solid #eceef1; white-space: nowrap; }
th { background: #f5f7f9; } thead th { white-space: normal; max-width: 16em; vertical-align: bottom; }
tr.config td { white-space: normal; max-width: 16em; overflow-wrap: anywhere; } th.row { text-align: left; font-weight: normal; color: #3c444c; }
tr.section th { text-align: left; background: #e9edf1; font-weight: 600; }
td.verdict { font-weight: 600; border-radius: 3px; }
td.vanishing { background: #dbe8ff; color: #0b3d91; } td.stable { background: #def5e3; color: #146c2e; }
td.exploding { background: #ffdcdc; color: #a1111b; } td.diverged { background: #f6dcf6; color: #7a1a7a; }
td.mixed { background: #fff1c2; color: #7a5a00; } td.dead { background: #5c0a0a; color: #ffffff; }
td.status-other { color: #a1111b; font-weight: 600; }
.thresholds { color: #5b636b; font-size: 0.92em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eceef1; }
figcaption { color: #5b636b; font-size: 0.92em; }
dl.columns dt { font-family: ui-monospace, monospace; margin-top: 0.5em; } dl.columns dd { margin-left: 1.5em; color: #3c444c; }
td.path { text-align: left; font-family: ui-monospace, monospace; font-size: 0.88em; white-space: normal; }
"""


@dataclass
class Report:
    html: str
    runs: int  # runs read
    rows: int  # configurations (columns of the table)
    figures: list[str]  # the figures' names, as `gradlab plot` writes them
    problems: list[str] = field(default_factory=list)  # lines to show the user (the page lists them too)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell_class(column: str, text: str) -> str:
    if column.startswith("verdict@"):
        word = text.split(" ", 1)[0]  # the verdict says its rate: 'vanishing (×0.235/layer, ...)'
        if word in VERDICT_CLASSES:
            return f"verdict {word}"
        return "verdict mixed" if text.startswith("mixed") else "verdict"
    if column == "status" and text and text != "completed":
        return "status-other"
    return ""


def comparison_table(comparison: Comparison) -> str:
    """The comparison turned as in the terminal (`gradlab compare`): one column per configuration,
    the quantities down the side in sections; each row's meaning as its tooltip."""
    cells = display_cells(comparison)
    meanings = dict(explain(comparison))
    lines = ["<table class='comparison'>", "<thead><tr><th></th>"]
    lines += [f"<th scope='col'>{_e(label)}</th>" for label in cells["label"]]
    lines.append("</tr></thead><tbody>")
    span = len(cells) + 1

    def section(title: str) -> None:
        lines.append(f"<tr class='section'><th colspan='{span}'>{_e(title)}</th></tr>")

    def row(name: str, column: str, kind: str = "") -> None:
        if column not in cells:
            return
        tr = f"<tr class='{kind}'>" if kind else "<tr>"
        lines.append(f"{tr}<th class='row' scope='row' title='{_e(meanings.get(column, ''))}'>{_e(name)}</th>")
        for text in cells[column]:
            css = _cell_class(column, text)
            lines.append(f"<td class='{css}'>{_e(text)}</td>" if css else f"<td>{_e(text)}</td>")
        lines.append("</tr>")

    if comparison.config_keys:
        section("configuration")
    for key in comparison.config_keys:
        row(key, key, "config")
    section("runs")
    for column in ("status", "seeds", "last_step"):
        row(column, column)
    for step in comparison.steps:
        section(step_heading(comparison, step))
        for quantity in PROFILE_QUANTITIES:
            row(quantity, column_name(quantity, step))
        row("verdict", column_name("verdict", step))
    section("training")
    for quantity in FINAL_QUANTITIES:
        row(quantity, quantity)
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _png_data_url(figure) -> str:
    from gradlab.show.plots import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(figure)).decode("ascii")


def _figures(runs) -> list[str]:
    """Every figure of `gradlab plot`, drawn in memory, as <figure> elements."""
    from gradlab.show import plots

    parts = []
    for stem, figure in plots.build_figures(runs).items():
        caption = plots.FIGURES.get(stem, stem)
        width, height = (int(round(v * figure.dpi)) for v in figure.get_size_inches())
        parts.append(
            f"<figure id='{_e(stem)}'><img src='{_png_data_url(figure)}' width='{width}' height='{height}' alt='{_e(caption)}'>"
            f"<figcaption><b>{_e(stem)}</b>: {_e(caption)}</figcaption></figure>"
        )
    return parts


def _runs_table(comparison: Comparison) -> str:
    lines = ["<table class='runs'><thead><tr><th>column</th><th>run directories</th></tr></thead><tbody>"]
    for label, run_dirs in zip(comparison.table["label"], comparison.runs):
        paths = "<br>".join(_e(path) for path in run_dirs)
        lines.append(f"<tr><th class='row' scope='row'>{_e(label)}</th><td class='path'>{paths}</td></tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def build_report(
    paths: Iterable[str | Path],
    steps: Sequence[Step] = (0, "last"),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    target_loss: float | None = None,
    title: str | None = None,
) -> Report:
    """The report page of the runs found under `paths` (run directories or folders holding runs).

    Runs that cannot be read are left out and, like the notes on partial runs, listed at the top
    of the page and in `Report.problems`; RunError when no run can be read.
    """
    paths = list(paths)
    loaded = load_runs(paths)
    comparison = compare_runs(loaded.runs, steps, thresholds, target_loss)
    problems = [*loaded.problems, *comparison.notes]
    figures = _figures(loaded.runs)
    names = list(dict.fromkeys(run.name for run in loaded.runs))
    title = title or f"gradlab report: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_word = "run" if len(loaded.runs) == 1 else "runs"
    row_word = "configuration" if len(comparison.table) == 1 else "configurations"

    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>{len(loaded.runs)} {run_word} in {len(comparison.table)} {row_word}, from {_e(', '.join(map(str, paths)))}; "
        f"written {generated} by gradlab {_e(__version__)}</p>",
    ]
    if problems:
        body += ["<h2 id='notes'>Notes on the runs</h2>", "<ul class='notes'>", *(f"<li>{_e(line)}</li>" for line in problems), "</ul>"]
    body += [
        "<h2 id='comparison'>Comparison</h2>",
        "<p>One column per configuration; runs that differ only by seed share a column (mean ± sample standard deviation). "
        "Hover a row name for its meaning; every row is defined under <a href='#columns'>What the rows mean</a>.</p>",
        f"<div class='scroll'>{comparison_table(comparison)}</div>",
        f"<p class='thresholds'>verdict: {_e(comparison.thresholds.describe())} "
        "(gain = delta_rms of the first hidden layer over that of the last; a step: one layer to the next)</p>",
        "<h2 id='figures'>Figures</h2>",
        *figures,
        "<h2 id='columns'>What the rows mean</h2>",
        "<dl class='columns'>",
        *(f"<dt>{_e(column)}</dt><dd>{_e(meaning)}</dd>" for column, meaning in explain(comparison)),
        "</dl>",
        "<h2 id='runs'>Runs</h2>",
        _runs_table(comparison),
    ]
    page = "\n".join([
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CONTENT_SECURITY_POLICY}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        *body,
        "</body></html>",
        "",
    ])  # fmt: skip
    return Report(page, len(loaded.runs), len(comparison.table), [f.split("'")[1] for f in figures], problems)


def write_report(paths: Iterable[str | Path], out_file: str | Path, **options) -> Report:
    """Write the report of the runs under `paths` to `out_file` (options: see build_report).

    The page is written to a temporary file beside `out_file` and renamed over it, so a report that
    fails half way leaves what was there before."""
    out_file = Path(out_file)
    if out_file.is_dir():
        raise RunError(f"--output: {str(out_file)!r} is a folder; give the HTML file to write, e.g. report.html")
    if not out_file.parent.is_dir():
        raise RunError(f"--output: the folder {str(out_file.parent)!r} does not exist")
    refuse_records(out_file, "--output")
    report = build_report(paths, **options)
    write_output(out_file, report.html, "--output")  # one line on a full disk (74) or a read-only one (2)
    return report
