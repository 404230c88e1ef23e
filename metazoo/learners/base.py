"""The Learner contract: a learner maps a support set to a classifier."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..episode import Episode, LabeledSet

Classifier = Callable[[torch.Tensor], torch.Tensor]  # inputs (n, ...) -> logits (n, ways)


class Learner(nn.Module):
    """Base class of every learner.

    Subclasses implement ``adapt(support) -> classifier``. ``adapt`` sees only the support set
    (so no learner can use query labels) and mutates no module state: anything it learns from
    the support set lives in the returned classifier. ``forward`` and ``meta_loss`` are shared;
    a learner may override ``forward`` when it computes the same logits faster, and ``loss`` when
    its paper trains with another loss.

    Learners never own optimisers, devices or progress bars: the trainer does.

    ``trains_on`` says what the trainer feeds ``meta_loss``: ``"episodes"`` (every few-shot
    learner) or ``"tasks"`` (mini-batches of tasks, :class:`~metazoo.multitask.tasks.TaskBatch`,
    for multi-task learning); evaluation on episodes goes through ``adapt`` either way.
    """

    trains_on = "episodes"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def adapt(self, support: LabeledSet) -> Classifier:
        raise NotImplementedError

    def forward(self, episode: Episode) -> torch.Tensor:
        """Logits of the query inputs (n_query, ways)."""
        return self.adapt(episode.support)(episode.query.inputs)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def scored_logits(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits meta-training scores on an episode, and their labels: the query's, unless a
        learner's objective says otherwise (MANN's protocol scores every step of a sequence)."""
        return self(episode), episode.query.labels

    def meta_loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean query loss over a meta-batch, and detached metrics (loss, accuracy)."""
        losses, correct, total = [], 0, 0
        for episode in episodes:
            logits, labels = self.scored_logits(episode)
            losses.append(self.loss(logits, labels))
            correct = correct + (logits.argmax(-1) == labels).sum()
            total += len(labels)
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach(), "accuracy": correct.detach().float() / max(total, 1)}

    def meta_backward(self, episodes: Sequence[Episode]) -> dict[str, torch.Tensor]:
        """Accumulate the gradient of ``meta_loss(episodes)`` into ``.grad``; return its metrics.

        The trainer calls this. A learner may override it to back-propagate part by part (less
        memory), provided the gradients equal those of ``meta_loss(episodes)[0].backward()``.
        """
        loss, stats = self.meta_loss(episodes)
        loss.backward()
        return stats
