"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.conv4 import conv_block
from ..episode import Episode, LabeledSet
from .base import Learner


def class_sums(maps: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Element-wise sum of each class's feature maps: (n, c, h, w), labels (n,) -> (ways, c, h, w)."""
    return maps.new_zeros(ways, *maps.shape[1:]).index_add_(0, labels, maps)


class RelationModule(nn.Module):
    """Two conv blocks and two fully connected layers: a pair of feature maps -> a score in [0, 1].

    Built for input maps of ``feature_shape`` (c, h, w), so pairs have 2c channels. A block
    max-pools only while the map is at least 2x2: 64 x 7 x 7 Omniglot maps end 1x1, as in the paper.
    """

    def __init__(self, feature_shape: tuple[int, int, int], channels: int = 64, hidden_size: int = 8) -> None:
        super().__init__()
        in_channels, height, width = feature_shape
        blocks = []
        for c in (2 * in_channels, channels):
            pool = min(height, width) >= 2
            blocks.append(conv_block(c, channels, pooling=True, downsample=pool))
            if pool:
                height, width = height // 2, width // 2
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(channels * height * width, hidden_size), nn.ReLU(),
                                  nn.Linear(hidden_size, 1), nn.Sigmoid())

    def forward(self, class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
        """Scores of every (query, class) pair: (ways, c, h, w), (n, c, h, w) -> (n, ways).

        The paper concatenates a class's maps and a query's maps along channels (class first) and
        runs the blocks on each of the ``n * ways`` pairs. The first convolution is linear in its
        input, so it is run here once per class map and once per query map, each with its half of
        the filters, and the two results summed per pair before the BatchNorm: the same numbers
        (up to float rounding) at ``(n + ways) / (n * ways)`` of that convolution's cost, which
        dominated a step (tests/test_metric_learners.py checks it against the concatenated pairs).
        Pair ``i * ways + k`` of the BatchNorm's batch is query ``i`` with class ``k``.

        The fully connected head and its sigmoid run in float32 even under bfloat16 autocast (``train.amp``):
        a trained model scores its best matches near 1, where bfloat16's values are 2**-8 apart, so a query's
        best classes would round into ties at the argmax (docs/results.md, Relation 5w1s in bfloat16). The
        head is two small linear layers: under 0.1% of the relation module's multiply-adds on Omniglot 5-way.
        """
        conv, channels = self.blocks[0][0], class_maps.shape[1]
        per_class = F.conv2d(class_maps, conv.weight[:, :channels], None, conv.stride, conv.padding, conv.dilation)
        per_query = F.conv2d(query_maps, conv.weight[:, channels:], conv.bias, conv.stride, conv.padding,
                             conv.dilation)
        pairs = (per_query[:, None] + per_class[None]).flatten(0, 1)  # (n * ways, channels, h, w)
        hidden = self.blocks[1:](self.blocks[0][1:](pairs)).flatten(1)
        with torch.autocast(hidden.device.type, enabled=False):  # the head in its weights' dtype (float32)
            scores = self.head(hidden.to(self.head[0].weight.dtype))
        return scores.view(len(query_maps), len(class_maps))


class RelationClassifier:
    """Relation scores of inputs against one episode's class feature maps."""

    def __init__(self, learner: "RelationNet", class_maps: torch.Tensor) -> None:
        self.learner, self.class_maps = learner, class_maps

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.learner.score(self.learner.embed(inputs), self.class_maps)


class RelationNet(Learner):
    """Relation Networks (Sung et al. 2018).

    The backbone (embedding module) maps every image to a feature map; a class is represented by
    the element-wise sum of its support maps. Each (class, query) pair of maps is concatenated
    along channels and a learned relation module (two conv blocks, two fully connected layers,
    a sigmoid) scores it in [0, 1]. Training regresses the scores onto the one-hot query labels
    with a mean squared error; a query goes to the class of highest score, so the "logits" are
    the scores (n_query, ways). As in ProtoNet, training embeds support and query in one batch;
    in eval mode the scores equal ``adapt`` followed by classification.

    The backbone must report ``feature_shape`` (c, h, w), how its flat features unflatten into
    maps. The paper's embedding keeps the resolution in its last two blocks: backbone
    ``conv4`` with ``downsample_blocks = 2``.

    Args:
        channels: filters of the relation module's conv blocks (64 in the paper).
        hidden_size: width of its first fully connected layer (8 in the paper).
    """

    def __init__(self, backbone: nn.Module, channels: int = 64, hidden_size: int = 8, bn: str = "running") -> None:
        super().__init__(backbone, bn)
        shape = getattr(backbone, "feature_shape", None)
        if shape is None or len(shape) != 3:
            raise TypeError("Relation Networks compare feature maps: the backbone must report feature_shape "
                            "(channels, height, width), as conv4 does; the paper's embedding is "
                            "conv4 with downsample_blocks = 2")
        self.feature_shape = tuple(shape)
        self.relation = RelationModule(self.feature_shape, channels, hidden_size)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n, ...) -> feature maps (n, c, h, w)."""
        features = self.backbone(inputs)
        if features[0].numel() != math.prod(self.feature_shape):
            raise ValueError(f"the backbone gave {features[0].numel()} features per input but reports feature_shape "
                             f"{self.feature_shape}; build it for these inputs (e.g. conv4's image_size = "
                             f"{inputs.shape[-1]})")
        return features.reshape(len(inputs), *self.feature_shape)

    def score(self, query_maps: torch.Tensor, class_maps: torch.Tensor) -> torch.Tensor:
        """Relation scores: (n, c, h, w), (ways, c, h, w) -> (n, ways)."""
        return self.relation(class_maps, query_maps)

    def adapt(self, support: LabeledSet) -> RelationClassifier:
        return RelationClassifier(self, class_sums(self.embed(support.inputs), support.labels, support.ways))

    def forward(self, episode: Episode) -> torch.Tensor:
        support, query = episode.support, episode.query
        maps = self.embed(torch.cat([support.inputs, query.inputs]))
        class_maps = class_sums(maps[: len(support)], support.labels, support.ways)  # (ways, c, h, w)
        return self.score(maps[len(support):], class_maps)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the scores (n, ways) and the one-hot labels (n,)."""
        return F.mse_loss(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype))
