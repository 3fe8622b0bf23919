"""The gates' mean field (theory/gates.py) against wide random LSTM and GRU cells run forward in numpy
(a Monte Carlo independent of the theory and of torch), against gradlab's own nn.LSTM-equivalent
stacks measured by a run, and chrono initialization as built (issue 21, items 3 and 4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from gradlab.config.experiment import validate
from gradlab.theory import gates, predict

WIDTH = 512
STEPS = 100
BATCH = 32
FEATURES = 32
INPUT_MEAN = 0.3  # inputs N(0.3, 1) per feature: a part that is the same for every example, as the adding problem's values have
GATE_NAMES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new")}


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def monte_carlo(kind: str, var_ih: float, var_hh: float, forget, seed: int = 0) -> dict[str, np.ndarray]:
    """One wide random cell (weights drawn once and used at every step, as in a real network) run
    over STEPS steps of fresh N(INPUT_MEAN, 1) inputs from the zero state: each gate's mean over
    batch and units, and E[h²], per step."""
    rng = np.random.default_rng(seed)
    H, blocks = WIDTH, {"lstm": 4, "gru": 3}[kind]
    w_ih = rng.normal(0.0, math.sqrt(var_ih), (blocks * H, FEATURES))
    w_hh = rng.normal(0.0, math.sqrt(var_hh), (blocks * H, H))
    b = np.zeros(blocks * H)
    if isinstance(forget, dict):
        # the units take u at the uniform's quantiles (shuffled): the distribution chrono draws from, without
        # the scatter of one draw of 512 (gate_prediction's timescale_sampling_sd covers that for real layers)
        b[H : 2 * H] = rng.permutation(np.log(1.0 + (forget["max_timescale"] - 2.0) * (np.arange(H) + 0.5) / H))
        if kind == "lstm":
            b[:H] = -b[H : 2 * H]
    elif kind == "lstm" or forget:
        b[H : 2 * H] = forget
    x = rng.normal(INPUT_MEAN, 1.0, (STEPS, BATCH, FEATURES))
    h, c = np.zeros((BATCH, H)), np.zeros((BATCH, H))
    out = {gate: np.zeros(STEPS) for gate in GATE_NAMES[kind]} | {"h2": np.zeros(STEPS)}
    for t in range(STEPS):
        gi, gh = x[t] @ w_ih.T + b, h @ w_hh.T
        if kind == "lstm":
            a = gi + gh
            values = (_sigmoid(a[:, :H]), _sigmoid(a[:, H : 2 * H]), np.tanh(a[:, 2 * H : 3 * H]), _sigmoid(a[:, 3 * H :]))
            c = values[1] * c + values[0] * values[2]
            h = values[3] * np.tanh(c)
        else:
            r, z = _sigmoid(gi[:, :H] + gh[:, :H]), _sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
            n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
            h = (1.0 - z) * n + z * h
            values = (r, z, n)
        for gate, value in zip(GATE_NAMES[kind], values):
            out[gate][t] = value.mean()
        out["h2"][t] = (h * h).mean()
    return out


def theory(kind: str, var_ih: float, var_hh: float, forget) -> gates.Trace:
    biases = {gate: gates.GateBias() for gate in GATE_NAMES[kind]}
    memory = "forget" if kind == "lstm" else "update"
    if isinstance(forget, dict):
        biases[memory] = gates.GateBias(chrono=forget["max_timescale"])
        if kind == "lstm":
            biases["input"] = gates.GateBias(chrono=forget["max_timescale"], sign=-1.0)
    else:
        biases[memory] = gates.GateBias(mean=forget)
    layer = gates.GateLayer(kind, WIDTH, var_ih, var_hh, biases)
    second, mean_square = FEATURES * (1.0 + INPUT_MEAN**2), FEATURES * INPUT_MEAN**2
    return gates.forward(layer, gates.Inputs((second,) * STEPS, (mean_square,) * STEPS))


CHRONO = {"name": "chrono", "max_timescale": 200.0}
# (weight scale: var_ih * fan_in, var_hh * width), forget bias
CASES = [(kind, scale, forget) for kind in ("lstm", "gru") for scale in ((1.0, 1.0), (4.0, 4.0)) for forget in (0.0, 1.0, CHRONO)]


@pytest.mark.parametrize("kind, scale, forget", CASES, ids=[f"{k}-w{s[0]:g}-{'chrono' if isinstance(f, dict) else f'b{f:g}'}" for k, s, f in CASES])
def test_gate_means_and_h_second_moment_match_wide_random_cells(kind, scale, forget):
    var_ih, var_hh = scale[0] / FEATURES, scale[1] / WIDTH
    measured = monte_carlo(kind, var_ih, var_hh, forget)
    predicted = theory(kind, var_ih, var_hh, forget)
    window = slice(STEPS // 2, STEPS)
    for gate in GATE_NAMES[kind]:
        # a gate's mean over 512 units and 32 examples: the units' random input weights make it scatter by ~0.005
        assert measured[gate][window].mean() == pytest.approx(predicted.gate_mean[gate][window].mean(), abs=0.012), gate
    memory = "forget" if kind == "lstm" else "update"
    assert predicted.direct[window].mean() == pytest.approx(predicted.gate_mean[memory][window].mean())
    # the direct path's timescale 1/(1 - E[f]) within 10%
    xi_measured, xi = 1.0 / (1.0 - measured[memory][window].mean()), 1.0 / (1.0 - predicted.direct[window].mean())
    assert xi_measured == pytest.approx(xi, rel=0.10)
    # E[h²]: within 10% with one bias for every unit (measured 2-7%); chrono's long-memory units add the
    # recurrent input's fluctuations up coherently over their memory, which the step-by-step mean field
    # leaves out (measured 3-35% low: predict.H_SECOND_MOMENT_TOLERANCE)
    tolerance = predict.H_SECOND_MOMENT_TOLERANCE if isinstance(forget, dict) else 0.10
    assert measured["h2"][window].mean() == pytest.approx(predicted.h2[window].mean(), rel=tolerance)


def test_the_stationary_state_is_the_long_sequence_limit():
    layer = gates.GateLayer("lstm", WIDTH, 1.0 / FEATURES, 1.0 / WIDTH, {g: gates.GateBias(mean=1.0 if g == "forget" else 0.0) for g in GATE_NAMES["lstm"]})
    second, mean_square = FEATURES * 1.09, FEATURES * 0.09
    long = gates.forward(layer, gates.Inputs((second,) * 400, (mean_square,) * 400))
    fixed = gates.stationary(layer, second, mean_square)
    assert fixed.h2[-1] == pytest.approx(long.h2[-1], rel=1e-9)
    assert fixed.direct[-1] == pytest.approx(long.direct[-1], rel=1e-12)


def test_paths_through_the_same_recurrent_matrix_add_coherently():
    """Why no step_factor is predicted for lstm and gru: the cell's backward map in the small-signal
    regime, δc ← f δc + α W_hhᵀ δc with W_hh the same orthogonal matrix at every step, grows by
    f + α per step over long spans (an eigenvalue f + α e^{iθ} at θ = 0), not by √(f² + α²) as fresh
    weights at every step (the gradient independence assumption) give."""
    rng = np.random.default_rng(0)
    H, T, f, alpha = 256, 200, 0.5, 0.25
    w, _ = np.linalg.qr(rng.normal(size=(H, H)))
    tied = rng.normal(size=H)
    fresh = tied.copy()
    for _ in range(T):
        tied = f * tied + alpha * (w.T @ tied)
        fresh = f * fresh + alpha * (rng.normal(size=(H, H)) / math.sqrt(H)).T @ fresh  # a new matrix each step
    start = math.sqrt(H)  # (|δ_0| ≈ √H for a standard normal start)
    tied_factor, fresh_factor = (np.linalg.norm(tied) / start) ** (1 / T), (np.linalg.norm(fresh) / start) ** (1 / T)
    assert fresh_factor == pytest.approx(math.sqrt(f * f + alpha * alpha), rel=0.01)
    assert tied_factor == pytest.approx(f + alpha, rel=0.03) and tied_factor > 1.25 * fresh_factor


def test_chrono_timescale_spread_is_the_sampling_spread_of_the_drawn_biases():
    rng = np.random.default_rng(0)
    draws = 1.0 / (1.0 + rng.uniform(1.0, 199.0, (20000, 64)))  # 1 - sigmoid(log u)
    means = draws.mean(axis=1)
    assert gates.chrono_timescale_spread(200.0, 64) == pytest.approx(means.std() / means.mean(), rel=0.03)


def test_chrono_groups_integrate_the_log_uniform_bias():
    b, w = gates.chrono_groups(100.0)
    # E[σ(log u)] = E[u / (1 + u)] = 1 - ln(100 / 2) / 98 for u ~ U(1, 99)
    assert float(np.dot(w, 1.0 / (1.0 + np.exp(-b)))) == pytest.approx(1.0 - math.log(50.0) / 98.0, rel=1e-10)


# --------------------------------------------------------------------------------------------
# gradlab's own stacks, measured by a run at initialization
# --------------------------------------------------------------------------------------------


def measured_run(tmp_path, kind: str, forget=None, width: int = 256):
    from gradlab.analysis.summaries import gate_profile_at
    from gradlab.orchestrate.runner import run_experiment
    from gradlab.records.run import load_run

    model = {"kind": kind, "depth": 1, "width": width, "init": {"weight": "xavier_uniform", "recurrent": {"name": "orthogonal", "gain": 1.0}, "bias": "zeros"}}
    if forget is not None:
        model["forget_bias"] = forget
    raw = {"name": f"{kind}-gates", "seed": 0, "device": "cpu", "data": {"name": "adding", "seq_len": 60, "n_train": 128, "n_test": 32, "batch_size": 128},
           "model": model, "loss": "mse", "train": {"steps": 0, "eval_every": 1}, "log": {"every": 1, "probes": ["activations"], "out": str(tmp_path)}}  # fmt: skip
    exp = validate(raw)
    run = load_run(run_experiment(exp).run_dir)
    return gate_profile_at(run, 0), predict.predict(exp)


@pytest.mark.parametrize("kind, forget", [("lstm", None), ("lstm", 1.0), ("lstm", {"name": "chrono", "max_timescale": 60}), ("gru", {"name": "chrono", "max_timescale": 60})])
def test_gate_prediction_beside_gradlabs_stack_on_the_adding_problem(tmp_path, kind, forget):
    measured, prediction = measured_run(tmp_path, kind, forget)
    window = prediction.gates["over_sequence"]
    assert window["steps"] == [30, 59]
    for gate, value in window["gates"].items():
        assert measured[f"{gate}_mean"] == pytest.approx(value, abs=0.02), gate
    spread = max(0.05, 3 * window["timescale_sampling_sd"])
    assert gates.timescale(measured["direct_factor"]) == pytest.approx(window["timescale"], rel=spread)
    assert measured["h_second_moment"] == pytest.approx(window["h_second_moment"], rel=predict.H_SECOND_MOMENT_TOLERANCE)
    assert predict.gate_departs(measured, prediction) == (False, [])


# --------------------------------------------------------------------------------------------
# chrono initialization as built, and the config's refusals
# --------------------------------------------------------------------------------------------


def built(kind: str, max_timescale: float, width: int = 2000):
    import torch

    from gradlab.build.recurrent import RECURRENT_KINDS

    exp = validate({"name": "c", "data": {"name": "adding", "seq_len": 10}, "loss": "mse",
                    "model": {"kind": kind, "depth": 2, "width": width, "forget_bias": {"name": "chrono", "max_timescale": max_timescale}}})  # fmt: skip
    torch.manual_seed(0)
    model = RECURRENT_KINDS[kind](exp.model, (10, 2), 1)
    model.initialize(exp.model)
    return model


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_chrono_draws_the_memory_gates_bias_log_uniform(kind):
    H, T = 2000, 50.0
    model = built(kind, T, H)
    for layer in model.layers:
        b = (layer.bias_ih + layer.bias_hh).detach().double().numpy()
        memory = b[H : 2 * H]  # lstm's forget gate, gru's update gate (z keeps h_{t-1})
        assert (layer.bias_hh[H : 2 * H] == 0).all()
        u = np.sort(np.exp(memory))
        # u ~ U(1, T - 1): its empirical quantiles against the uniform's (Kolmogorov-Smirnov distance)
        expected = (np.arange(1, H + 1) - 0.5) / H
        assert np.max(np.abs((u - 1.0) / (T - 2.0) - expected)) < 1.63 / math.sqrt(H)  # the 1% critical value
        if kind == "lstm":
            np.testing.assert_array_equal(b[:H], -memory)  # the input gate's bias is -b_f
        else:
            # a large update gate remembers: in PyTorch's GRU h_t = (1 - z) n + z h_{t-1}
            assert memory.min() >= 0.0


def test_gru_update_gate_near_one_keeps_the_state_in_torchs_own_gru():
    import torch

    gru = torch.nn.GRU(3, 4, batch_first=True)
    with torch.no_grad():
        gru.bias_ih_l0[4:8] = 40.0  # z = sigmoid(40) = 1 to float precision
    h0 = torch.randn(1, 2, 4)
    out, _ = gru(torch.randn(2, 5, 3), h0)
    torch.testing.assert_close(out[:, -1], h0[0])


def test_chrono_is_one_line_exit_2_on_an_rnn(tmp_path, invoke):
    config = {"name": "c", "data": {"name": "adding", "seq_len": 10}, "loss": "mse",
              "model": {"kind": "rnn", "forget_bias": {"name": "chrono", "max_timescale": 100}}}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = invoke("run", path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: model.forget_bias: chrono applies to lstm (the forget gate) and gru (the update gate), not rnn"]


@pytest.mark.parametrize("value, message", [
    ({"name": "chrono"}, "chrono needs max_timescale, a number > 2 (the longest memory in steps)"),
    ({"name": "chrono", "max_timescale": 2}, "chrono needs max_timescale, a number > 2 (the longest memory in steps)"),
    ({"name": "chrono", "max_timescale": 10, "scale": 1}, "chrono takes max_timescale only, not scale"),
    ({"name": "uniform"}, "unknown name; allowed: a number, or {name: chrono, max_timescale: T} with T > 2"),
    ("1", "allowed: a number, or {name: chrono, max_timescale: T} with T > 2"),
])  # fmt: skip
def test_bad_forget_bias_is_one_line(value, message):
    from gradlab.vocab.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate({"name": "c", "data": {"name": "adding", "seq_len": 10}, "loss": "mse", "model": {"kind": "lstm", "forget_bias": value}})
    assert len(info.value.lines) == 1 and info.value.lines[0].startswith("model.forget_bias: ") and info.value.lines[0].endswith(message)


@pytest.mark.slow
def test_theory_prints_the_gates_for_lstm_and_gru(tmp_path, invoke):
    for kind in ("lstm", "gru"):  # (in-process: the theory's numbers are tested above)
        config = {"name": "c", "data": {"name": "adding", "seq_len": 40}, "loss": "mse",
                  "model": {"kind": kind, "width": 64, "forget_bias": {"name": "chrono", "max_timescale": 40}}}  # fmt: skip
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        result = invoke("theory", path, "--format", "json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert set(out["gates"]) == set(GATE_NAMES[kind]) and set(out["gates"]["forget" if kind == "lstm" else "update"]) == {"preact_mean", "preact_var", "mean"}
        assert out["timescale"] == pytest.approx(-1.0 / math.log(out["direct_factor"]))
        assert out["h_second_moment"] > 0 and out["step_factor"] is None
    table = invoke("theory", path).output
    assert "gates (mean field, last recurrent layer)" in table and "direct_factor" in table and "no step_factor: the gates' mean field" in table
