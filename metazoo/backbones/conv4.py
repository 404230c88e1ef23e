"""Conv-4: the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017)."""
from __future__ import annotations

import torch
from torch import nn

from . import BACKBONES


def conv_block(in_channels: int, out_channels: int, pooling: bool) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU, then a 2x2 max-pool (or a stride-2 conv when not pooling)."""
    stride = 1 if pooling else 2
    layers = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
              nn.BatchNorm2d(out_channels), nn.ReLU()]
    if pooling:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """Four conv blocks: 64-d features on 28x28 inputs, 1600-d on 84x84 with ``width=64``.

    Args:
        in_channels: 1 for Omniglot, 3 for natural images.
        width: filters per block (64 in most papers, 32 for MAML on mini-ImageNet).
        depth: number of blocks.
        pooling: 2x2 max-pool after each block; ``False`` uses stride-2 convolutions instead.
        image_size: input side, used to report ``feature_size``.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 4, pooling: bool = True,
                 image_size: int = 28) -> None:
        super().__init__()
        channels = [in_channels] + [width] * depth
        self.blocks = nn.Sequential(*[conv_block(a, b, pooling) for a, b in zip(channels, channels[1:])])
        side = image_size
        for _ in range(depth):
            side = side // 2 if pooling else (side + 1) // 2
        self.feature_size = width * side * side

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n, c, h, w) -> (n, feature_size)."""
        return self.blocks(inputs).flatten(1)
