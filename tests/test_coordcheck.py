"""`model.parametrization` and `gradlab coordcheck`: gradlab's muP side by side with microsoft/mup
(MuReadout + set_base_shapes + MuAdam/MuSGD, its own coord_check), the slope fit against
numpy.polyfit, the verdicts, the CLI and its bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from gradlab.analysis.coordcheck import loglog_slope, slopes, verdict
from gradlab.build.data import Batches, load_dataset
from gradlab.build.models import build_model
from gradlab.build.parametrization import parameter_groups
from gradlab.config.experiment import validate
from gradlab.orchestrate.coordcheck import run_coordcheck

BASE = 16
DEPTH = 3


def _raw(width: int = 32, parametrization: str = "mup", optim: str = "adam", lr: float = 0.05) -> dict:
    return {
        "name": "cc", "seed": 0, "device": "cpu",
        "data": {"name": "gaussian", "dim": 12, "classes": 5, "n_train": 64, "n_test": 16, "batch_size": 16},
        "model": {"kind": "mlp", "depth": DEPTH, "width": width, "activation": "relu", "parametrization": parametrization, "base_width": BASE},
        "optim": {"name": optim, "lr": lr},
    }  # fmt: skip


def _stack(width: int) -> nn.Sequential:
    """gradlab's MLP in microsoft/mup's form: nn.Linear blocks and a MuReadout head."""
    from mup import MuReadout

    layers: list[nn.Module] = []
    for k in range(DEPTH):
        layers += [nn.Linear(12 if k == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, MuReadout(width, 5))


def _mup_twin(width: int, state: dict, rescale: bool = False) -> nn.Sequential:
    """The mup form of a gradlab MLP holding `state` (gradlab's weights, copied), its base shapes set
    at BASE; `rescale`: set_base_shapes also rescales them from standard to muP, as mup's users do."""
    from mup import set_base_shapes

    twin = _stack(width)
    names = {f"blocks.{k}.linear": str(2 * k) for k in range(DEPTH)} | {"head": str(2 * DEPTH)}
    twin.load_state_dict({f"{names[key.rsplit('.', 1)[0]]}.{key.rsplit('.', 1)[1]}": value for key, value in state.items()})
    set_base_shapes(twin, _stack(BASE), rescale_params=rescale)
    return twin


@pytest.mark.parametrize("optim,lr", [("adam", 0.05), ("sgd", 0.5)])
def test_mup_coordinates_agree_with_the_mup_package(tmp_path, optim, lr):
    mup_coord = pytest.importorskip("mup.coord_check", reason="microsoft/mup is the independent reference (pip install mup --no-deps)")
    raw = _raw(optim=optim, lr=lr)
    result = run_coordcheck(_write(tmp_path, raw), [16, 32, 64], steps=3, seeds=1, overrides=[f"log.out={tmp_path}"])
    ours = result.coords
    for width in (16, 32, 64):
        exp = validate({**raw, "model": {**raw["model"], "width": width}})
        torch.manual_seed(exp.seed)
        data = load_dataset(exp.data, exp.seed)
        model = build_model(exp.model, data.input_shape, data.classes)
        x, y = next(Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed))  # the run's fixed batch
        twin = _mup_twin(width, model.state_dict())
        theirs = mup_coord.get_coord_data({width: lambda twin=twin: twin}, [(x, y)] * 3, optimizer=optim, lr=lr, mup=True, nsteps=3,
                                          nseeds=1, cuda=False, show_progress=False)  # fmt: skip
        for step in range(3):  # mup's t = 1 is the forward before the first update: gradlab's step 0
            for layer in range(DEPTH + 1):
                module = str(2 * layer + 1) if layer < DEPTH else str(2 * DEPTH)  # the ReLU's output, or the readout's
                want = theirs[(theirs.t == step + 1) & (theirs.module == module)].l1.item()
                got = ours[(ours.width == width) & (ours.step == step) & (ours.layer == layer)].act_l1.item()
                assert got == pytest.approx(want, rel=1e-6), (width, step, layer)


def test_mup_init_is_set_base_shapes_rescaling_of_the_standard_draw():
    pytest.importorskip("mup", reason="microsoft/mup is the independent reference (pip install mup --no-deps)")
    for width in (16, 64):
        standard, mup = (validate(_raw(width, p)) for p in ("standard", "mup"))
        torch.manual_seed(0)
        drawn = build_model(standard.model, (12,), 5)
        torch.manual_seed(0)
        ours = build_model(mup.model, (12,), 5)
        rescaled = _mup_twin(width, drawn.state_dict(), rescale=True)
        for (key, value), theirs in zip(ours.state_dict().items(), rescaled.state_dict().values()):
            assert torch.allclose(value, theirs, rtol=1e-6, atol=0), (width, key)
        # and the head reads its input divided by width / base_width, as MuReadout does
        assert ours.head_divisor == rescaled[2 * DEPTH].width_mult() == width / BASE


def _write(tmp_path, raw: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("optim", ["sgd", "adam", "adamw"])
def test_learning_rates_per_parameter_are_mups(optim):
    mup_optim = pytest.importorskip("mup.optim", reason="microsoft/mup is the independent reference (pip install mup --no-deps)")
    exp = validate({**_raw(64, optim=optim, lr=0.1), "optim": {"name": optim, "lr": 0.1, "weight_decay": 0.01}})
    torch.manual_seed(0)
    model = build_model(exp.model, (12,), 5)
    twin = _mup_twin(64, model.state_dict())
    theirs = {"sgd": mup_optim.MuSGD, "adam": mup_optim.MuAdam, "adamw": mup_optim.MuAdamW}[optim](twin.parameters(), lr=0.1, weight_decay=0.01)
    ours = parameter_groups(model, exp.model, exp.optim)

    def per_parameter(groups, params):
        where = {id(p): (g["lr"], g.get("weight_decay", 0.01)) for g in groups for p in g["params"]}
        return [where[id(p)] for p in params]

    assert per_parameter(ours, model.parameters()) == per_parameter(theirs.param_groups, twin.parameters())


def test_ntk_scales_hidden_and_output_by_fan_in():
    exp = validate(_raw(64, "ntk", optim="sgd", lr=0.1))
    torch.manual_seed(0)
    model = build_model(exp.model, (12,), 5)
    lrs = {id(p): g["lr"] for g in parameter_groups(model, exp.model, exp.optim) for p in g["params"]}
    m = 64 / BASE
    assert lrs[id(model.blocks[0].linear.weight)] == 0.1  # fan-in fixed: as configured
    assert lrs[id(model.blocks[1].linear.weight)] == pytest.approx(0.1 / m)
    assert lrs[id(model.head.weight)] == pytest.approx(0.1 / m)
    assert lrs[id(model.blocks[1].linear.bias)] == 0.1
    exp_adam = validate(_raw(64, "ntk", optim="adam", lr=0.1))
    lrs = {id(p): g["lr"] for g in parameter_groups(model, exp_adam.model, exp_adam.optim) for p in g["params"]}
    assert lrs[id(model.blocks[1].linear.weight)] == pytest.approx(0.1 / math.sqrt(m))
    # PyTorch's default init already has variance 1/(3 fan_in): ntk leaves the draw as it is
    torch.manual_seed(0)
    standard = build_model(validate(_raw(64, "standard")).model, (12,), 5)
    assert torch.equal(model.blocks[1].linear.weight, standard.blocks[1].linear.weight)
    assert torch.equal(model.head.weight, standard.head.weight)


def test_a_fixed_variance_init_becomes_one_over_fan_in_under_mup():
    """normal(std 1) at the base width, times base/width for the hidden layers: the empirical
    variance of a drawn hidden weight follows (Monte Carlo over its 512^2 entries)."""
    raw = _raw(512)
    raw["model"]["init"] = {"weight": {"name": "normal", "std": 1.0}}
    model = build_model(validate(raw).model, (12,), 5)
    assert model.blocks[1].linear.weight.var().item() == pytest.approx(BASE / 512, rel=0.02)
    assert model.blocks[0].linear.weight.var().item() == pytest.approx(1.0, rel=0.05)  # input: as at the base width
    assert model.head.weight.var().item() == pytest.approx(1.0, rel=0.05)  # head: as at the base width, then x / m


def test_standard_changes_nothing_written_or_grouped():
    raw = _raw(64, "standard")
    del raw["model"]["base_width"]
    exp = validate(raw)
    assert "parametrization" not in exp.to_yaml() and "base_width" not in exp.to_yaml()
    assert "fixed_batch" not in exp.to_yaml()
    assert "base_width: 16" in validate(_raw(64, "standard")).to_yaml()  # one given is kept as given (a sweep over parametrization)
    model = build_model(exp.model, (12,), 5)
    assert model.head_divisor is None
    groups = parameter_groups(model, exp.model, exp.optim)
    assert not isinstance(groups, list)  # model.parameters() itself: one group, as before


def test_the_slope_is_numpys_polyfit_and_the_verdicts_its_sign():
    rng = np.random.default_rng(0)
    widths = np.array([64, 128, 256, 512, 1024])
    for _ in range(20):
        values = np.exp(rng.normal(size=5))
        assert loglog_slope(widths, values) == pytest.approx(np.polyfit(np.log(widths), np.log(values), 1)[0], rel=1e-12)
    assert math.isnan(loglog_slope(widths, np.array([1, 2, 0, 1, 1.0])))  # a zero: no slope, never a made-up one
    assert [verdict(s) for s in (0.13, -0.13, 0.131, -0.2, math.nan)] == ["width-stable", "width-stable", "grows", "shrinks", ""]
    assert verdict(0.2, tolerance=0.25) == "width-stable"
    coords = pd.DataFrame([
        {"variant": "", "width": w, "seed": s, "step": 1, "layer": 0, "name": "blocks.0", "act_l1": w**0.5 * (1 + 0.1 * s)}
        for w in widths for s in (0, 1)
    ])  # fmt: skip
    table = slopes(coords)
    assert table["slope"].item() == pytest.approx(0.5) and table["verdict"].item() == "grows"


def test_bad_widths_and_kinds_are_one_line(tmp_path, invoke):
    config = _write(tmp_path, _raw())
    cases = {
        ("--widths", "64"): "--widths: a slope against width needs at least two widths",
        ("--widths", "0,64"): "--widths: a width is at least 1, got 0",
        ("--widths", "64,x"): "--widths: got 'x'",
        ("--widths", "64,64"): "--widths: 64 is given twice",
        ("--steps", "0"): "--steps: at least 1",
    }
    for args, message in cases.items():
        result = invoke("coordcheck", config, *args, "--out", tmp_path)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [f"error: {message}" + result.output.split(message, 1)[1].splitlines()[0]]
    watch = tmp_path / "watch.yaml"
    watch.write_text(yaml.safe_dump({"name": "w", "model": {"kind": "watch", "class": "Net"}}), encoding="utf-8")
    result = invoke("coordcheck", watch, "--widths", "8,16", "--out", tmp_path)
    assert result.exit_code == 2 and result.output.startswith("error: model.kind watch: a gradlab.watch run") and len(result.output.strip().splitlines()) == 1
    lstm = tmp_path / "lstm.yaml"
    lstm.write_text(yaml.safe_dump({"model": {"kind": "lstm"}, "data": {"name": "adding"}, "loss": "mse"}), encoding="utf-8")
    result = invoke("coordcheck", lstm, "--widths", "8,16", "--out", tmp_path)
    assert result.exit_code == 2 and "coordcheck scales the width of kinds mlp and cnn" in result.output


def test_bad_parametrization_configs_are_one_line(tmp_path, invoke):
    for change, message in (
        ({"optim": {"name": "rmsprop", "lr": 0.01}}, "optim.name: model.parametrization mup defines learning rates for sgd, adam, adamw, not rmsprop"),
        ({"model": {**_raw()["model"], "kind": "lstm", "activation": "tanh"}, "data": {"name": "adding"}, "loss": "mse"}, "model.parametrization: mup is defined for kinds mlp and cnn, not lstm"),
        ({"model": {**_raw()["model"], "residual": True}}, "model.parametrization: mup is defined for plain stacks here, not residual: true"),
        ({"model": {**_raw()["model"], "parametrization": "muP"}}, "model.parametrization"),
    ):
        result = invoke("validate", _write(tmp_path, {**_raw(), **change}))
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output


def _zero_head(raw: dict) -> dict:
    """Zero head and biases (mup's readout_zero_init): the logits start at 0, so what they become is the updates' doing."""
    return {**raw, "model": {**raw["model"], "init": {"bias": "zeros", "head": "zeros"}}}


@pytest.mark.slow
def test_cli_prints_the_table_draws_the_figures_and_checks_expect(tmp_path, invoke_wide):
    raw = _zero_head(_raw(lr=0.05))
    raw["sweep"] = {"zip": {"model.parametrization": ["standard", "mup"], "expect.coordcheck": [{"grows": ["head"]}, {"width_stable": "all"}]}}
    result = invoke_wide("coordcheck", _write(tmp_path, raw), "--widths", "16,64,256", "--seeds", "1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    folder = next(tmp_path.glob("cc-coordcheck/*"))
    assert {p.name for p in folder.glob("coordcheck*.png")} == {"coordcheck-mup.png", "coordcheck-standard.png"}
    coords = pd.read_csv(folder / "coordcheck.csv", keep_default_na=False, na_values=[""], dtype={"variant": str})
    assert list(coords.columns) == ["variant", "width", "seed", "step", "layer", "name", "act_l1", "act_rms", "delta_rms", "update_rms"]
    assert len(coords) == 2 * 3 * 4 * (DEPTH + 1)  # variants x widths x steps 0-3 x layers
    table = slopes(coords)
    for _, row in table.iterrows():  # every slope printed is the analysis's
        if math.isfinite(row["slope"]):
            assert f"{row['slope']:+.3f} {row['verdict']}" in result.output
    standard = table[(table["variant"] == "model.parametrization=standard") & (table["name"] == "head") & (table["step"] >= 1)]
    assert (standard["verdict"] == "grows").all()
    assert (table[(table["variant"] == "model.parametrization=mup") & (table["step"] >= 1)]["verdict"] == "width-stable").all()
    assert "expect ok    model.parametrization=standard: coordcheck act_l1 slope head@1" in result.output
    # the same standard check asked to be width-stable fails: exit 1, one line per (layer, step)
    raw = {**_zero_head(_raw(lr=0.05, parametrization="standard")), "expect": {"coordcheck": {"width_stable": ["head"], "steps": [2]}}}
    result = invoke_wide("coordcheck", _write(tmp_path, raw), "--widths", "16,64,256", "--seeds", "1", "--out", tmp_path, "--no-plot")
    assert result.exit_code == 1, result.output
    assert "error: expectation failed: coordcheck act_l1 slope head@2 = " in result.output and "expected width-stable (|slope| <= 0.13)" in result.output


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_coordinate_columns_are_what_they_say(tmp_path, kind):
    """act_l1 and act_rms against a forward hook's own mean |x| and rms at step 0; update_rms
    against update_ratio * weight_norm / sqrt(entries) of the same row (the updates group's kernel);
    act_rms against sqrt(act_mean^2 + act_std^2) at every step (the activations group's)."""
    from gradlab.orchestrate.runner import run_experiment

    raw = _raw(16, "mup")
    if kind == "cnn":
        raw["data"] = {"name": "images", "classes": 5, "n_train": 32, "n_test": 8, "batch_size": 8}
        raw["model"] = {**raw["model"], "kind": "cnn", "depth": 2, "width": 8, "base_width": 4}
    raw.update(train={"steps": 2, "fixed_batch": True}, log={"every": 1, "probes": ["weights", "activations", "updates", "coordinates"], "out": str(tmp_path)})
    exp = validate(raw)
    layers = pd.read_csv(run_experiment(exp).run_dir / "layers.csv")
    torch.manual_seed(exp.seed)
    data = load_dataset(exp.data, exp.seed)
    model = build_model(exp.model, data.input_shape, data.classes)
    x, _ = next(Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed))
    outputs = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: outputs.append(out.detach().double()))
    outputs.append(model(x).detach().double())
    at0 = layers[layers["step"] == 0].sort_values("layer")
    for out, (_, row) in zip(outputs, at0.iterrows()):
        assert row["act_l1"] == pytest.approx(out.abs().mean().item(), rel=1e-5)
        assert row["act_rms"] == pytest.approx(out.pow(2).mean().sqrt().item(), rel=1e-5)
    entries = {k: m.weight.numel() for k, m in enumerate([*(b.linear for b in model.blocks), model.head])}
    for _, row in layers.iterrows():
        if row["kind"] == "hidden":
            # (two float32 reductions each side over a CNN's thousands of entries: 1e-4)
            assert row["act_rms"] == pytest.approx(math.hypot(row["act_mean"], row["act_std"]), rel=1e-4)
        if row["step"] < 2:
            assert row["update_rms"] == pytest.approx(row["update_ratio"] * row["weight_norm"] / math.sqrt(entries[row["layer"]]), rel=1e-5)
        else:
            assert math.isnan(row["update_rms"])  # the last step takes no step


def test_theory_states_what_the_model_draws_and_the_optimizer_takes():
    """gradlab theory's parametrization rows against the built model: sigma_w2 = fan_in * the drawn
    weight's empirical variance (the head's divided by m^2, its multiplier), and each role's lr factor
    against the optimizer's parameter groups."""
    from gradlab.theory.predict import predict

    raw = _raw(512, optim="sgd", lr=0.1)
    raw["model"]["init"] = {"weight": {"name": "normal", "std": 0.05}}
    exp = validate(raw)
    rows = {row["role"]: row for row in predict(exp, correlations=False).parametrization}
    torch.manual_seed(0)
    model = build_model(exp.model, (12,), 5)
    m = 512 / BASE
    for role, module, multiplier in (("input", model.blocks[0].linear, 1), ("hidden", model.blocks[1].linear, 1), ("output", model.head, 1 / m)):
        measured = module.weight.shape[1] * module.weight.double().var().item() * multiplier**2
        assert measured == pytest.approx(rows[role]["sigma_w2"], rel=0.05), role
    lrs = {id(p): g["lr"] for g in parameter_groups(model, exp.model, exp.optim) for p in g["params"]}
    for role, parameter in (("input", model.blocks[0].linear.weight), ("hidden", model.blocks[1].linear.weight),
                            ("output", model.head.weight), ("vector", model.blocks[1].linear.bias), ("fixed", model.head.bias)):
        assert lrs[id(parameter)] == pytest.approx(0.1 * rows[role]["lr_factor"]), role


def _cnn_raw(width: int, parametrization: str = "mup", optim: str = "adam") -> dict:
    return {
        "name": "cc-cnn", "seed": 0, "device": "cpu",
        "data": {"name": "images", "classes": 5, "n_train": 32, "n_test": 8, "batch_size": 8},
        "model": {"kind": "cnn", "depth": 2, "width": width, "activation": "relu", "parametrization": parametrization, "base_width": 4},
        "optim": {"name": optim, "lr": 0.1},
    }  # fmt: skip


def _cnn_twin(width: int) -> nn.Sequential:
    from mup import MuReadout

    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), MuReadout(width, 5))  # fmt: skip


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_a_cnn_under_mup_is_mups_cnn(optim):
    """The CNN: gradlab's muP draw is set_base_shapes' rescaling of the standard draw, its logits
    are the mup model's on the same weights, and its learning rates MuSGD's / MuAdam's."""
    mup = pytest.importorskip("mup", reason="microsoft/mup is the independent reference (pip install mup --no-deps)")
    from mup.optim import MuAdam, MuSGD

    exp, standard = validate(_cnn_raw(16, optim=optim)), validate(_cnn_raw(16, "standard", optim=optim))
    data = load_dataset(exp.data, exp.seed)
    torch.manual_seed(0)
    drawn = build_model(standard.model, data.input_shape, data.classes)
    torch.manual_seed(0)
    ours = build_model(exp.model, data.input_shape, data.classes)
    names = {"blocks.0.linear": "0", "blocks.1.linear": "2", "head": "6"}
    twin = _cnn_twin(16)
    twin.load_state_dict({f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in drawn.state_dict().items()})
    mup.set_base_shapes(twin, _cnn_twin(4), rescale_params=True)
    for (key, value), theirs in zip(ours.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(value, theirs, rtol=1e-6, atol=0), key
    x = data.x_train[:8]
    assert torch.allclose(ours(x), twin(x), rtol=1e-5, atol=1e-7)
    theirs_opt = (MuSGD if optim == "sgd" else MuAdam)(twin.parameters(), lr=0.1)
    lr_of = lambda groups: {id(p): g["lr"] for g in groups for p in g["params"]}
    ours_lr, theirs_lr = lr_of(parameter_groups(ours, exp.model, exp.optim)), lr_of(theirs_opt.param_groups)
    assert [ours_lr[id(p)] for p in ours.parameters()] == pytest.approx([theirs_lr[id(p)] for p in twin.parameters()])


def test_resume_finishes_the_check_as_planned(tmp_path, invoke_wide):
    config = _write(tmp_path, _zero_head(_raw(lr=0.05)))
    first = invoke_wide("coordcheck", config, "--widths", "16,32", "--seeds", "1", "--out", tmp_path, "--no-plot")
    assert first.exit_code == 0, first.output
    folder = next(tmp_path.glob("cc-coordcheck/*"))
    (folder / "coordcheck.csv").unlink()
    again = invoke_wide("coordcheck", "--resume", folder, "--no-plot")
    assert again.exit_code == 0, again.output
    assert [line for line in again.output.splitlines() if "width-stable" in line or "grows" in line] == \
           [line for line in first.output.splitlines() if "width-stable" in line or "grows" in line]  # fmt: skip
    assert (folder / "coordcheck.csv").is_file()
    both = invoke_wide("coordcheck", config, "--resume", folder)
    assert both.exit_code == 2 and "--resume: give the coordcheck folder alone" in both.output


def test_fixed_batch_trains_on_the_first_batch_and_fresh_batches_do_not(tmp_path):
    """With lr 0 nothing changes but the batch: the train loss of every step is the first batch's
    under train.fixed_batch (the same float), and not with --fresh-batches."""
    raw = _raw(16, "standard", optim="sgd", lr=0.0)
    for fresh in (False, True):
        result = run_coordcheck(_write(tmp_path, raw), [8, 16], steps=3, seeds=1, fresh_batches=fresh, overrides=[f"log.out={tmp_path / str(fresh)}"])
        for run in sorted(p for p in result.sweep_dir.iterdir() if p.is_dir()):
            assert ("fixed_batch: true" in (run / "config.yaml").read_text()) is not fresh
            metrics = pd.read_csv(run / "metrics.csv")
            losses = metrics[metrics["split"] == "train"]["loss"].tolist()
            assert len(losses) == 4 and (len(set(losses)) == 1) is not fresh, losses


def test_gradlab_check_judges_a_coordcheck_folder_as_coordcheck_did(tmp_path, invoke_wide):
    raw = {**_zero_head(_raw(lr=0.05, parametrization="standard")), "expect": {"coordcheck": {"grows": ["head"], "steps": [1, 2]}}}
    ran = invoke_wide("coordcheck", _write(tmp_path, raw), "--widths", "16,64,256", "--seeds", "1", "--out", tmp_path, "--no-plot")
    assert ran.exit_code == 0, ran.output
    folder = next(tmp_path.glob("cc-coordcheck/*"))
    checked = invoke_wide("check", folder)
    assert checked.exit_code == 0, checked.output
    for step in (1, 2):
        line = next(line for line in ran.output.splitlines() if f"slope head@{step}" in line)
        assert line.removeprefix("expect ").strip() in checked.output
    # the expectation's own quantity and tolerance: act_rms of the head, stricter than its slope
    raw["expect"]["coordcheck"] = {"width_stable": ["head"], "steps": [1], "quantity": "act_rms", "tolerance": 0.2}
    ran = invoke_wide("coordcheck", _write(tmp_path, raw), "--widths", "16,64,256", "--seeds", "1", "--out", tmp_path / "b", "--no-plot")
    assert ran.exit_code == 1 and "coordcheck act_rms slope head@1" in ran.output and "(|slope| <= 0.2)" in ran.output, ran.output
    checked = invoke_wide("check", next((tmp_path / "b").glob("cc-coordcheck/*")))
    assert checked.exit_code == 1 and "coordcheck act_rms slope head@1" in checked.output


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_ntk_is_the_neural_tangent_parametrization_trained_on_omega(optim):
    """gradlab's ntk (standard form: variance and lr scaled) against the NTK parametrization itself:
    W = sqrt(base / fan_in) * omega for the hidden and output weights, omega trained with the plain
    lr. Three steps on one batch give the same weights. (Adam's eps is not scale-invariant: a
    gradient near eps moves differently when it is measured on omega rather than W, so it is 1e-20
    here, where the rule is exact.)"""
    import torch.nn.functional as F

    raw = _raw(64, "ntk", optim=optim, lr=0.05 if optim == "sgd" else 0.01)
    if optim == "adam":
        raw["optim"]["eps"] = 1e-20
    exp = validate(raw)
    torch.manual_seed(0)
    model = build_model(exp.model, (12,), 5)
    layers = [*(block.linear for block in model.blocks), model.head]
    scale = [1.0] + [math.sqrt(BASE / 64)] * (len(layers) - 1)  # the input layer's fan-in is the data's: no scale
    omegas = [(layer.weight.detach() / c).clone().requires_grad_(True) for layer, c in zip(layers, scale)]
    biases = [layer.bias.detach().clone().requires_grad_(True) for layer in layers]
    extra = {"eps": 1e-20} if optim == "adam" else {}
    plain = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optim]([*omegas, *biases], lr=exp.optim["lr"], **extra)
    ours = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optim](parameter_groups(model, exp.model, exp.optim), lr=exp.optim["lr"], **extra)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)

    def ntk_forward(h):
        for k, (omega, b, c) in enumerate(zip(omegas, biases, scale)):
            h = F.linear(h, c * omega, b)
            h = torch.relu(h) if k < len(omegas) - 1 else h
        return h

    for _ in range(3):
        for opt, forward in ((ours, model), (plain, ntk_forward)):
            opt.zero_grad()
            loss = F.cross_entropy(forward(x), y)
            loss.backward()
            opt.step()
        for layer, omega, c in zip(layers, omegas, scale):
            assert torch.allclose(layer.weight, c * omega, rtol=1e-4, atol=1e-6)
