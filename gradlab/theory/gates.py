"""Mean-field theory of LSTM and GRU layers at initialization (Chen, Pennington & Schoenholz 2018;
Gilboa et al. 2019, "Dynamical isometry and a mean field theory of LSTMs and GRUs"). Numpy only.

The equations are PyTorch's (build/recurrent.py):

    lstm  i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
          c_t = f ⊙ c_{t-1} + i ⊙ g           h_t = o ⊙ tanh(c_t)
    gru   r, z = σ(a_r), σ(a_z);  n = tanh(a_n),  a_n = gi_n + r ⊙ gh_n
          h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

with a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh per gate (gi, gh its two halves). In a wide layer
whose weights are drawn with zero mean, a unit's pre-activation is its bias plus sums of many
independent terms: Gaussian across units and examples, with

    E[a] = E[b_ih] + E[b_hh],   Var a = σ_ih² Σ_j E[x_j²] + σ_hh² H E[h²] + Var b_ih + Var b_hh

(σ² the variance of one weight entry, H the width; the GRU's a_n reads gh_n scaled by r). Each
gate's mean E[σ(a)] / E[tanh(a)] is a Gaussian expectation (quadrature).

The state. Part of a unit's pre-activation is the same for every example, an offset: its bias,
W_ih E[x_t] and W_hh E[h_{t-1}], spread across units with variance V_p = σ_ih² Σ_j (E x_j)² +
σ_hh² H mean_j (E h_j)² (+ the bias's); the rest, V_f, changes from example to example. The
offset matters for the state: a unit whose candidate (lstm g, gru n) has a mean of its own adds it
up step after step. So the state's moments are kept per offset of the candidate (Gauss–Hermite
nodes) and, under chrono, per group of units with one memory bias (Gauss–Legendre nodes over
u ~ U(1, T_max − 1), b = log u); the other gates enter with their means and second moments, each
independent of the state (different weight rows; a unit's own state reaches its gates with weight
O(1/√H)):

    lstm  E[c_t]  = E[f] E[c_{t-1}] + E[i] E[g]
          E[c_t²] = E[f²] E[c_{t-1}²] + 2 E[f] E[i] E[g] E[c_{t-1}] + E[i²] E[g²]
          E[h_t²] = E[o²] E[tanh(c_t)²],   c_t Gaussian with those moments
    gru   E[h_t]  = E[1 − z] E[n] + E[z] E[h_{t-1}]
          E[h_t²] = E[(1 − z)²] E[n²] + 2 E[(1 − z) z] E[n] E[h_{t-1}] + E[z²] E[h_{t-1}²]

Iterated from the zero state (h_{-1} = c_{-1} = 0, as PyTorch starts) over the sequence (`forward`)
it gives each step's moments; `stationary` finds the fixed point.

The direct path: a gradient that goes back along the cell (lstm) is multiplied by f per step, along
the GRU's state by z, so the direct-path factor is E[f] (E[z]) and its timescale ξ = −1/ln E[f].

What it leaves out, and so cannot give: the whole per-step factor of ‖∂L/∂a_t‖ (gradlab's
step_factor). That adds the paths through W_hh to the direct one, and W_hh is the same matrix at
every step: paths that cross it equally often add coherently (for orthogonal W_hh the backward
map δc ← f δc + α W_hhᵀ δc grows by f + α per step over long spans, not by √(f² + α²) as fresh
weights at every step would give; gradlab's LSTM on the adding problem measures 0.73 where the
latter gives 0.56). The same coherence makes E[h²] come out low for long memories (the recurrent
input's fluctuations add up over the memory's span): tests/test_theory_gates.py measures it against
wide random cells, predict.H_SECOND_MOMENT_TOLERANCE states it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradlab.theory.gaussian import gauss_hermite, legendre_rule

# Units grouped by their chrono bias: Gauss–Legendre nodes over u ~ U(1, T_max − 1).
CHRONO_NODES = 48
# The candidate's per-unit offsets (forward's docstring) on OFFSET_NODES Gauss–Hermite nodes, and the
# inner expectations over the example-to-example part and over the state on HERMITE_INNER: the
# integrands are smooth (tanh), so Hermite converges fast (and the arrays stay small).
OFFSET_NODES = 24
HERMITE_INNER = 48
STATIONARY_ITERATIONS = 4096
STATIONARY_TOL = 1e-12

_Z, _W = legendre_rule()  # E[g(z)] ≈ Σ w g(z), z ~ N(0, 1): smooth g, variances up to ~100


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def gaussian_mean(fn, mean, var) -> np.ndarray:
    """E[fn(a)] for a ~ N(mean, var), elementwise over arrays of means and variances."""
    mean, var = np.broadcast_arrays(np.asarray(mean, dtype=float), np.asarray(var, dtype=float))
    x = mean[..., None] + np.sqrt(np.maximum(var, 0.0))[..., None] * _Z
    return np.sum(_W * fn(x), axis=-1)


@dataclass(frozen=True)
class GateBias:
    """A gate's total bias b_ih + b_hh over the units: `mean` and `var` of an ordinary draw (its
    spread is folded into the Gaussian pre-activation), or, for chrono, `chrono` = T_max: then
    b = sign · log u per unit, u ~ U(1, T_max − 1) (sign −1 for lstm's input gate)."""

    mean: float = 0.0
    var: float = 0.0
    chrono: float | None = None
    sign: float = 1.0


@dataclass(frozen=True)
class GateLayer:
    """One recurrent layer as theory sees it. var_ih, var_hh: the variance of one entry of W_ih and
    W_hh (the same for every gate block); biases: per gate (GATES order) the total bias; for the
    GRU's new gate the recurrent half b_hn is multiplied by r, so `hn_bias` holds it apart (and
    biases['new'] holds b_in alone)."""

    kind: str
    width: int
    var_ih: float
    var_hh: float
    biases: dict[str, GateBias]
    hn_bias: GateBias = GateBias()


def chrono_groups(max_timescale: float, nodes: int = CHRONO_NODES) -> tuple[np.ndarray, np.ndarray]:
    """(b, weight): chrono's bias log u, u ~ U(1, T_max − 1), on Gauss–Legendre nodes in u."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    lo, hi = 1.0, max_timescale - 1.0
    u = lo + (hi - lo) * (x + 1.0) / 2.0
    return np.log(u), w / 2.0


def chrono_timescale_spread(max_timescale: float, width: int) -> float:
    """The relative standard deviation, over draws of `width` units' chrono biases, of the units'
    mean of 1 − σ(b) = 1/(1 + u), u ~ U(1, T_max − 1): how far one layer's direct-path timescale
    ≈ 1/(1 − E[f]) is from the expected one by the draw alone (exact moments of 1/(1 + u))."""
    lo, hi = 2.0, max_timescale  # 1 + u ~ U(2, T_max)
    first = math.log(hi / lo) / (hi - lo)
    second = (1.0 / lo - 1.0 / hi) / (hi - lo)
    return math.sqrt(max(second - first * first, 0.0) / width) / first


def _groups(layer: GateLayer) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each gate's bias mean per unit group, and the groups' weights (one group without chrono)."""
    chrono = [b for b in layer.biases.values() if b.chrono is not None]
    if chrono:
        b, weights = chrono_groups(chrono[0].chrono)
    else:
        b, weights = np.zeros(1), np.ones(1)
    means = {gate: (bias.sign * b if bias.chrono is not None else np.full_like(b, bias.mean)) for gate, bias in layer.biases.items()}
    return means, weights


@dataclass(frozen=True)
class Inputs:
    """What a layer reads at each step t: second[t] = Σ_j E[x_j²] and mean_square[t] = Σ_j (E x_j)²
    (expectations over examples; the part of W_ih x_t that is the same for every example, W_ih E[x_t],
    is a per-unit offset like a bias)."""

    second: tuple[float, ...]
    mean_square: tuple[float, ...]


@dataclass
class Trace:
    """The mean-field forward pass of one layer over T steps (arrays of shape (T,)).

    gate_mean[g][t]: E[gate value] over units and examples; preact_mean/preact_var[g][t]: its
    pre-activation's mean and variance; h2[t]: E[h_t²]; h_mean_square[t]: the units' average of
    (E h_t)², the part of E[h²] the next step reads as an offset; direct[t]: E[f_t] or E[z_t]."""

    gate_mean: dict[str, np.ndarray]
    preact_mean: dict[str, np.ndarray]
    preact_var: dict[str, np.ndarray]
    h2: np.ndarray
    h_mean_square: np.ndarray
    direct: np.ndarray

    def outputs(self, width: int) -> Inputs:
        """What the next layer reads: its x is this layer's h (width features)."""
        return Inputs(tuple(width * self.h2), tuple(width * self.h_mean_square))


def _annealed(fn, mean, var):
    """E[fn(a)], E[fn(a)²] for a ~ N(mean, var) (arrays of means)."""
    return gaussian_mean(fn, mean, var), gaussian_mean(lambda x: fn(x) ** 2, mean, var)


def _conditional(fn, offsets, var):
    """E[fn(μ + ε)], E[fn(μ + ε)²] for ε ~ N(0, var), at each offset μ (an array of any shape),
    on a Gauss–Hermite rule (smooth fn)."""
    nodes, weights = gauss_hermite(HERMITE_INNER)
    x = np.asarray(offsets, dtype=float)[..., None] + math.sqrt(max(var, 0.0)) * nodes
    y = fn(x)
    return np.sum(weights * y, axis=-1), np.sum(weights * y * y, axis=-1)


def forward(layer: GateLayer, inputs: Inputs, jump: bool = False) -> Trace:
    """The layer's mean-field moments at every step of a sequence, from the zero state.

    A unit's pre-activation is an offset that is the same for every example (its bias, W_ih E[x_t],
    W_hh E[h_{t-1}]: across units N(E b, V_p)) plus a part that changes from example to example
    (W_ih (x_t − E x_t) + W_hh (h_{t-1} − E h_{t-1}): N(0, V_f)). For the gates' means only the total
    matters; the candidate (lstm g, gru n) is kept per offset (K Gauss–Hermite nodes), because a unit
    whose candidate has a mean of its own accumulates it in its state step after step (E[c]² ≠ 0) where
    a fluctuating one does not. The other gates enter with their averages over units, each group's own
    under chrono. jump: each step puts the state at the stationary moments of that step's gates instead
    of taking one step (an iteration of the fixed-point map; `stationary` uses it)."""
    kind, H = layer.kind, layer.width
    bias_means, weights = _groups(layer)
    nodes, node_weights = gauss_hermite(OFFSET_NODES)
    T = len(inputs.second)
    gates = ("input", "forget", "cell", "output") if kind == "lstm" else ("reset", "update", "new")
    candidate = "cell" if kind == "lstm" else "new"
    gate_mean = {g: np.zeros(T) for g in gates}
    preact_mean = {g: np.zeros(T) for g in gates}
    preact_var = {g: np.zeros(T) for g in gates}
    h2, h_ms, direct = np.zeros(T), np.zeros(T), np.zeros(T)
    G, K = len(weights), len(nodes)
    both = weights[:, None] * node_weights[None, :]  # (G, K): a group's share times an offset's
    m, s = np.zeros((G, K)), np.zeros((G, K))  # E[c], E[c²] (lstm) or E[h], E[h²] (gru) per group and offset
    q_h = p_h = 0.0
    for t in range(T):
        x_p = layer.var_ih * float(inputs.mean_square[t])
        x_f = layer.var_ih * (float(inputs.second[t]) - float(inputs.mean_square[t]))
        h_p, h_f = layer.var_hh * H * p_h, layer.var_hh * H * (q_h - p_h)
        persistent, fluctuating = x_p + h_p, x_f + h_f
        values, means, variances = {}, {}, {}
        for g in gates:
            if g == candidate:
                continue
            bias = layer.biases[g]
            means[g] = np.broadcast_to(bias_means[g], weights.shape)
            variances[g] = persistent + fluctuating + bias.var
            values[g] = _annealed(_sigmoid, means[g], variances[g])
        bias = layer.biases[candidate]
        if kind == "lstm":
            offset_mean, offset_var, noise = bias.mean, persistent + bias.var, fluctuating
        else:
            # a_n = gi_n + r gh_n: the offset E b_in + W_in E x + r (E b_hn + W_hn E h), r at its mean
            r1, r2 = values["reset"][0][0], values["reset"][1][0]  # (the reset gate's bias is the same for every group)
            hn = layer.hn_bias
            offset_mean = bias.mean + r1 * hn.mean
            offset_var = x_p + bias.var + r1 * r1 * (h_p + hn.var)
            noise = x_f + r2 * h_f + (r2 - r1 * r1) * (h_p + hn.var + hn.mean**2)
        offsets = offset_mean + math.sqrt(max(offset_var, 0.0)) * nodes
        c1, c2 = _conditional(np.tanh, offsets, noise)  # (K,)
        values[candidate] = (float(np.dot(node_weights, c1)), float(np.dot(node_weights, c2)))
        means[candidate], variances[candidate] = np.full(G, offset_mean), offset_var + noise
        if kind == "lstm":
            (i1, i2), (f1, f2), (o1, o2) = (tuple(v[:, None] for v in values[g]) for g in ("input", "forget", "output"))
            if jump:
                # f = 1 to double precision (forget bias ≳ 37): c keeps growing, no stationary state;
                # tanh(c) then tends to ±1, the sign of what the unit adds
                kept = np.broadcast_to(f2 < 1.0, (G, K))
                with np.errstate(divide="ignore", invalid="ignore"):
                    m = np.where(kept, i1 * c1 / (1.0 - f1), 0.0)
                    s = np.where(kept, (i2 * c2 + 2.0 * f1 * i1 * c1 * m) / (1.0 - f2), 0.0)
            else:
                kept = np.ones((G, K), dtype=bool)
                m, s = f1 * m + i1 * c1, f2 * s + 2.0 * f1 * i1 * c1 * m + i2 * c2
            t1, t2 = _tanh_moments(m, np.maximum(s - m * m, 0.0))
            t1, t2 = np.where(kept, t1, np.sign(np.broadcast_to(c1, (G, K)))), np.where(kept, t2, 1.0)
            q_h, p_h = float(np.sum(both * o2 * t2)), float(np.sum(both * (o1 * t1) ** 2))
            direct[t] = float(np.dot(weights, values["forget"][0]))
        else:
            z1, z2 = (v[:, None] for v in values["update"])
            omz2, zomz = 1.0 - 2.0 * z1 + z2, z1 - z2  # E[(1 − z)²], E[(1 − z) z]
            if jump:
                # z = 1 to double precision: h keeps its zero start
                moving = np.broadcast_to(z2 < 1.0, (G, K))
                m = np.where(moving, c1, 0.0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    s = np.where(moving, (omz2 * c2 + 2.0 * zomz * c1 * m) / (1.0 - z2), 0.0)
            else:
                m, s = (1.0 - z1) * c1 + z1 * m, omz2 * c2 + 2.0 * zomz * c1 * m + z2 * s
            q_h, p_h = float(np.sum(both * s)), float(np.sum(both * m * m))
            direct[t] = float(np.dot(weights, values["update"][0]))
        h2[t], h_ms[t] = q_h, p_h
        for g in gates:
            first = values[g][0]
            gate_mean[g][t] = float(np.dot(weights, first)) if np.ndim(first) else first
            mu = np.broadcast_to(means[g], weights.shape)
            preact_mean[g][t] = float(np.dot(weights, mu))
            preact_var[g][t] = float(variances[g] + np.dot(weights, (mu - preact_mean[g][t]) ** 2))
    return Trace(gate_mean, preact_mean, preact_var, h2, h_ms, direct)


def _tanh_moments(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[tanh(c)], E[tanh(c)²] for c ~ N(mean, var), elementwise (a Gauss–Hermite rule)."""
    nodes, weights = gauss_hermite(HERMITE_INNER)
    y = np.tanh(mean[..., None] + np.sqrt(var)[..., None] * nodes)
    return np.sum(weights * y, axis=-1), np.sum(weights * y * y, axis=-1)


def timescale(direct: float) -> float:
    """ξ = −1/ln E[direct]: the steps over which the direct path keeps a factor 1/e (inf at 1)."""
    if direct >= 1.0:
        return math.inf
    if direct <= 0.0:
        return 0.0
    return -1.0 / math.log(direct)


def stationary(layer: GateLayer, second: float, mean_square: float, iterations: int = STATIONARY_ITERATIONS, tol: float = STATIONARY_TOL) -> Trace:
    """The stationary moments for inputs with the same moments at every step: the fixed point of the
    map gates(E[h²], E[h]²) -> the state's stationary moments -> E[h²] (`forward` with jump),
    iterated until E[h²] changes by less than tol (relative); its last step is the fixed point."""
    length = 64
    while True:
        trace = forward(layer, Inputs((second,) * length, (mean_square,) * length), jump=True)
        h = trace.h2
        if length >= iterations or abs(h[-1] - h[-2]) <= tol * max(abs(h[-1]), 1e-300):
            return trace
        length *= 4
