"""gradlab.show.report: one self-contained HTML page; its numbers are `gradlab compare`'s, its figures
`gradlab plot`'s, and it renders in a real headless browser (Chromium, when installed) without a
console message, every figure loaded and visible."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gradlab.show import report
from gradlab.analysis.compare import compare_runs
from gradlab.show.display import display_cells
from gradlab.vocab.errors import RunError
from gradlab.records.run import load_runs
from run_factory import STABLE, VANISHING, layer_rows, metric_rows, real_run, resolved_config, write_run

pytestmark = pytest.mark.slow  # trains the runs the report is written from, and renders it in a browser

FIGURES = ["depth_profile_delta_norm", "depth_profile_weight_grad_norm", "heatmap_delta_norm", "training_curves", "saturation"]


class Page(HTMLParser):
    """What the tests look at: table cells (text and class), images, notes, tags used."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: set[str] = set()
        self.images: list[dict[str, str]] = []
        self.rows: list[list[tuple[str, str]]] = []  # comparison table: [(text, class)] per <tr>
        self.notes: list[str] = []
        self._table = None
        self._cell: list[str] | None = None
        self._cell_class = ""
        self._in_notes = False
        self._note: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self._table = attrs.get("class")
        if tag == "tr" and self._table == "comparison":
            self.rows.append([])
        if tag in ("td", "th") and self._table == "comparison":
            self._cell, self._cell_class = [], attrs.get("class") or ""
        if tag == "ul" and attrs.get("class") == "notes":
            self._in_notes = True
        if tag == "li" and self._in_notes:
            self._note = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell), self._cell_class))
            self._cell = None
        if tag == "li" and self._note is not None:
            self.notes.append("".join(self._note))
            self._note = None
        if tag == "ul":
            self._in_notes = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._note is not None:
            self._note.append(data)

    def row(self, name: str, occurrence: int = 0) -> list[tuple[str, str]]:
        """The cells of the comparison row named `name` (the n-th such row: one per step)."""
        return [row[1:] for row in self.rows if row and row[0][0] == name][occurrence]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two configurations (vanishing and stable at initialization), two seeds each, real runs."""
    out = tmp_path_factory.mktemp("report") / "results"
    for seed in (0, 1):
        real_run(out, "sigmoid", VANISHING, seed=seed, steps=10)
        real_run(out, "relu", STABLE, seed=seed, steps=10)
    return out


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> tuple[report.Report, Path]:
    out = tmp_path_factory.mktemp("page") / "report.html"
    return report.write_report([runs], out), out


def test_the_table_is_compares(runs, page):
    result, path = page
    parsed = Page(path.read_text())
    comparison = compare_runs(load_runs([runs]).runs)
    cells = display_cells(comparison)
    assert [text for text, _ in parsed.rows[0][1:]] == list(cells["label"])
    for column in ("status", "seeds", "final_test_accuracy", "verdict@0", "gain@0", "gain@last", "layer_factor@0"):
        step = column.partition("@")[2]
        occurrence = 1 if step == "last" else 0
        assert [text for text, _ in parsed.row(column.partition("@")[0], occurrence)] == list(cells[column]), column
    assert (result.runs, result.rows) == (4, 2)
    assert [text for text, _ in parsed.row("seeds")] == ["2", "2"]


def test_gain_by_hand_from_the_csv(runs, page):
    """An independent check of one number: the geometric mean over seeds of first/last hidden
    delta_rms at step 0 (issue 11), from layers.csv as text, shown with 3 significant digits and the
    seeds' multiplicative spread exp(sd(ln gain))."""
    import csv
    import math
    import statistics

    _, path = page
    parsed = Page(path.read_text())
    labels = [text for text, _ in parsed.rows[0][1:]]
    gains = []
    for run_dir in sorted((runs / "sigmoid").iterdir()):
        with open(run_dir / "layers.csv", newline="") as file:
            rows = [r for r in csv.DictReader(file) if r["step"] == "0" and r["kind"] == "hidden"]
        by_layer = {int(r["layer"]): float(r["delta_rms"]) for r in rows}
        gains.append(by_layer[min(by_layer)] / by_layer[max(by_layer)])
    shown = parsed.row("gain")[labels.index("sigmoid")][0]
    logs = [math.log(g) for g in gains]
    assert shown == f"{math.exp(statistics.mean(logs)):.3g} ×/÷ {math.exp(statistics.stdev(logs)):.3g}"


def test_verdicts_are_highlighted(page):
    _, path = page
    parsed = Page(path.read_text())
    labels = [text for text, _ in parsed.rows[0][1:]]
    verdicts = dict(zip(labels, parsed.row("verdict")))
    assert verdicts["sigmoid"][1] == "verdict vanishing" and verdicts["sigmoid"][0].startswith("vanishing (×")
    assert verdicts["relu"][1] == "verdict stable" and verdicts["relu"][0].startswith("stable (×")


def test_self_contained(page):
    result, path = page
    text = path.read_text()
    parsed = Page(text)
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed"}
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert [img["alt"] for img in parsed.images] == [report_caption(stem) for stem in FIGURES] and result.figures == FIGURES
    for img in parsed.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        png = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert (str(width), str(height)) == (img["width"], img["height"])
    assert report.CONTENT_SECURITY_POLICY in text


def report_caption(stem: str) -> str:
    from gradlab.show.plots import FIGURES as CAPTIONS

    return CAPTIONS[stem]


@pytest.mark.slow
def test_damaged_and_partial_runs_are_noted(tmp_path):
    out = tmp_path / "results"
    layers = layer_rows(0, [1e-3, 1e-2, 1e-1]) + layer_rows(10, [1e-3, 1e-2, 1e-1])
    metrics = metric_rows({0: (2.3, 0.1), 10: (1.0, 0.5)}, {10: (1.1, 0.4)})
    write_run(out, resolved_config("good", depth=3), layers, metrics)
    cut = write_run(out, resolved_config("cut", depth=3), layers, metrics, status="running")
    with open(cut / "layers.csv", "a") as file:
        file.write("20,0,blocks.0,hid")
    broken = write_run(out, resolved_config("broken", depth=3), layers, metrics)
    (broken / "meta.json").write_text("{not json")
    result = report.write_report([out], tmp_path / "report.html")
    notes = Page((tmp_path / "report.html").read_text()).notes
    assert notes == result.problems
    assert any(f"{broken}: meta.json is not valid JSON; skipped" in line for line in notes)
    assert any(f"{cut}: layers.csv ends in a partial row" in line for line in notes)
    assert any(f"{cut}: still marked running" in line for line in notes)
    assert result.runs == 2


def test_output_errors_keep_what_was_there(tmp_path, runs):
    with pytest.raises(RunError, match="is a folder; give the HTML file to write"):
        report.write_report([runs], tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        report.write_report([runs], tmp_path / "no" / "report.html")
    old = tmp_path / "report.html"
    old.write_text("before")
    with pytest.raises(RunError, match="no run could be read"):
        report.write_report([tmp_path / "nothing"], old)
    assert old.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# --------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")

# Run in the page after it loads: every image, whether it loaded and how large it is drawn, and
# every error or Content-Security-Policy violation, written into the DOM that --dump-dom prints.
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
document.addEventListener('securitypolicyviolation', e => window.__errors.push('csp: ' + e.blockedURI));
window.addEventListener('load', () => {
  const images = [...document.images].map(img => {
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth, width: box.width, height: box.height,
            shown: style.display !== 'none' && style.visibility === 'visible' && style.opacity !== '0'};
  });
  const out = document.createElement('pre');
  out.id = 'gradlab-check';
  out.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,2000",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args, url],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip


def console_messages(stderr: str) -> list[str]:
    """The page's console (errors, CSP violations, logs); Chromium's own chatter about D-Bus and
    the GPU in a container is not the page's."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def browser_check(html_file: Path, tmp_path: Path) -> dict:
    """Load a copy of the page with CHECK_SCRIPT (its CSP opened to inline scripts only: images
    must still be data: URLs) and read the result out of the dumped DOM."""
    text = html_file.read_text()
    policy = report.CONTENT_SECURITY_POLICY
    assert policy in text
    text = text.replace(policy, policy + "; script-src 'unsafe-inline'").replace("</title>", "</title>" + CHECK_SCRIPT, 1)
    probe = tmp_path / "probe.html"
    probe.write_text(text)
    done = chromium(probe.as_uri(), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    start = done.stdout.index("<pre id=\"gradlab-check\">") + len("<pre id=\"gradlab-check\">")
    import html

    return {**json.loads(html.unescape(done.stdout[start : done.stdout.index("</pre>", start)])), "console": console_messages(done.stderr)}


@pytest.mark.slow
@needs_chromium
def test_renders_in_chromium(page, tmp_path):
    _, path = page
    # the page as written: no console message at all (it has no script; a blocked load would log one)
    plain = chromium(path.as_uri(), "--dump-dom")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert console_messages(plain.stderr) == []
    assert "Comparison</h2>" in plain.stdout
    check = browser_check(path, tmp_path)
    assert check["errors"] == [] and check["console"] == []
    assert [image["alt"] for image in check["images"]] == [report_caption(stem) for stem in FIGURES]
    for image in check["images"]:
        assert image["complete"] and image["naturalWidth"] > 0 and image["shown"], image
        assert image["width"] > 100 and image["height"] > 100, image  # drawn, not collapsed
    shot = tmp_path / "shot.png"
    done = chromium(path.as_uri(), f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000


@needs_chromium
def test_the_browser_check_catches_a_figure_that_does_not_load(page, tmp_path):
    """The check above can fail: a figure from the network is blocked and reported."""
    _, path = page
    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text().replace("<img src='data:image/png;base64,", "<img src='https://example.invalid/x.png#", 1))
    check = browser_check(broken, tmp_path)
    assert check["images"][0]["naturalWidth"] == 0
    assert any("example.invalid" in error for error in check["errors"])
    assert any("Content Security Policy" in line for line in check["console"])
