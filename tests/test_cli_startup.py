"""What each command loads: `gradlab --help` neither torch, pandas nor matplotlib; `validate` and
`components` neither torch nor pandas; `compare` no torch. (How long they take is measured by
benchmarks/startup.py, not here: a timed test would fail on a busy machine.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from run_factory import layer_rows, metric_rows, resolved_config, write_run

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "matplotlib")

# the command in a fresh interpreter, then which heavy modules it had loaded
PROBE = """
import json, sys
from gradlab.cli.app import app
try:
    app(sys.argv[1:], prog_name="gradlab")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def loaded_by(*args: str, cwd: Path = ROOT) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), proc.stdout
    return result["loaded"]


def test_help_loads_none_of_the_heavy_libraries():
    assert loaded_by("--help") == []
    assert loaded_by("run", "--help") == []
    assert loaded_by("compare", "--help") == []


@pytest.mark.parametrize("args", [("validate", "configs/example.yaml"), ("validate", "configs/sweep-activations.yaml"), ("components",)])
def test_validate_and_components_load_neither_torch_nor_pandas(args):
    loaded = loaded_by(*args)
    assert "torch" not in loaded and "pandas" not in loaded


def test_compare_loads_no_torch(tmp_path):
    for seed in range(3):
        config = resolved_config("exp", seed, depth=3)
        layers = layer_rows(0, [1.0, 0.5, 0.25]) + layer_rows(10, [1.0, 0.5, 0.25])
        write_run(tmp_path, config, layers, metric_rows({0: (2.0, 0.25), 10: (1.0, 0.5)}, {10: (1.1, 0.5)}), run_id=f"00000{seed}")
    loaded = loaded_by("compare", str(tmp_path), "--format", "csv")
    assert "torch" not in loaded and "pandas" in loaded  # (pandas: the runs were really read)
