"""Deep stacks of blocks: `MLP` and `CNN`, built from the `model:` section of a config.

A block is   linear/conv -> [norm] -> activation   (norm placement `pre`, as Ioffe & Szegedy)
        or   linear/conv -> activation -> [norm]   (placement `post`),
and its submodules carry those names, so parameters read `blocks.3.linear.weight`,
`blocks.3.norm.weight`. The output layer is `head`.

Measuring costs nothing on a plain step: a block only looks at the model's tap slot, which is
empty except on logged steps. Then each block taps its tensors at its site (see sites.py):
    z   = linear/conv output, the pre-activation whose gradient is `delta_norm`   (preactivation)
    u   = the activation's input (z, or norm(z) with placement pre)               (normalized, pre)
    y   = the activation's output                                                (activation)
    out = what the block passes on (y, norm(y) with placement post, then pooling)  (output)
and the model taps the head's output as `logits`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradlab.theory import activations
from gradlab.build.components import apply_init, build_norm
from gradlab.build.parametrization import apply_parametrization, head_divisor
from gradlab.config.experiment import ModelConfig
from gradlab.vocab.errors import DataError
from gradlab.build.recurrent import RECURRENT_KINDS
from gradlab.build.sites import Layer, Site, Tap, TapSlot


def _tap_layer(tap: Tap, block: nn.Module, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor, normed: torch.Tensor | None) -> None:
    """Tap a block's linear/conv -> [norm] -> activation -> [norm] tensors at its site, in forward order."""
    site, name = block.site, block.site.name
    tap.tensor(site, "preactivation", f"{name}.linear output", z)
    if u is not z:
        tap.tensor(site, "normalized", f"{name}.norm output", u)
    tap.activation(site, block.act, block.activation, u, y)
    tap.tensor(site, "activation", f"{name}.act output", y)
    if normed is not None:
        tap.tensor(site, "normalized", f"{name}.norm output", normed)


class Block(nn.Module):
    def __init__(self, index: int, in_size: int, cfg: ModelConfig, conv: bool):
        super().__init__()
        self.index = index
        self.conv = conv
        width = cfg.width
        norm_spec = cfg.norm
        self.norm_first = norm_spec.get("placement", "pre") == "pre"
        # BatchNorm right after the linear map subtracts each unit's batch mean, which cancels any
        # bias the linear map adds: the bias would be a parameter with zero gradient, so drop it.
        bias = cfg.bias and not (norm_spec["name"] == "batchnorm" and self.norm_first)
        if conv:
            self.linear = nn.Conv2d(in_size, width, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=bias)
        else:
            self.linear = nn.Linear(in_size, width, bias=bias)
        self.norm = build_norm(norm_spec, width, conv)  # None for norm: none
        self.act = activations.build(cfg.activation, width)
        self.activation = cfg.activation["name"]  # the probes look up its derivative by name
        # model.dropout: after the activation (and a post norm), before pooling; no module at rate 0,
        # so a run without dropout draws and names exactly what it did before dropout existed
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        pooled = conv and cfg.pool_every and (index + 1) % cfg.pool_every == 0
        if pooled:
            self.pool = nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2)
        else:
            self.pool = None
        self.site = Site(index, f"blocks.{index}", "hidden")
        self.slot = TapSlot()  # replaced by the model's shared slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)  # (B, width) or (B, width, H, W)
        u = self.norm(z) if self.norm is not None and self.norm_first else z
        y = self.act(u)
        normed = self.norm(y) if self.norm is not None and not self.norm_first else None
        out = y if normed is None else normed
        if self.drop is not None:
            out = self.drop(out)
        if self.pool is not None:
            out = self.pool(out)  # (B, width, H/2, W/2)
        tap = self.slot.tap
        if tap is not None:
            _tap_layer(tap, self, z, u, y, normed)
            tap.tensor(self.site, "output", f"{self.site.name} output", out)
        return out


class ResidualBlock(nn.Module):
    """x -> skip(x) + alpha * branch(x), then pooling (cnn), for `model.residual: true`.

    The branch is the plain block's layers, `branch_depth` times: linear/conv -> [norm] -> activation
    (norm placement pre or post as configured). Its first layer keeps the plain block's names
    (`blocks.3.linear`, `blocks.3.norm`, `blocks.3.act`) and is the block's measured layer (its weight,
    and `delta_norm` of its output z); further layers are `blocks.3.inner.<k-1>.linear` and so on
    (their parameters belong to the block: in `grad_norm`, not in the block's `weight_norm`).
    `skip` is the identity, except where the block's input size differs from the width (block 0 of
    an MLP reads the input's features, of a CNN the input's channels): there a bias-free linear map
    (MLP) or 1x1 convolution (CNN), initialized LeCun normal (variance 1/fan_in) whatever model.init
    says, so that it carries the input's second moment onto the stream unchanged in mean field.

    Taps (sites.py): the plain block's (`preactivation` z, `normalized`, the first layer's
    `activation`), then `branch` r = branch(x) before alpha, `stream` skip(x) + alpha r before pooling,
    and `output` what the block passes on (after pooling; act_mean and act_std are the stream's).
    """

    def __init__(self, index: int, in_size: int, cfg: ModelConfig, conv: bool):
        super().__init__()
        self.index = index
        width = cfg.width
        norm_spec = cfg.norm
        self.norm_first = norm_spec.get("placement", "pre") == "pre"
        bias = cfg.bias and not (norm_spec["name"] == "batchnorm" and self.norm_first)

        def linear(size: int) -> nn.Module:
            if conv:
                return nn.Conv2d(size, width, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=bias)
            return nn.Linear(size, width, bias=bias)

        self.linear = linear(in_size)
        self.norm = build_norm(norm_spec, width, conv)
        self.act = activations.build(cfg.activation, width)
        self.activation = cfg.activation["name"]
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None  # on the branch, before alpha
        self.inner = nn.ModuleList(
            _BranchLayer(linear(width), build_norm(norm_spec, width, conv), activations.build(cfg.activation, width), self.norm_first)
            for _ in range(cfg.branch_depth - 1)
        )
        if in_size == width:
            self.skip = None
        else:
            self.skip = nn.Conv2d(in_size, width, 1, bias=False) if conv else nn.Linear(in_size, width, bias=False)
        self.scale = float(cfg.residual_scale)
        pooled = conv and cfg.pool_every and (index + 1) % cfg.pool_every == 0
        self.pool = (nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2)) if pooled else None
        self.site = Site(index, f"blocks.{index}", "hidden")
        self.slot = TapSlot()

    def linears(self) -> list[nn.Module]:
        """The branch's linear/conv layers, input side first: what model.init initializes."""
        return [self.linear, *(layer.linear for layer in self.inner)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        u = self.norm(z) if self.norm is not None and self.norm_first else z
        y = self.act(u)
        normed = self.norm(y) if self.norm is not None and not self.norm_first else None
        r = y if normed is None else normed
        for layer in self.inner:
            r = layer(r)
        if self.drop is not None:
            r = self.drop(r)
        skip = x if self.skip is None else self.skip(x)
        stream = skip + r if self.scale == 1.0 else skip + self.scale * r
        out = stream if self.pool is None else self.pool(stream)
        tap = self.slot.tap
        if tap is not None:
            site, name = self.site, self.site.name
            _tap_layer(tap, self, z, u, y, normed)
            tap.tensor(site, "branch", f"{name} branch output", r)
            tap.tensor(site, "stream", f"{name} residual stream", stream)
            tap.tensor(site, "output", f"{name} output", out)
        return out


class _BranchLayer(nn.Module):
    """A residual branch's second and later layers: linear/conv -> [norm] -> activation (or norm after)."""

    def __init__(self, linear: nn.Module, norm: nn.Module | None, act: nn.Module, norm_first: bool):
        super().__init__()
        self.linear, self.norm, self.act, self.norm_first = linear, norm, act, norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        u = self.norm(z) if self.norm is not None and self.norm_first else z
        y = self.act(u)
        return self.norm(y) if self.norm is not None and not self.norm_first else y


class Stack(nn.Module):
    """What MLP and CNN share: blocks, a head, the tap slot, and the declared measured layers."""

    blocks: nn.ModuleList
    head: nn.Linear

    def _share_slot(self) -> None:
        self.slot = TapSlot()
        for block in self.blocks:
            block.slot = self.slot
        self.head_site = Site(len(self.blocks), "head", "head")

    def measured_layers(self) -> list[Layer]:
        """One Layer per row of layers.csv, input side first: each block (its linear/conv weight, and
        every parameter of the block: norm, PReLU slopes), then the head."""
        layers = [
            Layer(b.site, b, {"": b.linear.weight}, {"": b.linear.bias}, prefix=b.site.name) for b in self.blocks
        ]
        return layers + [Layer(self.head_site, self.head, {"": self.head.weight}, {"": self.head.bias}, prefix="head")]

    def initialize(self, cfg: ModelConfig) -> None:
        """Apply the config's weight and bias initializers to every linear/conv layer, head included."""
        # (a residual block's further branch layers follow its first; plain blocks draw as they always have)
        linears = [m for b in self.blocks for m in (b.linears() if isinstance(b, ResidualBlock) else [b.linear])]
        for module in [*linears, self.head]:
            # model.init.head: the head's own weight initializer (a constant weight init makes the head
            # symmetric: every hidden unit then gets the same gradient)
            weight_init = cfg.init.head if module is self.head and cfg.init.head is not None else cfg.init.weight
            apply_init(weight_init, module.weight, cfg.activation)
            if module.bias is not None:
                apply_init(cfg.init.bias, module.bias, cfg.activation)
        for block in self.blocks:
            skip = getattr(block, "skip", None)
            if skip is not None:  # LeCun normal: the stream starts with the input's second moment
                with torch.no_grad():
                    skip.weight.normal_(0.0, 1.0 / math.sqrt(skip.weight[0].numel()))
        if cfg.init.weight["name"] == "fixup":
            self._fixup(cfg)

    def _fixup(self, cfg: ModelConfig) -> None:
        """Fixup (Zhang et al. 2019, rules 1 and 2): with L branches of m layers, every branch layer
        but the last keeps its He draw scaled by L^(-1/(2m-2)); each branch's last layer and the head
        are zero, and so is every bias. (Rule 3's learned scalar multipliers and biases are not added:
        the branch's scale is model.residual_scale.)"""
        scale = len(self.blocks) ** (-1.0 / (2 * cfg.branch_depth - 2))
        with torch.no_grad():
            for block in self.blocks:
                *inner, last = block.linears()
                for module in inner:
                    module.weight.mul_(scale)
                last.weight.zero_()
                for module in block.linears():
                    if module.bias is not None:
                        module.bias.zero_()
            self.head.weight.zero_()
            if self.head.bias is not None:
                self.head.bias.zero_()

    head_divisor: float | None = None  # model.parametrization mup: the head reads x / width_mult

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x if self.head_divisor is None else x / self.head_divisor)  # (B, classes)
        tap = self.slot.tap
        if tap is not None:
            tap.tensor(self.head_site, "logits", "head output (logits)", logits)
        return logits


class MLP(Stack):
    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], classes: int):
        super().__init__()
        in_features = math.prod(input_shape)
        sizes = [in_features] + [cfg.width] * cfg.depth
        block = ResidualBlock if cfg.residual else Block
        self.blocks = nn.ModuleList(block(i, sizes[i], cfg, conv=False) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.width, classes, bias=cfg.bias)
        self._share_slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, in_features): images are flattened
        for block in self.blocks:
            x = block(x)
        return self._head(x)  # (B, classes) logits


class CNN(Stack):
    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], classes: int):
        super().__init__()
        channels = [input_shape[0]] + [cfg.width] * cfg.depth
        block = ResidualBlock if cfg.residual else Block
        self.blocks = nn.ModuleList(block(i, channels[i], cfg, conv=True) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.width, classes, bias=cfg.bias)
        self._share_slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)  # (B, width, H', W')
        x = x.mean(dim=(2, 3))  # global average pooling -> (B, width)
        return self._head(x)


MODEL_KINDS: dict[str, type[Stack]] = {"mlp": MLP, "cnn": CNN, **RECURRENT_KINDS}  # rnn, lstm, gru: recurrent.py


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], classes: int, initialize: bool = True) -> Stack:
    """The network for `cfg`, initialized (unless `initialize` is false: a model built on the meta
    device only to be counted). Uses torch's global RNG (seed it first)."""
    if cfg.kind == "cnn" and len(input_shape) != 3:
        raise DataError(f"model.kind cnn needs (channels, height, width) inputs; the data has shape {tuple(input_shape)}")
    model = MODEL_KINDS[cfg.kind](cfg, input_shape, classes)
    if cfg.parametrization != "standard":  # (validated: mlp and cnn only)
        model.head_divisor = head_divisor(cfg)
    if initialize:
        model.initialize(cfg)
        apply_parametrization(model, cfg)
    return model
