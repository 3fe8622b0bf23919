"""gradlab.theory.initializers: the variance and mean each initializer states, against the empirical
moments of a large tensor that the torch initializer (components.apply_init, what models use)
actually fills; `default` against PyTorch's own freshly built Linear and Conv2d."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.theory import initializers
from gradlab.vocab import specs
from gradlab.build.components import apply_init

# (spec, weight shape (out, in[, k, k]), activation); fan_in = in*k*k, fan_out = out*k*k
CASES = [
    ({"name": "normal", "mean": 0.3, "std": 0.05}, (1000, 500), "relu"),
    ({"name": "uniform", "a": -0.2, "b": 0.6}, (1000, 500), "relu"),
    ({"name": "xavier_normal", "gain": 1.3}, (1000, 500), "relu"),
    ({"name": "xavier_uniform", "gain": "auto"}, (1000, 500), "tanh"),
    ({"name": "xavier_normal", "gain": "auto"}, (1000, 500), "elu"),
    ({"name": "kaiming_normal"}, (1000, 500), "relu"),
    ({"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "leaky_relu", "a": 0.3}, (1000, 500), "relu"),
    ({"name": "kaiming_uniform", "nonlinearity": "tanh"}, (1000, 500), "relu"),
    ({"name": "kaiming_uniform", "mode": "fan_out", "nonlinearity": "selu"}, (64, 32, 5, 5), "relu"),
    ({"name": "kaiming_normal", "nonlinearity": "linear", "a": 2.0}, (1000, 500), "relu"),  # a is ignored but for leaky_relu
    ({"name": "lecun_normal"}, (1000, 500), "relu"),
    ({"name": "lecun_normal"}, (64, 32, 3, 3), "relu"),
    ({"name": "variance_scaling"}, (1000, 500), "relu"),
    ({"name": "variance_scaling", "scale": 2.0, "mode": "fan_avg", "distribution": "uniform"}, (1000, 500), "relu"),
    ({"name": "variance_scaling", "scale": 0.5, "mode": "fan_out", "distribution": "normal"}, (64, 32, 3, 3), "relu"),
    ({"name": "constant", "value": -0.7}, (100, 50), "relu"),
    ({"name": "zeros"}, (100, 50), "relu"),
]


def fans(shape):
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive, receptive


def draw(spec, shape, activation):
    torch.manual_seed(0)
    tensor = torch.empty(shape, dtype=torch.float64)
    apply_init(specs.initializers.resolve(spec), tensor, specs.activations.resolve(activation))
    return tensor


@pytest.mark.parametrize("spec, shape, activation", CASES, ids=str)
def test_stated_variance_and_mean_against_the_drawn_tensor(spec, shape, activation):
    tensor = draw(spec, shape, activation)
    fan_in, fan_out, receptive = fans(shape)
    variance = initializers.variance(spec, fan_in, fan_out, activation, receptive)
    mean = initializers.mean(spec)
    if variance == 0:
        assert torch.all(tensor == mean)
        return
    n = tensor.numel()
    # the sampling error of a variance is at most sqrt(2 / n) relative for these (normal or lighter tails)
    assert tensor.var(unbiased=False).item() == pytest.approx(variance, rel=5 * math.sqrt(2 / n))
    assert tensor.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(variance / n))


@pytest.mark.parametrize("shape", [(256, 256), (128, 512), (512, 128), (16, 8, 3, 3), (8, 16, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, "auto"])
def test_orthogonal_states_the_mean_square_of_every_draw(shape, gain):
    spec = {"name": "orthogonal", "gain": gain}
    tensor = draw(spec, shape, "relu")
    fan_in, fan_out, receptive = fans(shape)
    stated = initializers.variance(spec, fan_in, fan_out, "relu", receptive)
    assert tensor.pow(2).mean().item() == pytest.approx(stated, rel=1e-12)  # exact, not just in expectation
    if shape[0] == shape[1]:
        assert stated == pytest.approx((math.sqrt(2) if gain == "auto" else 1.0) ** 2 / fan_in, rel=1e-15)


@pytest.mark.parametrize("layer", [lambda: torch.nn.Linear(300, 3000), lambda: torch.nn.Conv2d(16, 256, 3)], ids=["linear", "conv"])
def test_default_is_pytorchs_own_layer_init(layer):
    torch.manual_seed(0)
    module = layer()
    fan_in, fan_out, receptive = fans(tuple(module.weight.shape))
    stated = initializers.variance("default", fan_in, fan_out, None, receptive)
    assert stated == pytest.approx(1 / (3 * fan_in), rel=1e-15)
    for tensor in (module.weight.detach().double(), module.bias.detach().double()):
        n = tensor.numel()
        assert tensor.var(unbiased=False).item() == pytest.approx(stated, rel=5 * math.sqrt(2 / n))
        assert tensor.abs().max().item() <= 1 / math.sqrt(fan_in)  # U(+-1/sqrt(fan_in))
        assert initializers.mean("default") == 0.0


def test_every_initializer_states_its_variance():
    for name in specs.initializers.names():
        spec = {"name": name, "gain": 1.0} if name in ("xavier_normal", "xavier_uniform", "orthogonal") else name
        assert initializers.variance(spec, 20, 30, "relu") >= 0


def test_gain_auto_needs_the_activation():
    with pytest.raises(ValueError, match="gain: auto needs the activation"):
        initializers.variance({"name": "xavier_normal", "gain": "auto"}, 10, 10)
