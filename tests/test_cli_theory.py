"""`gradlab theory CONFIG`: the prediction for a config without training, as a table and as JSON,
exact output; bad input is one line and exit code 2; no torch is loaded (fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
RELU_HE = {
    "name": "relu-he",
    "data": {"name": "gaussian", "dim": 32},
    "model": {"depth": 4, "width": 64, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
}


def config(tmp_path, data=RELU_HE) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_table_for_relu_with_he_init(tmp_path, invoke):
    result = invoke("theory", config(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.output == """\
theory: mean_field (Poole et al. 2016 (eq. 3), Schoenholz et al. 2017 (eqs. 5-13))
from: sigma_w2 = 2, sigma_b2 = 0, first_sigma_w2 = 2, first_sigma_b2 = 0, q0 = 2
note: gaussian: E[x²] = 1 + noise² = 2 (class means ~ N(0, 1) plus noise)
q_star            4
chi1              1
predicted_factor  1
xi_grad           inf
xi_c              inf
phase             critical
layer_factor      1
layer             q        factor
    0             4             1
    1             4             1
    2             4             1
    3             4             -
"""


def test_set_overrides_and_batchnorm(tmp_path, invoke):
    result = invoke("theory", config(tmp_path), "--set", "model.norm=batchnorm", "--set", "model.depth=3")
    assert result.exit_code == 0, result.output
    assert result.output == """\
theory: batchnorm (Yang et al. 2019, A mean field theory of batch normalization (ICLR))
from: sigma_w2 = 2, first_sigma_w2 = 2, input_batch_variance = 1.9, batch_size = 128
note: gaussian: E[x²] = 1 + noise² = 2 (class means ~ N(0, 1) plus noise)
note: σw² cancels between blocks of equal σw²; the first factor uses block 0's σw² and the input's batch variance
note: between hidden blocks the factor at batch size 128: 1.21642 (the large-batch limit 1.21117 grows by O(1/B))
q_star              -
chi1                -
predicted_factor    1.21642
xi_grad             -2.55215
xi_c                -
phase               -
layer_factor        0.789944
large_batch_factor  1.21117
layer             q        factor
    0             -      0.512989
    1             -       1.21642
    2             -             -
"""


def test_json_has_the_documented_keys(tmp_path, invoke):
    result = invoke("theory", config(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["theory"] == "mean_field" and data["phase"] == "critical" and data["xi_grad"] == "inf"
    # (He init's σw² is 2.0000000000000004, so √(σw²/2) may round either way in the last place)
    assert data["chi1"] == 1.0000000000000002 and data["layers"] == [pytest.approx(1.0, rel=3e-16)] * 3
    assert set(data) >= {"q_star", "chi1", "predicted_factor", "xi_grad", "xi_c", "phase", "layers", "layer_factor", "reason"}


def test_no_prediction_is_said_plainly(tmp_path, invoke):
    result = invoke("theory", config(tmp_path), "--set", "model.norm=layernorm")
    assert result.exit_code == 0
    assert result.output == (
        "no prediction: no prediction with model.norm layernorm: it normalizes each example over its units, "
        "not each unit over the batch; no mean-field derivation applies\n"
    )
    data = json.loads(invoke("theory", config(tmp_path), "--set", "model.norm=layernorm", "-f", "json").output)
    assert data["theory"] == "none" and data["layer_factor"] is None and data["layers"] == []


def test_bad_input_is_one_line_and_exit_2(tmp_path, invoke):
    result = invoke("theory", config(tmp_path), "--set", "model.depth=zero")
    assert result.exit_code == 2
    assert result.output == "error: model.depth: got 'zero'; expected an integer\n"


def test_theory_loads_no_torch_in_a_fresh_interpreter(tmp_path):
    probe = (
        "import sys\nfrom gradlab.cli.app import app\n"
        "try:\n    app(sys.argv[1:], prog_name='gradlab')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print([m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, "theory", str(config(tmp_path))], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_table_for_a_residual_stack_with_batchnorm(tmp_path, invoke):
    result = invoke("theory", config(tmp_path), "--set", "model.residual=true", "--set", "model.norm=batchnorm", "--set", "model.depth=3")
    assert result.exit_code == 0, result.output
    assert result.output == """\
theory: residual (De & Smith 2020 (Batch normalization biases residual blocks towards the identity); Brock, De & Smith 2021)
from: alpha = 1, sigma_w2 = 2, sigma_b2 = 0, first_sigma_w2 = 2, q0 = 2, branch_depth = 1
note: gaussian: E[x²] = 1 + noise² = 2 (class means ~ N(0, 1) plus noise)
q_star            -
chi1              -
predicted_factor  -
xi_grad           -
xi_c              -
phase             -
layer_factor      1.1868
layer      stream_q    stream_var  stream_factor        factor
    0           2.5       2.34085              -       1.20106
    1       3.31831       2.68169        1.10595        1.1727
    2       4.45493       3.02254        1.09255             -
"""


def test_compare_with_theory_loads_no_torch(tmp_path):
    from run_factory import one_run

    one_run(tmp_path, [4.0, 2.0, 1.0], model__activation="relu", model__width=64, model__init={"weight": "kaiming_normal", "bias": "zeros"})
    probe = (
        "import sys\nfrom gradlab.cli.app import app\n"
        "try:\n    app(sys.argv[1:], prog_name='gradlab')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print([m for m in ('torch', 'pandas') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, "compare", "--theory", str(tmp_path), "-f", "csv"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].endswith(",predicted_factor,departs") and lines[1].endswith(",yes")
    assert lines[-1] == "['pandas']"


SWEEP = {**RELU_HE, "sweep": {"model.activation": ["relu", "tanh"], "model.norm": ["none", "layernorm"]}, "seeds": [0, 1]}


def test_a_sweep_gets_a_row_per_combination_with_the_seeds_sharing_one(tmp_path, invoke):
    result = invoke("theory", config(tmp_path, SWEEP))
    assert result.exit_code == 0, result.output
    reason = "no prediction with model.norm layernorm: it normalizes each example over its units, not each unit over the batch; no mean-field derivation applies"
    assert result.output == f"""\
combination                     theory      phase     chi1     predicted_factor  layer_factor  xi_grad
activation=relu,norm=none       mean_field  critical  1        1                 1             inf
activation=relu,norm=layernorm  none        -         -        -                 -             -
activation=tanh,norm=none       mean_field  chaotic   1.10553  1.05144           0.866243      -9.96773
activation=tanh,norm=layernorm  none        -         -        -                 -             -
mean_field: Poole et al. 2016 (eq. 3), Schoenholz et al. 2017 (eqs. 5-13)
activation=relu,norm=layernorm: no prediction: {reason}
activation=tanh,norm=layernorm: no prediction: {reason}
per-layer factors and every other number: --format json
"""


def test_each_row_of_a_sweep_is_the_prediction_for_that_combination_alone(tmp_path, invoke):
    # independent path: the single-config command, given the combination with --set
    rows = json.loads(invoke("theory", config(tmp_path, SWEEP), "-f", "json").output)
    assert [row["values"] for row in rows] == [
        {"model.activation": a, "model.norm": n} for a in ("relu", "tanh") for n in ("none", "layernorm")
    ]
    assert [row["combination"] for row in rows] == ["activation=relu,norm=none", "activation=relu,norm=layernorm",
                                                    "activation=tanh,norm=none", "activation=tanh,norm=layernorm"]  # fmt: skip
    for row in rows:
        values = row.pop("values")
        name = row.pop("combination")
        sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
        alone = json.loads(invoke("theory", config(tmp_path), *sets, "-f", "json").output)
        assert row == alone, name


def test_a_sweep_config_loads_no_torch(tmp_path):
    probe = (
        "import sys\nfrom gradlab.cli.app import app\n"
        "try:\n    app(sys.argv[1:], prog_name='gradlab')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print([m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, "theory", str(config(tmp_path, SWEEP))], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_every_shipped_config_has_a_theory_answer(invoke):
    # each shipped config, sweep or not, gets its predictions (or says why there are none), exit 0
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        result = invoke("theory", path)
        assert result.exit_code == 0, (path.name, result.output)


def test_the_theory_page_shows_what_theory_prints():
    # every `$ gradlab theory ...` block of docs/theory.md (a single config and a shipped sweep) is
    # what the command prints, whole
    import re
    import shlex

    from typer.testing import CliRunner

    from gradlab.cli.app import app

    page = (ROOT / "docs" / "theory.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n\$ gradlab theory (.*?)\n(.*?)```", page, re.S)
    assert len(blocks) >= 2
    for args, quoted in blocks:
        argv = [str(ROOT / a) if a.startswith("configs/") else a for a in shlex.split(args)]
        assert CliRunner().invoke(app, ["theory", *argv]).output == quoted, args
