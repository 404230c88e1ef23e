"""Conv-4: the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017)."""
from __future__ import annotations

import torch
from torch import nn

from .functional import Functional, Ops


def conv_block(in_channels: int, out_channels: int, pooling: bool, downsample: bool = True,
               leaky_slope: float = 0.0) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU, then a 2x2 max-pool (or a stride-2 conv when not pooling).

    With ``downsample=False`` the block keeps the resolution (stride 1, no pool); with ``leaky_slope > 0``
    the ReLU is a leaky ReLU of that slope for negative inputs (no weights: the same checkpoint names).

    With ReLU the block runs the max-pool first: ReLU is monotone, so it commutes with the max, and both
    orders give the same features and gradients, bit for bit (the pool's window maximum is one of its
    inputs; where it is not positive, ReLU's gradient is zero either way). The ReLU and its backward then
    see a quarter of the values (tests/test_backbones.py; docs/benchmarks.md (i)). A leaky ReLU keeps its
    place: its products can round two inputs to one value, and the pool would then route the gradient to
    another position.
    """
    if leaky_slope < 0:
        raise ValueError(f"leaky_slope={leaky_slope} must be 0 (ReLU) or positive (leaky ReLU)")
    stride = 2 if downsample and not pooling else 1
    layers = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.BatchNorm2d(out_channels)]
    activation = nn.LeakyReLU(leaky_slope) if leaky_slope else nn.ReLU()
    pool = [nn.MaxPool2d(2)] if downsample and pooling else []
    layers += [activation, *pool] if leaky_slope else [*pool, activation]
    return nn.Sequential(*layers)


class Conv4(Functional):
    """Four conv blocks: 64-d features on 28x28 inputs, 1600-d on 84x84 with ``width=64``.

    Args:
        in_channels: 1 for Omniglot, 3 for natural images.
        width: filters per block (64 in most papers, 32 for MAML on mini-ImageNet).
        depth: number of blocks.
        pooling: 2x2 max-pool after each block; ``False`` uses stride-2 convolutions instead.
        image_size: input side, used to report ``feature_size``.
        downsample_blocks: how many leading blocks halve the resolution (``None``: all of them);
            the rest keep it. Relation Networks' embedding is ``depth=4, downsample_blocks=2``
            (64 x 7 x 7 feature maps on 28x28 Omniglot).
        global_pool: average the last feature maps over space (``width``-d features), as MAML's
            Omniglot network does after its strided convolutions.
        leaky_slope: 0 (the default) for ReLU after each BatchNorm; a positive slope for leaky ReLU, as
            SNAIL's paper describes its Omniglot embedding.

    ``forward`` returns flat features (n, feature_size); ``feature_shape`` (channels, side, side)
    says how they unflatten into the last block's feature maps. The forward pass is written once,
    as ``functional_forward``, which MAML's inner loop also runs for a batch of tasks.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 4, pooling: bool = True,
                 image_size: int = 28, downsample_blocks: int | None = None, global_pool: bool = False,
                 leaky_slope: float = 0.0) -> None:
        super().__init__()
        downsampled = depth if downsample_blocks is None else downsample_blocks
        if not 0 <= downsampled <= depth:
            raise ValueError(f"downsample_blocks={downsample_blocks} must be between 0 and depth={depth}")
        channels = [in_channels] + [width] * depth
        self.blocks = nn.Sequential(*[conv_block(a, b, pooling, downsample=i < downsampled, leaky_slope=leaky_slope)
                                      for i, (a, b) in enumerate(zip(channels, channels[1:]))])
        side = image_size
        for _ in range(downsampled):
            side = side // 2 if pooling else (side + 1) // 2
        side = 1 if global_pool else side
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.feature_shape = (width, side, side)
        self.feature_size = width * side * side

    def functional_forward(self, inputs: torch.Tensor, ops: Ops) -> torch.Tensor:
        """(n, c, h, w) -> (n, feature_size), each layer run by ``ops``."""
        return ops.flatten(ops(self.pool, ops(self.blocks, inputs)))
