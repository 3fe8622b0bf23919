"""The memory estimate's meta-device forward without torch._dynamo (gradlab.build.meta_kernels):
the same footprints as with PyTorch's dynamo-disable wrappers in place, for every model kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# footprints of the shipped configs (their first combination) and of the model kinds and components
# they do not cover, as JSON; then whether torch._dynamo was imported
_CHILD = """
import json, sys
import torch
if sys.argv[1] == "dynamo-first":
    import torch._dynamo
from pathlib import Path
from gradlab.build.memory import footprint
from gradlab.config.experiment import validate
from gradlab.orchestrate.sweep_plan import load_experiments
from gradlab.vocab.datasets import known_input_shape

exps = [load_experiments(path)[0] for path in sorted(Path("configs").glob("*.yaml")) if "mnist" not in path.name]
for model, data in [
    ({"depth": 5, "width": 4, "norm": {"name": "batchnorm", "placement": "post"}, "activation": {"name": "prelu", "shared": False}}, {}),
    ({"depth": 4, "width": 8, "norm": "layernorm", "activation": "gelu", "dropout": 0.1}, {}),
    ({"depth": 70, "width": 8, "activation": "selu"}, {}),
    ({"kind": "cnn", "depth": 3, "width": 6, "kernel_size": 5, "norm": "lrn"}, {"name": "images"}),
    ({"kind": "cnn", "depth": 4, "width": 4, "norm": {"name": "groupnorm", "groups": 2}, "pool_every": 2}, {"name": "images"}),
]:
    exps.append(validate({"model": model, "data": data}))
for kind in ("lstm", "gru", "rnn"):
    exps.append(validate({"model": {"kind": kind, "depth": 2, "width": 8}, "data": {"name": "adding", "seq_len": 20}, "loss": "mse"}))
prints = [list(footprint(e, known_input_shape(e.data), e.data.classes).__dict__.values()) for e in exps]
print(json.dumps({"footprints": prints, "dynamo": "torch._dynamo" in sys.modules}))
"""


def _footprints(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow  # two fresh processes that import torch
def test_the_footprint_needs_no_dynamo_and_is_the_same_with_it():
    without, with_dynamo = _footprints("fresh"), _footprints("dynamo-first")
    assert without["dynamo"] is False
    assert with_dynamo["dynamo"] is True
    assert len(without["footprints"]) >= 15
    assert without["footprints"] == with_dynamo["footprints"]
