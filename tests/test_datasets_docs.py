"""The CSV dataset format as docs/config.md documents it ("Datasets from files"): the example file
on the page loads with the example config beside it, as the text says (header, target column,
features in header order, the first n_train rows train, the next n_test test)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from gradlab.build.data import load_dataset
from gradlab.config.experiment import validate

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def documented_example() -> tuple[str, dict]:
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("## Datasets from files") :]
    section = section[: section.index("\n## ", 1)]
    csv_text = re.search(r"```csv\n(.*?)```", section, re.DOTALL).group(1)
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))
    return csv_text, config


def test_the_documented_csv_example_loads(tmp_path, monkeypatch):
    csv_text, config = documented_example()
    assert config["data"]["name"] == "csv"
    monkeypatch.chdir(tmp_path)  # data.path is relative to the working directory
    path = Path(config["data"]["path"])
    path.parent.mkdir(parents=True)
    path.write_text(csv_text, encoding="utf-8")
    exp = validate({"name": "docs-csv", **config})
    ds = load_dataset(exp.data, 0)
    rows = [line.split(",") for line in csv_text.strip().splitlines()]
    header, values = rows[0], np.array(rows[1:], dtype=np.float64)
    target = header.index(config["data"]["target"])
    features = np.delete(values, target, axis=1)
    n = config["data"]["n_train"]
    assert ds.input_shape == (len(header) - 1,)
    np.testing.assert_array_equal(np.asarray(ds.x_train, dtype=np.float64), features[:n].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(ds.y_train), values[:n, target].astype(np.int64))
    np.testing.assert_array_equal(np.asarray(ds.y_test), values[n : n + config["data"]["n_test"], target].astype(np.int64))


def test_the_documented_error_lines_are_what_a_wrong_file_gets(tmp_path, monkeypatch):
    import pytest

    from gradlab.vocab.errors import DataError

    csv_text, config = documented_example()
    monkeypatch.chdir(tmp_path)
    path = Path(config["data"]["path"])
    path.parent.mkdir(parents=True)
    lines = csv_text.strip().splitlines()
    for line_number, bad_row, message in ((4, "-0.3,n/a,1.1,1", "line 4, column 'x2': 'n/a' is not a number"),
                                          (3, "1.5,0.2,-0.7,3", "line 3, column 'label' = 3 is outside [0, 3)")):  # fmt: skip
        path.write_text("\n".join([*lines[: line_number - 1], bad_row, *lines[line_number:]]) + "\n", encoding="utf-8")
        with pytest.raises(DataError) as error:
            load_dataset(validate({"name": "docs-csv", **config}).data, 0)
        assert message in str(error.value)
