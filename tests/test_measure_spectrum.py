"""The spectrum probe group (gradlab/measure/spectrum.py): weight_sv_max and weight_stable_rank
against torch.linalg.svdvals (and Marchenko-Pastur's edge at a Gaussian initialization),
weight_alpha against WeightWatcher itself on the same layers and against a planted power law."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradlab.build.models import build_model
from gradlab.config.experiment import validate
from gradlab.measure import spectrum
from gradlab.measure.probe import Probe
from gradlab.measure.recurrent_probe import probe_for
from gradlab.vocab.quantities import LAYERS_COLUMNS, SPECTRUM, layers_columns
from probing import probed_rows

LOSS = nn.CrossEntropyLoss()


def svd_max(matrix: torch.Tensor) -> float:
    return torch.linalg.svdvals(matrix.detach().double())[0].item()


def measured_rows(probe: Probe, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> list[dict]:
    return probed_rows(probe, model, x, y, step)


def make_model(kind: str = "mlp", **model):
    data = {"name": "images"} if kind == "cnn" else {}
    cfg = validate({"model": {"kind": kind, "depth": 3, "width": 64, "activation": "tanh", **model}, "data": data})
    torch.manual_seed(0)
    shape = (3, 8, 8) if kind == "cnn" else (80,)
    return build_model(cfg.model, shape, 10), shape


def batch(shape, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- sv_max and stable rank ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(256, 256), (512, 128), (10, 256), (64, 3, 3, 3), (1024, 1024)], ids=str)
def test_sv_max_from_a_random_start_is_within_1e_4_of_svdvals(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g) / math.sqrt(shape[1])
    matrix = spectrum.operator_matrix([w])
    (sigma,), _ = spectrum.sv_max([matrix], [None], torch.Generator().manual_seed(1))
    assert sigma.item() == pytest.approx(svd_max(w.reshape(shape[0], -1)), rel=1e-4)
    fro = w.double().norm().item()
    assert spectrum.stable_rank(matrix, sigma).item() == pytest.approx(fro**2 / svd_max(matrix) ** 2, rel=3e-4)


@pytest.mark.parametrize("scale", [1e-30, 1e18])
def test_sv_max_of_tiny_and_huge_weights_neither_underflows_nor_overflows(scale):
    w = torch.randn(128, 96, generator=torch.Generator().manual_seed(0)) * scale  # (its squares would, in float32)
    (sigma,), _ = spectrum.sv_max([w], [None], torch.Generator().manual_seed(1))
    assert sigma.item() == pytest.approx(svd_max(w), rel=1e-4)
    unscaled = torch.linalg.svdvals(w.double() / scale)
    assert spectrum.stable_rank(w, sigma).item() == pytest.approx((unscaled.square().sum() / unscaled[0] ** 2).item(), rel=3e-4)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_probe_tracks_sv_max_through_training_from_its_warm_start(kind):
    model, shape = make_model(kind)
    probe = Probe(model, ["weights", "spectrum"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    layers = model.measured_layers()
    for step in range(4):
        x, y = batch(shape, seed=step)
        rows = measured_rows(probe, model, x, y, step)
        for layer, row in zip(layers, rows):
            matrix = layer.weight.detach().reshape(layer.weight.shape[0], -1)
            assert row["weight_sv_max"] == pytest.approx(svd_max(matrix), rel=1e-4), (step, row["name"])
            assert row["weight_stable_rank"] == pytest.approx(row["weight_norm"] ** 2 / svd_max(matrix) ** 2, rel=3e-4)
        optimizer.step()  # the gradients of the measured pass: the weights move between logged steps
    # the next step starts from these: the power-iterated layers' (a convolution's, the head's with fewer
    # than 50 eigenvalues); a Linear's sigma_max is the largest of the eigenvalues its alpha is fitted to
    iterated = {layer.site.key for layer in layers if layer.weight.dim() > 2 or min(layer.weight.shape) < 50}
    assert set(probe._spectra._vectors) == iterated


def test_a_recurrent_layer_is_measured_on_w_ih_and_w_hh_side_by_side():
    cfg = validate({"data": {"name": "copy", "seq_len": 21}, "model": {"kind": "lstm", "depth": 2, "width": 32, "readout": "every"}})
    torch.manual_seed(0)
    from gradlab.build.components import get_loss
    from gradlab.build.data import load_dataset

    data = load_dataset(cfg.data, 0)
    model = build_model(cfg.model, data.input_shape, data.classes)
    probe = probe_for(model, ["spectrum"])
    assert SPECTRUM.keys() <= set(probe.columns_written({}))
    x, y = data.x_train[:8], data.y_train[:8]
    model.zero_grad(set_to_none=True)
    probe.attach()
    logits = model(x)
    loss = get_loss(cfg.loss)(logits, y)
    loss.backward()
    probe.detach()
    values, _ = probe.measure(loss, logits, y).fetch()
    rows = probe.rows(0, values)
    for layer, row in zip(model.measured_layers(), rows):
        matrix = torch.cat([w.detach() for w in layer.weights.values()], dim=1)
        assert row["weight_sv_max"] == pytest.approx(svd_max(matrix), rel=1e-4)
        expected = spectrum.fit_alpha(spectrum.eigenvalues(list(layer.weights.values())))[0].item() if min(matrix.shape) >= 50 else None
        assert row["weight_alpha"] == (pytest.approx(expected, rel=1e-9) if expected is not None else None)


def test_sv_max_at_a_gaussian_initialization_sits_at_the_marchenko_pastur_edge():
    # W (n x m) with i.i.d. N(0, s^2) entries: sigma_max -> s (sqrt(n) + sqrt(m)) as n, m grow (Geman 1980;
    # the edge of the Marchenko-Pastur law); its fluctuations are O(n^(-2/3)) relative (Tracy-Widom)
    g = torch.Generator().manual_seed(3)
    for n, m, s in ((1024, 512, 0.05), (768, 768, 1.0), (2048, 256, 0.3)):
        w = torch.randn(n, m, generator=g) * s
        (sigma,), _ = spectrum.sv_max([w], [None], torch.Generator().manual_seed(0))
        assert sigma.item() == pytest.approx(s * (math.sqrt(n) + math.sqrt(m)), rel=0.02)


def test_a_zero_weight_has_sv_max_0_and_no_stable_rank_and_is_found_once_it_grows():
    linear = nn.Linear(60, 60, bias=False)
    nn.init.zeros_(linear.weight)
    spectra = spectrum.LayerSpectra()
    columns = spectra.measure([((0, None), [linear.weight])])
    host = {q: dict(zip(keys, (v.item() for v in values))) for q, (keys, values) in columns.items()}
    cells = spectrum.cells(host)
    assert cells["weight_sv_max"] == {(0, None): 0.0}
    assert cells["weight_stable_rank"] == {} and cells["weight_alpha"] == {}
    with torch.no_grad():
        linear.weight.copy_(torch.randn(60, 60, generator=torch.Generator().manual_seed(0)))
    columns = spectra.measure([((0, None), [linear.weight])])  # warm start from the zero step's vector
    assert columns["weight_sv_max"][1][0].item() == pytest.approx(svd_max(linear.weight), rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_spectrum_on_a_gpu_is_the_cpus():
    g = torch.Generator().manual_seed(0)
    layers = [((0, None), [torch.randn(256, 256, generator=g) / 16]), ((1, None), [torch.randn(64, 32, 3, 3, generator=g)]),
              ((2, None), [torch.randn(10, 256, generator=g)])]  # fmt: skip
    cpu = spectrum.LayerSpectra().measure(layers)
    gpu = spectrum.LayerSpectra().measure([(key, [w.cuda() for w in weights]) for key, weights in layers])
    for quantity, rel in (("weight_sv_max", 1e-4), ("weight_stable_rank", 3e-4), ("weight_alpha", 1e-6)):
        assert cpu[quantity][0] == gpu[quantity][0]
        assert [v.item() for v in gpu[quantity][1]] == pytest.approx([v.item() for v in cpu[quantity][1]], rel=rel), quantity


# -- alpha ---------------------------------------------------------------------------------------


def ww_alphas(model: nn.Module) -> dict[str, float]:
    """WeightWatcher's alpha of every layer it fits, by module name (its defaults, min_evals 50)."""
    weightwatcher = pytest.importorskip("weightwatcher", reason="weightwatcher is not installed (pip install gradlab[anchors])")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    details = weightwatcher.WeightWatcher(model=model).analyze(min_evals=spectrum.MIN_EIGENVALUES)
    return dict(zip(details["longname"], details["alpha"]))


def test_alpha_is_weightwatchers_on_the_same_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(100, 300), nn.ReLU(),
        nn.Linear(300, 200), nn.ReLU(),
        nn.Conv2d(16, 64, 3),
        nn.Conv2d(4, 8, 3),  # 4 * 9 = 36 eigenvalues: too few
        nn.Linear(200, 60),
        nn.Linear(60, 10),  # 10 eigenvalues: too few
    )  # fmt: skip
    with torch.no_grad():  # a heavy-tailed layer beside the random ones (what training grows)
        model[2].weight.copy_(torch.distributions.StudentT(2.5).sample((200, 300)))
    reference = ww_alphas(model)
    assert set(reference) == {"0", "2", "4", "6"}
    for name, module in model.named_children():
        fit = spectrum.weight_alpha([module.weight]) if hasattr(module, "weight") else None
        if name in reference:
            alpha, fitted = fit
            assert fitted.item() == 1.0
            assert alpha.item() == pytest.approx(reference[name], rel=1e-6), name
        elif hasattr(module, "weight"):
            assert fit is None, name
    assert reference["2"] < reference["0"]  # the heavier tail has the smaller exponent


def test_alpha_recovers_a_planted_power_law():
    # eigenvalues drawn from a Pareto density p(x) ~ x^(-alpha) on [1, inf), placed as the squared
    # singular values of W = U diag(sqrt(x)) V^T: the fit's alpha is the planted one within its
    # standard error (alpha - 1) / sqrt(n) a few times over
    rng = np.random.default_rng(0)
    for planted in (2.5, 4.0):
        n = 400
        x = (1 - rng.random(n)) ** (-1 / (planted - 1))
        u, _ = np.linalg.qr(rng.standard_normal((600, n)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        w = torch.tensor(u @ np.diag(np.sqrt(x)) @ v.T)
        alpha, fitted = spectrum.weight_alpha([w])
        assert fitted.item() == 1.0
        assert abs(alpha.item() - planted) < 4 * (planted - 1) / math.sqrt(n)


def test_the_fit_is_the_ks_closest_maximum_likelihood_exponent_computed_by_hand():
    rng = np.random.default_rng(1)
    values = np.sort(np.concatenate([rng.random(40) * 1e-6, rng.pareto(2.0, 160) + 1]))  # 40 below the floor
    kept = values[values > spectrum.EIGENVALUE_FLOOR]
    best = (math.inf, None)
    for i in range(len(kept) - 1):
        n = len(kept) - i
        alpha = 1 + n / np.sum(np.log(kept[i:] / kept[i]))
        d = np.max(np.abs(1 - (kept[i:] / kept[i]) ** (1 - alpha) - np.arange(n) / n))
        best = min(best, (d, alpha), key=lambda pair: pair[0])
    alpha, fitted = spectrum.fit_alpha(torch.tensor(values))
    assert fitted.item() == 1.0 and alpha.item() == pytest.approx(best[1], rel=1e-12)


def test_alpha_does_not_exist_for_small_weights_flat_tails_or_few_eigenvalues_above_the_floor():
    assert spectrum.weight_alpha([torch.randn(3, 3)]) is None
    assert spectrum.weight_alpha([torch.randn(49, 200)]) is None and spectrum.weight_alpha([torch.randn(50, 200)]) is not None
    orthogonal = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64)).Q  # every eigenvalue 1
    assert spectrum.fit_alpha(torch.ones(64, dtype=torch.float64))[1].item() == 0.0
    assert spectrum.weight_alpha([orthogonal]) is not None  # rounding spreads them: a (huge) finite alpha, as WeightWatcher's
    rank_10 = torch.randn(80, 10) @ torch.randn(10, 80)  # 70 eigenvalues at 0: 10 above the floor
    assert spectrum.weight_alpha([rank_10])[1].item() == 0.0


def test_a_3x3_weight_leaves_alpha_empty_in_the_row():
    cfg = validate({"model": {"depth": 1, "width": 3, "activation": "tanh"}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (3,), 3)  # a 3 x 3 hidden layer and a 3 x 3 head
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    rows = measured_rows(Probe(model, ["spectrum"]), model, x, y)
    assert [row["weight_alpha"] for row in rows] == [None, None]
    for layer, row in zip(model.measured_layers(), rows):
        assert row["weight_sv_max"] == pytest.approx(svd_max(layer.weight), rel=1e-4)


# -- records -------------------------------------------------------------------------------------


def test_a_run_records_the_spectrum_columns_only_when_asked(tmp_path):
    from gradlab.cli.app import app
    from gradlab.records.run import load_run

    config = tmp_path / "spectrum.yaml"
    config.write_text(
        "name: spectrum\ndata: {dim: 64, classes: 10, n_train: 256, n_test: 64, batch_size: 32}\n"
        "model: {depth: 2, width: 64, activation: relu}\ntrain: {steps: 4, eval_every: 4}\n"
        f"log: {{every: 2, probes: [weights, spectrum], out: {tmp_path / 'runs'}}}\n"
    )
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    run = load_run(next((tmp_path / "runs" / "spectrum").iterdir()))
    assert list(run.layers.columns) == layers_columns(spectrum=True) == [*LAYERS_COLUMNS, *SPECTRUM]
    hidden, head = run.layers[run.layers["kind"] == "hidden"], run.layers[run.layers["kind"] == "head"]
    assert hidden[list(SPECTRUM)].notna().all().all() and sorted(hidden["step"].unique()) == [0, 2, 4]
    assert head["weight_sv_max"].notna().all() and head["weight_alpha"].isna().all()  # 10 x 64: 10 eigenvalues
    assert ((hidden["weight_stable_rank"] >= 1) & (hidden["weight_stable_rank"] <= 64)).all()
    plain = CliRunner().invoke(app, ["run", str(config), "--set", "log.probes=[weights]", "--set", "name=plain", "--set", "model.width=48"])
    assert plain.exit_code == 0, plain.output
    plain_run = load_run(next((tmp_path / "runs" / "plain").iterdir()))
    assert list(plain_run.layers.columns) == LAYERS_COLUMNS

    # compare: alpha_min/alpha_max and WeightWatcher's warning, only where a run has the group
    from gradlab.analysis.compare import compare_runs

    alone = compare_runs([plain_run]).table
    assert not [c for c in alone.columns if c.startswith("alpha")]
    table = compare_runs([run, plain_run]).table.set_index("label")
    alphas = hidden.loc[hidden["step"] == 0, "weight_alpha"]
    assert table.loc["spectrum", "alpha_min@0"] == alphas.min() and table.loc["spectrum", "alpha_max@0"] == alphas.max()
    assert math.isnan(table.loc["plain", "alpha_min@0"]) and pd.isna(table.loc["plain", "alpha_warning@0"])
    columns = list(table.columns)
    assert columns.index("alpha_warning@0") == columns.index("alpha_max@0") + 1


def test_the_warning_names_the_layers_outside_weightwatchers_range(tmp_path):
    from gradlab.analysis.summaries import alpha_warning
    from gradlab.records.run import Run

    class Recorded(Run):  # a run read back: only what alpha_warning reads
        def __init__(self, alphas):
            self.layers = pd.DataFrame({"step": 0, "layer": range(len(alphas)), "name": [f"blocks.{k}" for k in range(len(alphas))],
                                        "kind": "hidden", "weight_alpha": alphas})  # fmt: skip

        def resolve_step(self, step):
            return 0

    assert alpha_warning([Recorded([1.5, 3.0, 7.25])], 0) == "over-trained: blocks.0 (1.5); under-trained: blocks.2 (7.25)"
    assert alpha_warning([Recorded([2.0, 6.0, float("nan")])], 0) == "none"
    assert alpha_warning([Recorded([float("nan")])], 0) is None
    assert alpha_warning([Recorded([1.0, 4.0]), Recorded([3.0, 4.0])], 0) == "none"  # blocks.0: (1 + 3) / 2 over the seeds


def test_watch_records_the_spectrum_of_each_call(tmp_path):
    from gradlab.measure.watch import watch
    from gradlab.records.run import load_run

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, out=tmp_path, every=2, name="w", optimizer=optimizer, probes=["weights", "spectrum"]) as w:
        for step in range(3):
            x, y = batch((32,), seed=step)
            optimizer.zero_grad()
            loss = LOSS(model(x), y)
            loss.backward()
            if step == 2:
                expected = [svd_max(model[k].weight) for k in (0, 2, 4)]  # the weights the measured pass used
            optimizer.step()
            w.step(loss=loss)
    layers = load_run(w.run_dir).layers
    assert list(SPECTRUM) == list(layers.columns[-3:])
    last = layers[layers["step"] == 2]
    assert last["weight_sv_max"].tolist() == pytest.approx(expected, rel=1e-4)
    assert last["weight_alpha"].isna().tolist() == [True, False, True]  # 32 and 10 eigenvalues: too few


def test_watch_measures_one_recurrent_layer_whole_and_leaves_a_stack_of_them_empty(tmp_path):
    from gradlab.measure.watch import watch
    from gradlab.records.run import load_run

    class Tagger(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.rnn = nn.RNN(8, 64, num_layers=layers, batch_first=True)
            self.head = nn.Linear(64, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    for layers in (1, 2):
        torch.manual_seed(0)
        model = Tagger(layers)
        with watch(model, out=tmp_path, every=1, name=f"rnn{layers}", groups=["weights", "spectrum"]) as w:
            x, y = torch.randn(4, 5, 8), torch.randint(0, 3, (4,))
            LOSS(model(x), y).backward()
            w.step()
        rows = load_run(w.run_dir).layers.set_index("name")
        if layers == 1:
            both = torch.cat([model.rnn.weight_ih_l0, model.rnn.weight_hh_l0], dim=1)
            assert rows.loc["rnn", "weight_sv_max"] == pytest.approx(svd_max(both), rel=1e-4)
            assert rows.loc["rnn", "weight_alpha"] == pytest.approx(spectrum.weight_alpha([both])[0].item(), rel=1e-9)
        else:
            assert rows.loc["rnn", list(SPECTRUM)].isna().all()
        assert rows.loc["head", "weight_sv_max"] == pytest.approx(svd_max(model.head.weight), rel=1e-4)


def test_watch_takes_the_groups_as_probes_or_groups_not_both(tmp_path):
    from gradlab.measure.watch import watch
    from gradlab.vocab.errors import ConfigError

    model = nn.Linear(4, 2)
    with pytest.raises(ConfigError) as caught:
        watch(model, out=tmp_path, groups=["weights"], probes=["spectrum"])
    assert caught.value.lines == ["watch: groups and probes name the same thing (log.probes' groups); give one of them"]
    assert not list(tmp_path.iterdir())  # a refused watch writes nothing
