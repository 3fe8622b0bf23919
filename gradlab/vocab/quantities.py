"""Every quantity gradlab measures or derives, declared once: its name, its probe group, where it is
measured, and its exact meaning.

The `layers.csv` columns (`LAYERS_COLUMNS`), the `log.probes` choices (`GROUPS`), the meanings that
`gradlab compare --explain` prints, the keys an `expect:` section may bound, and the records reference's column
table all come from these declarations; `tests/test_quantities.py` fails when they disagree.

This module imports neither torch nor pandas: it is part of the vocabulary that `gradlab validate`
and `gradlab compare` load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The probe groups a config may list in `log.probes`, in the order the probe measures them.
GROUPS = ("weights", "deltas", "activations", "updates", "noise", "coordinates", "spectrum")
Group = Literal["weights", "deltas", "activations", "updates", "noise", "coordinates", "spectrum"]
# What `log.probes` turns on when a config does not list it. The other groups are opt-in: each adds
# its own layers.csv columns (layers_columns) and work at logged steps, so a config that does not ask
# for one records exactly what it recorded before the group existed.
DEFAULT_GROUPS = ("weights", "deltas", "activations", "updates")
# `log.probes` may name a preset instead of a list (docs/performance.md says what each costs):
# cheap, the groups a logged step pays least for; all, every group the model can measure (the config
# leaves out a group it would refuse for that model: coordinates beyond mlp and cnn, noise with batchnorm).
PROBE_PRESETS: dict[str, tuple[str, ...]] = {"cheap": ("weights", "deltas"), "all": GROUPS}

# "A derivative below 5% of its maximum": the default of log.saturation_threshold, the t of
# saturated_frac (theory.activations.Regions).
SATURATION_THRESHOLD = 0.05

# Where a measured quantity is taken: a site of the model (see sites.py). A feed-forward block's
# sites are its weight-bearing module (`layer`), the output z of that module before normalization and
# activation (`preactivation`), and what the block passes on (`output`).
Site = Literal["layer", "preactivation", "activation", "output", "logits", "stream", "branch", "hidden", "cell", "gate", "input"]


@dataclass(frozen=True)
class Quantity:
    """One measured column of a records table."""

    name: str
    group: Group  # the `log.probes` entry that turns it on
    site: Site  # what it is measured on
    meaning: str  # one exact sentence; L is the back-propagated loss (the batch mean)
    table: str = "layers"


# The measured per-layer quantities, in their `layers.csv` column order.
LAYER_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("weight_norm", "weights", "layer", "||W||, the Frobenius norm of the layer's weight"),
    Quantity("weight_grad_norm", "weights", "layer", "||dL/dW||, the Frobenius norm of the gradient of L with respect to the layer's weight"),
    Quantity("bias_grad_norm", "weights", "layer", "||dL/db||, the norm of the gradient of L with respect to the layer's bias (empty when the layer has no bias)"),
    Quantity("delta_norm", "deltas", "preactivation",
             "||dL/dz|| over the whole batch, z the layer's linear/conv output before normalization and activation "
             "(for the head: the logits): the back-propagated signal that vanishes or explodes; it scales as 1/sqrt(B) "
             "with the batch size B and sums over positions, so it compares runs of one batch size and one architecture only"),
    Quantity("delta_rms", "deltas", "preactivation",
             "sqrt((1/B) sum_b sum_c g_bc^2) with g_bc = sum over the positions p of channel c of |dl_b/dz_bcp|, l_b = B * L's "
             "share of example b (its own loss) and B the batch size; in an MLP (one position) it is delta_norm * sqrt(B): "
             "the root mean square over examples of the per-example gradient's norm, invariant to the batch size, to the "
             "image size under global average pooling, and to 2x2 average and max pooling (each sends a position's gradient "
             "to its inputs with the same absolute sum); the gain and the verdicts use it. Dimension 0 holds the examples; the units "
             "c are dimension 1 of an MLP's or a convolution's z (B, C, *positions), the last dimension of a Linear applied to a "
             "sequence (B, *positions, features, in watch), and the gate pre-activation units of a recurrent layer, whose positions "
             "are its time steps; every other dimension is a position"),
    Quantity("act_mean", "activations", "output", "mean of the block's output activations over batch and units (and positions in a CNN)"),
    Quantity("act_std", "activations", "output", "population standard deviation (ddof 0) of the block's output activations over batch and units (and positions)"),
    Quantity("preact_mean", "activations", "activation",
             "mean of u, the activation's input (z, or norm(z) with the norm before the activation), over batch and units (and positions): what decides saturation"),
    Quantity("preact_std", "activations", "activation", "population standard deviation (ddof 0) of u, the activation's input, over batch and units (and positions)"),
    Quantity("dact_mean", "activations", "activation",
             "mean of |f'(u)| over batch and units (and positions), f the activation and u its input: sigmoid's is at most 1/4"),
    Quantity("dact_factor", "activations", "activation",
             "rms(f'(u)) of this layer, the root mean square of the activation's derivative over batch and units (and positions), "
             "times ||W||_F / sqrt(n_out) of the next layer's weight W (the head's for the last hidden layer; n_out its rows, or output "
             "channels): the factor by which the back-propagated signal changes from the next layer to this one in a wide random "
             "network (E||W^T d||^2 = ||W||_F^2 / n_out ||d||^2 for i.i.d. entries), so it predicts the measured per-layer ratio of "
             "delta_norm; for one unit and one example it is exactly the lecture's |w| |f'(u)| (empty for the head)"),
    Quantity("inactive_frac", "activations", "activation",
             "share of (example, unit) pairs with u <= 0, u the activation's input, whatever the slope there: the ReLU family's off side, "
             "the negative side of ELU, SELU, GELU, SiLU, softplus; empty for sigmoid, tanh, hardtanh, identity "
             "(in a CNN a unit is a channel, and every position of it counts as a pair)"),
    Quantity("saturated_frac", "activations", "activation",
             "share of (example, unit) pairs in a flat tail of a saturating activation, where |f'(u)| < t * sup |f'| with t = "
             "log.saturation_threshold (default 0.05): either tail of sigmoid, tanh, hardtanh; only the negative tail of softplus, "
             "ELU, SELU (u < 0), GELU (u < -sqrt 2) and SiLU (u < -2.3994), beyond the bottom of f''s negative lobe, so GELU's "
             "zero crossing at u = -0.75 is not a tail; empty for the ReLU family and identity, which have no saturating tail "
             "(see inactive_frac). The rule of each activation: gradlab components"),
    Quantity("dead_frac", "activations", "activation",
             "share of units through which no gradient passes at all on this batch: f'(u) = 0 exactly (as autograd computes it) on "
             "every example of the batch, and every position in a CNN: a ReLU unit off on the whole batch; a Leaky ReLU unit "
             "(slope > 0) is never dead; measured per batch, so a unit dead on this batch may be alive on another"),
    Quantity("update_ratio", "updates", "layer", "||W_after - W_before|| / ||W_before|| of the optimizer step taken at this step, ||W_before|| the weight's norm before the step"),
)  # fmt: skip

QUANTITIES: dict[str, Quantity] = {q.name: q for q in LAYER_QUANTITIES}

# Residual blocks (model.residual: true) add these columns to layers.csv, after the others; every
# other run's layers.csv keeps exactly LAYERS_COLUMNS. x_l is the residual stream entering block l,
# x_(l+1) = x_l + alpha * r_l the stream it passes on (before pooling), r_l = branch(x_l) the branch's
# output before the scale alpha. A "channel" is a unit of an MLP or a channel of a CNN; its mean and
# variance are over the batch (and positions). The last three are the Signal Propagation Plot
# statistics of Brock, De & Smith 2021.
RESIDUAL_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("stream_delta_norm", "deltas", "stream", "||dL/dx_(l+1)|| over the whole batch: the back-propagated signal on the residual stream as it leaves block l"),
    Quantity("spp_sq_mean", "activations", "stream", "average channel squared mean of the stream x_(l+1): the mean over channels of (the channel's mean over batch and positions)^2"),
    Quantity("spp_var", "activations", "stream", "average channel variance of the stream x_(l+1): the mean over channels of the channel's population variance over batch and positions"),
    Quantity("spp_branch_var", "activations", "branch", "average channel variance of the residual branch's output r_l = branch(x_l), before the scale alpha"),
)  # fmt: skip
RESIDUAL: dict[str, Quantity] = {q.name: q for q in RESIDUAL_QUANTITIES}

# Runs with a normalization (model.norm other than none) or PReLU add these columns to layers.csv,
# after the others (and after the residual ones); every other run's layers.csv is unchanged. The
# block's norm layer is its `norm` (the first branch layer's in a residual block); gamma and beta are
# its learned scale and shift (BatchNorm, LayerNorm, GroupNorm with affine: true). Empty where the
# layer has no such parameter (the head, lrn, affine: false, a run without PReLU).
NORM_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("norm_weight_norm", "weights", "layer", "||gamma||, the norm of the block's normalization scale (empty without one)"),
    Quantity("norm_bias_norm", "weights", "layer", "||beta||, the norm of the block's normalization shift (empty without one)"),
    Quantity("norm_weight_grad_norm", "weights", "layer", "||dL/dgamma||"),
    Quantity("norm_bias_grad_norm", "weights", "layer", "||dL/dbeta||"),
    Quantity("bn_stat_distance", "activations", "layer",
             "BatchNorm only, in training: the root mean square over (example, channel, position) of x_batch - x_running, the "
             "normalized input with this batch's statistics (mean mu_c, population variance s_c^2) minus with the running "
             "statistics the network would use at inference (m_c, v_c, as they were before this batch updated them), before gamma "
             "and beta; = sqrt(mean_c[s_c^2 (1/sqrt(s_c^2 + eps) - 1/sqrt(v_c + eps))^2 + (mu_c - m_c)^2 / (v_c + eps)]); 0 when they agree"),
    Quantity("prelu_slope_mean", "weights", "layer", "mean of the block's PReLU learned negative slopes (one, or one per unit/channel)"),
)  # fmt: skip
NORM: dict[str, Quantity] = {q.name: q for q in NORM_QUANTITIES}

# Runs that list `noise` in log.probes (a watch with "noise" in its groups) add these columns to
# layers.csv, after every other column; a run without it keeps its header exactly. g_n = dl_n/dW is
# the gradient of example n's own loss l_n with respect to the layer's weight W (the weight only, not
# the bias), B the batch size. L = (1/B) sum_n l_n is the batch mean, so g_n = B * (example n's share
# of dL/dW) and the layer's gradient dL/dW is g_bar = (1/B) sum_n g_n. A weight applied at several
# positions (a convolution's, a Linear's on a sequence) sums over them in g_n. Empty where per-example
# gradients do not exist: BatchNorm in training mode (an example's output depends on the whole batch;
# `gradlab validate` refuses the group for such a model, watch leaves the cells empty) and every row of
# a recurrent stack, head included (not measured: a recurrent weight is applied at every time step
# inside the unrolled cells, and its examples' gradients would be one more pass over all of them).
NOISE_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("pe_grad_norm", "noise", "layer",
             "(1/B) sum_n ||g_n||, the mean over the B examples of the norm of the per-example gradient g_n = dl_n/dW of the layer's "
             "weight (B times the norm of example n's share of dL/dW)"),
    Quantity("grad_noise_scale", "noise", "layer",
             "B_simple = tr(Sigma) / ||g_bar||^2, the simple gradient noise scale of the layer's weight (McCandlish et al. 2018), "
             "g_bar = dL/dW and tr(Sigma) = (sum_n ||g_n||^2 - B ||g_bar||^2) / (B - 1) the trace of the unbiased covariance of the "
             "per-example gradients: the batch size at which the noise of the batch gradient equals its signal; Byrd et al. 2012's "
             "norm test statistic is sqrt(B_simple / B) (below 1: the batch's gradient direction is trustworthy); 0 when tr(Sigma) is "
             "within the rounding of the float32 sums (3 B u sum_n ||g_n||^2, u = 2^-24); empty when B < 2 or g_bar = 0"),
    Quantity("gsnr", "noise", "layer",
             "the mean over the weight's coordinates j of g_bar_j^2 / Var_j, Var_j = (1/B) sum_n g_nj^2 - g_bar_j^2 the population "
             "variance of coordinate j over the examples (Liu et al. 2020; Cockpit's MeanGSNR per layer, without its 1e-5 in the "
             "denominator: an absolute epsilon would hide the small gradients measured). Coordinates with Var_j = 0 are left out "
             "(every example gives them the same gradient: the inputs of a dead unit, whose gradients are all 0); where Var_j comes from "
             "(1/B) sum_n g_nj^2 - g_bar_j^2 (a Linear applied once per example) a Var_j within the rounding of that difference in "
             "float32, 3 B u (1/B) sum_n g_nj^2 with u = 2^-24, counts as 0; empty when every coordinate is left out"),
)  # fmt: skip
NOISE: dict[str, Quantity] = {q.name: q for q in NOISE_QUANTITIES}

# Runs that list `coordinates` in log.probes (each run of `gradlab coordcheck`) add these columns to
# layers.csv, after every other column; a run without it keeps its header exactly. They are the
# coordinate sizes of Yang & Hu 2021's coordinate check (microsoft/mup's `l1`): x is what the block
# passes on (its `output` site), or the logits for the head.
COORDINATE_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("act_l1", "coordinates", "output",
             "mean of |x| over batch and units (and positions), x the block's output (for the head: the logits): mup's `l1`, "
             "the average size of a coordinate"),
    Quantity("act_rms", "coordinates", "output", "sqrt(mean of x^2) over batch and units (and positions), x the block's output (for the head: the logits)"),
    Quantity("update_rms", "coordinates", "layer",
             "||W_after - W_before|| / sqrt(entries of W) of the optimizer step taken at this step: the root mean square of the change "
             "of one entry of the layer's weight (empty at the last step, which takes no step)"),
)  # fmt: skip
COORDINATES: dict[str, Quantity] = {q.name: q for q in COORDINATE_QUANTITIES}

# Runs that list `spectrum` in log.probes (a watch with "spectrum" in its groups) add these columns to
# layers.csv, after every other column; a run without it keeps its header exactly. Measured on the
# weights of the logged step, before its update (as weight_norm). The layer's matrix W: a Linear's
# weight (out, in); a convolution's (out, in, *kernel) as (out, in * kernel positions), as torch's
# spectral_norm reshapes it; a recurrent layer's [W_ih W_hh], the matrix that maps [x_t; h_(t-1)] to
# a_t. Why they matter for gradients: the signal a layer passes back is W^T delta, and
# ||W^T delta|| <= sigma_max ||delta||, so weight_sv_max bounds the layer's gain (a convolution's by
# sqrt(kernel positions) * sigma_max: each input entry is in that many patches); a random vector keeps
# only about ||W||_F / sqrt(n_out) of it (dact_factor), so stable rank = (||W||_F / sigma_max)^2 says how
# far a typical signal is from that bound: near 1, one direction carries all the gain.
SPECTRUM_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("weight_sv_max", "spectrum", "layer",
             "sigma_max(W), the largest singular value of the layer's weight (its spectral norm): where weight_alpha is fitted to this "
             "matrix's own eigenvalues (a Linear, a recurrent [W_ih W_hh], 50 eigenvalues or more) the square root of the largest, "
             "exact to float64 rounding; otherwise (a convolution, a smaller layer) by power iteration on W^T W warm-started from "
             "the previous logged step's vector, stopped when the estimate of every layer grew by less than 1e-6 (relative) over 10 "
             "iterations (at most 2000): within 1e-4 of torch.linalg.svdvals"),
    Quantity("weight_stable_rank", "spectrum", "layer",
             "||W||_F^2 / sigma_max(W)^2, the stable rank of the layer's weight: between 1 (one direction) and rank(W); empty when W is 0"),
    Quantity("weight_alpha", "spectrum", "layer",
             "the power-law exponent alpha of the tail of the layer's eigenvalue density, fitted as WeightWatcher 0.7.7 fits it: the "
             "eigenvalues are the squared singular values of W (min(out, in) of them; a convolution's are those of its (out, in) slices "
             "W[:, :, p] at each kernel position p, times 1/2, pooled), those above 1e-5 sorted x_0 <= ... <= x_(N-1); for each "
             "x_min = x_i the maximum-likelihood alpha_i = 1 + n / sum_(j >= i) ln(x_j / x_i) over the n = N - i in the tail, and "
             "the fit is the x_min with the smallest Kolmogorov-Smirnov distance max_(j >= i) |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n|. "
             "WeightWatcher's per-layer warning is over-trained for alpha < 2 (a very heavy tail) and under-trained for alpha > 6 "
             "(a random-like spectrum). Empty with fewer than 50 eigenvalues (a head of 10 classes, any weight with a side below 50 that is "
             "not a convolution), fewer than 20 above 1e-5, or a tail without spread (alpha infinite: equal eigenvalues, "
             "an orthogonal W)"),
)  # fmt: skip
SPECTRUM: dict[str, Quantity] = {q.name: q for q in SPECTRUM_QUANTITIES}

# coordcheck.csv (`gradlab coordcheck`, in its sweep folder): one row per (variant, width, seed, step,
# layer), the coordinate columns of each run's layers.csv beside the width it ran at.
COORDCHECK_COLUMNS: dict[str, str] = {
    "variant": "the values of the config's own sweep axes that this row's run had (key=value, ...; expect.* left out); empty without such axes",
    "width": "model.width of the run: every hidden layer's units (mlp) or channels (cnn); the input and output sizes stay fixed",
    "seed": "the run's seed",
    "step": "optimizer steps taken before this measurement (step 0: the network at initialization)",
    "layer": "0 for the block nearest the input, counting up; the head is last",
    "name": "module name: blocks.3, head",
    "act_l1": COORDINATES["act_l1"].meaning,
    "act_rms": COORDINATES["act_rms"].meaning,
    "delta_rms": "as in layers.csv: the root mean square over examples of the per-example gradient's norm at the layer's output z (for the head: the logits)",
    "update_rms": COORDINATES["update_rms"].meaning,
}
COORDCHECK_QUANTITIES = ("act_l1", "act_rms", "delta_rms", "update_rms")
# The slope |s| of log(coordinate) against log(width) up to which a coordinate is width-stable:
# mup's own test asks the l1 to change by at most 1.2x per 4x width, log 1.2 / log 4 = 0.1315.
COORDCHECK_TOLERANCE = 0.13

# The columns that identify a row of `layers.csv`, then the measured quantities.
LAYERS_KEYS: dict[str, str] = {
    "step": "optimizer steps taken before this measurement; step 0 is the network at initialization",
    "layer": "0 for the block nearest the input, counting up; the head is last",
    "name": "module name: blocks.3, head",
    "kind": "hidden or head",
}
LAYERS_COLUMNS: list[str] = [*LAYERS_KEYS, *QUANTITIES]

# Columns added after runs had been recorded without them (issue 11): a run that lacks them is read
# with them empty (records.read.read_table), never refused.
ADDED_COLUMNS: tuple[str, ...] = (
    "delta_rms", "preact_mean", "preact_std", "dact_mean", "dact_factor", "inactive_frac", "clipped_grad_norm",
    "loss_scale", "skipped_update", "input_delta_norm",  # issue 20: gradlab.watch with a GradScaler, and time=True
)  # fmt: skip


def layers_columns(
    residual: bool = False, norm: bool = False, recurrent: bool = False, noise: bool = False, coordinates: bool = False, spectrum: bool = False
) -> list[str]:
    """The header of a run's layers.csv: LAYERS_COLUMNS, the residual quantities after them for a
    residual model, then the normalization/PReLU quantities for a model with a norm or PReLU; a
    recurrent model's (rnn, lstm, gru) is RECURRENT_LAYERS_COLUMNS (see below). With `noise` (the
    noise group in log.probes) the NOISE_QUANTITIES come last, then with `coordinates` the
    COORDINATE_QUANTITIES, then with `spectrum` the SPECTRUM_QUANTITIES."""
    extra = [*(NOISE if noise else ()), *(COORDINATES if coordinates else ()), *(SPECTRUM if spectrum else ())]
    if recurrent:
        return [*RECURRENT_LAYERS_COLUMNS, *extra]
    return [*LAYERS_COLUMNS, *(RESIDUAL if residual else ()), *(NORM if norm else ()), *extra]


def has_norm_columns(model: dict | object) -> bool:
    """Whether a model config (a ModelConfig or its dict) adds NORM_QUANTITIES: a norm or PReLU."""
    get = model.get if isinstance(model, dict) else lambda key: getattr(model, key)
    return get("norm")["name"] != "none" or get("activation")["name"] == "prelu"

# What meta.json's `status` may say (the records' contract; an `expect: {status: ...}` names these).
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")

METRICS_COLUMNS: dict[str, str] = {
    "step": "optimizer steps taken before this measurement",
    "split": "train (this step's training batch, in training mode), test (the whole test set, in evaluation mode: BatchNorm with its "
             "running statistics, at step 0 the initial ones) or, with log.test_batch_stats, test_batch_stats (the test set in batches "
             "of data.batch_size, BatchNorm with each batch's own statistics, dropout off)",
    "loss": "the loss L, averaged over the batch (train) or the test set (test)",
    "accuracy": "share of examples whose largest output is the label",
    "grad_norm": "||dL/dtheta|| over every parameter of the model, before clipping (train rows only)",
    "clipped_grad_norm": "the global gradient norm after optim.grad_clip: grad_norm * min(1, grad_clip / (grad_norm + 1e-6)), "
                         "PyTorch's clip_grad_norm_ rule; clip factor = clipped_grad_norm / grad_norm (train rows of runs with grad_clip only)",
    "lr": "the learning rate of the optimizer's first parameter group for this step's update (train rows) or the next update (test rows): with optim.schedule, lr * schedule factor",
    "loss_scale": "gradlab.watch with scaler=: the GradScaler's scale S that this step's backward pass used (the loss was multiplied by S); "
                  "every gradient column of the step (grad_norm, delta_norm, delta_rms, *_grad_norm, the time steps' deltas) is divided by S, "
                  "so they are the unscaled loss's (train rows of a watch with a scaler only)",
    "skipped_update": "gradlab.watch with scaler=: 1 when this step's gradients held inf or NaN, so the GradScaler skipped the optimizer update "
                      "(its layers.csv and timesteps.csv rows are not written, grad_norm is empty, and the next step is measured instead), "
                      "0 when the update was taken (train rows of a watch with a scaler only)",
    "time_s": "seconds since training started",
}


# --------------------------------------------------------------------------------------------
# Derived quantities: what `gradlab compare` reports and `expect:` may bound
# --------------------------------------------------------------------------------------------

# Measured at one logged step (`--step`, or `step:` in an expectation).
PROFILE_QUANTITIES: dict[str, str] = {
    "first_delta_norm": "delta_norm of the first hidden layer (layer 0): the back-propagated signal where it reaches the input end of the stack",
    "last_delta_norm": "delta_norm of the last hidden layer: the signal as it enters the stack from the head",
    "gain": "gain across the stack = delta_rms of the first hidden layer / delta_rms of the last (first_delta_norm / last_delta_norm "
            "for runs recorded before delta_rms: the same ratio in an MLP, while in a CNN only delta_rms is blind to pooling and image size); below 1 the signal shrinks on its "
            "way down to the input, above 1 it grows; over several seeds the geometric mean",
    "layer_factor": "per-layer factor = gain ** (1 / (depth - 1)): the average change of the signal from one layer to the next; empty when depth is 1; over several seeds the geometric mean",
    "weight_grad_gain": "weight-gradient gain = weight_grad_norm of the first hidden layer / that of the last hidden layer; over several seeds the geometric mean",
    "dead_frac": "largest dead_frac over the hidden layers: share of a layer's units through which no gradient passes on this batch (f'(u) = 0 on every example: a dead ReLU; a Leaky ReLU unit never is)",
    "inactive_frac": "largest inactive_frac over the hidden layers: share of a layer's (example, unit) pairs on the zero side of a ReLU-family activation (u <= 0 for relu), through which no gradient passes; empty for activations without one",
    "saturated_frac": "largest saturated_frac over the hidden layers: share of a layer's (example, unit) pairs in a flat tail of a saturating activation (empty for the ReLU family: see inactive_frac)",
    "bn_stat_distance": "largest bn_stat_distance over the hidden layers: how far a BatchNorm layer's normalization with this batch's statistics is "
                        "from the one with its running statistics (what the network uses at inference); 0 when they agree; BatchNorm runs only "
                        "(the column is left out of compare when no run has it)",
    "first_gsnr": "gsnr of the first hidden layer (layer 0): the mean signal-to-noise ratio of its weight gradient's coordinates over the "
                  "batch's examples; below 1 the examples disagree more than the batch's gradient says (noise group runs only)",
    "last_gsnr": "gsnr of the last hidden layer (noise group runs only); a first_gsnr far below it: the signal that reaches the input end is "
                 "drowned in the examples' noise",
    "first_grad_noise_scale": "grad_noise_scale of the first hidden layer: the batch size at which its gradient's noise equals its signal "
                              "(noise group runs only)",
    "last_grad_noise_scale": "grad_noise_scale of the last hidden layer (noise group runs only)",
    "s2": "jacobian.csv's s2 of the last hidden block: the normalized variance m2 / m1^2 - 1 of the squared singular values of the "
          "input-output Jacobian (0: dynamical isometry); runs with log.jacobian only, at the steps it measured (0 and the last always)",
    "alpha_min": "smallest weight_alpha over the hidden layers that have one (spectrum group runs only): below 2, WeightWatcher reads the "
                 "layer as over-trained (heavy-tailed)",
    "alpha_max": "largest weight_alpha over the hidden layers that have one (spectrum group runs only): above 6, WeightWatcher reads the "
                 "layer as under-trained (random-like)",
}

# Measured over the whole run.
FINAL_QUANTITIES: dict[str, str] = {
    "final_train_loss": "train loss at the run's last logged step (on that step's training batch)",
    "final_train_accuracy": "train accuracy at the run's last logged step (on that step's training batch)",
    "final_test_loss": "loss on the test set at the run's last evaluation",
    "final_test_accuracy": "accuracy on the test set at the run's last evaluation",
    "final_test_batch_stats_accuracy": "accuracy on the test set at the run's last evaluation with each batch's own BatchNorm statistics, "
                                       "as in training (log.test_batch_stats: true; set beside final_test_accuracy, which uses the running "
                                       "statistics); the column is left out of compare when no run has it",
    "steps_to_target": "first logged step at which the train loss is at or below the target loss; empty when it never got there",
}

# Along time, at one logged step, on the last recurrent layer (`gradlab compare`, `expect:`).
TIME_QUANTITIES: dict[str, str] = {
    "time_gain": "gain through time = ||dL/da_0|| / ||dL/da_{T-1}|| of the last recurrent layer (timesteps.csv delta_norm at t = 0 over t = T - 1): below 1 the signal shrinks on its way back to the first input",
    "step_factor": "per-step factor = the geometric mean of the T - 1 ratios delta_norm(t) / delta_norm(t + 1), i.e. time_gain ** (1 / (T - 1)); a linear RNN with recurrent matrix lambda * orthogonal has exactly lambda",
}

SUMMARY_QUANTITIES: dict[str, str] = {**PROFILE_QUANTITIES, **TIME_QUANTITIES, **FINAL_QUANTITIES}

# Summary quantities of some runs only (BatchNorm, log.test_batch_stats): compare leaves their
# columns out where every row's is empty.
# The summaries of the noise group's columns (an expect: bound on one needs the group).
NOISE_SUMMARIES: tuple[str, ...] = ("first_gsnr", "last_gsnr", "first_grad_noise_scale", "last_grad_noise_scale")
OPTIONAL_SUMMARIES: tuple[str, ...] = (
    "bn_stat_distance", "final_test_batch_stats_accuracy", *NOISE_SUMMARIES,
    "s2", "predicted_s2", "s2_departs", "alpha_min", "alpha_max",
)  # fmt: skip

# WeightWatcher's range of a well-trained layer's weight_alpha (its docs: "alpha < 2: over-trained",
# "alpha > 6: under-trained"); `gradlab compare` names the hidden layers outside it (alpha_warning).
ALPHA_RANGE: tuple[float, float] = (2.0, 6.0)


# Theory beside measurement: what `gradlab compare --theory` puts beside the measured layer_factor
# (predict.py computes the prediction from the run's config; `expect: {layer_factor: {within_theory: x}}`
# bounds the same relative difference).
THEORY_QUANTITIES: dict[str, str] = {
    "predicted_factor": "the per-layer factor theory predicts at initialization from the config alone: the geometric mean of "
                        "the layer-by-layer factors ||dL/dz_l|| / ||dL/dz_(l+1)|| from the actual input (mean field: Poole et al. 2016, "
                        "Schoenholz et al. 2017; BatchNorm before the activation: Yang et al. 2019; residual stream: De & Smith 2020), "
                        "to set beside layer_factor@0; empty where no theory applies (gradlab theory says why)",
    "departs": "yes when the measured layer_factor at step 0 differs from predicted_factor by more than the tolerance, relative to "
               "the prediction (|measured - predicted| > tolerance * predicted), no when it does not; empty without a prediction or a step 0",
    # along time (recurrent rows; the columns appear when a compared run is recurrent)
    "predicted_step_factor": "recurrent runs: theory's per-step factor of ||dL/da_t|| back through time at initialization, to set beside step_factor@0: "
                             "for a linear rnn (identity activation) whose recurrent matrix is lambda * orthogonal or lambda * I exactly lambda (a prediction); "
                             "for any other rnn with readout last Pascanu, Mikolov & Bengio 2013's bound gamma * lambda_1 (eq. 7: gamma = sup |f'|, 1 for tanh and ReLU, "
                             "1/4 for sigmoid; lambda_1 the recurrent matrix's largest singular value), an upper bound, not an estimate (a note says which); "
                             "empty where none is derived (lstm: its sigma(forget bias) is the cell path's factor alone; gru; readout every; a note says why)",
    "step_departs": "recurrent runs: for a prediction, yes when step_factor@0 differs from predicted_step_factor by more than the tolerance, relative "
                    "(as departs); for Pascanu's bound, yes only when step_factor@0 exceeds it, step_factor@0 > (1 + tolerance) * bound (a factor "
                    "below the bound agrees with it); no otherwise; empty without a prediction",
    # the gates of lstm and gru (the columns appear when a compared run is one)
    "direct_factor": "lstm and gru runs: the measured direct-path factor at step 0 on the last recurrent layer: forget_mean (lstm) or update_mean (gru) of "
                     "timesteps.csv averaged over the second half of the sequence (t >= T//2), the factor by which the cell (lstm) or the hidden state (gru) "
                     "passes a gradient straight back one step",
    "predicted_direct_factor": "lstm and gru runs: the gates' mean field (Gilboa et al. 2019) for direct_factor: E[f] or E[z] over the units (every unit's "
                               "own bias integrated over, chrono's too) and over the same steps, from the zero state",
    "h_second_moment": "lstm and gru runs: the measured E[h^2] at step 0 on the last recurrent layer, hidden_norm^2 / (batch_size * width) averaged over t >= T//2",
    "predicted_h_second_moment": "lstm and gru runs: the gates' mean field for h_second_moment over the same steps",
    "gate_departs": "lstm and gru runs: yes when the measured timescale -1/ln(direct_factor) differs from the predicted one by more than the tolerance "
                    "(relative, as departs; with chrono at least 3 times the spread one draw of the layer's biases gives it), a gate's mean by more "
                    "than 0.05, or h_second_moment by more than 40% relative (a note names which, and "
                    "gives every gate's measured and predicted mean); no otherwise; empty without a prediction",
    # the input-output Jacobian (runs with log.jacobian; the columns appear when a compared run has jacobian.csv)
    "predicted_s2": "runs with log.jacobian: free probability's s2 of the last hidden block at initialization (theory/jacobian.py: "
                    "normalized variances add under free multiplication, Pennington, Schoenholz & Ganguli 2017), to set beside s2@0; "
                    "empty where it does not apply (CNNs, residual stacks, normalization, other initializers: a note says why)",
    "s2_departs": "runs with log.jacobian: yes when s2@0 differs from predicted_s2 by more than the tolerance times 1 + predicted_s2 "
                  "(= m2 / m1^2, the positive quantity s2 is a shift of: a predicted isometry, s2 = 0, still has a scale), no when it "
                  "does not; empty without a prediction",
}


# --------------------------------------------------------------------------------------------
# Recurrent runs (model.kind rnn | lstm | gru): extra layers.csv columns and timesteps.csv
# --------------------------------------------------------------------------------------------

RECURRENT_KINDS = ("rnn", "lstm", "gru")

# A recurrent layer has two weight families: input-to-hidden (W_ih, b_ih) and hidden-to-hidden
# (W_hh, b_hh). A recurrent run's layers.csv adds their columns after LAYERS_COLUMNS (a
# feed-forward run's layers.csv keeps exactly LAYERS_COLUMNS); there the layer's own weight_norm,
# weight_grad_norm, bias_grad_norm and update_ratio are those of both families together: the
# Frobenius norm of [W_ih W_hh], the matrix that maps [x_t; h_{t-1}] to a_t.
_FAMILY = {"ih": ("input-to-hidden weight W_ih", "b_ih"), "hh": ("hidden-to-hidden weight W_hh", "b_hh")}
RECURRENT_LAYER_QUANTITIES: tuple[Quantity, ...] = tuple(
    q
    for family, (weight, bias) in _FAMILY.items()
    for q in (
        Quantity(f"{family}_weight_norm", "weights", "layer", f"recurrent layers: ||W||, the Frobenius norm of the {weight} (empty for the head)"),
        Quantity(f"{family}_weight_grad_norm", "weights", "layer", f"recurrent layers: ||dL/dW|| of the {weight} (empty for the head)"),
        Quantity(f"{family}_bias_grad_norm", "weights", "layer", f"recurrent layers: ||dL/db|| of the bias {bias} (empty for the head and without biases)"),
        Quantity(f"{family}_update_ratio", "updates", "layer", f"recurrent layers: ||W_after - W_before|| / ||W_before|| of the {weight} (empty for the head)"),
    )
)  # fmt: skip
RECURRENT_LAYERS_COLUMNS: list[str] = [*LAYERS_COLUMNS, *(q.name for q in RECURRENT_LAYER_QUANTITIES)]

# The gates of lstm (input, forget, cell, output) and gru (reset, update, new), in PyTorch's order.
GATES: dict[str, tuple[str, ...]] = {"rnn": (), "lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new")}
_GATE_MEANING = {
    "input": "lstm's input gate i_t = sigmoid(a_i)",
    "forget": "lstm's forget gate f_t = sigmoid(a_f)",
    "cell": "lstm's cell gate (candidate) g_t = tanh(a_g)",
    "output": "lstm's output gate o_t = sigmoid(a_o)",
    "reset": "gru's reset gate r_t = sigmoid(a_r)",
    "update": "gru's update gate z_t = sigmoid(a_z)",
    "new": "gru's new gate (candidate) n_t = tanh(a_n)",
}

# timesteps.csv: one row per (logged step, recurrent layer, time step t), in this column order.
TIMESTEPS_KEYS: dict[str, str] = {
    "step": "optimizer steps taken before this measurement; step 0 is the network at initialization",
    "layer": "0 for the recurrent layer nearest the input, counting up (as in layers.csv)",
    "name": "module name: layers.0",
    "t": "time step: 0 is the first input, T - 1 the last",
}
TIMESTEP_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("delta_norm", "deltas", "preactivation",
             "||dL/da_t|| over the batch, a_t the layer's pre-activation at step t: rnn the activation's input W_ih x_t + b_ih + W_hh h_{t-1} + b_hh; "
             "lstm the four gates' pre-activations (i, f, g, o); gru the three gates' (a_r, a_z, a_n = gi_n + r_t * gh_n)", "timesteps"),
    Quantity("hidden_delta_norm", "deltas", "hidden",
             "||dL/dh_t|| over the batch, h_t the layer's hidden state after step t: the total derivative, through the later steps, the next layer and the head", "timesteps"),
    Quantity("cell_delta_norm", "deltas", "cell", "lstm: ||dL/dc_t|| over the batch, c_t the cell state after step t (empty for rnn and gru)", "timesteps"),
    Quantity("hidden_norm", "activations", "hidden", "||h_t|| over the batch", "timesteps"),
    Quantity("saturated_frac", "activations", "activation",
             "rnn: share of (example, unit) pairs at step t in a flat tail of the activation, as saturated_frac of layers.csv "
             "(|f'(a_t)| below log.saturation_threshold times sup |f'|); empty for activations without a saturating tail "
             "(the ReLU family, identity) and for lstm and gru (see the gates)", "timesteps"),
    *(
        q
        for gate, meaning in _GATE_MEANING.items()
        for q in (
            Quantity(f"{gate}_mean", "activations", "gate", f"mean over batch and units of the {meaning} at step t (empty for the other kinds)", "timesteps"),
            Quantity(f"{gate}_saturated_frac", "activations", "gate",
                     f"share of (example, unit) pairs at step t where the derivative of the {meaning} is below log.saturation_threshold "
                     "(default 0.05) times its maximum: sigmoid g(1-g) < 0.05/4, tanh 1-g^2 < 0.05 at the default", "timesteps"),
        )
    ),
    Quantity("input_delta_norm", "deltas", "input",
             "gradlab.watch(time=True): ||dL/dx_t|| over the batch, x_t what an nn.RNN/nn.LSTM/nn.GRU module reads at step t (its first layer's "
             "input), the gradient through that module alone (its whole recurrence); on the row of the module's first layer. Where the unrolled "
             "cells cannot reproduce the module's fused kernel (cuDNN, oneDNN's LSTM, packed sequences, proj_size) it is the only time-step "
             "column watch fills (config.yaml's model.time says why); empty where x_t takes no gradient (the data itself) and in gradlab run", "timesteps"),
)  # fmt: skip
TIMESTEPS_COLUMNS: list[str] = [*TIMESTEPS_KEYS, *(q.name for q in TIMESTEP_QUANTITIES)]


# --------------------------------------------------------------------------------------------
# The input-output Jacobian's spectrum (log.jacobian): jacobian.csv
# --------------------------------------------------------------------------------------------

# J_l = d(output of hidden block l) / d(network input x), for one example x; n_in = the number of
# input entries (an image's C * H * W), so m1 is the mean squared singular value of J_l counting
# n_in of them (zeros included when block l has fewer outputs than n_in). Measured with the model
# in evaluation mode (BatchNorm with its running statistics, no dropout), where J is the Jacobian of
# one example alone: batch statistics would couple the examples of the batch. The columns are the
# means over the examples measured (the batch's first log.jacobian.examples, or all of it), each
# example's estimate taken with log.jacobian.probes Hutchinson probes v ~ N(0, I).
JACOBIAN_KEYS: dict[str, str] = {
    "step": "optimizer steps taken before this measurement; step 0 is the network at initialization",
    "layer": "the hidden block l whose output J_l maps the input to: 0 for the block nearest the input, counting up (as in layers.csv); "
             "in gradlab.watch, the head's layer, J being the model's output's Jacobian (m2, s2 and sv_max on that one row)",
}
# Their probe group is the log.jacobian section (not a log.probes entry).
JACOBIAN_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("m1", "jacobian", "output",
             "tr(J_l^T J_l) / n_in, the mean squared singular value of the input-output Jacobian J_l, estimated as the mean of "
             "||J_l v||^2 / n_in over the probes v ~ N(0, I) (one forward-mode pass gives every block's J_l v), then over the examples", "jacobian"),
    Quantity("m2", "jacobian", "output",
             "last hidden block only (empty elsewhere: each block would cost a reverse pass): tr((J^T J)^2) / n_in, the mean fourth "
             "power of J's singular values, estimated as the mean of ||J^T J v||^2 / n_in over the probes, then over the examples", "jacobian"),
    Quantity("s2", "jacobian", "output",
             "last hidden block only: m2 / m1^2 - 1 of this row's means, the normalized variance of the squared singular values of J "
             "(0 for an isometry up to scale: dynamical isometry; Pennington, Schoenholz & Ganguli 2017)", "jacobian"),
    Quantity("sv_max", "jacobian", "output",
             "last hidden block only: the largest singular value of J, sqrt of the Rayleigh quotient after log.jacobian.power_iterations "
             "steps of power iteration on J^T J from a random start (a lower bound that converges from below), mean over the examples", "jacobian"),
    Quantity("probes", "jacobian", "output", "Hutchinson probes per example behind this row's estimates (log.jacobian.probes)", "jacobian"),
)  # fmt: skip
JACOBIAN_COLUMNS: list[str] = [*JACOBIAN_KEYS, *(q.name for q in JACOBIAN_QUANTITIES)]
