"""Zipped sweep axes and claims over a sweep: planning, validation up front, checking
against records with known numbers, and `gradlab check SWEEP_DIR` with exact output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gradlab.orchestrate import sweep_axes
from gradlab.orchestrate import sweep_index
from gradlab.orchestrate import sweep_plan
from gradlab.vocab.errors import ConfigError
from gradlab.analysis.expectations import check_sweep
from gradlab.records.write import RunRecords
from run_factory import layer_rows, metric_rows

BASE = {
    "name": "claims",
    "data": {"name": "gaussian", "dim": 8, "classes": 2, "n_train": 64, "n_test": 32, "batch_size": 16},
    "model": {"depth": 2, "width": 8, "init": {"weight": {"name": "normal", "std": 1.0}, "bias": {"name": "normal", "std": 0.0}}},
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"steps": 10, "eval_every": 5},
    "log": {"every": 5},
}
ZIP = {"model.init.weight.std": [0.1, 1.0, 10.0], "model.init.bias.mean": [0.0, 0.1, 1.0]}


def raw(**extra):
    return {**BASE, **extra}


# --------------------------------------------------------------------------------------------
# Zipped axes
# --------------------------------------------------------------------------------------------


def test_zipped_values_vary_together_inside_the_grid():
    plan = sweep_plan.plan_sweep(raw(sweep={"model.norm": ["none", "batchnorm"], "zip": ZIP}, seeds=[0, 1]))
    assert len(plan.members) == 2 * 3 * 2  # not 2 x 3 x 3 x 2
    assert plan.shape() == "model.norm (2) x zip(model.init.weight.std, model.init.bias.mean) (3) x seed (2)"
    pairs = {(m.config["model"]["init"]["weight"]["std"], m.config["model"]["init"]["bias"]["mean"]) for m in plan.members}
    assert pairs == {(0.1, 0.0), (1.0, 0.1), (10.0, 1.0)}
    assert plan.members[0].name == "norm=none,std=0.1,mean=0.0,seed=0"
    # sweep.yaml holds the zip as written and plans the same members again
    again = sweep_plan.plan_sweep(yaml.safe_load(yaml.safe_dump(plan.spec(), sort_keys=False)))
    assert [m.name for m in again.members] == [m.name for m in plan.members]
    assert plan.spec()["sweep"]["zip"] == ZIP


def test_several_zip_groups_are_a_list():
    plan = sweep_plan.plan_sweep(raw(sweep={"zip": [ZIP, {"model.depth": [2, 3], "model.width": [8, 4]}]}))
    assert len(plan.members) == 3 * 2
    assert sweep_plan.plan_sweep(yaml.safe_load(yaml.safe_dump(plan.spec(), sort_keys=False))).shape() == plan.shape()


@pytest.mark.parametrize(
    "sweep, line",
    [
        ({"zip": {"model.init.weight.std": [0.1, 1.0], "model.init.bias.mean": [0.0]}},
         "sweep.zip: zipped lists must have the same length; got model.init.weight.std 2, model.init.bias.mean 1"),
        ({"zip": {"model.depth": [2, 3]}},
         "sweep.zip: expected a mapping of two or more dotted keys to lists of equal length, e.g. "
         "{model.init.weight.std: [0.1, 1.0], model.init.bias.mean: [0.0, 0.5]}, got {model.depth: [2, 3]}"),
        ({"zip": {"seed": [0, 1], "model.depth": [2, 3]}}, "sweep.zip: seed cannot be zipped; the seeds are their own axis (seeds: [0, 1, 2])"),
        ({"model.depth": [2, 3], "zip": {"model.depth": [2, 3], "model.width": [8, 4]}}, "sweep: model.depth is given twice"),
        ({"zip": {"model.depth": [2, 2], "model.width": [8, 8]}}, "sweep.zip: a combination of values is listed twice"),
        ({"zip": {"model.depth": [2, 3], "model.width": 8}}, "sweep.zip.model.width: expected a non-empty list of values, got 8"),
    ],
)
def test_bad_zips_are_one_line(sweep, line):
    with pytest.raises(ConfigError) as error:
        sweep_plan.plan_sweep(raw(sweep=sweep))
    assert error.value.lines == [line]


def test_a_zipped_key_is_not_replaced_from_the_command_line():
    with pytest.raises(ConfigError) as error:
        sweep_plan.plan_sweep(raw(sweep={"zip": ZIP}), axes=[sweep_axes.parse_axis("model.init.bias.mean=0.5,0.7")])
    assert error.value.lines == ["--sweep model.init.bias.mean: zipped with model.init.weight.std in the config's sweep.zip; change the zip in the config file"]


# --------------------------------------------------------------------------------------------
# Claims: validated before anything runs
# --------------------------------------------------------------------------------------------

GRID = {"model.norm": ["none", "batchnorm"], "optim.lr": [0.1, 0.5]}


@pytest.mark.parametrize(
    "claim, line",
    [
        ({"quantity": "final_test_acc", "of": {}, "min": 0.5},
         "claims[0].quantity: unknown quantity 'final_test_acc' (did you mean 'final_test_accuracy'?); allowed: "),
        ({"quantity": "final_test_accuracy", "of": {"model.nrm": "none"}, "min": 0.5},
         "claims[0].of: 'model.nrm' is not swept (did you mean 'model.norm'?); swept: model.norm, optim.lr"),
        ({"quantity": "final_test_accuracy", "of": {"model.norm": "batchnrm"}, "min": 0.5},
         "claims[0].of.model.norm: 'batchnrm' is not one of its swept values (none, batchnorm)"),
        ({"quantity": "final_test_accuracy", "of": {"optim.lr": 0.3}, "above": {"optim.lr": 0.1}},
         "claims[0].of.optim.lr: 0.3 is not one of its swept values (0.1, 0.5)"),
        ({"quantity": "final_test_accuracy", "of": {"model.norm": "none"}, "above": {"model.norm": "none"}},
         "claims[0].above: the partner is the configuration itself; give a value of model.norm other than of's"),
        ({"quantity": "final_test_accuracy", "of": {}, "above": {"model.norm": "none"}, "min": 0.2},
         "claims[0]: give one of above or below (a partner configuration), or min and/or max"),
        ({"quantity": "final_test_accuracy", "above": {"model.norm": "none"}},
         "claims[0]: needs of: the configurations it is about, e.g. of: {model.norm: batchnorm} (of: {} for all)"),
        ({"of": {"model.norm": "none"}, "status": "diverge"},
         "claims[0].status: unknown status 'diverge' (did you mean 'diverged'?); allowed: "),
        ({"of": {"seed": 0}, "status": "diverged"}, "claims[0].of.seed: claims compare configurations; seeds are averaged, not selected"),
        ({"quantity": "steps_to_target", "of": {}, "max": 5}, "claims[0].target_loss: steps_to_target needs target_loss: the train loss to reach"),
        ({"quantity": "final_test_accuracy", "of": {}, "min": 0.5, "margin": 0.1}, "claims[0].margin: belongs to above/below"),
        ({"quantity": "final_test_accuracy", "of": {}, "min": 0.5, "step": 0},
         "claims[0].step: final_test_accuracy is measured over the whole run; only the gradient-profile quantities take a step"),
        ({"quantity": "gain", "of": {}, "min": 0.5, "above": {"model.norm": "none"}, "lower": 1},
         "claims[0]: unknown key 'lower'; allowed: name, quantity, of, above, below, margin, min, max, status, step, target_loss"),
    ],
)
def test_bad_claims_are_one_line_before_anything_runs(claim, line):
    with pytest.raises(ConfigError) as error:
        sweep_plan.plan_sweep(raw(sweep=GRID, claims=[claim]))
    assert len(error.value.lines) == 1 and error.value.lines[0].startswith(line), error.value.lines


def test_claims_need_a_sweep(tmp_path, invoke):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw(claims=[{"of": {}, "status": "completed"}])))
    result = invoke("validate", str(config))
    assert (result.exit_code, result.stderr) == (2, "error: claims: compare the configurations of a sweep; sweep: no axes; give sweep: "
                                                    "{key.path: [values]}, seeds: [0, 1, 2] or --sweep key.path=v1,v2\n")


def test_validate_counts_the_claims(tmp_path, invoke):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw(sweep=GRID, claims=[{"of": {}, "status": "completed"}, {"quantity": "gain", "of": {}, "min": 0}])))
    result = invoke("validate", str(config))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[:2] == ["4 combinations (model.norm (2) x optim.lr (2)), all valid", "2 claims over them, all valid"]


# --------------------------------------------------------------------------------------------
# Claims checked against records with numbers chosen here
# --------------------------------------------------------------------------------------------

# final test accuracy per (norm, lr, seed); none at lr 0.5 diverges
ACCURACY = {("none", 0.1): (0.5, 0.7), ("batchnorm", 0.1): (0.8, 0.9), ("none", 0.5): (0.1, 0.1), ("batchnorm", 0.5): (0.9, 0.95)}
CLAIMS = [
    {"name": "batchnorm beats none", "quantity": "final_test_accuracy", "of": {"model.norm": "batchnorm"}, "above": {"model.norm": "none"}, "margin": 0.15},
    {"of": {"model.norm": "none", "optim.lr": 0.5}, "status": "diverged"},
    {"quantity": "final_test_accuracy", "of": {"model.norm": "batchnorm"}, "min": 0.87},
    {"quantity": "steps_to_target", "target_loss": 1.0, "of": {"optim.lr": 0.5}, "below": {"optim.lr": 0.1}},
]


def write_sweep(tmp_path: Path, claims=CLAIMS) -> Path:
    plan = sweep_plan.plan_sweep(raw(sweep=GRID, seeds=[0, 1], claims=claims, log={"every": 5, "out": str(tmp_path / "out")}))
    sweep_dir = sweep_index.create_sweep_dir(plan)
    index = sweep_index.SweepIndex.fresh(sweep_dir, plan)
    for member, row in zip(plan.members, index.rows):
        norm, lr, seed = member.values["model.norm"], member.values["optim.lr"], member.values["seed"]
        accuracy = ACCURACY[(norm, lr)][seed]
        status = "diverged" if (norm, lr) == ("none", 0.5) else "completed"
        # lr 0.5 reaches train loss 1.0 at step 5, lr 0.1 at step 10 (none at 0.1, seed 1: never)
        late = 1.5 if (norm, lr, seed) == ("none", 0.1, 1) else 0.9
        metrics = metric_rows({0: (2.0, 0.2), 5: (0.9 if lr == 0.5 else 1.5, 0.5), 10: (late, 0.6)}, {0: (2.0, 0.2), 10: (0.8, accuracy)})
        (sweep_dir / member.name).mkdir()
        records = RunRecords(sweep_dir / member.name, yaml.safe_dump(member.config), {"seed": seed, "device": "cpu"})
        gain = 1.0 + 3.0 * seed  # gain@0 of 1 and 4 over the seeds: geometric mean 2, linear 2.5
        records.layers.write(layer_rows(0, [gain, 1.0]) + layer_rows(10, [1.0, 1.0]))
        records.metrics.write(metrics)
        records.close(status, steps_done=10)
        row.status = status
    index.write()
    return sweep_dir


def test_claims_hold_or_fail_on_the_means_over_seeds(tmp_path):
    sweep_dir = write_sweep(tmp_path)
    lines = [o.line() for o in check_sweep(sweep_dir)]
    assert lines == [
        # batchnorm 0.85 vs none 0.6 at lr 0.1 (by more than 0.15: yes); 0.925 vs 0.1 at lr 0.5
        "ok    batchnorm beats none [optim.lr=0.1] = 0.85  (above model.norm=none's 0.6 by more than 0.15; mean of 2 seeds)",
        "ok    batchnorm beats none [optim.lr=0.5] = 0.925  (above model.norm=none's 0.1 by more than 0.15; mean of 2 seeds)",
        "ok    status of model.norm=none, optim.lr=0.5 = diverged  (one of diverged, every seed)",
        "FAIL  final_test_accuracy of model.norm=batchnorm [optim.lr=0.1] = 0.85  (min 0.87; mean of 2 seeds)",
        "ok    final_test_accuracy of model.norm=batchnorm [optim.lr=0.5] = 0.925  (min 0.87; mean of 2 seeds)",
        # lr 0.5: step 5; lr 0.1: step 10, and one seed of none never (infinitely many steps)
        "ok    steps_to_target of optim.lr=0.5 below optim.lr=0.1 [model.norm=none] = 5  (below optim.lr=0.1's inf; mean of 2 seeds)",
        "ok    steps_to_target of optim.lr=0.5 below optim.lr=0.1 [model.norm=batchnorm] = 5  (below optim.lr=0.1's 10; mean of 2 seeds)",
    ]


def test_gains_are_averaged_over_seeds_geometrically(tmp_path):
    claim = {"quantity": "gain", "step": 0, "of": {"model.norm": "none", "optim.lr": 0.1}, "min": 1.99, "max": 2.01}
    [outcome] = check_sweep(write_sweep(tmp_path, [claim]))
    assert outcome.line() == "ok    gain of model.norm=none, optim.lr=0.1 = 2  (min 1.99 and max 2.01; geometric mean of 2 seeds)"


def test_gradlab_check_on_the_sweep_folder(tmp_path, invoke):
    sweep_dir = write_sweep(tmp_path, CLAIMS[:2])
    result = invoke("check", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-5:] == [
        str(sweep_dir),
        "  ok    batchnorm beats none [optim.lr=0.1] = 0.85  (above model.norm=none's 0.6 by more than 0.15; mean of 2 seeds)",
        "  ok    batchnorm beats none [optim.lr=0.5] = 0.925  (above model.norm=none's 0.1 by more than 0.15; mean of 2 seeds)",
        "  ok    status of model.norm=none, optim.lr=0.5 = diverged  (one of diverged, every seed)",
        "3 expectations on 9 runs: 3 passed, 0 failed",
    ]
    failing = write_sweep(tmp_path / "b", [{**CLAIMS[0], "margin": 0.3}])
    result = invoke("check", str(failing))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-4:] == [
        str(failing),
        "  FAIL  batchnorm beats none [optim.lr=0.1] = 0.85  (above model.norm=none's 0.6 by more than 0.3; mean of 2 seeds)",
        "  ok    batchnorm beats none [optim.lr=0.5] = 0.925  (above model.norm=none's 0.1 by more than 0.3; mean of 2 seeds)",
        "2 expectations on 9 runs: 1 passed, 1 failed",
    ]
    assert result.stderr.splitlines()[-1] == (
        f"error: {failing}: batchnorm beats none [optim.lr=0.1] = 0.85, expected above model.norm=none's 0.6 by more than 0.3; mean of 2 seeds"
    )


def test_the_claim_configs_plan_and_match_the_json_schema():
    import jsonschema

    from gradlab.config.json_schema import config_json_schema

    validator = jsonschema.Draft7Validator(config_json_schema())
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "claims").glob("*.yaml"))
    assert len(configs) == 5
    for path in configs:
        raw_config = yaml.safe_load(path.read_text())
        assert [e.message for e in validator.iter_errors(raw_config)] == [], path.name
        plan = sweep_plan.plan_sweep(raw_config)
        assert plan.claims, path.name
    bad = {**raw(sweep=GRID), "claims": [{"of": {}, "status": "done"}], "sweep": {"zip": {"model.depth": [1, 2]}}}
    assert len(list(validator.iter_errors(bad))) >= 2
