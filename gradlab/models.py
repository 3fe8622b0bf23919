"""Deep stacks of blocks: `MLP` and `CNN`, built from the `model:` section of a config.

A block is   linear/conv -> [norm] -> activation   (norm placement `pre`, as Ioffe & Szegedy)
        or   linear/conv -> activation -> [norm]   (placement `post`),
and its submodules carry those names, so parameters read `blocks.3.linear.weight`,
`blocks.3.norm.weight`. The output layer is `head`.

Probing costs nothing on a plain step: a block only looks at the model's probe slot, which is empty
except on logged steps, when the probe receives the block's intermediate tensors:
    z   = linear/conv output, the pre-activation whose gradient is `delta_norm`
    u   = the activation's input (z, or norm(z) with placement pre)
    y   = the activation's output
    out = what the block passes on (y, norm(y) with placement post, then pooling)
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from gradlab.components import apply_init, build_activation, build_norm
from gradlab.config import ModelConfig
from gradlab.errors import DataError


class BlockObserver(Protocol):
    def observe(self, block: "Block", z: torch.Tensor, u: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None: ...


class ProbeSlot:
    """Where a model's blocks look for the probe of this step: one object shared by all blocks, so
    attaching a probe is one attribute write, not one nn.Module.__setattr__ per block."""

    def __init__(self):
        self.probe: BlockObserver | None = None


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
        self.act = build_activation(cfg.activation, width)
        self.activation = cfg.activation["name"]  # the probes look up its derivative by name
        pooled = conv and cfg.pool_every and (index + 1) % cfg.pool_every == 0
        if pooled:
            self.pool = nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2)
        else:
            self.pool = None
        self.slot = ProbeSlot()  # replaced by the model's shared slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)  # (B, width) or (B, width, H, W)
        u = self.norm(z) if self.norm is not None and self.norm_first else z
        y = self.act(u)
        out = self.norm(y) if self.norm is not None and not self.norm_first else y
        if self.pool is not None:
            out = self.pool(out)  # (B, width, H/2, W/2)
        probe = self.slot.probe
        if probe is not None:
            probe.observe(self, z, u, y, out)
        return out


class Stack(nn.Module):
    """What MLP and CNN share: blocks, a head, the probe slot, and the list of measured layers."""

    blocks: nn.ModuleList
    head: nn.Linear

    def _share_slot(self) -> None:
        self.slot = ProbeSlot()
        for block in self.blocks:
            block.slot = self.slot

    def measured_layers(self) -> list[tuple[str, str, nn.Module]]:
        """(name, kind, weight-bearing module) for each row of layers.csv, input side first."""
        layers = [(f"blocks.{b.index}", "hidden", b.linear) for b in self.blocks]
        return layers + [("head", "head", self.head)]

    def initialize(self, cfg: ModelConfig) -> None:
        """Apply the config's weight and bias initializers to every linear/conv layer, head included."""
        for _, _, module in self.measured_layers():
            apply_init(cfg.init.weight, module.weight, cfg.activation)
            if module.bias is not None:
                apply_init(cfg.init.bias, module.bias, cfg.activation)


class MLP(Stack):
    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], classes: int):
        super().__init__()
        in_features = math.prod(input_shape)
        sizes = [in_features] + [cfg.width] * cfg.depth
        self.blocks = nn.ModuleList(Block(i, sizes[i], cfg, conv=False) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.width, classes, bias=cfg.bias)
        self._share_slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, in_features): images are flattened
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # (B, classes) logits


class CNN(Stack):
    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], classes: int):
        super().__init__()
        channels = [input_shape[0]] + [cfg.width] * cfg.depth
        self.blocks = nn.ModuleList(Block(i, channels[i], cfg, conv=True) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.width, classes, bias=cfg.bias)
        self._share_slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)  # (B, width, H', W')
        x = x.mean(dim=(2, 3))  # global average pooling -> (B, width)
        return self.head(x)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], classes: int) -> Stack:
    """The network for `cfg`, initialized. Uses torch's global RNG (seed it first)."""
    if cfg.kind == "cnn":
        if len(input_shape) != 3:
            raise DataError(f"model.kind cnn needs (channels, height, width) inputs; the data has shape {tuple(input_shape)}")
        model: Stack = CNN(cfg, input_shape, classes)
    else:
        model = MLP(cfg, input_shape, classes)
    model.initialize(cfg)
    return model
