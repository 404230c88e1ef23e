"""Multi-task learning as a learner: one network for T tasks, a weighted objective, and few-shot
transfer of its trunk (multi-task pretraining, the baseline beside Baseline / Baseline++)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..episode import LabeledSet
from ..multitask.model import MultiTaskNet
from ..multitask.sharing import soft_sharing_penalty
from ..multitask.tasks import TaskBatch
from ..multitask.weighting import WEIGHTINGS, DynamicWeightAverage, StaticWeights, UncertaintyWeights
from . import LEARNERS
from .base import Classifier, Learner
from .transfer import FittedHead, fit_head


@LEARNERS.register("multitask")
class MultiTaskLearner(Learner):
    """A :class:`~metazoo.multitask.model.MultiTaskNet` trained on mini-batches of tasks.

    One optimisation step, as the course notes write it: a mini-batch of tasks, a mini-batch of
    data per task (a list of :class:`~metazoo.multitask.tasks.TaskBatch`, which the trainer draws),
    the weighted objective ``sum_i w_i L_i`` over the step's tasks (cross-entropy for
    classification tasks, mean squared error for regression), plus the soft-sharing penalty,
    back-propagated once; the trainer's optimiser steps.

    Args:
        outputs, losses: each task's output size and loss (``"classification"`` or
            ``"regression"``); the trainer fills them from the task set.
        sharing: ``concat``, ``additive``, ``multiplicative``, ``film``, ``multihead`` or
            ``independent`` (see :class:`~metazoo.multitask.model.MultiTaskNet`); ``hidden`` units.
        weighting: ``static`` (``weights``, default equal), ``uncertainty`` (Kendall et al. 2018)
            or ``dwa`` (dynamic weight average, Liu et al. 2019; ``temperature``, ``period``).
        soft_sharing: weight of the penalty pulling the independent towers together (needs
            ``sharing = "independent"``); ``common_init``: the towers start from the same weights.
        cosine, epochs, batch_size, lr, weight_decay, seed: the head fitted by ``adapt`` on a
            new task's support set, as :class:`~metazoo.learners.transfer.Baseline` does.
    """

    trains_on = "tasks"

    def __init__(self, backbone: nn.Module, outputs: Sequence[int] = (5,), losses: Sequence[str] | None = None,
                 sharing: str = "film", hidden: int = 256, weighting: str = "static",
                 weights: Sequence[float] | None = None, temperature: float = 2.0, period: int = 1,
                 soft_sharing: float = 0.0, common_init: bool = False, cosine: bool = False, epochs: int = 100,
                 batch_size: int = 4, lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0) -> None:
        super().__init__(backbone)
        self.losses = list(losses) if losses is not None else ["classification"] * len(outputs)
        if len(self.losses) != len(outputs):
            raise ValueError(f"{len(self.losses)} losses for {len(outputs)} tasks")
        if soft_sharing and sharing != "independent":
            raise ValueError("soft_sharing pulls independent networks together: it needs sharing = \"independent\"")
        if common_init and sharing != "independent":
            raise ValueError("common_init starts the independent towers alike: it needs sharing = \"independent\"")
        self.net = MultiTaskNet(backbone, outputs, sharing, hidden, common_init=common_init)
        self.backbone = self.net.trunk if sharing != "independent" else self.net.towers[0][0]
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if weighting == "static":
            self.weighting = StaticWeights(len(outputs), weights)
        elif weighting == "uncertainty":
            self.weighting = UncertaintyWeights(self.losses)
        else:
            self.weighting = DynamicWeightAverage(len(outputs), temperature, period)
        self.soft_sharing = soft_sharing
        self.fit = {"cosine": cosine, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "weight_decay": weight_decay, "seed": seed}

    def task_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``batch.task``'s loss on its batch, and its outputs."""
        out = self.net(batch.inputs, batch.task)
        if self.losses[batch.task] == "regression":
            return F.mse_loss(out, batch.targets), out
        return F.cross_entropy(out, batch.targets), out

    def meta_loss(self, batches: Sequence[TaskBatch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``sum_i w_i L_i`` over the step's tasks, plus the soft-sharing penalty; metrics: that
        objective and the accuracy over the classification tasks' items."""
        if not all(isinstance(b, TaskBatch) for b in batches):
            raise TypeError("the multitask learner trains on task batches: set [multitask] tasks in the config")
        losses, correct, total = [], 0, 0
        for batch in batches:
            loss, out = self.task_loss(batch)
            losses.append(loss)
            if self.losses[batch.task] == "classification":
                correct = correct + (out.argmax(-1) == batch.targets).sum()
                total += len(batch.targets)
        tasks = torch.tensor([b.task for b in batches], device=losses[0].device)
        objective = self.weighting(torch.stack(losses), tasks)
        if self.soft_sharing:
            objective = objective + soft_sharing_penalty(self.net.towers, self.soft_sharing)
        accuracy = correct.detach().float() / total if total else torch.tensor(float("nan"))
        return objective, {"loss": objective.detach(), "accuracy": accuracy}

    def adapt(self, support: LabeledSet) -> Classifier:
        """Few-shot transfer: the frozen trunk's features, a new head fitted on the support set."""
        if self.net.sharing == "independent":
            raise ValueError("independent networks share no trunk to transfer to a new task")
        with torch.no_grad():
            features = self.backbone(support.inputs)
        return FittedHead(self.backbone, fit_head(features, support.labels, support.ways, **self.fit))
