"""ResNet-12: the residual backbone of most mini-ImageNet results since 2018 (TADAM, MetaOptNet)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .functional import Functional, Ops


def conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """A convolution without bias (the BatchNorm after it has one) keeping the resolution, and its BatchNorm."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels)]


class ResidualBlock(Functional):
    """Three 3x3 conv-BN (LeakyReLU after the first two), plus a 1x1 conv-BN shortcut; then
    LeakyReLU and a 2x2 max-pool: (n, in_channels, h, w) -> (n, out_channels, h // 2, w // 2)."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(in_channels, out_channels, 3), nn.LeakyReLU(slope),
                                  *conv_bn(out_channels, out_channels, 3), nn.LeakyReLU(slope),
                                  *conv_bn(out_channels, out_channels, 3))
        self.shortcut = nn.Sequential(*conv_bn(in_channels, out_channels, 1))
        self.relu, self.pool = nn.LeakyReLU(slope), nn.MaxPool2d(2)

    def functional_forward(self, inputs: torch.Tensor, ops: Ops) -> torch.Tensor:
        return ops(self.pool, ops(self.relu, ops(self.body, inputs) + ops(self.shortcut, inputs)))


class ResNet12(Functional):
    """ResNet-12 (Oreshkin et al. 2018, TADAM; Lee et al. 2019, MetaOptNet): four residual blocks.

    Each block is three 3x3 conv-BatchNorm layers (LeakyReLU(0.1) after the first two) added to a
    1x1 conv-BatchNorm shortcut, then LeakyReLU(0.1) and a 2x2 max-pool. DropBlock, which
    MetaOptNet adds to the last two blocks, is left out.

    Args:
        in_channels: 3 for natural images, 1 for Omniglot.
        widths: channels of the four blocks (64, 160, 320, 640 in MetaOptNet; 64, 128, 256, 512 in TADAM).
        image_size: input side, used to report ``feature_size``.
        global_pool: average the last feature maps over space (``widths[-1]``-d features), as most
            papers do; ``False`` flattens the maps (640 x 5 x 5 on 84x84 inputs, as MetaOptNet).

    ``forward`` returns flat features (n, feature_size); ``feature_shape`` (channels, side, side)
    says how they unflatten into the last block's feature maps. The forward pass is written once,
    as ``functional_forward``, which MAML's inner loop also runs for a batch of tasks.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 160, 320, 640), image_size: int = 84,
                 global_pool: bool = True) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(*[ResidualBlock(a, b) for a, b in zip(channels, channels[1:])])
        side = image_size
        for _ in widths:
            side //= 2
        side = 1 if global_pool else side
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.feature_shape = (widths[-1], side, side)
        self.feature_size = widths[-1] * side * side
        for module in self.modules():  # MetaOptNet's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def functional_forward(self, inputs: torch.Tensor, ops: Ops) -> torch.Tensor:
        """(n, c, h, w) -> (n, feature_size), each layer run by ``ops``."""
        return ops.flatten(ops(self.pool, ops(self.blocks, inputs)))
