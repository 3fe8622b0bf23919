"""gradlab.show.display: the one number formatter and the comparison rendered as csv, json and markdown."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pandas as pd

from gradlab.analysis import compare
from gradlab.show import display
from run_factory import one_run


def test_one_number_formatter():
    assert [display.format_number(v) for v in (0.123456, 1234567.0, 2.0, np.float64(1e-7), math.inf, 3)] == ["0.123", "1.23e+06", "2", "1e-07", "inf", "3"]
    for empty in (None, math.nan, np.float64("nan"), pd.NA):
        assert display.format_number(empty) == ""
    assert display.format_number("relu") == "relu"
    assert display.format_number(12345.0, integer=True) == "12345" and display.format_number(12345.5, integer=True) == "1.23e+04"
    assert display.format_number(0.123456, digits=4) == "0.1235" and display.format_number(math.nan, digits=4) == ""


def test_csv_and_json_keep_full_precision_and_empty_cells(tmp_path):
    runs = [one_run(tmp_path, [1 / 3, 1.0, 3.0], run_id="a"), one_run(tmp_path, [1.0, 1.0, 0.0], run_id="b", model__width=16)]  # rows in numeric order of width: 8, 16
    comparison = compare.compare_runs(runs, steps=[0], target_loss=1.0)
    rows = list(csv.DictReader(io.StringIO(display.to_csv(comparison))))
    assert float(rows[0]["gain@0"]) == (1 / 3) / 3.0
    assert rows[1]["gain@0"] == "inf" and rows[1]["steps_to_target"] == "10"
    document = json.loads(display.to_json(comparison))
    assert document["rows"][0]["gain@0"] == (1 / 3) / 3.0
    assert document["rows"][1]["gain@0"] == "inf"
    assert document["rows"][0]["runs"] == [str(runs[0].dir)]
    assert document["thresholds"] == {"vanish": 0.01, "explode": 100.0, "depth_scale": 20.0, "scales": 2.0}
    assert document["config_keys"] == ["model.width"]
    assert display.render(comparison, "csv") == display.to_csv(comparison)
    assert display.render(comparison, "json") == display.to_json(comparison)
