"""Learners and their registry."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry

LEARNERS = Registry("learner")


def create_learner(name: str, backbone: nn.Module | str | dict = "conv4", **kwargs: Any):
    """Build a registered learner around ``backbone``.

    ``backbone`` is a module, a registered backbone name, or a dict ``{"name": ..., **settings}``.
    Unknown learner names and settings fail with the valid ones listed.
    """
    from ..backbones import create_backbone

    if isinstance(backbone, str):
        backbone = create_backbone(backbone)
    elif isinstance(backbone, dict):
        settings = dict(backbone)
        backbone = create_backbone(settings.pop("name", "conv4"), **settings)
    return LEARNERS.create(name, backbone=backbone, **kwargs)


def list_learners() -> list[str]:
    return LEARNERS.names()


from . import blackbox, gradient, matching, multitask, protonet, relation, transfer  # noqa: E402,F401  (registers)
from .base import Classifier, Learner  # noqa: E402
from .blackbox import MANN, SNAIL, RecurrentLearner, SequenceLearner  # noqa: E402
from .gradient import ANIL, MAML, GradientLearner, MetaSGD, Reptile  # noqa: E402
from .matching import MatchingNet  # noqa: E402
from .multitask import MultiTaskLearner  # noqa: E402
from .protonet import ProtoNet  # noqa: E402
from .relation import RelationNet  # noqa: E402
from .transfer import Baseline  # noqa: E402

__all__ = ["ANIL", "LEARNERS", "MAML", "MANN", "SNAIL", "Baseline", "Classifier", "GradientLearner", "Learner",
           "MatchingNet", "MetaSGD", "MultiTaskLearner", "ProtoNet", "RecurrentLearner", "RelationNet", "Reptile",
           "SequenceLearner", "create_learner", "list_learners"]
