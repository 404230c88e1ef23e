"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""
from __future__ import annotations

import torch
from torch import nn

from ..episode import Episode, LabeledSet
from .base import Learner


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean feature of each class: features (n, d), labels (n,) -> (ways, d)."""
    sums = features.new_zeros(ways, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=ways).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def squared_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances: (n, d), (ways, d) -> (n, ways)."""
    return (features[:, None, :] - prototypes[None, :, :]).pow(2).sum(-1)


class PrototypeClassifier:
    """Logits are negative squared distances from the embedded inputs to the prototypes."""

    def __init__(self, backbone: nn.Module, prototypes: torch.Tensor) -> None:
        self.backbone, self.prototypes = backbone, prototypes

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return -squared_distances(self.backbone(inputs), self.prototypes)


class ProtoNet(Learner):
    """Prototypical Networks (Snell et al. 2017).

    The backbone embeds every image; a class's prototype is the mean embedding of its support
    examples; a query is classified by a softmax over negative squared Euclidean distances to
    the prototypes. Meta-training minimises the query cross-entropy, episode by episode.
    During training, support and query go through the backbone in one batch, as in the
    paper's code (BatchNorm statistics over the whole episode); in eval mode BatchNorm uses
    its running statistics and the result equals ``adapt`` followed by classification.
    """

    def adapt(self, support: LabeledSet) -> PrototypeClassifier:
        features = self.backbone(support.inputs)  # (n_support, d)
        return PrototypeClassifier(self.backbone, class_means(features, support.labels, support.ways))

    def forward(self, episode: Episode) -> torch.Tensor:
        support, query = episode.support, episode.query
        features = self.backbone(torch.cat([support.inputs, query.inputs]))
        prototypes = class_means(features[: len(support)], support.labels, support.ways)  # (ways, d)
        return -squared_distances(features[len(support):], prototypes)
