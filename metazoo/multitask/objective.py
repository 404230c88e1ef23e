"""Multi-task learning as an objective: one network for T tasks, a weighted objective over task
mini-batches, and few-shot transfer of its trunk (multi-task pretraining, the baseline beside
Baseline / Baseline++). It is not a few-shot Learner: it trains on :class:`TaskBatch` items from
its own sampler, and hands a :class:`~metazoo.learners.transfer.FineTuned` learner on its trunk to
the episodic protocol."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TRAIN_AUGMENTATIONS
from ..learners.transfer import FineTuned
from ..objective import Objective
from ..registry import WEIGHTINGS, accepted_kwargs
from .model import MultiTaskNet
from .sharing import soft_sharing_penalty
from .tasks import TaskBatch, TaskBatchSampler, taskset_from_config


class MultiTaskObjective(Objective):
    """A :class:`~metazoo.multitask.model.MultiTaskNet` trained on mini-batches of tasks.

    One optimisation step, as the course notes write it: a mini-batch of tasks, a mini-batch of
    data per task (a list of :class:`~metazoo.multitask.tasks.TaskBatch` from
    :meth:`training_items`), the weighted objective ``sum_i w_i L_i`` over the step's tasks
    (cross-entropy for classification tasks, mean squared error for regression), plus the
    soft-sharing penalty, back-propagated once; the trainer's optimiser steps.

    Args:
        outputs, losses: each task's output size and loss (``"classification"`` or
            ``"regression"``); the trainer fills them from the task set (``[multitask] tasks``).
        descriptor_size: length of the task descriptors ``z_i`` (``None``: one-hot, one per task);
            filled from ``[multitask] descriptors``, whose values are copied into the network
            when the task set is built and saved with its weights.
        sharing: a registered sharing (``metazoo list``): ``concat``, ``additive``,
            ``multiplicative``, ``film``, ``multihead`` or ``independent``; ``hidden`` units.
        weighting: a registered weighting: ``static`` (``weights``, default equal),
            ``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al. 2019; ``temperature``,
            ``period``) or ``gradnorm`` (Chen et al. 2018; ``alpha``).
        soft_sharing: weight of the penalty pulling the independent towers together (needs
            ``sharing = "independent"``); ``common_init``: the towers start from the same weights.
        cosine, epochs, batch_size, lr, weight_decay, seed: the head fitted on a new task's support
            set for few-shot transfer, as :class:`~metazoo.learners.transfer.Baseline` does.
    """

    loss_is_item_mean = False  # task weightings and the penalty: not a mean over the step's task batches
    gathers_on_device = True  # TaskSet.batch gathers where the images are

    def __init__(self, backbone: nn.Module, outputs: Sequence[int] = (5,), losses: Sequence[str] | None = None,
                 descriptor_size: int | None = None, sharing: str = "film", hidden: int = 256,
                 weighting: str = "static", weights: Sequence[float] | None = None, temperature: float = 2.0,
                 period: int = 1, alpha: float = 1.5, soft_sharing: float = 0.0, common_init: bool = False,
                 cosine: bool = False, epochs: int = 100, batch_size: int = 4, lr: float = 0.01,
                 weight_decay: float = 1e-3, seed: int = 0, bn: str = "running") -> None:
        super().__init__(bn)
        self.losses = list(losses) if losses is not None else ["classification"] * len(outputs)
        if len(self.losses) != len(outputs):
            raise ValueError(f"{len(self.losses)} losses for {len(outputs)} tasks")
        if soft_sharing and sharing != "independent":
            raise ValueError("soft_sharing pulls independent networks together: it needs sharing = \"independent\"")
        if common_init and sharing != "independent":
            raise ValueError("common_init starts the independent towers alike: it needs sharing = \"independent\"")
        descriptors = None if descriptor_size is None else torch.zeros(len(outputs), descriptor_size)
        self.net = MultiTaskNet(backbone, outputs, sharing, hidden, descriptors, common_init=common_init)
        self.backbone = self.net.trunk if sharing != "independent" else self.net.towers[0][0]
        given = {"kinds": self.losses, "tasks": len(outputs), "weights": weights, "temperature": temperature,
                 "period": period, "alpha": alpha}
        self.weighting = WEIGHTINGS.create(weighting, **{k: v for k, v in given.items()
                                                         if k in accepted_kwargs(WEIGHTINGS.get_factory(weighting))})
        self.soft_sharing = soft_sharing
        self.fit = {"cosine": cosine, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "weight_decay": weight_decay, "seed": seed}

    @classmethod
    def resolve_settings(cls, settings: dict, config, train_set) -> None:
        """Each task's output size and loss, and the descriptors' length, from the task set."""
        if "outputs" in settings and "losses" in settings and (config.multitask.descriptors == "onehot"
                                                               or "descriptor_size" in settings):
            return
        taskset = taskset_from_config(config, train_set)
        settings.setdefault("outputs", [t.outputs for t in taskset.tasks])
        settings.setdefault("losses", [t.loss for t in taskset.tasks])
        if config.multitask.descriptors != "onehot":
            settings.setdefault("descriptor_size", int(taskset.descriptors.shape[1]))

    def training_items(self, train_set, config) -> TaskBatchSampler:
        """``train.meta_batch_size`` distinct tasks per step, ``[multitask] items_per_task`` images each,
        from the training part of every task's images; the task set's descriptors go into the network."""
        t, m = config.train, config.multitask
        for key in TRAIN_AUGMENTATIONS:
            if getattr(t, key):
                raise ValueError(f"train.{key} = {getattr(t, key)} moves the images of few-shot episodes; multi-task "
                                 "training draws task batches, which it does not apply to: set it to 0")
        taskset = taskset_from_config(config, train_set)
        self.use_descriptors(taskset.descriptors)
        return TaskBatchSampler(taskset.holdout("train"), t.meta_batch_size, m.items_per_task, seed=t.seed,
                                steps=t.steps)

    def use_descriptors(self, descriptors: torch.Tensor) -> None:
        z = self.net.descriptors
        if tuple(descriptors.shape) != tuple(z.shape):
            raise ValueError(f"task descriptors of shape {tuple(descriptors.shape)} for a network built for "
                             f"{tuple(z.shape)} (tasks, descriptor size)")
        with torch.no_grad():
            z.copy_(descriptors)

    def as_learner(self) -> FineTuned:
        """Few-shot transfer: the frozen trunk's features, a new head fitted on each support set."""
        if self.net.sharing == "independent":
            raise ValueError("independent networks share no trunk to transfer to a new task")
        return FineTuned(self.backbone, **self.fit, bn=self.bn)

    def task_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``batch.task``'s loss on its batch, and its outputs."""
        out = self.net(batch.inputs, batch.task)
        if self.losses[batch.task] == "regression":
            return F.mse_loss(out, batch.targets), out
        return F.cross_entropy(out, batch.targets), out

    def meta_loss(self, batches: Sequence[TaskBatch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``sum_i w_i L_i`` over the step's tasks, plus the soft-sharing penalty; metrics: that
        objective and the accuracy over the classification tasks' items."""
        losses, correct, total = [], 0, 0
        for batch in batches:
            loss, out = self.task_loss(batch)
            losses.append(loss)
            if self.losses[batch.task] == "classification":
                correct = correct + (out.argmax(-1) == batch.targets).sum()
                total += len(batch.targets)
        tasks = torch.tensor([b.task for b in batches], device=losses[0].device)
        objective = self.weighting(torch.stack(losses), tasks, shared=self.net.last_shared_weight())
        if self.soft_sharing:
            objective = objective + soft_sharing_penalty(self.net.towers, self.soft_sharing)
        accuracy = correct.detach().float() / total if total else torch.tensor(float("nan"))
        return objective, {"loss": objective.detach(), "accuracy": accuracy}
