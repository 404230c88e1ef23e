"""Black-box learners: a sequence model reads the labelled support set and answers the queries.

The sequence view of an episode: the support items in a random order, each embedded by the
backbone and joined to its one-hot label, then one query joined to a null (all-zero) label. Each
query gets its own sequence (the shared support prefix and itself), and every model here is
causal, so a query sees the support set and nothing of the other queries, and no query label
is ever an input. The logits are the model's output at the query position.

Learners: :class:`RecurrentLearner` (an LSTM, the simplest black-box learner), :class:`MANN`
(Santoro et al. 2016: an LSTM controller with an external memory written by least-recently-used
access) and :class:`SNAIL` (Mishra et al. 2018: causal temporal convolutions and causal
attention).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import episode_seed
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
    """

    def __init__(self, backbone: nn.Module, ways: int = 5, order_seed: int = 0, online: bool = False,
                 bn: str = "running") -> None:
        super().__init__(backbone, bn)
        self.ways, self.order_seed, self.online = ways, order_seed, online
        self.input_size = backbone.feature_size + ways

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def support_order(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random order (n,) of ``n`` items (the support set's; online, all the episode's) drawn from
        ``generator``, else the fixed order of ``order_seed``."""
        generator = generator if generator is not None else torch.Generator().manual_seed(self.order_seed)
        return torch.randperm(n, generator=generator).to(device)

    def episode_generator(self, episode: Episode) -> torch.Generator:
        """The generator of a training episode's random order, seeded by ``(order_seed, episode.index)``
        (so episodes built by hand, all of index -1, share one order)."""
        return torch.Generator().manual_seed(episode_seed(self.order_seed, episode.index))

    def _check(self, items: LabeledSet) -> None:
        if items.ways != self.ways:
            raise ValueError(f"{type(self).__name__} was built for {self.ways}-way episodes (learner.ways); "
                             f"this episode is {items.ways}-way")

    def labelled(self, items: LabeledSet, order: torch.Tensor, offset: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Items in ``order`` as sequence steps (n, features + ways), and the label input of the step
        after them (ways,): each item with its own label and then a null one, or (``offset``) each
        with the label of the item before it (a null one first) and then the last label."""
        self._check(items)
        features = self.backbone(items.inputs[order])
        labels = F.one_hot(items.labels[order], self.ways).to(features.dtype)
        null = labels.new_zeros(1, self.ways)
        if not offset:
            return torch.cat([features, labels], -1), null[0]
        return torch.cat([features, torch.cat([null, labels[:-1]])], -1), labels[-1]

    def context(self, support: LabeledSet,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The support part of the sequence view, in a random order (:meth:`support_order`), and the
        queries' label input."""
        return self.labelled(support, self.support_order(len(support), support.inputs.device, generator), self.online)

    def adapt(self, support: LabeledSet) -> Classifier:
        """The classifier of ``support`` in the fixed order of ``order_seed`` (no episode, no seed of its own)."""
        return self.classifier(support)

    def forward(self, episode: Episode) -> torch.Tensor:
        """Logits of the query inputs (n_query, ways); the support order is the episode's own while training."""
        generator = self.episode_generator(episode) if self.training else None
        return self.classifier(episode.support, generator)(episode.query.inputs)

    def classifier(self, support: LabeledSet, generator: torch.Generator | None = None) -> Classifier:
        """The query classifier: each query read after the support sequence in the order ``generator`` draws."""
        context, label = self.context(support, generator)

        def classify(inputs: torch.Tensor) -> torch.Tensor:
            features = self.backbone(inputs)
            queries = torch.cat([features, label.expand(len(features), -1)], -1)
            sequences = torch.cat([context.expand(len(queries), *context.shape), queries[:, None]], 1)
            return self.sequence(sequences)[:, -1]
        return classify

    def online_logits(self, items: LabeledSet,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MANN's protocol on ``items`` in a random order (from ``generator``, else the fixed one of
        ``order_seed``): logits (n, ways) at every step, each step given the previous step's label,
        and the labels in that order (n,)."""
        order = self.support_order(len(items), items.inputs.device, generator)
        steps, _ = self.labelled(items, order, offset=True)
        return self.sequence(steps[None])[0], items.labels[order]

    def scored_logits(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Episodic (the query's logits), or with ``online`` every step of the episode's whole
        sequence (support and query items together, in a random order: the episode's own while
        training, seeded by its index in eval mode as the online protocol does)."""
        if not self.online:
            return super().scored_logits(episode)
        generator = self.episode_generator(episode) if self.training else torch.Generator().manual_seed(episode.index)
        return self.online_logits(all_items(episode), generator)


def all_items(episode: Episode) -> LabeledSet:
    """An episode's support and query items as one labelled set."""
    return LabeledSet(torch.cat([episode.support.inputs, episode.query.inputs]),
                      torch.cat([episode.support.labels, episode.query.labels]), episode.ways)


def presentation_index(labels: torch.Tensor) -> torch.Tensor:
    """For each step, how many times its class has been shown so far, itself included (1, 2, ...)."""
    seen = F.one_hot(labels).cumsum(0)
    return seen.gather(1, labels[:, None])[:, 0]


class RecurrentLearner(SequenceLearner):
    """An LSTM over (embedding, label) pairs with a linear read-out: the plain black-box baseline."""

    def __init__(self, backbone: nn.Module, ways: int = 5, hidden: int = 256, layers: int = 1,
                 order_seed: int = 0, online: bool = False, bn: str = "running") -> None:
        super().__init__(backbone, ways, order_seed, online, bn)
        self.lstm = nn.LSTM(self.input_size, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, ways)

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(inputs)[0])


# --- MANN's memory maths (each (batch, ...) tensor; tested against hand computations) -------------
def cosine_weights(keys: torch.Tensor, memory: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Content addressing: softmax over slots of cosine(key, slot). keys (B, H, W), memory (B, N, W) -> (B, H, N)."""
    similarity = F.normalize(keys, dim=-1, eps=eps) @ F.normalize(memory, dim=-1, eps=eps).transpose(1, 2)
    return similarity.softmax(-1)


def usage_update(usage: torch.Tensor, read: torch.Tensor, write: torch.Tensor, gamma: float) -> torch.Tensor:
    """w^u_t = gamma * w^u_{t-1} + sum over heads of (w^r_t + w^w_t). usage (B, N), read and write (B, H, N)."""
    return gamma * usage + read.sum(1) + write.sum(1)


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu: 1 at the ``n`` slots of smallest usage, 0 elsewhere (ties broken by position). (B, N) -> (B, N)."""
    slots = usage.topk(n, dim=-1, largest=False).indices
    return torch.zeros_like(usage).scatter_(-1, slots, 1.0)


def write_weights(previous_read: torch.Tensor, previous_least_used: torch.Tensor,
                  gate: torch.Tensor) -> torch.Tensor:
    """w^w_t = sigmoid(alpha) * w^r_{t-1} + (1 - sigmoid(alpha)) * w^lu_{t-1}.

    previous_read (B, H, N), previous_least_used (B, N), gate alpha (B, H) -> (B, H, N)."""
    g = torch.sigmoid(gate)[..., None]
    return g * previous_read + (1 - g) * previous_least_used[:, None]


class MANN(SequenceLearner):
    """Memory-Augmented Neural Network (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016).

    An LSTM controller reads ``[x_t, label_t, r_{t-1}]``; each of ``heads`` heads emits a key
    ``k_t`` and a write gate ``alpha_t``. Memory ``M`` has ``slots`` rows of ``slot_size``, zero at the
    start of every sequence (episode). Per step, as in the paper:

    - the least-used slot of ``w^u_{t-1}`` is erased, then ``M_t = M_{t-1} + w^w_t^T k_t`` with
      ``w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}`` (least-recently-used access);
    - reads ``w^r_t = softmax(cosine(k_t, M_t))``, ``r_t = w^r_t M_t``;
    - usage ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t``; ``w^lu_t`` marks the ``heads`` least-used slots;
    - logits from ``[h_t, r_t]``.
    """

    def __init__(self, backbone: nn.Module, ways: int = 5, hidden: int = 200, slots: int = 128,
                 slot_size: int = 40, heads: int = 4, gamma: float = 0.95, order_seed: int = 0,
                 online: bool = False, bn: str = "running") -> None:
        super().__init__(backbone, ways, order_seed, online, bn)
        self.hidden, self.slots, self.slot_size, self.heads, self.gamma = hidden, slots, slot_size, heads, gamma
        self.controller = nn.LSTMCell(self.input_size + heads * slot_size, hidden)
        self.keys = nn.Linear(hidden, heads * slot_size)
        self.gates = nn.Linear(hidden, heads)
        self.out = nn.Linear(hidden + heads * slot_size, ways)

    def initial_state(self, batch: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = like.new_zeros
        least = least_used(zeros(batch, self.slots), self.heads)
        return {"h": zeros(batch, self.hidden), "c": zeros(batch, self.hidden),
                "memory": zeros(batch, self.slots, self.slot_size), "reads": zeros(batch, self.heads * self.slot_size),
                "read_weights": zeros(batch, self.heads, self.slots), "usage": zeros(batch, self.slots),
                "least_used": least}

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One time step: x (B, features + ways) -> logits (B, ways), next state."""
        batch = len(x)
        h, c = self.controller(torch.cat([x, state["reads"]], -1), (state["h"], state["c"]))
        keys = self.keys(h).view(batch, self.heads, self.slot_size)
        write = write_weights(state["read_weights"], state["least_used"], self.gates(h))
        erase = least_used(state["usage"], 1)  # the paper zeroes the one least-used slot of w^u_{t-1}
        memory = state["memory"] * (1 - erase)[..., None]
        memory = memory + write.transpose(1, 2) @ keys
        read_weights = cosine_weights(keys, memory)
        reads = (read_weights @ memory).flatten(1)
        usage = usage_update(state["usage"], read_weights, write, self.gamma)
        state = {"h": h, "c": c, "memory": memory, "reads": reads, "read_weights": read_weights, "usage": usage,
                 "least_used": least_used(usage, self.heads)}
        return self.out(torch.cat([h, reads], -1)), state

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        state, outputs = self.initial_state(len(inputs), inputs), []
        for t in range(inputs.shape[1]):
            logits, state = self.step(inputs[:, t], state)
            outputs.append(logits)
        return torch.stack(outputs, 1)


# --- SNAIL's blocks -------------------------------------------------------------------------------
class CausalConv(nn.Module):
    """1-d convolution (kernel 2, dilation d) over time whose output at t sees inputs <= t."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, filters, 2, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, filters, T)
        return self.conv(F.pad(x, (self.dilation, 0)))


class DenseBlock(nn.Module):
    """Gated causal convolution, its output joined to its input: (B, C, T) -> (B, C + filters, T)."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.f, self.g = CausalConv(channels, filters, dilation), CausalConv(channels, filters, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.tanh(self.f(x)) * torch.sigmoid(self.g(x))], 1)


class TCBlock(nn.Module):
    """Dense blocks with dilations 1, 2, 4, ... up to the sequence length: (B, C, T) -> (B, C + k * filters, T)."""

    def __init__(self, channels: int, length: int, filters: int) -> None:
        super().__init__()
        blocks = []
        for i in range(max(1, math.ceil(math.log2(length)))):
            blocks.append(DenseBlock(channels, filters, 2 ** i))
            channels += filters
        self.blocks, self.channels = nn.Sequential(*blocks), channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class AttentionBlock(nn.Module):
    """Causal single-head soft attention, its read joined to its input: (B, C, T) -> (B, C + values, T)."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(channels, key_size), nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale, self.channels = math.sqrt(key_size), channels + value_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.transpose(1, 2)  # (B, T, C)
        scores = self.query(seq) @ self.key(seq).transpose(1, 2) / self.scale  # (B, T, T)
        length = scores.shape[-1]
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        read = scores.masked_fill(future, float("-inf")).softmax(-1) @ self.value(seq)
        return torch.cat([x, read.transpose(1, 2)], 1)


class SNAIL(SequenceLearner):
    """Simple Neural AttentIve Learner (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018).

    Over the embedded support-then-query sequence, the paper's few-shot classification stack:
    attention (keys 64, values 32), TC block (128 filters), attention (256, 128), TC block (128),
    attention (512, 256), then a 1x1 convolution to ``ways`` logits. ``length`` is the longest
    sequence the TC blocks' dilations cover, ``ways * shots + 1`` in the paper (more is harmless;
    less shortens the receptive field of the convolutions, not the attention's).
    """

    def __init__(self, backbone: nn.Module, ways: int = 5, length: int = 26, order_seed: int = 0,
                 filters: int = 128, online: bool = False, bn: str = "running") -> None:
        super().__init__(backbone, ways, order_seed, online, bn)
        channels, layers = self.input_size, []
        for block in ("attention", 64, 32), ("tc",), ("attention", 256, 128), ("tc",), ("attention", 512, 256):
            layer = AttentionBlock(channels, *block[1:]) if block[0] == "attention" else TCBlock(channels, length,
                                                                                                 filters)
            layers.append(layer)
            channels = layer.channels
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Conv1d(channels, ways, 1)

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(inputs.transpose(1, 2))).transpose(1, 2)
