"""Transfer baselines: Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, ICLR 2019).

Pretraining is ordinary classification over all meta-training classes; at test time the backbone
is frozen and a new classifier is fitted on each episode's support set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import from_host
from ..episode import Episode, LabeledSet
from .base import Classifier, Learner


class CosineClassifier(nn.Module):
    """Baseline++'s classifier: ``scale * cos(features, w_c)`` for each class weight vector ``w_c``."""

    def __init__(self, features: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's initialisation
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T


def cosine_scale(classes: int) -> float:
    """Chen et al.'s temperature: 2 for up to 200 classes, 10 beyond."""
    return 2.0 if classes <= 200 else 10.0


class FittedHead:
    """The frozen backbone followed by a head fitted on one support set."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        self.backbone, self.head = backbone, head

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs))


class FineTuned(Learner):
    """A frozen backbone and a new head fitted on each support set: Chen et al.'s fine-tuning.

    ``adapt`` embeds the support set with the frozen backbone and fits a new head of ``ways``
    outputs on it: ``epochs`` passes over the support set in mini-batches of ``batch_size`` with
    SGD (``lr``, momentum 0.9, weight decay ``weight_decay``); the head's initial weights and the
    mini-batch order come from a generator seeded with ``seed``, so evaluation is deterministic.
    ``cosine``: a cosine classifier (Baseline++) instead of a linear one. The few-shot learner of
    every pretraining objective (Baseline's, multi-task pretraining's).
    """

    def __init__(self, backbone: nn.Module, cosine: bool = False, epochs: int = 100, batch_size: int = 4,
                 lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0, bn: str = "running") -> None:
        super().__init__(backbone, bn)
        self.cosine = cosine
        self.epochs, self.batch_size, self.lr, self.weight_decay, self.seed = epochs, batch_size, lr, weight_decay, seed

    def adapt(self, support: LabeledSet) -> Classifier:
        with torch.no_grad():
            features = self.backbone(support.inputs)
        head = fit_head(features, support.labels, support.ways, self.cosine, self.epochs, self.batch_size, self.lr,
                        self.weight_decay, self.seed)
        return FittedHead(self.backbone, head)


class Baseline(FineTuned):
    """Baseline (``cosine=False``) and Baseline++ (``cosine=True``) of Chen et al. 2019.

    Meta-training is plain classification: every image of a training episode is labelled with its
    dataset class (``episode.classes``), and a head over all ``classes`` training classes (linear,
    or cosine for Baseline++) is trained with the backbone by cross-entropy; episodes are simply
    class-balanced mini-batches, so the one trainer runs it unchanged. ``adapt`` is
    :class:`FineTuned`'s: the frozen backbone and a new head fitted on the support set.

    Args:
        classes: number of training classes (filled from the training split by the trainer).
        cosine: Baseline++ (cosine classifiers, pretraining and test-time).
    """

    def __init__(self, backbone: nn.Module, classes: int = 64, cosine: bool = False, epochs: int = 100,
                 batch_size: int = 4, lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0,
                 bn: str = "running") -> None:
        super().__init__(backbone, cosine, epochs, batch_size, lr, weight_decay, seed, bn)
        self.classes = classes
        self.head = self.new_head(classes)

    @classmethod
    def resolve_settings(cls, settings: dict, config, train_set) -> None:
        """The pretraining head has one output per training class."""
        settings.setdefault("classes", train_set.num_classes)

    def training_items(self, train_set, config):
        if train_set.num_classes > self.classes:  # checked once here, not with a host sync every step
            raise ValueError(f"{train_set.name} {train_set.split!r} has {train_set.num_classes} classes, more than "
                             f"the pretraining head's {self.classes} (learner.classes: the training split's count)")
        return super().training_items(train_set, config)

    def new_head(self, classes: int) -> nn.Module:
        size = self.backbone.feature_size
        return CosineClassifier(size, classes, cosine_scale(classes)) if self.cosine else nn.Linear(size, classes)

    def scored_logits(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Pretraining: all of the episode's images against their dataset classes."""
        if len(episode.classes) != episode.ways:
            raise ValueError("Baseline pretraining needs episode.classes (the dataset class of each label)")
        inputs = torch.cat([episode.support.inputs, episode.query.inputs])
        labels = episode.classes.to(inputs.device)[torch.cat([episode.support.labels, episode.query.labels])]
        return self.head(self.backbone(inputs)), labels


def fit_head(features: torch.Tensor, labels: torch.Tensor, ways: int, cosine: bool = False, epochs: int = 100,
             batch_size: int = 4, lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0) -> nn.Module:
    """A new linear (or cosine) classifier fitted on fixed ``features`` (n, d): Chen et al.'s fine-tuning,
    ``epochs`` passes in mini-batches of ``batch_size`` with SGD (momentum 0.9, dampening 0.9); the
    initial weights and the mini-batch order come from ``seed``. Returns the head, frozen. The fit is float32,
    autocast off (``train.amp``): bfloat16 would round away its many small SGD updates of the head."""
    features = features.to(torch.promote_types(features.dtype, torch.float32))  # (a bfloat16 embedding)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        size = features.shape[1]
        head = CosineClassifier(size, ways, cosine_scale(ways)) if cosine else nn.Linear(size, ways)
    head = head.to(features.device, features.dtype)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, dampening=0.9, weight_decay=weight_decay)
    with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
        for _ in range(epochs):
            order = from_host(torch.randperm(len(features), generator=generator), features.device)
            for start in range(0, len(features), batch_size):
                batch = order[start:start + batch_size]
                loss = F.cross_entropy(head(features[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return head.requires_grad_(False)
