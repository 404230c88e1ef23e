"""Black-box learners: a sequence model reads the labelled support set and answers the queries.

The sequence view of an episode: the support items in a random order, each embedded by the
backbone and joined to its one-hot label, then one query joined to a null (all-zero) label. Each
query gets its own sequence (the shared support prefix and itself), and every model here is
causal, so a query sees the support set and nothing of the other queries, and no query label
is ever an input. The logits are the model's output at the query position. The prefix runs once
per episode (:meth:`SequenceLearner.prefix_state`) and every query is a one-step continuation of
what it left (:meth:`SequenceLearner.continue_from`): the LSTM's and MANN's state, SNAIL's layer
inputs and attention keys and values.

Learners: :class:`RecurrentLearner` here (an LSTM, the simplest black-box learner),
:class:`~metazoo.learners.mann.MANN` (Santoro et al. 2016: an LSTM controller with an external
memory written by least-recently-used access) and :class:`~metazoo.learners.snail.SNAIL` (Mishra et
al. 2018: causal temporal convolutions and causal attention).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import episode_seed, from_host
from ..episode import Episode, LabeledSet
from .base import Classifier, Learner


class SequenceLearner(Learner):
    """A learner whose ``sequence`` model maps (B, T, features + ways) to logits (B, T, ways), causally.

    Args:
        backbone: embedding network with ``feature_size``.
        ways: classes per episode (size of the label inputs and of the outputs).
        order_seed: seed of the random orders. In eval mode the support order is the fixed one
            of ``order_seed`` (and the online protocol's order is seeded by the episode's index);
            in training mode an episode's support (or online) order comes from a generator seeded
            by ``(order_seed, episode.index)``, a pure function of the episode, so a resumed run
            draws the orders a straight run drew whatever torch's global generator holds.
            ``adapt(support)``, which sees no episode, uses the order of ``order_seed`` in both modes.
        online: MANN's protocol. Every item of a sequence is paired with the label of the item
            before it (a null label first), and the model predicts each item's own label. Training
            then uses all of an episode's items (support and query, in a random order) as one
            sequence with a loss at every step; an episodic query is the step after the support
            set, paired with the last support label. Off: each support item is paired with its
            own label and the query with a null label.
        embed: which images the backbone embeds as one batch while training, which is what its
            BatchNorm normalises over: ``"sets"`` (each episode's support set, then its query set,
            as :meth:`scored_logits` and every test embed them) or ``"step"`` (all the images of
            the step's episodes at once, as a public SNAIL reimplementation does). Evaluation
            always embeds by sets; the running statistics it uses come from these batches.
    """

    embed_modes = ("sets", "step")

    def __init__(self, backbone: nn.Module, ways: int = 5, order_seed: int = 0, online: bool = False,
                 bn: str = "running", embed: str = "sets") -> None:
        super().__init__(backbone, bn)
        if embed not in self.embed_modes:
            raise ValueError(f"learner.embed = {embed!r} is not a way to embed a training step's images; valid: "
                             f"{', '.join(self.embed_modes)}")
        self.ways, self.order_seed, self.online, self.embed = ways, order_seed, online, embed
        self.input_size = backbone.feature_size + ways

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prefix_state(self, context: torch.Tensor):
        """What the steps after each prefix of ``context`` (B, T, features + ways: B episodes' support
        sequences) need of it, computed once per episode. This default keeps the prefixes themselves, so
        that :meth:`continue_from` re-runs them with every step: a model that implements only
        :meth:`sequence` works unchanged, at that cost."""
        return context

    def continue_from(self, state, steps: torch.Tensor) -> torch.Tensor:
        """Logits (B, n, ways) of ``steps`` (B, n, features + ways): each of episode b's n steps read as the
        next step after prefix b of the batch whose :meth:`prefix_state` is ``state`` (n one-step
        continuations of each of B sequences)."""
        batch, n, length = len(steps), steps.shape[1], state.shape[1]
        prefixes = state[:, None].expand(batch, n, *state.shape[1:])
        sequences = torch.cat([prefixes, steps[:, :, None]], 2).reshape(batch * n, length + 1, -1)
        return self.sequence(sequences)[:, -1].view(batch, n, -1)

    def support_order(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random order (n,) of ``n`` items (the support set's; online, all the episode's) drawn from
        ``generator``, else the fixed order of ``order_seed``."""
        generator = generator if generator is not None else torch.Generator().manual_seed(self.order_seed)
        return from_host(torch.randperm(n, generator=generator), device)

    def episode_generator(self, episode: Episode) -> torch.Generator:
        """The generator of a training episode's random order, seeded by ``(order_seed, episode.index)``
        (so episodes built by hand, all of index -1, share one order)."""
        return torch.Generator().manual_seed(episode_seed(self.order_seed, episode.index))

    def _check(self, items: LabeledSet) -> None:
        if items.ways != self.ways:
            raise ValueError(f"{type(self).__name__} was built for {self.ways}-way episodes (learner.ways); "
                             f"this episode is {items.ways}-way")

    def labelled(self, items: LabeledSet, order: torch.Tensor, offset: bool,
                 features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items in ``order`` as sequence steps (n, features + ways), and the label input of the step
        after them (ways,): each item with its own label and then a null one, or (``offset``) each
        with the label of the item before it (a null one first) and then the last label. ``features``:
        the items' embeddings in their own order, if already computed (else the backbone embeds them here,
        as one batch)."""
        self._check(items)
        features = self.backbone(items.inputs[order]) if features is None else features[order]
        labels = F.one_hot(items.labels[order], self.ways).to(features.dtype)
        null = labels.new_zeros(1, self.ways)
        if not offset:
            return torch.cat([features, labels], -1), null[0]
        return torch.cat([features, torch.cat([null, labels[:-1]])], -1), labels[-1]

    def context(self, support: LabeledSet, generator: torch.Generator | None = None,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The support part of the sequence view, in a random order (:meth:`support_order`), and the
        queries' label input (``features``: as :meth:`labelled` takes them)."""
        order = self.support_order(len(support), support.inputs.device, generator)
        return self.labelled(support, order, self.online, features)

    def adapt(self, support: LabeledSet) -> Classifier:
        """The classifier of ``support`` in the fixed order of ``order_seed`` (no episode, no seed of its own)."""
        return self.classifier(support)

    def forward(self, episode: Episode) -> torch.Tensor:
        """Logits of the query inputs (n_query, ways); the support order is the episode's own while training."""
        return self.classifier(episode.support, self.support_generator(episode))(episode.query.inputs)

    def support_generator(self, episode: Episode) -> torch.Generator | None:
        """The episode's own support order while training; None (the fixed order) in eval mode."""
        return self.episode_generator(episode) if self.training else None

    def query_steps(self, inputs: torch.Tensor, label: torch.Tensor,
                    features: torch.Tensor | None = None) -> torch.Tensor:
        """Query images as sequence steps (n, features + ways), each joined to the queries' label input
        (``features``: their embeddings, if already computed)."""
        features = self.backbone(inputs) if features is None else features
        return torch.cat([features, label.expand(len(features), -1)], -1)

    def classifier(self, support: LabeledSet, generator: torch.Generator | None = None) -> Classifier:
        """The query classifier: each query read after the support sequence in the order ``generator`` draws.
        The support sequence runs once, here; each query continues from its state."""
        context, label = self.context(support, generator)
        state = self.prefix_state(context[None])

        def classify(inputs: torch.Tensor) -> torch.Tensor:
            return self.continue_from(state, self.query_steps(inputs, label)[None])[0]
        return classify

    def online_logits(self, items: LabeledSet,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MANN's protocol on ``items`` in a random order (from ``generator``, else the fixed one of
        ``order_seed``): logits (n, ways) at every step, each step given the previous step's label,
        and the labels in that order (n,)."""
        steps, labels = self.online_steps(items, generator)
        return self.sequence(steps[None])[0], labels

    def online_steps(self, items: LabeledSet, generator: torch.Generator | None = None,
                     features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence :meth:`online_logits` reads, (n, features + ways), and its labels (n,)."""
        order = self.support_order(len(items), items.inputs.device, generator)
        return self.labelled(items, order, True, features)[0], items.labels[order]

    def online_generator(self, episode: Episode) -> torch.Generator:
        """An episode's online order: its own while training, seeded by its index in eval mode (as the
        online protocol does)."""
        return self.episode_generator(episode) if self.training else torch.Generator().manual_seed(episode.index)

    def scored_logits(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Episodic (the query's logits), or with ``online`` every step of the episode's whole
        sequence (support and query items together, in a random order: the episode's own while
        training, seeded by its index in eval mode as the online protocol does)."""
        if not self.online:
            return super().scored_logits(episode)
        return self.online_logits(all_items(episode), self.online_generator(episode))

    def meta_loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The meta-batch's episodes run through the sequence model as one batch: the loss, metrics and
        gradients of :meth:`Learner.meta_loss` (one episode at a time, the mean of their losses), to float
        rounding (tested). With ``embed = "sets"`` each episode's images are embedded as
        :meth:`scored_logits` embeds them (its support set, then its queries, each a batch of its own, so
        BatchNorm sees the same batches); with ``"step"`` all the episodes' images are one batch.
        Online, the episodes' sequences are one (B, T) batch; episodic, the B support prefixes run as one
        batch (:meth:`prefix_state`) and every query continues from its own episode's
        (:meth:`continue_from`). Episodes of different sizes go one at a time (by sets)."""
        if len({(len(e.support), len(e.query)) for e in episodes}) > 1 or \
                (len(episodes) < 2 and self.embed == "sets"):
            return super().meta_loss(episodes)
        features = [None] * len(episodes)
        if self.embed == "step":  # each episode's support images, then its queries, in episode order
            inputs = torch.cat([x for e in episodes for x in (e.support.inputs, e.query.inputs)])
            features = self.backbone(inputs).split(len(episodes[0].support) + len(episodes[0].query))
        if self.online:
            steps, labels = zip(*(self.online_steps(all_items(e), self.online_generator(e), f)
                                  for e, f in zip(episodes, features)))
            logits = self.sequence(torch.stack(steps))  # (B, T, ways), every step scored
        else:
            contexts, queries, labels = [], [], []
            for e, f in zip(episodes, features):
                n = len(e.support)
                context, label = self.context(e.support, self.support_generator(e), None if f is None else f[:n])
                contexts.append(context)
                queries.append(self.query_steps(e.query.inputs, label, None if f is None else f[n:]))
                labels.append(e.query.labels)
            logits = self.continue_from(self.prefix_state(torch.stack(contexts)), torch.stack(queries))  # (B, k, ways)
        loss = torch.stack([self.loss(lg, lb) for lg, lb in zip(logits, labels)]).mean()
        accuracy = (logits.argmax(-1) == torch.stack(labels)).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy.detach()}


def all_items(episode: Episode) -> LabeledSet:
    """An episode's support and query items as one labelled set."""
    return LabeledSet(torch.cat([episode.support.inputs, episode.query.inputs]),
                      torch.cat([episode.support.labels, episode.query.labels]), episode.ways)


def presentation_index(labels: torch.Tensor) -> torch.Tensor:
    """For each step, how many times its class has been shown so far, itself included (1, 2, ...)."""
    seen = F.one_hot(labels).cumsum(0)
    return seen.gather(1, labels[:, None])[:, 0]


class RecurrentLearner(SequenceLearner):
    """An LSTM over (embedding, label) pairs with a linear read-out: the plain black-box baseline.

    No bfloat16 autocast (``train.amp = "off"`` only): the LSTM carries its state through every step of
    a sequence, so bfloat16's rounding of the gates compounds with the sequence length (SNAIL, whose
    convolutions and attention read the sequence without a carried state, takes ``"bf16"``).
    """

    amp_modes = ("off",)

    def __init__(self, backbone: nn.Module, ways: int = 5, hidden: int = 256, layers: int = 1,
                 order_seed: int = 0, online: bool = False, bn: str = "running", embed: str = "sets") -> None:
        super().__init__(backbone, ways, order_seed, online, bn, embed)
        self.lstm = nn.LSTM(self.input_size, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, ways)

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(inputs)[0])

    def prefix_state(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM's (h, c), each (layers, B, hidden), after each of ``context`` (B, T, features + ways)."""
        return self.lstm(context)[1]

    def continue_from(self, state: tuple[torch.Tensor, torch.Tensor], steps: torch.Tensor) -> torch.Tensor:
        batch, n = steps.shape[:2]
        h, c = (s.repeat_interleave(n, 1) for s in state)  # (layers, B * n, hidden): episode b's state n times
        return self.out(self.lstm(steps.reshape(batch * n, 1, -1), (h, c))[0][:, -1]).view(batch, n, -1)
