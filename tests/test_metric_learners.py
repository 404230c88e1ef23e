"""Matching Networks and Relation Networks: their maths by hand, their invariances, their options."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metazoo import create_learner
from metazoo.backbones import Conv4
from metazoo.episode import Episode, LabeledSet
from metazoo.learners import MatchingNet, RelationNet

from .conftest import overfits
from .test_learners import BACKBONE, episode

RELATION_BACKBONE = {**BACKBONE, "downsample_blocks": 2}  # the paper's embedding: maps of 8 x 4 x 4


class Flatten(nn.Module):
    def __init__(self, feature_size: int) -> None:
        super().__init__()
        self.feature_size = feature_size

    def forward(self, x):
        return x.flatten(1)


def relabel(labeled: LabeledSet, order: torch.Tensor) -> LabeledSet:
    return LabeledSet(labeled.inputs[order], labeled.labels[order], labeled.ways)


# ---- Matching Networks ----------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_matching_logits_equal_a_hand_computation_of_the_attention_kernel(scale):
    support = LabeledSet(torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 1, 2, 0]), 3)
    query = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    # cosines of query (1,0) to the support: 1, 0, 1/sqrt2, 1; of query (0,5): 0, 1, 1/sqrt2, 0
    r = 1 / math.sqrt(2)

    def e(cosine):
        return math.exp(scale * cosine)

    z0, z1 = 2 * e(1) + e(0) + e(r), 2 * e(0) + e(1) + e(r)
    probabilities = torch.tensor([[2 * e(1) / z0, e(0) / z0, e(r) / z0],
                                  [2 * e(0) / z1, e(1) / z1, e(r) / z1]])
    learner = MatchingNet(Flatten(2), scale=scale)
    torch.testing.assert_close(learner.adapt(support)(query), probabilities.log())
    ep = Episode(support, LabeledSet(query, torch.tensor([0, 2]), 3))
    torch.testing.assert_close(learner(ep), probabilities.log())
    loss, metrics = learner.meta_loss([ep])
    torch.testing.assert_close(loss, -(probabilities[0, 0].log() + probabilities[1, 2].log()) / 2)
    assert float(metrics["accuracy"]) == 0.5  # query 1 is closest to class 1, labelled 2


def test_matching_support_normalisation_lets_the_query_norm_set_the_temperature():
    """normalize="support": the similarities are dot products with the unit support vectors, so the query
    (0, 5) attends with five times the sharpness of its unit direction; "both" ignores its norm."""
    support = LabeledSet(torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([0, 1, 1]), 2)
    query = torch.tensor([[0.0, 5.0]])
    r = 1 / math.sqrt(2)
    z = math.exp(0.0) + math.exp(5.0) + math.exp(5 * r)  # 5 x the cosines 0, 1, 1/sqrt2
    expected = torch.tensor([[math.exp(0.0) / z, (math.exp(5.0) + math.exp(5 * r)) / z]]).log()
    torch.testing.assert_close(MatchingNet(Flatten(2), normalize="support").adapt(support)(query), expected)
    z = math.exp(0.0) + math.exp(1.0) + math.exp(r)
    both = torch.tensor([[math.exp(0.0) / z, (math.exp(1.0) + math.exp(r)) / z]]).log()
    torch.testing.assert_close(MatchingNet(Flatten(2)).adapt(support)(query), both)
    with pytest.raises(ValueError, match="learner.normalize='query': valid values are 'both', 'support'"):
        MatchingNet(Flatten(2), normalize="query")


def test_matching_logits_are_clamped_where_a_class_gets_no_attention():
    learner = MatchingNet(Flatten(2), scale=1e4)  # attention all on the nearest support example
    support = LabeledSet(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), 2)
    logits = learner.adapt(support)(torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(logits).all() and float(logits[0, 1]) == pytest.approx(math.log(1e-8))


def fce_learner(steps=3):
    torch.manual_seed(0)
    return create_learner("matching", backbone=dict(BACKBONE), fce=True, fce_steps=steps)


def test_matching_fce_runs_reaches_every_parameter_and_ignores_query_labels():
    learner = fce_learner()
    ep = episode()
    loss, _ = learner.meta_loss([ep, episode(index=1)])
    loss.backward()
    missing = [n for n, p in learner.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"no gradient reached {missing}"
    assert any(n.startswith("support_context.lstm") for n, _ in learner.named_parameters())

    learner.eval()
    before = copy.deepcopy(learner.state_dict())
    logits = learner(ep)
    assert logits.shape == (len(ep.query), ep.ways) and torch.isfinite(logits).all()
    scrambled = Episode(ep.support, LabeledSet(ep.query.inputs, ep.query.labels.flip(0), ep.ways), ep.classes)
    assert torch.equal(logits, learner(scrambled))
    torch.testing.assert_close(logits, learner.adapt(ep.support)(ep.query.inputs))
    # each query is embedded by the attention LSTM on its own: a subset of queries gets the same logits
    torch.testing.assert_close(logits[::2], learner.adapt(ep.support)(ep.query.inputs[::2]))
    for name, value in learner.state_dict().items():
        assert torch.equal(before[name], value), name


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step from its equations (PyTorch's gate order: input, forget, cell, output)."""
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def run_lstm(lstm, sequence, suffix=""):
    """Hidden states of one direction of ``lstm`` (``suffix="_reverse"``: the backward weights)."""
    weights = [getattr(lstm, f"{w}_l0{suffix}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h, c, outputs = torch.zeros(lstm.hidden_size), torch.zeros(lstm.hidden_size), []
    for x in sequence:
        h, c = lstm_step(x, h, c, *weights)
        outputs.append(h)
    return torch.stack(outputs)


def test_full_context_embeddings_follow_the_papers_equations():
    torch.manual_seed(0)
    d, steps = 4, 3
    learner = MatchingNet(Flatten(d), fce=True, fce_steps=steps)
    support, queries = torch.randn(5, d), torch.randn(2, d)

    # g(x_i, S) = forward state + backward state + g'(x_i)
    lstm = learner.support_context.lstm
    g = support + run_lstm(lstm, support) + run_lstm(lstm, support.flip(0), "_reverse").flip(0)
    torch.testing.assert_close(learner.embed_support(support), g)

    cell = learner.query_context.cell
    h, c = torch.zeros(2, d), torch.zeros(2, d)
    for _ in range(steps):
        readout = torch.softmax(h @ g.T, dim=-1) @ g  # r_{k-1}: attention of h_{k-1} over g(S)
        h_hat, c = lstm_step(torch.cat([queries, readout], -1), h, c, cell.weight_ih, cell.weight_hh,
                             cell.bias_ih, cell.bias_hh)
        h = h_hat + queries
    torch.testing.assert_close(learner.query_context(queries, g), h)

    labels = torch.tensor([0, 0, 1, 1, 2])
    expected = (F.cosine_similarity(h[:, None], g[None], dim=-1).softmax(-1) @ F.one_hot(labels, 3).float()).log()
    logits = learner.adapt(LabeledSet(support, labels, 3))(queries)
    torch.testing.assert_close(logits, expected)


def test_matching_settings_fail_early():
    class NoSize(nn.Module):
        def forward(self, x):
            return x.flatten(1)
    with pytest.raises(TypeError, match="feature_size"):
        MatchingNet(NoSize(), fce=True)
    MatchingNet(NoSize())  # without FCE any embedding works
    with pytest.raises(ValueError, match="fce_steps"):
        MatchingNet(Flatten(2), fce=True, fce_steps=0)


# ---- Relation Networks ----------------------------------------------------------------------------

def relation_learner(backbone=RELATION_BACKBONE):
    torch.manual_seed(0)
    return create_learner("relation", backbone=dict(backbone))


@pytest.mark.parametrize("training", [False, True])
def test_relation_scores_do_not_depend_on_support_order(training):
    learner = relation_learner().train(training)
    ep = episode(ways=3, shots=3, queries=2)
    scores = learner(ep)
    assert scores.shape == (len(ep.query), 3) and ((scores >= 0) & (scores <= 1)).all()

    within = torch.tensor([2, 1, 0, 4, 5, 3, 8, 6, 7])  # each class's examples reordered
    across = torch.randperm(len(ep.support), generator=torch.Generator().manual_seed(0))  # classes interleaved
    for order in (within, across):
        shuffled = Episode(relabel(ep.support, order), ep.query, ep.classes)
        torch.testing.assert_close(learner(shuffled), scores, rtol=1e-5, atol=1e-6)

    # renaming the classes permutes the score columns the same way
    rename = torch.tensor([2, 0, 1])
    renamed = Episode(LabeledSet(ep.support.inputs, rename[ep.support.labels], 3), ep.query, ep.classes)
    torch.testing.assert_close(learner(renamed)[:, rename], scores, rtol=1e-5, atol=1e-6)


def test_relation_scores_equal_the_relation_module_on_summed_class_maps_by_hand():
    learner = relation_learner().eval()
    ep = episode(ways=3, shots=2, queries=2)
    maps = learner.backbone(ep.support.inputs).view(len(ep.support), 8, 4, 4)
    queries = learner.backbone(ep.query.inputs).view(len(ep.query), 8, 4, 4)
    expected = torch.empty(len(ep.query), 3)
    for k in range(3):
        class_map = maps[ep.support.labels == k].sum(0)  # K-shot: the sum of the class's support maps
        for i, query in enumerate(queries):
            pair = torch.cat([class_map, query])[None]  # (class, query) channels: the paper's input
            expected[i, k] = learner.relation.head(learner.relation.blocks(pair).flatten(1))[0, 0]
    torch.testing.assert_close(learner(ep), expected)
    torch.testing.assert_close(learner.adapt(ep.support)(ep.query.inputs), expected)


def concatenated_pair_scores(module, class_maps, query_maps):
    """The paper's relation module: every (query, class) pair's maps concatenated, then the blocks."""
    n, ways = len(query_maps), len(class_maps)
    pairs = torch.cat([class_maps[None].expand(n, -1, -1, -1, -1), query_maps[:, None].expand(-1, ways, -1, -1, -1)],
                      dim=2).flatten(0, 1)  # pair i * ways + k: query i with class k
    return module.head(module.blocks(pairs).flatten(1)).view(n, ways)


@pytest.mark.parametrize("training", [True, False])
def test_relation_module_factored_first_conv_equals_the_concatenated_pairs_with_gradients(training):
    # the module convolves each class map and each query map once and sums per pair; the paper's
    # concatenation gives the same scores and the same gradients, BatchNorm's batch statistics included
    torch.manual_seed(0)
    module = RelationNet(Conv4(downsample_blocks=2)).relation.train(training)
    if not training:  # running statistics that are not the initial 0 / 1
        module.blocks[0][1].running_mean.uniform_(-1, 1), module.blocks[0][1].running_var.uniform_(0.5, 2)
    class_maps = torch.randn(5, 64, 7, 7, requires_grad=True)
    query_maps = torch.randn(7, 64, 7, 7, requires_grad=True)
    fast = module(class_maps, query_maps)
    grads = torch.autograd.grad(fast.square().sum(), [class_maps, query_maps, *module.parameters()])
    reference = concatenated_pair_scores(module, class_maps, query_maps)
    expected = torch.autograd.grad(reference.square().sum(), [class_maps, query_maps, *module.parameters()])
    assert fast.shape == (7, 5)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_relation_loss_is_the_mean_squared_error_against_one_hot_labels():
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.6, 0.5]])
    labels = torch.tensor([0, 2])
    # (0.1^2 + 0.2^2 + 0.1^2 + 0.3^2 + 0.6^2 + 0.5^2) / 6
    learner = relation_learner().eval()
    torch.testing.assert_close(learner.loss(scores, labels), torch.tensor(0.76 / 6))
    ep = episode()
    loss, _ = learner.meta_loss([ep])
    scores = learner(ep)
    one_hot = torch.zeros_like(scores)
    one_hot[torch.arange(len(ep.query)), ep.query.labels] = 1.0
    torch.testing.assert_close(loss, ((scores - one_hot) ** 2).mean())


def test_relation_with_the_papers_embedding_trains_every_parameter_and_overfits_an_episode():
    learner = relation_learner()
    loss, _ = learner.meta_loss([episode(), episode(index=1)])
    loss.backward()
    missing = [n for n, p in learner.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"no gradient reached {missing}"
    # relation blocks pool 4x4 -> 2x2 -> 1x1, so the first fully connected layer reads 64 values
    assert learner.relation.head[0].in_features == 64

    ep = episode(ways=3, shots=2, queries=2)
    assert overfits(learner, ep)


def test_relation_needs_feature_maps():
    with pytest.raises(TypeError, match="feature_shape"):
        RelationNet(Flatten(4))


def test_relation_module_sizes_follow_the_embedding():
    # the paper's Omniglot embedding: 64 x 7 x 7 maps, pooled to 1x1 -> 64 inputs to the first FC layer
    omniglot = RelationNet(Conv4(downsample_blocks=2))
    assert omniglot.feature_shape == (64, 7, 7) and omniglot.relation.head[0].in_features == 64
    # 84x84 RGB: 64 x 21 x 21 maps, pooled to 5x5
    natural = RelationNet(Conv4(in_channels=3, image_size=84, downsample_blocks=2))
    assert natural.relation.head[0].in_features == 64 * 5 * 5
    scores = natural.eval()(Episode(LabeledSet(torch.randn(2, 3, 84, 84), torch.tensor([0, 1]), 2),
                                    LabeledSet(torch.randn(3, 3, 84, 84), torch.tensor([0, 1, 1]), 2)))
    assert scores.shape == (3, 2)


def test_conv4_downsample_blocks_keeps_the_default_network_and_reports_map_shapes():
    default, explicit = Conv4(), Conv4(downsample_blocks=4)
    assert str(default) == str(explicit) and default.feature_shape == (64, 1, 1) and default.feature_size == 64
    assert [tuple(p.shape) for p in default.state_dict().values()] == \
           [tuple(p.shape) for p in explicit.state_dict().values()]
    for kwargs, shape in [({"downsample_blocks": 2}, (64, 7, 7)), ({"downsample_blocks": 0}, (64, 28, 28)),
                          ({"pooling": False, "downsample_blocks": 2}, (64, 7, 7)), ({"image_size": 84}, (64, 5, 5))]:
        net = Conv4(**kwargs).eval()
        side = kwargs.get("image_size", 28)
        out = net.blocks(torch.zeros(1, 1, side, side))
        assert tuple(out.shape[1:]) == net.feature_shape == shape, kwargs
        assert net(torch.zeros(1, 1, side, side)).shape == (1, net.feature_size)
    with pytest.raises(ValueError, match="downsample_blocks"):
        Conv4(downsample_blocks=5)


def test_relation_says_when_the_backbone_was_built_for_other_inputs():
    learner = RelationNet(Conv4(width=8, image_size=16, downsample_blocks=2))
    with pytest.raises(ValueError, match="image_size = 28"):
        learner.adapt(LabeledSet(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]), 2))
