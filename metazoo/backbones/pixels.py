"""Raw pixels as features: no learned embedding (MANN's input in Santoro et al. 2016)."""
from __future__ import annotations

import torch

from .functional import Functional, Ops


class Pixels(Functional):
    """The image itself, flattened: (n, c, h, w) -> (n, c * h * w). No weights.

    The input of the paper MANN (Santoro et al. 2016: raw 20x20 Omniglot pixels; with Omniglot's
    ``data.options.image_size = 20``), and a floor for any learner that puts its own network on top
    of the features. Every learned part of a run with this backbone is the learner's own.

    Args:
        in_channels: image channels (filled in from the data).
        image_size: input side (filled in from the data), used to report ``feature_size``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.feature_shape = (in_channels, image_size, image_size)
        self.feature_size = in_channels * image_size * image_size

    def functional_forward(self, inputs: torch.Tensor, ops: Ops) -> torch.Tensor:
        """(n, c, h, w) -> (n, feature_size)."""
        if tuple(inputs.shape[-3:]) != self.feature_shape:
            raise ValueError(f"the pixels backbone was built for {self.feature_shape} images (in_channels, "
                             f"image_size), got {tuple(inputs.shape[-3:])}")
        return ops.flatten(inputs)
