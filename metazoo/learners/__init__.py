"""Few-shot learners; their registry is :data:`metazoo.registry.LEARNERS`."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import LEARNERS, OBJECTIVES, UnknownNameError


def _backbone(backbone: nn.Module | str | dict) -> nn.Module:
    from ..backbones import create_backbone

    if isinstance(backbone, str):
        return create_backbone(backbone)
    if isinstance(backbone, dict):
        settings = dict(backbone)
        return create_backbone(settings.pop("name", "conv4"), **settings)
    return backbone


def create_learner(name: str, backbone: nn.Module | str | dict = "conv4", **kwargs: Any):
    """Build a registered learner around ``backbone``.

    ``backbone`` is a module, a registered backbone name, or a dict ``{"name": ..., **settings}``.
    Unknown learner names and settings fail with the valid ones listed.
    """
    return LEARNERS.create(name, backbone=_backbone(backbone), **kwargs)


def objective_factory(name: str):
    """The factory of a learner or another objective (``[learner] name`` of a config)."""
    if name in LEARNERS:
        return LEARNERS.get_factory(name)
    if name in OBJECTIVES:
        return OBJECTIVES.get_factory(name)
    LEARNERS.check_name(name)  # loads entry-point plugins
    if name in LEARNERS:
        return LEARNERS.get_factory(name)
    raise UnknownNameError(f"unknown learner {name!r}; valid: {', '.join(LEARNERS.names() + OBJECTIVES.names())}")


def create_objective(name: str, backbone: nn.Module | str | dict = "conv4", **kwargs: Any):
    """Build what the trainer optimises: a registered learner, or another objective (``multitask``)."""
    objective_factory(name)  # fails listing the valid names
    registry = LEARNERS if name in LEARNERS else OBJECTIVES
    return registry.create(name, backbone=_backbone(backbone), **kwargs)


def list_learners() -> list[str]:
    return LEARNERS.names()


from .base import Classifier, Learner  # noqa: E402
from .blackbox import RecurrentLearner, SequenceLearner  # noqa: E402
from .gradient import ANIL, MAML, GradientLearner, MetaSGD, Reptile  # noqa: E402
from .mann import MANN  # noqa: E402
from .matching import MatchingNet  # noqa: E402
from .protonet import ProtoNet  # noqa: E402
from .relation import RelationNet  # noqa: E402
from .snail import SNAIL  # noqa: E402
from .transfer import Baseline, FineTuned  # noqa: E402

__all__ = ["ANIL", "LEARNERS", "MAML", "MANN", "SNAIL", "Baseline", "Classifier", "FineTuned", "GradientLearner",
           "Learner", "MatchingNet", "MetaSGD", "ProtoNet", "RecurrentLearner", "RelationNet", "Reptile",
           "SequenceLearner", "create_learner", "create_objective", "list_learners"]
