"""The Learner contract: a learner maps a support set to a classifier."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import EpisodeSampler
from ..episode import Episode, LabeledSet
from ..objective import Objective

Classifier = Callable[[torch.Tensor], torch.Tensor]  # inputs (n, ...) -> logits (n, ways)


class Learner(Objective):
    """Base class of every few-shot learner: the objective whose training items are episodes.

    Subclasses implement ``adapt(support) -> classifier``. ``adapt`` sees only the support set
    (so no learner can use query labels) and mutates no module state: anything it learns from
    the support set lives in the returned classifier. ``forward`` and ``meta_loss`` are shared;
    a learner may override ``forward`` when it computes the same logits faster, and ``loss`` when
    its paper trains with another loss.

    Learners never own optimisers, devices or progress bars: the trainer does. ``bn`` is the
    BatchNorm mode used when evaluating (see :class:`~metazoo.objective.Objective`).
    """

    gathers_on_device = True  # EpisodeSampler gathers episodes where the images are (FewShotDataset.to)

    def __init__(self, backbone: nn.Module, bn: str = "running") -> None:
        super().__init__(bn)
        self.backbone = backbone

    @classmethod
    def resolve_settings(cls, settings: dict, config, train_set) -> None:
        """A learner with a head of fixed size takes ``ways``: filled from ``train.ways``."""
        from ..registry import accepted_kwargs

        if "ways" in accepted_kwargs(cls):
            settings.setdefault("ways", config.train.ways)

    @classmethod
    def check_config(cls, config, name: str | None = None) -> None:
        """Also: a learner with a head of fixed size (``ways``) takes episodes of that many classes only, so
        ``train.ways`` and ``eval.ways`` (the validation and test episodes) must equal ``learner.ways`` (which
        defaults to ``train.ways``); otherwise the first validation, or the test after the whole training,
        would fail."""
        from ..registry import accepted_kwargs

        super().check_config(config, name)
        if "ways" not in accepted_kwargs(cls):
            return
        fixed = config.learner.get("ways", config.train.ways)
        for setting, ways in (("train.ways", config.train.ways), ("eval.ways", config.eval.ways)):
            if ways != fixed:
                raise ValueError(f"learner {name or cls.__name__!r} classifies into learner.ways = {fixed} classes, "
                                 f"so its episodes must be {fixed}-way, and {setting} = {ways}: set {setting} = "
                                 f"{fixed}, or use a {ways}-way model")

    def training_items(self, train_set, config) -> EpisodeSampler:
        """Seeded ``train.ways``-way episodes of the training split, ``train.steps`` meta-batches' worth, their
        images turned by up to ``train.rotate`` degrees and moved by up to ``train.translate`` pixels."""
        t = config.train
        if config.multitask.tasks:
            raise ValueError(f"[multitask] tasks is set, but learner {config.learner.get('name')!r} trains on "
                             "episodes: multi-task training is [learner] name = \"multitask\"")
        return EpisodeSampler(train_set, t.ways, t.shots, t.queries, seed=t.seed, episodes=t.steps * t.meta_batch_size,
                              translate=t.translate, rotate=t.rotate)

    def as_learner(self) -> "Learner":
        return self

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
