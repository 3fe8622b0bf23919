"""How long `make test` takes is quoted with its conditions (docs/architecture.md, "How long make test
takes"): the cores and the load of each measurement, and no figure without them. The README once
said "about two minutes on 2 cores"; a newcomer's run took 20 minutes beside other work."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_the_test_suites_time_is_quoted_with_cores_and_load():
    text = section((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"), "### How long `make test` takes")
    measured = [line for line in text.splitlines() if line.startswith("- ")]
    assert measured, "no measurement listed"
    for item in re.split(r"\n- ", text)[1:]:
        assert re.search(r"\d+[- ]cores?", item), f"a measurement without its cores: {item[:80]}"
        assert "load" in item, f"a measurement without its load: {item[:80]}"
    assert "about 20 minutes on a 2-core machine beside other work" in text
    assert re.search(r"nothing else running \(load average [\d.]+ to [\d.]+ on 2 cores\)", text)  # the quiet figure, with its load


def test_no_page_promises_a_time_without_its_load():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "two minutes on 2 cores" not in text, page
        for match in re.finditer(r"make test[^.\n]*?(?:about|takes?|took)\s+(?:\w+\s+)?(?:minutes?|seconds?)", text):
            window = text[match.start() : match.end() + 200]
            assert "load" in window, f"{page.name}: {match.group(0)!r} is quoted without its load"
