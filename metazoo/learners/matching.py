"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..episode import Episode, LabeledSet
from .base import Learner

PROBABILITY_FLOOR = 1e-8  # class probabilities are clamped here before the log, so logits stay finite


NORMALIZE = ("both", "support")  # which side of the cosine is divided by its norm


def cosine_attention(queries: torch.Tensor, support: torch.Tensor, scale: float = 1.0,
                     normalize: str = "both") -> torch.Tensor:
    """Softmax over support examples of scaled cosine similarities: (n, d), (m, d) -> (n, m). With
    ``normalize="support"`` only the support embeddings are divided by their norms, so a query's own norm
    scales its similarities (a temperature the embedding learns); :class:`MatchingNet` checks the value once."""
    queries = F.normalize(queries, dim=-1) if normalize == "both" else queries
    similarities = queries @ F.normalize(support, dim=-1).T  # (n, m)
    return (scale * similarities).softmax(-1)


def attention_log_probs(attention: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Log of the attention-weighted sum of one-hot support labels: (n, m), (m,) -> (n, ways)."""
    probabilities = attention @ F.one_hot(labels, ways).to(attention.dtype)  # (n, ways)
    return probabilities.clamp_min(PROBABILITY_FLOOR).log()


class SupportContext(nn.Module):
    """Full context embedding g: a bidirectional LSTM over the support set, with a skip connection.

    ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)``, reading the support set in the order given.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(size, size, bidirectional=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(m, d) -> (m, d)."""
        outputs, _ = self.lstm(features)  # unbatched sequence: (m, 2d)
        forwards, backwards = outputs.chunk(2, dim=-1)
        return features + forwards + backwards


class QueryAttentionLSTM(nn.Module):
    """Full context embedding f: an LSTM that reads the support set ``steps`` times for each query.

    Step k: ``r = softmax(h_{k-1} . g(S)) g(S)``; ``h^, c = LSTM(f'(x), [h_{k-1}, r], c)``;
    ``h_k = h^ + f'(x)``, from ``h_0 = c_0 = 0``; the embedding is ``h_K``. The read-out joins the
    previous hidden state as in the paper, which is an LSTM cell fed ``[f'(x), r]``.
    Queries are embedded independently of each other.
    """

    def __init__(self, size: int, steps: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2 * size, size)
        self.steps = steps

    def forward(self, queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """queries f'(x) (n, d), support g(S) (m, d) -> (n, d)."""
        hidden, cell = torch.zeros_like(queries), torch.zeros_like(queries)
        for _ in range(self.steps):
            readout = (hidden @ support.T).softmax(-1) @ support  # (n, d)
            hidden, cell = self.cell(torch.cat([queries, readout], dim=-1), (hidden, cell))
            hidden = hidden + queries
        return hidden


class MatchingClassifier:
    """Logits of inputs against the (context-embedded) support set of one episode."""

    def __init__(self, learner: "MatchingNet", support_features: torch.Tensor, support: LabeledSet) -> None:
        self.learner, self.support_features, self.support = learner, support_features, support

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.learner.classify(self.learner.backbone(inputs), self.support_features, self.support)


class MatchingNet(Learner):
    """Matching Networks (Vinyals et al. 2016).

    A query's class distribution is an attention-weighted sum of the support set's one-hot labels,
    the attention a softmax over the cosine similarities between the query's embedding f(x) and
    every support embedding g(x_i); training minimises the query cross-entropy of that
    distribution, episode by episode (the logits are its log, clamped at 1e-8). Without full
    context embeddings f = g = the backbone. With ``fce=True``, g runs a bidirectional LSTM over
    the support embeddings and f an attention LSTM that reads g(S) for ``fce_steps`` steps.
    As in ProtoNet, training embeds support and query in one batch; in eval mode the logits
    equal ``adapt`` followed by classification.

    Args:
        fce: full context embeddings (the paper's mini-ImageNet model); needs the backbone's
            ``feature_size``.
        fce_steps: K, the attention LSTM's processing steps (5 is our choice).
        scale: multiplies the cosine similarities before the softmax. 1.0 is the paper's kernel;
            cosines lie in [-1, 1] (in [0, 1] for ReLU features), so its attention stays soft;
            larger values (e.g. 10) sharpen it, as in later cosine-similarity classifiers.
        normalize: ``"both"`` (the paper's cosine) or ``"support"``: only the support embeddings are
            normalised, the query's norm then acting as a temperature the embedding learns (what
            widely used reimplementations of the paper compute).
    """

    def __init__(self, backbone: nn.Module, fce: bool = False, fce_steps: int = 5, scale: float = 1.0,
                 normalize: str = "both", bn: str = "running") -> None:
        super().__init__(backbone, bn)
        if normalize not in NORMALIZE:
            raise ValueError(f"learner.normalize={normalize!r}: valid values are {', '.join(map(repr, NORMALIZE))}")
        self.fce, self.scale, self.normalize = fce, scale, normalize
        if fce_steps < 1:
            raise ValueError(f"fce_steps={fce_steps}: the attention LSTM needs at least one processing step")
        if fce:
            size = getattr(backbone, "feature_size", None)
            if size is None:
                raise TypeError("Matching Networks with fce=True size their LSTMs from the backbone's "
                                "feature_size attribute; add one to the backbone (conv4 has it) or use fce=false")
            self.support_context = SupportContext(size)
            self.query_context = QueryAttentionLSTM(size, fce_steps)

    def embed_support(self, features: torch.Tensor) -> torch.Tensor:
        """g(S): backbone features (m, d) -> (m, d)."""
        return self.support_context(features) if self.fce else features

    def classify(self, features: torch.Tensor, support_features: torch.Tensor, support: LabeledSet) -> torch.Tensor:
        """Query backbone features (n, d) and g(S) (m, d) -> logits (n, ways)."""
        if self.fce:
            features = self.query_context(features, support_features)
        attention = cosine_attention(features, support_features, self.scale, self.normalize)  # (n, m)
        return attention_log_probs(attention, support.labels, support.ways)

    def adapt(self, support: LabeledSet) -> MatchingClassifier:
        return MatchingClassifier(self, self.embed_support(self.backbone(support.inputs)), support)

    def forward(self, episode: Episode) -> torch.Tensor:
        support, query = episode.support, episode.query
        features = self.backbone(torch.cat([support.inputs, query.inputs]))
        return self.classify(features[len(support):], self.embed_support(features[: len(support)]), support)
