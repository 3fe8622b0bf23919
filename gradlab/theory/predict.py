"""Predictions from a config alone: what signal-propagation theory says a run's gradient profile is
at initialization, or why it says nothing.

    predict(exp) -> Prediction          (numpy only: no torch, no pandas)

mean_field.py, batchnorm.py, residual.py and recurrent.py hold the math on plain numbers (length
map, χ₁, BatchNorm's factor, residual moments, Pascanu's bound); this module reads a config and
hands the math its numbers, so the two can be tested apart: the math against closed forms and
published values, this mapping against the networks gradlab builds (tests/test_predict.py measures
wide networks at step 0). show/theory_table.py renders a Prediction as `gradlab theory` prints it.

What a config supplies
----------------------
* **σw², σb²** of each block, from the initializers' stated variances (initializers.py) with the
  layer's actual fans: σw² = Var(W) · fan_in, σb² = Var(b) (0 without a bias, or with BatchNorm
  before the activation, which drops the bias). Block 0's fan-in is the input's size, so its σw²
  differs from the others' whenever the initializer fixes a std rather than a variance.
* **q⁰**, the input's second moment mean(x²) over examples and features (Poole et al. 2016), and
  for BatchNorm the per-feature variance over examples averaged over features: known in
  expectation over the data's draw for the synthetic vector datasets (`input_moments`):
      gaussian   x = m_y + noise·ε with m ~ N(0, I): mean(x²) = 1 + noise², per-feature variance
                 1 − 1/classes + noise² (labels uniform: the class means' spread, plus the noise)
      teacher    x ~ N(0, I): 1 and 1
      spirals    points of the unit disc, r ~ U(0, 1), jitter 0.1·noise per coordinate, embedded
                 isometrically: mean(x²) = (1/3 + 2 (0.1 noise)²) / dim, the same variance (the
                 arms are spread evenly around the centre, so the mean is 0)
  For file datasets (mnist, npz, csv) and images, q⁰ is not known from the config: pass
  `input_moments` measured on the data, or get no prediction.
* The activation's numpy forms and kinks (activations.py).

Which theory applies
--------------------
    model                                   prediction                         paper
    mlp, norm none                          mean-field length map, χ₁, ξ, phase  Poole 2016, Schoenholz 2017
    mlp, batchnorm placement pre            √(E[φ'(z)²] / Var φ(z)) per layer   Yang et al. 2019
                                            (its large-batch limit; at the config's
                                            batch size for relu-type and identity)
    mlp, residual (norm none or bn pre)     stream moments and gradient growth  De & Smith 2020, Brock 2021
    rnn, readout last                       step_factor: λ (linear, λ·orthogonal) Pascanu 2013
                                            or the bound γ·λ₁ (any other)
    lstm                                    σ(forget bias) on the cell path    Gers 2000
and no prediction — `Prediction.reason` says why — for LayerNorm, GroupNorm and LRN (they
normalize over units, not the batch: no derivation here), any norm after the activation, CNNs
(zero padding, pooling and global average pooling break the fully connected mean field; Xiao et al.
2018's delta-orthogonal analysis covers none of gradlab's CNNs), rrelu (random slopes in training),
an initializer with a nonzero mean, and inputs whose second moment is unknown.

The predicted `layer_factor` is what gradlab measures: (first/last delta_norm)^(1/(depth−1)), the
geometric mean of the layer-by-layer factors from the actual input.

A config with `log.jacobian` also gets the input-output Jacobian's spectrum per block in `extra`
(jacobian_m1, jacobian_s2; jacobian_reason where the free-probability formula of jacobian.py does
not apply), from the same q-map and σw² as the mean-field prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from gradlab.theory import activations, initializers
from gradlab.theory import parametrization
from gradlab.theory import batchnorm as batchnorm_theory
from gradlab.theory import gates as gate_theory
from gradlab.theory import jacobian as jacobian_theory
from gradlab.theory import mean_field as theory
from gradlab.theory import recurrent as recurrent_theory
from gradlab.theory import residual as residual_theory
from gradlab.vocab import specs
from gradlab.vocab.datasets import COPY_LENGTH, COPY_SYMBOLS, SPIRAL_JITTER, seq_len
from gradlab.vocab.errors import ConfigError

# How far a measured layer_factor may be from the predicted one, relative to the prediction, before
# `gradlab compare` flags the run as departing from theory (its `departs` column). The measured
# factor of a width-256 stack of depth 20 at step 0 scatters by about 1-2% around mean field
# (finite width and batch); 5% leaves room for that and still catches a wrong init or a broken
# network. `expect: {layer_factor: {within_theory: x}}` sets its own.
DEPARTS_TOLERANCE = 0.05
# Mean field is an infinite-width theory. Below this model.width the measured layer_factor of one
# run scatters around it by more than DEPARTS_TOLERANCE too often for `departs` to mean anything
# (benchmarks/theory_width.py, docs/theory.md "Width": over 32 seeds each of tanh at the critical
# line, ReLU with He init and sigmoid, depth 20, batch 128, the share of runs off by more than 5%
# is at most 9% from width 32 up (90th percentile of the error 4.6%), and 16% at width 24, 62-88% at
# 8-16). `gradlab theory` notes it, `compare --theory`'s departs reads "n/a (width w < MIN_WIDTH)",
# and `expect: within_theory` fails saying so.
MIN_WIDTH = 32
# χ within this of 1 is exactly 1 (an infinite depth scale): the stated variances carry rounding
# (mean_field.depth_scale says why)
CRITICAL_TOL = 1e-12

SOURCES = {
    "mean_field": "Poole et al. 2016 (eq. 3), Schoenholz et al. 2017 (eqs. 5-13)",
    "batchnorm": "Yang et al. 2019, A mean field theory of batch normalization (ICLR)",
    "residual": "De & Smith 2020 (Batch normalization biases residual blocks towards the identity); Brock, De & Smith 2021",
    "recurrent": "Pascanu, Mikolov & Bengio 2013 (eq. 7); Gers et al. 2000 for the LSTM cell path; "
                 "Chen, Pennington & Schoenholz 2018 and Gilboa et al. 2019 for the gates' mean field",
    "none": "",
}

# How a recurrent prediction's step_factor relates to the measured step_factor@0.
STEP_EQUALS = "equals"
STEP_AT_MOST = "at most"
# Recurrent initializers whose every singular value is the gain (top_singular_value is then exact
# for all of them, so a linear rnn multiplies ‖∂L/∂a_t‖ by exactly the gain per step).
NORM_PRESERVING = ("orthogonal", "identity", "eye")


@dataclass(frozen=True)
class InputMoments:
    """The input's moments that theory starts from: mean(x²) over examples and features, mean(x),
    and the per-feature variance over examples averaged over features; `how` says where they came from."""

    second_moment: float
    mean: float
    batch_variance: float
    how: str


@dataclass(frozen=True)
class Prediction:
    """What theory predicts for a config at initialization (None where it predicts nothing).

    theory: mean_field | batchnorm | residual | recurrent | none. reason: why there is no
    prediction ('' when there is one). The fields are those of `gradlab theory --format json`
    (docs/theory.md): q_star, chi1, predicted_factor (√χ₁, the per-layer
    factor at the fixed point; BatchNorm: its per-layer factor), xi_grad, xi_c, phase, layers
    (the layer-by-layer factors ‖∂L/∂z_l‖ / ‖∂L/∂z_{l+1}‖ from the actual input, l = 0 … depth−2),
    layer_factor (their geometric mean: the prediction of the measured layer_factor), q (each
    block's pre-activation variance; residual: the stream's second moment after each block),
    inputs (σw², σb², q⁰ and how each was found) and extra (per theory: the residual stream's
    variance and gradient factors, the recurrent step bound).

    Recurrent configs also carry step_factor, theory's number to set beside the measured
    step_factor@0 (the per-step factor of ‖∂L/∂a_t‖ back through time on the last recurrent layer),
    and step_relation, how the two compare: STEP_EQUALS (a prediction: a linear rnn whose recurrent
    matrix is λ·orthogonal or λ·I has exactly λ) or STEP_AT_MOST (Pascanu's bound γ·λ₁: the
    measurement can only be at or below it). Both None where there is none (a note says why).
    """

    theory: str
    reason: str = ""
    q_star: float | None = None
    chi1: float | None = None
    predicted_factor: float | None = None
    xi_grad: float | None = None
    xi_c: float | None = None
    phase: str | None = None
    layers: tuple[float, ...] = ()
    layer_factor: float | None = None
    q: tuple[float, ...] = ()
    step_factor: float | None = None
    step_relation: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    narrow: str = ""  # "width 1 < 32" where mean field's infinite-width numbers do not apply to this width
    # lstm and gru: the gates' mean field on the last recurrent layer (`gate_prediction`), {} otherwise
    gates: dict[str, Any] = field(default_factory=dict)
    # model.parametrization ntk or mup: theory/parametrization.layer_table, one row per layer role; [] for standard
    parametrization: list[dict[str, Any]] = field(default_factory=list)


    @property
    def source(self) -> str:
        return SOURCES[self.theory]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping; an infinite depth scale (exactly critical) is the string 'inf'."""
        out: dict[str, Any] = {"theory": self.theory, "source": self.source, "reason": self.reason}
        for key in ("q_star", "chi1", "predicted_factor", "xi_grad", "xi_c", "phase", "layer_factor"):
            out[key] = _json_number(getattr(self, key))
        out["layers"] = [_json_number(v) for v in self.layers]
        out["q"] = [_json_number(v) for v in self.q]
        out["inputs"] = {k: _json_number(v) for k, v in self.inputs.items()}
        out["extra"] = {k: [_json_number(x) for x in v] if isinstance(v, (list, tuple)) else _json_number(v) for k, v in self.extra.items()}
        if self.narrow:
            out["narrow"] = self.narrow
        if self.parametrization:  # model.parametrization ntk or mup: what it does to each layer
            out["parametrization"] = [{k: _json_number(v) if isinstance(v, float) else v for k, v in row.items()} for row in self.parametrization]
        if self.theory == "recurrent":  # (feed-forward JSON keeps its keys)
            out["step_factor"] = _json_number(self.step_factor)
            out["step_relation"] = self.step_relation
        if self.gates:
            out.update(_json_tree(self.gates))
        out["notes"] = list(self.notes)
        return out


def _json_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_tree(v) for v in value]
    return _json_number(value)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def none(reason: str, **inputs: Any) -> Prediction:
    """No prediction, and why."""
    return Prediction("none", reason=reason, inputs=inputs)


# --------------------------------------------------------------------------------------------
# What the config supplies
# --------------------------------------------------------------------------------------------


# Positively homogeneous activations (rrelu's random slopes are refused before they get here).
HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "identity")


class NumpyActivation:
    """An activation spec's numpy forms, resolved once (theory.Activation's protocol)."""

    def __init__(self, spec: Any):
        resolved = specs.activations.resolve(spec)
        self._record = activations.get(resolved["name"])
        self._params = specs.activations.params_of(resolved)
        self.kinks = tuple(self._record.kinks(self._params))
        self.scale = float(self._record.scale(self._params))  # the x grid the quadrature resolves φ on (softplus: 1/β)
        self.name = resolved["name"]
        # the resolved spec: theory.mean_field caches Gaussian moments per activation and q by it
        self.key = (self.name, tuple(sorted((k, str(v)) for k, v in resolved.items())))
        # φ(λx) = λφ(x) for λ > 0 (x for x > 0, a·x below): E[φ(√q z)²] = q E[φ(z)²] and χ₁ is
        # the same at every q, so the length map is linear (mean_field uses both)
        self.homogeneous = self.name in HOMOGENEOUS

    def f(self, x):
        return self._record.f(self._params, x)

    def df(self, x):
        return self._record.df(self._params, x)


def input_moments(data: Any) -> InputMoments | None:
    """The input's moments from the data section alone (see the module docstring), or None when
    they are not known without reading the data."""
    name, noise, dim = data.name, float(data.noise), data.dim
    # (noise * noise, not noise**2: a product overflows to inf where a power raises; check_limits
    # refuses every noise whose features overflow float32 long before either)
    if name == "gaussian":
        return InputMoments(1.0 + noise * noise, 0.0, 1.0 - 1.0 / data.classes + noise * noise,
                            f"gaussian: E[x²] = 1 + noise² = {1 + noise * noise:g} (class means ~ N(0, 1) plus noise)")  # fmt: skip
    if name == "teacher":
        return InputMoments(1.0, 0.0, 1.0, "teacher: x ~ N(0, I), E[x²] = 1")
    if name == "spirals":
        jitter = SPIRAL_JITTER * noise
        second = (1.0 / 3.0 + 2.0 * jitter * jitter) / dim
        return InputMoments(second, 0.0, second, f"spirals: E[x²] = (1/3 + 2 (0.1 noise)²) / dim = {second:.6g}")
    return None


# float32's largest finite value: the synthetic features are float32 (build/dataset refuses a noise
# that makes any of them overflow, and so does theory: the same line)
FLOAT32_MAX = 3.4028234663852886e38


def check_limits(exp: Any) -> None:
    """Raise ConfigError, with `gradlab run`'s own line, for a config run refuses whatever its
    model: a `data.noise` that makes the synthetic features overflow float32. x = m + noise·ε
    (gaussian; spirals: 0.1·noise·ε per coordinate) over N = (n_train + n_test)·dim draws of
    ε ~ N(0, 1) reaches |ε| ≈ √(2 ln N), so the features overflow once noise·√(2 ln N) passes
    float32's largest value (run checks the drawn data; this is that check in expectation)."""
    data = exp.data
    spread = {"gaussian": 1.0, "spirals": SPIRAL_JITTER}.get(data.name)
    if spread is None:
        return
    draws = max(2, (data.n_train + data.n_test) * max(1, data.dim))
    if float(data.noise) * spread * math.sqrt(2.0 * math.log(draws)) >= FLOAT32_MAX:
        raise ConfigError(f"data.noise: {data.noise:g} makes the {data.name} features overflow float32 (NaN or inf); use a smaller noise")


def _fans(exp: Any, block: int) -> tuple[int, int]:
    """(fan_in, fan_out) of block `block`'s first linear map (an MLP: block 0 reads the input)."""
    return (exp.data.dim if block == 0 else exp.model.width), exp.model.width


def _init_variances(exp: Any, fan_in: int, fan_out: int, has_bias: bool, role: str = "hidden") -> tuple[float, float]:
    """(σw², σb²) of a linear layer with these fans under the config's initializers, rescaled as
    model.parametrization rescales a block of `role` (input or hidden; theory/parametrization.py)."""
    model = exp.model
    var_w = initializers.variance(model.init.weight, fan_in, fan_out, model.activation)
    var_b = initializers.variance(model.init.bias, fan_in, fan_out, model.activation) if has_bias else 0.0
    if model.parametrization != "standard":
        var_w *= parametrization.init_factor(exp, role, (fan_out, fan_in)) ** 2
        var_b *= parametrization.init_factor(exp, role, (fan_out, fan_in), bias=True) ** 2
    return var_w * fan_in, var_b


def _nonzero_mean(exp: Any) -> str:
    """Why the initializers break mean field's zero-mean assumption ('' when they don't)."""
    init = exp.model.init
    if initializers.mean(init.weight) != 0:
        return f"model.init.weight {init.weight['name']} has mean {initializers.mean(init.weight):g}; mean-field theory assumes zero-mean weights"
    if exp.model.bias and initializers.mean(init.bias) != 0:
        return f"model.init.bias {init.bias['name']} has mean {initializers.mean(init.bias):g}; mean-field theory assumes zero-mean biases"
    return ""


# --------------------------------------------------------------------------------------------
# The predictions
# --------------------------------------------------------------------------------------------


def predict(exp: Any, moments: InputMoments | None = None, correlations: bool = True) -> Prediction:
    """The prediction for `exp` (an Experiment) at initialization, or `none` with the reason.

    moments: the input's moments when the config does not determine them (file data); by default
    `input_moments(exp.data)`. correlations: compute the correlation map's c*, χ_c and ξ_c (the
    slowest part, ~0.1 s; `gradlab compare` does not need them). With log.jacobian, `extra` holds
    the Jacobian's spectrum (or the reason it has none).
    """
    prediction = _gradient_prediction(exp, moments, correlations)
    if getattr(exp.model, "parametrization", "standard") != "standard":
        prediction = replace(prediction, parametrization=parametrization.layer_table(exp))
    if getattr(getattr(exp, "log", None), "jacobian", None) is None:  # (a partial config without log: none)
        return prediction
    return replace(prediction, extra={**prediction.extra, **_jacobian(exp, prediction)})


def _jacobian(exp: Any, prediction: Prediction) -> dict[str, Any]:
    """jacobian_m1 and jacobian_s2 per block, from the mean-field prediction's q-map and σw²; or jacobian_reason."""
    model = exp.model
    reason = jacobian_theory.not_applicable(model)
    if not reason and prediction.theory != "mean_field":
        reason = prediction.reason or f"no mean-field prediction ({prediction.theory})"
    if not reason and not all(math.isfinite(q) for q in prediction.q):
        reason = "the q-map grows without bound: the activations' derivatives have no finite moments to evaluate"
    if reason:
        return {"jacobian_reason": reason}
    sigma_w2 = [prediction.inputs["first_sigma_w2"]] + [prediction.inputs["sigma_w2"]] * (model.depth - 1)
    family = jacobian_theory.weight_family(model.init.weight["name"])
    act = NumpyActivation(model.activation)
    got = jacobian_theory.spectrum(act, prediction.q, sigma_w2, family, exp.data.dim, model.width)
    if got.reason:
        return {"jacobian_reason": got.reason}
    return {"jacobian_m1": list(got.m1), "jacobian_s2": list(got.s2)}


def jacobian_s2(prediction: Prediction) -> float | None:
    """The predicted s2 of the last hidden block (what jacobian.csv's s2 is measured on), or None."""
    values = prediction.extra.get("jacobian_s2")
    return float(values[-1]) if values else None


def s2_departs(measured: float, predicted: float | None, tolerance: float = DEPARTS_TOLERANCE) -> bool | None:
    """Whether a measured s2 is off the predicted one by more than `tolerance` relative to 1 + s2 =
    m2 / m1^2 (the positive quantity s2 is a shift of: a prediction of 0, an isometry, still has a
    scale); None without a prediction or a measurement."""
    if predicted is None or measured is None or math.isnan(measured):
        return None
    return abs(measured - predicted) > tolerance * (1 + predicted)


def _gradient_prediction(exp: Any, moments: InputMoments | None, correlations: bool) -> Prediction:
    check_limits(exp)
    model = exp.model
    kind = model.kind
    if kind in ("rnn", "lstm", "gru"):
        return _recurrent(exp)
    if kind != "mlp":
        return none(f"no prediction for model.kind {kind}: zero padding, pooling and global average pooling break the fully connected mean field")
    activation = model.activation
    if activation["name"] == "rrelu":
        return none("no prediction for rrelu: its negative slopes are random in training, so E[φ²] is not that of one function")
    problem = _nonzero_mean(exp)
    if problem:
        return none(problem)
    norm = model.norm
    placement = norm.get("placement")
    if norm["name"] not in ("none", "batchnorm"):
        return none(f"no prediction with model.norm {norm['name']}: it normalizes each example over its units, not each unit over the batch; no mean-field derivation applies")
    if norm["name"] == "batchnorm" and placement != "pre":
        return none("no prediction with batchnorm placement post: Yang et al. 2019 derive the factor for BatchNorm between the linear map and the nonlinearity")
    moments = moments or input_moments(exp.data)
    if moments is None:
        return none(f"no prediction for data.name {exp.data.name}: the input's second moment q⁰ is not known from the config (predict it with measured input moments)")
    act = NumpyActivation(activation)
    if getattr(model, "residual", False):
        prediction = _residual(exp, act, moments)
    elif norm["name"] == "batchnorm":
        prediction = _batchnorm(exp, act, moments)
    else:
        prediction = _mean_field(exp, act, moments, correlations)
    return _at_width(prediction, model.width)


def _at_width(prediction: Prediction, width: int) -> Prediction:
    """The prediction, marked `narrow` with a note when the width is below MIN_WIDTH."""
    if width >= MIN_WIDTH or prediction.theory == "none":
        return prediction
    narrow = f"width {width} < {MIN_WIDTH}"
    note = (f"mean field is an infinite-width theory: at model.width {width} < {MIN_WIDTH} one run's layer_factor scatters around these "
            f"numbers by more than {DEPARTS_TOLERANCE:.0%} too often for a comparison to mean anything (docs/theory.md, Width); "
            "they are the wide-network limit, not this network's")  # fmt: skip
    return replace(prediction, narrow=narrow, notes=(*prediction.notes, note))


# What combinations of a sweep share beyond the Gaussian moments (mean_field._MOMENTS): the fixed
# point from a starting q and the correlation map's c* and χ_c, which depend on the activation,
# σw², σb² (and q*) but not on the depth, the width or the optimizer. Cleared when full.
_SHARED: dict[tuple, Any] = {}


def _shared(key: tuple, compute: Any) -> Any:
    if key not in _SHARED:
        if len(_SHARED) >= 100_000:
            _SHARED.clear()
        _SHARED[key] = compute()
    return _SHARED[key]


def _mean_field(exp: Any, act: NumpyActivation, moments: InputMoments, correlations: bool) -> Prediction:
    model = exp.model
    first_w2, first_b2 = _init_variances(exp, *_fans(exp, 0), model.bias, "input")
    w2, b2 = _init_variances(exp, *_fans(exp, 1), model.bias)
    depth = model.depth
    qs = theory.layer_variances(act, moments.second_moment, depth, [first_w2] + [w2] * (depth - 1), [first_b2] + [b2] * (depth - 1))
    factors = theory.gradient_factors(act, qs, [first_w2] + [w2] * (depth - 1))
    inputs = {"sigma_w2": w2, "sigma_b2": b2, "first_sigma_w2": first_w2, "first_sigma_b2": first_b2, "q0": moments.second_moment}
    notes = [moments.how]
    q_init = qs[0] if qs[0] > 0 else 1.0
    fp = _shared(("fixed_point", act.key, w2, b2, q_init), lambda: theory.fixed_point(act, w2, b2, q_init=q_init))
    base = dict(layers=tuple(factors), layer_factor=theory.geometric_mean_factor(factors), q=tuple(qs), inputs=inputs)
    if fp.q_star is None:
        if fp.status != "diverged":
            notes.append(f"no fixed point of the length map: {fp.detail}")
            return Prediction("mean_field", notes=tuple(notes), **base)
        # q grows without bound: χ₁ and the phase are their limits as q → ∞, which every layer
        # approaches (for x / a·x activations χ₁ = σw² E[φ'(z)²] at every q: exact)
        x1 = theory.chi1(act, math.inf, w2)
        exact = "; for x / a·x activations χ₁ is the same at every q" if act.homogeneous else ""
        notes.append(f"no finite fixed point of the length map ({fp.detail}): q*, chi1, predicted_factor, xi_grad and phase are "
                     f"their limits as q grows without bound{exact}; no xi_c (the correlation map is derived at a fixed point)")  # fmt: skip
        return Prediction("mean_field", q_star=math.inf, chi1=x1, predicted_factor=math.sqrt(x1), xi_grad=theory.depth_scale(x1, CRITICAL_TOL),
                          phase=theory.phase(x1), notes=tuple(notes), **base)  # fmt: skip
    x1 = theory.chi1(act, fp.q_star, w2)
    xi_c = None
    if correlations:
        # (the 2-D quadratures: most of a sweep's time; configs differing in depth, width or data share them)
        c_star = _shared(("c_star", act.key, fp.q_star, w2, b2), lambda: theory.correlation_fixed_point(act, fp.q_star, w2, b2, chi1_value=x1))
        chi_c = x1 if c_star == 1.0 else _shared(("chi_c", act.key, c_star, fp.q_star, w2), lambda: theory.chi_c(act, c_star, fp.q_star, w2))
        xi_c = theory.depth_scale(chi_c, CRITICAL_TOL)
    return Prediction(
        "mean_field", q_star=fp.q_star, chi1=x1, predicted_factor=math.sqrt(x1), xi_grad=theory.depth_scale(x1, CRITICAL_TOL),
        xi_c=xi_c, phase=theory.phase(x1), notes=tuple(notes), **base,
    )  # fmt: skip


# Activations x (x > 0), a·x (x < 0) and their slope a: theory's finite-batch BatchNorm factor is
# derived for these (positively homogeneous: expectations on BatchNorm's sphere become Gaussian ones).
_NEGATIVE_SLOPE = {"relu": lambda p: 0.0, "leaky_relu": lambda p: p.negative_slope, "prelu": lambda p: p.init, "identity": lambda p: 1.0}


def _batchnorm(exp: Any, act: NumpyActivation, moments: InputMoments) -> Prediction:
    model = exp.model
    first_w2, _ = _init_variances(exp, *_fans(exp, 0), False, "input")
    w2, _ = _init_variances(exp, *_fans(exp, 1), False)
    large_batch = batchnorm_theory.batchnorm_gradient_factor(act, "batchnorm", "pre")
    if large_batch is None:
        return none(f"no prediction: {act.name}'s output has no variance under N(0, 1), so BatchNorm's factor is undefined")
    factors = batchnorm_theory.batchnorm_gradient_factors(act, [first_w2] + [w2] * (model.depth - 1), model.depth, moments.batch_variance)
    batch = exp.data.batch_size  # every training batch, step 0's included, has exactly this many examples
    inputs = {"sigma_w2": w2, "first_sigma_w2": first_w2, "input_batch_variance": moments.batch_variance, "batch_size": batch}
    notes = [moments.how, "σw² cancels between blocks of equal σw²; the first factor uses block 0's σw² and the input's batch variance"]
    steady = large_batch
    if act.name in _NEGATIVE_SLOPE and batch >= 4:
        # between hidden blocks, the factor at this batch size (block 0 reads the data, not BatchNorm's fixed point)
        steady = batchnorm_theory.batchnorm_gradient_factor_finite_batch(_NEGATIVE_SLOPE[act.name](act._params), batch)
        factors = factors[:1] + [f * steady / large_batch for f in factors[1:]]
        notes.append(f"between hidden blocks the factor at batch size {batch}: {steady:.6g} (the large-batch limit {large_batch:.6g} grows by O(1/B))")
    else:
        why = f"a batch of {batch} < 4" if batch < 4 else f"{act.name} is not x / a·x"
        notes.append(f"the large-batch limit: the finite-batch factor is derived for relu, leaky_relu, prelu and identity with batches of 4 or more ({why})")
    return Prediction(
        "batchnorm", predicted_factor=steady, xi_grad=theory.depth_scale(steady**2, CRITICAL_TOL), layers=tuple(factors),
        layer_factor=theory.geometric_mean_factor(factors), inputs=inputs, extra={"large_batch_factor": large_batch}, notes=tuple(notes),
    )  # fmt: skip


def _branch(exp: Any, act: NumpyActivation, fan_in: int, batchnorm: bool) -> list[residual_theory.BranchLayer]:
    """The branch of one residual block as theory sees it: `branch_depth` layers linear → [BN] → φ,
    the first reading `fan_in` features, the others `width`."""
    model = exp.model
    layers = []
    for k in range(getattr(model, "branch_depth", 1)):
        w2, b2 = _init_variances(exp, fan_in if k == 0 else model.width, model.width, model.bias and not batchnorm)
        layers.append(residual_theory.BranchLayer(w2, b2, act, batchnorm))
    return layers


def _residual(exp: Any, act: NumpyActivation, moments: InputMoments) -> Prediction:
    """x_{l+1} = x_l + α·branch(x_l); block 0 reads the input through a projection onto the width
    (LeCun normal, so the stream starts with the input's second moment and mean 0) when the input's
    size differs from the width."""
    model = exp.model
    alpha = float(getattr(model, "residual_scale", 1.0))
    batchnorm = model.norm["name"] == "batchnorm"
    depth = model.depth
    if getattr(model.init.weight, "get", lambda _: None)("name") == "fixup":
        return none("fixup zero-initializes each branch's last layer: every branch's gradient at z is exactly zero at initialization, so the gain is undefined")
    first = _branch(exp, act, _fans(exp, 0)[0], batchnorm)
    rest = _branch(exp, act, model.width, batchnorm)
    stream = residual_theory.residual_moments(first, 1, alpha, moments.second_moment, 0.0, moments.batch_variance)
    if depth > 1:
        last = stream[-1]
        stream += residual_theory.residual_moments(rest, depth - 1, alpha, last.second_moment, last.mean, last.batch_variance)[1:]
    # stream[l] enters block l; stream[depth] feeds the head
    stream_factors = residual_theory.residual_gradient_factors(rest, alpha, stream[1:]) if depth > 1 else []
    inputs = {"alpha": alpha, "sigma_w2": rest[0].sigma_w2, "sigma_b2": rest[0].sigma_b2, "first_sigma_w2": first[0].sigma_w2,
              "q0": moments.second_moment, "branch_depth": len(rest)}  # fmt: skip
    extra = {
        "stream_second_moment": [m.second_moment for m in stream],
        "stream_variance": [m.variance for m in stream],
        "stream_factors": stream_factors,
    }
    base = dict(q=tuple(m.second_moment for m in stream[1:]), inputs=inputs, extra=extra, notes=(moments.how,))
    if alpha == 0.0:
        return Prediction("residual", reason="residual_scale 0 (SkipInit): every branch's gradient is exactly zero at initialization, so delta_norm is 0 and the gain undefined", **base)
    gains = [residual_theory.branch_delta_gain(first, stream[0])] + [residual_theory.branch_delta_gain(rest, m) for m in stream[1:depth]]
    # ‖δ_l‖ = α √gains[l] ‖g_{l+1}‖, g_l = ∂L/∂x_l, ‖g_l‖ / ‖g_{l+1}‖ = stream_factors[l − 1]
    layers = [math.sqrt(gains[l] / gains[l + 1]) * stream_factors[l] for l in range(depth - 1)]
    return Prediction("residual", layers=tuple(layers), layer_factor=theory.geometric_mean_factor(layers), **base)


def sequence_inputs(data: Any) -> gate_theory.Inputs | None:
    """What the first recurrent layer reads at each step t, in expectation over the data's draw:
    Σ_j E[x_j²] and Σ_j (E x_j)², or None where the config does not say (sequential_mnist: a file).
        adding  x_t = (U(0, 1), marker), the marker 1 at one step of each half: E[x²] = 1/3 + p_t,
                (E x)² = 1/4 + p_t², p_t = 1/(T//2) in the first half, 1/(T − T//2) in the second
        copy    one-hot x_t: E[x²] = 1; (E x)² = 1/8 over the 10 uniform symbols, 1 after them
                (blanks and the delimiter, the same for every example)"""
    if data.name not in ("adding", "copy"):
        return None
    steps = seq_len(data)
    if data.name == "adding":
        half = steps // 2
        p = [1.0 / half if t < half else 1.0 / (steps - half) for t in range(steps)]
        return gate_theory.Inputs(tuple(1.0 / 3.0 + q for q in p), tuple(0.25 + q * q for q in p))
    symbols = [1.0 / COPY_SYMBOLS if t < COPY_LENGTH else 1.0 for t in range(steps)]
    return gate_theory.Inputs((1.0,) * steps, tuple(symbols))


def _weight_variance(spec: Any, fan_in: int, width: int) -> float:
    """Var of one entry of a gate block (width x fan_in) as build/recurrent.py fills it: `default`
    keeps PyTorch's U(±1/√width) for every recurrent weight (not the feed-forward layers' fan-in rule)."""
    if spec is None or spec["name"] == "default":
        return 1.0 / (3.0 * width)
    return initializers.variance(spec, fan_in, width, {"name": "tanh"})


def _bias_moments(spec: Any, width: int) -> tuple[float, float]:
    """(mean, variance) of one bias vector's entries (b_ih or b_hh) under init.bias."""
    if spec is None or spec["name"] == "default":
        return 0.0, 1.0 / (3.0 * width)
    return initializers.mean(spec), initializers.variance(spec, width, width, {"name": "tanh"})


def gate_layers(exp: Any) -> list[gate_theory.GateLayer] | str:
    """The lstm/gru layers as gate theory sees them (gates.GateLayer), or why it cannot."""
    model = exp.model
    width, kind = model.width, model.kind
    init = model.init
    weight, recurrent, bias_spec = (getattr(init, key, None) for key in ("weight", "recurrent", "bias"))
    for key, spec in (("init.weight", weight), ("init.recurrent", recurrent)):
        if spec is not None and spec["name"] != "default" and initializers.mean(spec, width, width) != 0:
            return (f"no gate prediction: model.{key} {spec['name']} has mean {initializers.mean(spec, width, width):g}; the gates' mean field "
                    "needs zero-mean weights (each unit's pre-activation a sum of many independent terms)")  # fmt: skip
    mean, var = _bias_moments(bias_spec, width) if getattr(model, "bias", True) else (0.0, 0.0)
    total = gate_theory.GateBias(2.0 * mean, 2.0 * var)  # b_ih + b_hh
    names = GATE_NAMES[kind]
    biases = {gate: total for gate in names}
    hn_bias = gate_theory.GateBias()
    if kind == "gru":
        biases["new"], hn_bias = gate_theory.GateBias(mean, var), gate_theory.GateBias(mean, var)  # b_hn is scaled by r
    forget_bias = getattr(model, "forget_bias", None)
    if isinstance(forget_bias, dict) and getattr(model, "bias", True):
        memory = gate_theory.GateBias(chrono=forget_bias["max_timescale"])
        biases["forget" if kind == "lstm" else "update"] = memory
        if kind == "lstm":
            biases["input"] = gate_theory.GateBias(chrono=forget_bias["max_timescale"], sign=-1.0)
    elif forget_bias is not None and kind == "lstm" and getattr(model, "bias", True):
        biases["forget"] = gate_theory.GateBias(float(forget_bias), 0.0)  # the total, set exactly
    features = _features(exp)
    return [
        gate_theory.GateLayer(kind, width, _weight_variance(weight, features if k == 0 else width, width), _weight_variance(recurrent, width, width), biases, hn_bias)
        for k in range(getattr(model, "depth", 1))
    ]  # fmt: skip


GATE_NAMES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new")}


def _features(exp: Any) -> int:
    return {"adding": 2, "copy": COPY_SYMBOLS + 2}[exp.data.name]


def gate_prediction(exp: Any) -> dict[str, Any] | str:
    """The gates' mean field on the last recurrent layer of an lstm or gru (theory/gates.py): per
    gate the stationary pre-activation mean and variance and the gate's mean, the direct-path factor
    E[f] (lstm) or E[z] (gru), its timescale ξ = −1/ln E[direct], E[h²], and `over_sequence`, the same
    averaged over the second half of the config's sequence from the zero state (t ≥ T//2: what
    compare sets beside timesteps.csv at step 0); or why there is none."""
    inputs = sequence_inputs(exp.data)
    if inputs is None:
        return f"no gate prediction for data.name {exp.data.name}: the inputs' moments are not known from the config"
    layers = gate_layers(exp)
    if isinstance(layers, str):
        return layers
    steps = len(inputs.second)
    second = sum(inputs.second) / steps
    mean_square = sum(inputs.mean_square) / steps
    trace = stationary = None
    for layer in layers:
        trace = gate_theory.forward(layer, inputs)
        stationary = gate_theory.stationary(layer, second, mean_square)
        inputs = trace.outputs(layer.width)
        second, mean_square = layer.width * float(stationary.h2[-1]), layer.width * float(stationary.h_mean_square[-1])
    start = steps // 2
    direct = float(stationary.direct[-1])
    # a chrono layer draws its units' biases: E[1 − σ(b)] over width units scatters around its expectation by
    # sd(1/(1 + u)) / √width relative to it, and the measured timescale ≈ 1/(1 − E[f]) with it
    chrono = next((b.chrono for b in layers[-1].biases.values() if b.chrono is not None), None)
    spread = gate_theory.chrono_timescale_spread(chrono, layers[-1].width) if chrono else 0.0
    window_direct = float(trace.direct[start:].mean())
    return {
        "gates": {gate: {"preact_mean": float(stationary.preact_mean[gate][-1]), "preact_var": float(stationary.preact_var[gate][-1]),
                         "mean": float(stationary.gate_mean[gate][-1])} for gate in stationary.gate_mean},
        "direct_factor": direct,
        "timescale": gate_theory.timescale(direct),
        "h_second_moment": float(stationary.h2[-1]),
        "over_sequence": {
            "steps": [start, steps - 1],
            "gates": {gate: float(values[start:].mean()) for gate, values in trace.gate_mean.items()},
            "direct_factor": window_direct,
            "timescale": gate_theory.timescale(window_direct),
            "timescale_sampling_sd": spread,
            "h_second_moment": float(trace.h2[start:].mean()),
        },
    }  # fmt: skip


# Why no step_factor is predicted for lstm and gru (docs/theory.md, Gates).
NO_GATED_STEP_FACTOR = (
    "no step_factor: the gates' mean field gives the direct path's factor (E[f] or E[z]), not ‖∂L/∂a_t‖'s: that adds the paths "
    "through W_hh, and since W_hh is the same matrix at every step those paths add coherently, which the gradient-independence "
    "derivation (Gilboa et al. 2019) leaves out (docs/theory.md, Gates)"
)


def _gated(exp: Any) -> Prediction:
    """lstm and gru: the gates' mean field (gate_prediction), and for an lstm with a numeric
    forget_bias also the small-weight cell factor σ(forget bias) as before."""
    model = exp.model
    gates = gate_prediction(exp)
    notes: list[str] = []
    if isinstance(gates, str):
        notes.append(gates)
        gates = {}
    else:
        depth = getattr(model, "depth", 1)
        last = f"layer {depth - 1}, the last" if depth > 1 else "the layer"
        notes.append(f"gates: mean field of {last} (stationary; over_sequence: averaged over t >= T//2 from the zero state, "
                     "what compare --theory sets beside timesteps.csv at step 0)")  # fmt: skip
        notes.append(NO_GATED_STEP_FACTOR)
    forget_bias = getattr(model, "forget_bias", None)
    if model.kind == "lstm" and isinstance(forget_bias, (int, float)):
        cell = _lstm_cell(forget_bias)
        return replace(cell, gates=gates, notes=(*cell.notes, *notes))
    if not gates:
        return none(notes[0])
    return Prediction("recurrent", gates=gates, notes=tuple(notes))


def _lstm_cell(forget_bias: float) -> Prediction:
    """The small-weight cell path: σ(forget bias) per step (Gers et al. 2000)."""
    # log σ(b) never overflows (σ(−1000) = e^−1000 underflows to 0, its log is −1000 exactly);
    # ξ = −1/ln σ(b)² comes from the log, so it exists where the factor underflows
    log_factor = recurrent_theory.lstm_cell_log_factor(forget_bias)
    factor = math.exp(log_factor)
    xi = math.inf if -2.0 * log_factor <= CRITICAL_TOL else 1.0 / (-2.0 * log_factor)
    notes = ["the cell path's per-step factor diag(f_t) ≈ σ(forget bias) while the weights are small",
             "no step_factor: σ(forget bias) is the direct cell path's factor alone, while step_factor measures "
             "‖∂L/∂a_t‖ through every path (the hidden state's too) and with every unit's own forget gate; "
             "no prediction of it is derived here"]  # fmt: skip
    if factor == 0.0:
        notes.append(f"σ({forget_bias:g}) = e^{log_factor:.6g} is below the smallest double and shows as 0; log_cell_step_factor holds its log")
    return Prediction("recurrent", predicted_factor=factor, xi_grad=xi, inputs={"forget_bias": forget_bias},
                      extra={"cell_step_factor": factor, "log_cell_step_factor": log_factor}, notes=tuple(notes))  # fmt: skip


def _recurrent(exp: Any) -> Prediction:
    """Pascanu et al. 2013's bound on the per-step factor, γ·λ₁, for an rnn whose recurrent
    initializer states its top singular value (exact for a linear rnn with a norm-preserving one);
    for lstm and gru the gates' mean field (`_gated`)."""
    model = exp.model
    recurrent = getattr(model.init, "recurrent", None)
    if model.kind in GATE_NAMES:
        return _gated(exp)
    if model.kind != "rnn" or recurrent is None:
        return none(f"no prediction for model.kind {model.kind}: no per-step factor is derived here")
    name = recurrent["name"]
    gain = recurrent.get("gain", 1.0)
    if gain == "auto":
        gain = activations.gain(model.activation)
    try:
        lambda1 = recurrent_theory.top_singular_value(name, model.width, float(gain), recurrent.get("std"))
    except ValueError as exc:
        return none(str(exc))
    gamma = activations.max_derivative(model.activation)
    bound = recurrent_theory.recurrent_step_bound(gamma, lambda1)
    notes = ["an upper bound on ‖∂a_t/∂a_{t−1}‖ = ‖W_hh diag φ'(a_{t−1})‖, not an estimate: below 1 the gradient must vanish in time"]
    step_factor, relation = None, None
    if getattr(model, "readout", "last") != "last":
        notes.append("no step_factor: with readout every the loss adds a gradient at every step, so ‖∂L/∂a_t‖ "
                     "is not the later step's times the Jacobian and no bound on their ratio follows")  # fmt: skip
    elif model.activation["name"] == "identity" and name in NORM_PRESERVING:
        # ∂L/∂a_{t−1} = W_hhᵀ ∂L/∂a_t, and λ·Q (Q orthogonal) scales every vector's norm by exactly λ
        step_factor, relation = lambda1, STEP_EQUALS
        notes.append("a linear rnn whose recurrent matrix has every singular value λ: ‖∂L/∂a_t‖ shrinks or grows by exactly λ per step")
    else:
        # readout last: ∂L/∂a_{t−1} = diag φ'(a_{t−1}) W_hhᵀ ∂L/∂a_t on the last layer, so every ratio is at most γ·λ₁
        step_factor, relation = bound, STEP_AT_MOST
        if name == "normal":
            notes.append("λ₁ of a normal matrix is its large-width limit 2·std·√width: the bound is as good as that estimate")
    return Prediction("recurrent", predicted_factor=None, step_factor=step_factor, step_relation=relation,
                      inputs={"gamma": gamma, "lambda1": lambda1}, extra={"step_bound": bound}, notes=tuple(notes))  # fmt: skip


# How far gate measurements may be from gate theory before compare says gate_departs (docs/theory.md,
# Gates): a gate's mean (values in [0, 1], tanh's in [-1, 1]) by this much absolute: a width-64 layer's
# candidate mean scatters by about 0.02 around 0 (its 64 units' random input weights); E[h²] by
# this much relative: wide random cells (tests/test_theory_gates.py) are within 7% with one forget
# bias for every unit and up to 35% with chrono, gradlab's LSTM on the adding problem within 1% at
# forget bias 0 and 11-30% at forget bias 1 (docs/theory.md, Gates): W_hh is the same matrix at every
# step, so over a long memory the recurrent input's fluctuations add up coherently, which the
# step-by-step mean field (a fresh Gaussian each step) leaves out, and it comes out low.
GATE_MEAN_TOLERANCE = 0.05
H_SECOND_MOMENT_TOLERANCE = 0.4


def gate_departs(measured: dict[str, float], prediction: Prediction, tolerance: float = DEPARTS_TOLERANCE) -> tuple[bool | None, list[str]]:
    """Whether gate measurements (summaries.gate_profile_at) depart from the gates' mean field over
    the same steps: the timescale ξ = −1/ln E[direct] by more than `tolerance` relative, a gate's
    mean by more than GATE_MEAN_TOLERANCE, E[h²] by more than H_SECOND_MOMENT_TOLERANCE relative.
    (None, []) without a prediction or a measurement; else the flag and what departed."""
    window = prediction.gates.get("over_sequence") if prediction.gates else None
    if not window or not measured or math.isnan(measured.get("direct_factor", math.nan)):
        return None, []
    why = []
    xi_measured, xi = gate_theory.timescale(measured["direct_factor"]), window["timescale"]
    if departs(xi_measured, xi, max(tolerance, 3.0 * window.get("timescale_sampling_sd", 0.0))):
        why.append(f"timescale {xi_measured:.4g} vs {xi:.4g}")
    for gate, value in window["gates"].items():
        got = measured.get(f"{gate}_mean", math.nan)
        if not math.isnan(got) and abs(got - value) > GATE_MEAN_TOLERANCE:
            why.append(f"{gate} mean {got:.4g} vs {value:.4g}")
    h2 = measured.get("h_second_moment", math.nan)
    if departs(h2, window["h_second_moment"], H_SECOND_MOMENT_TOLERANCE):
        why.append(f"h_second_moment {h2:.4g} vs {window['h_second_moment']:.4g}")
    return bool(why), why


def step_departs(measured: float, prediction: Prediction, tolerance: float = DEPARTS_TOLERANCE) -> bool | None:
    """Whether a measured step_factor at step 0 departs from a recurrent prediction: for STEP_EQUALS
    when |measured − predicted| > tolerance · predicted (as `departs`), for STEP_AT_MOST (a bound)
    only when it exceeds the bound, measured > (1 + tolerance) · bound: a factor far below Pascanu's
    bound agrees with it. None without a prediction or a measurement."""
    predicted = prediction.step_factor
    if prediction.step_relation == STEP_AT_MOST:
        if predicted is None or measured is None or math.isnan(measured) or math.isnan(predicted):
            return None
        return measured > (1.0 + tolerance) * predicted
    return departs(measured, predicted, tolerance)


# --------------------------------------------------------------------------------------------
# Predictions for runs read back (compare, plots, expect:)
# --------------------------------------------------------------------------------------------

_BY_CONFIG: dict[str, Prediction] = {}


def config_key(config: dict[str, Any]) -> str:
    """What of a resolved config a prediction reads (the data and the model sections), as one
    string: configs with the same key have the same prediction."""
    import json

    body = {key: value for key, value in config.items() if key not in ("name", "seed", "expect", "claims", "log", "train", "optim", "loss", "device")}
    if isinstance(config.get("log"), dict) and config["log"].get("jacobian") is not None:
        body["log.jacobian"] = True  # its prediction carries the Jacobian's spectrum too
    return json.dumps(body, sort_keys=True, default=str)


def for_config(config: dict[str, Any]) -> Prediction:
    """The prediction for a run's resolved config.yaml (a mapping), without the correlation map;
    `none` with the reason when the config no longer validates (a moved data path, an older
    gradlab). Cached by the config's content: seeds and sweep members of one configuration share it."""
    from gradlab.config.experiment import validate

    key = config_key(config)
    if key not in _BY_CONFIG:
        try:
            exp = validate(config)
        except ConfigError as exc:
            _BY_CONFIG[key] = none(f"the run's config does not validate here ({exc.lines[0]})")
        else:
            _BY_CONFIG[key] = guarded(exp, correlations=False)
    return _BY_CONFIG[key]


def guarded(exp: Any, moments: InputMoments | None = None, correlations: bool = True) -> Prediction:
    """`predict`, but a config it refuses (check_limits) or cannot compute for is a `none` with the
    reason instead of an exception: compare, plots, report, expect: and a sweep's table predict for
    many runs at once, and one run's failure must never sink the others' predictions."""
    try:
        return predict(exp, moments, correlations)
    except ConfigError as exc:
        return none(f"theory refuses this config: {exc.lines[0]}")
    except (ArithmeticError, ValueError) as exc:  # a bug or a range no check foresaw: that run's note, not a crash
        return none(f"theory could not compute a prediction for this config ({type(exc).__name__}: {exc})")


def departs(measured: float, predicted: float | None, tolerance: float = DEPARTS_TOLERANCE) -> bool | None:
    """Whether a measured layer_factor differs from the predicted one by more than `tolerance`,
    relative to the prediction: |measured − predicted| > tolerance · predicted. None when either
    is missing (no prediction, nothing measured)."""
    if predicted is None or measured is None or math.isnan(measured) or math.isnan(predicted) or predicted <= 0:
        return None
    return abs(measured - predicted) > tolerance * predicted


def predicted_profile(prediction: Prediction, last_value: float) -> list[float]:
    """The predicted delta_norm of every hidden layer, anchored at the measured last hidden layer:
    delta[l] = last_value · Π_{k=l}^{depth−2} layers[k] (layer 0 first); [] without a prediction."""
    if not prediction.layers:
        return []
    values = [float(last_value)]
    for factor in reversed(prediction.layers):
        values.append(values[-1] * factor)
    return values[::-1]
