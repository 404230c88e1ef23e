"""The Learner contract, over every registered learner, and ProtoNet's maths by hand."""
import copy

import pytest
import torch
from torch import nn

from metazoo import create_learner, list_learners
from metazoo.data import EpisodeSampler
from metazoo.episode import Episode, LabeledSet
from metazoo.learners import ProtoNet
from metazoo.learners import LEARNERS
from metazoo.registry import UnknownNameError, accepted_kwargs

from .conftest import overfits, toy_dataset

BACKBONE = {"name": "conv4", "in_channels": 1, "width": 8, "image_size": 16}


def episode(ways=3, shots=2, queries=3, seed=0, index=0):
    data = toy_dataset(class_sizes=(8,) * 5, side=16)
    ep = EpisodeSampler(data, ways, shots, queries, seed=seed)[index]
    noise = torch.Generator().manual_seed(index)  # make the toy images distinguishable beyond a constant
    return Episode(LabeledSet(ep.support.inputs + 0.1 * torch.randn(ep.support.inputs.shape, generator=noise),
                              ep.support.labels, ways),
                   LabeledSet(ep.query.inputs + 0.1 * torch.randn(ep.query.inputs.shape, generator=noise),
                              ep.query.labels, ways), ep.classes, index)


@pytest.fixture(params=list_learners())
def learner(request):
    torch.manual_seed(0)
    settings = {"ways": 3} if "ways" in accepted_kwargs(LEARNERS.get_factory(request.param)) else {}
    return create_learner(request.param, backbone=dict(BACKBONE), **settings)


def test_logits_have_the_right_shape_and_are_finite(learner):
    ep = episode()
    logits = learner(ep)
    assert logits.shape == (len(ep.query), ep.ways)
    assert torch.isfinite(logits).all()


def test_gradients_reach_every_meta_parameter(learner):
    loss, metrics = learner.meta_loss([episode(), episode(index=1)])
    loss.backward()
    missing = [n for n, p in learner.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient reached {missing}"
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


@pytest.mark.parametrize("training", [False, True])
def test_adapt_leaves_the_learner_unchanged(learner, training):
    learner.train(training)
    before = copy.deepcopy(learner.state_dict())
    classifier = learner.adapt(episode().support)
    classifier(episode().query.inputs)
    after = learner.state_dict()
    # in training mode BatchNorm may update running statistics; parameters must never change
    names = [n for n, _ in learner.named_parameters()] if training else list(before)
    for name in names:
        assert torch.equal(before[name], after[name]), name


def test_query_labels_cannot_change_logits(learner):
    learner.eval()
    ep = episode()
    scrambled = Episode(ep.support, LabeledSet(ep.query.inputs, ep.query.labels.flip(0), ep.ways), ep.classes)
    assert torch.equal(learner(ep), learner(scrambled))


def test_forward_equals_adapt_then_classify_in_eval_mode(learner):
    learner.eval()
    ep = episode()
    torch.testing.assert_close(learner(ep), learner.adapt(ep.support)(ep.query.inputs))


def test_one_episode_can_be_overfit(learner):
    ep = episode(ways=3, shots=2, queries=2)
    # SNAIL's deep stack of concatenated blocks diverges with Adam at 1e-2 (its paper trains at 1e-3)
    assert overfits(learner, ep, lr=1e-3 if type(learner).__name__ == "SNAIL" else 1e-2)


def test_unknown_learner_or_setting_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: .*protonet"):
        create_learner("protonett")
    with pytest.raises(TypeError, match="has no setting 'temperature'"):
        create_learner("protonet", temperature=2.0)


class Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_protonet_logits_equal_a_hand_computation():
    support = LabeledSet(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [1.0, 1.0]]),
                         torch.tensor([0, 0, 1, 2]), 3)
    query = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    # prototypes by hand: class 0 = mean of (0,0),(2,0) = (1,0); class 1 = (0,4); class 2 = (1,1)
    # query (1,2): squared distances 4, 5, 1; query (3,-1): 5, 34, 8
    expected = -torch.tensor([[4.0, 5.0, 1.0], [5.0, 34.0, 8.0]])
    learner = ProtoNet(Flatten())
    torch.testing.assert_close(learner.adapt(support)(query), expected)
    ep = Episode(support, LabeledSet(query, torch.tensor([2, 0]), 3))
    torch.testing.assert_close(learner(ep), expected)
    loss, metrics = learner.meta_loss([ep])
    torch.testing.assert_close(loss, -(expected.log_softmax(-1)[[0, 1], [2, 0]]).mean())
    assert float(metrics["accuracy"]) == 1.0
