"""Baseline and Baseline++ (Chen et al. 2019): pretraining labels, the test-time head, by hand."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metazoo.config import Config
from metazoo.episode import Episode, LabeledSet
from metazoo.learners import Baseline
from metazoo.learners.transfer import CosineClassifier, cosine_scale

from .conftest import toy_dataset


class Flat(nn.Flatten):
    feature_size = 4


def episode():
    support = LabeledSet(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]), torch.tensor([0, 1, 2]), 3)
    query = LabeledSet(torch.tensor([[0.9, 0.1, 0, 0], [0, 0, 0.8, 0.3]]), torch.tensor([0, 2]), 3)
    return Episode(support, query, classes=torch.tensor([7, 2, 5]))


def test_pretraining_scores_every_image_against_its_dataset_class():
    learner = Baseline(Flat(), classes=10)
    ep = episode()
    logits, labels = learner.scored_logits(ep)
    assert labels.tolist() == [7, 2, 5, 7, 5]
    inputs = torch.cat([ep.support.inputs, ep.query.inputs])
    torch.testing.assert_close(logits, learner.head(inputs))
    loss, _ = learner.meta_loss([ep])
    torch.testing.assert_close(loss, F.cross_entropy(learner.head(inputs), labels))
    with pytest.raises(ValueError, match="has 7 classes, more than the pretraining head's 6"):
        Baseline(Flat(), classes=6).training_items(toy_dataset(class_sizes=(8,) * 7, side=16), Config())


def test_cosine_classifier_by_hand():
    head = CosineClassifier(2, 2, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 1.0]]))
    out = head(torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 10.0 / math.sqrt(2)]]))
    assert cosine_scale(5) == 2.0 and cosine_scale(4112) == 10.0


@pytest.mark.parametrize("cosine", [False, True])
def test_adapt_takes_sgd_steps_on_the_support_features_from_a_seeded_head(cosine):
    learner = Baseline(Flat(), classes=10, cosine=cosine, epochs=1, batch_size=8, lr=0.5, weight_decay=0.1)
    ep = episode()
    with torch.random.fork_rng():
        torch.manual_seed(learner.seed)
        head = learner.new_head(3)
    # one full-batch step: w <- w - lr * (grad + weight_decay * w) (momentum buffer starts at the gradient)
    loss = F.cross_entropy(head(ep.support.inputs), ep.support.labels)
    grads = torch.autograd.grad(loss, list(head.parameters()))
    with torch.no_grad():
        for p, g in zip(head.parameters(), grads):
            p -= 0.5 * (g + 0.1 * p)
        expected = head(ep.query.inputs)
    torch.testing.assert_close(learner.adapt(ep.support)(ep.query.inputs), expected)


def test_default_fine_tuning_fits_the_support_set_and_is_deterministic():
    learner = Baseline(Flat(), classes=10).eval()
    ep = episode()
    classifier = learner.adapt(ep.support)
    assert classifier(ep.support.inputs).argmax(-1).tolist() == [0, 1, 2]
    assert learner(ep).argmax(-1).tolist() == [0, 2]
    torch.testing.assert_close(learner(ep), learner(ep))


def test_the_trainer_sizes_the_pretraining_head_from_the_training_split():
    settings = {"name": "baseline", "cosine": True}
    Baseline.resolve_settings(settings, Config(learner=settings), toy_dataset(class_sizes=(8,) * 7, side=16))
    assert settings["classes"] == 7
    settings = {"name": "baseline", "classes": 3}
    Baseline.resolve_settings(settings, Config(learner=settings), toy_dataset(class_sizes=(8,) * 7, side=16))
    assert settings["classes"] == 3
