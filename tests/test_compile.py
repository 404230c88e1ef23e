"""``train.compile``: the methods a learner declares (``compile_targets``: MANN's recurrence) run compiled in
training, with the eager maths to float rounding, and as they are in validation and tests."""
import copy
import json
import logging

import pytest
import torch

from metazoo import create_learner
from metazoo.reproduce import training_key
from metazoo.trainer import meta_train

from .test_amp import tiny
from .test_blackbox import TINY, build, episode
from .test_learners import BACKBONE


def loss_and_gradients(learner, episodes):
    learner.zero_grad()
    loss = learner.meta_loss(episodes)[0]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in learner.parameters() if p.grad is not None]


def assert_compiled_step_matches_eager(learner, episodes, targets, grad_atol=1e-6):
    """``learner.compile_training()`` declares ``targets``, its step runs compiled, and gives the loss and every
    gradient of an eager copy of the same weights, to float rounding."""
    from torch._dynamo.utils import counters

    eager = copy.deepcopy(learner)
    assert learner.compile_training() == targets
    before = counters["stats"]["unique_graphs"]
    loss, grads = loss_and_gradients(learner, episodes)
    assert counters["stats"]["unique_graphs"] > before  # the step did run compiled
    want_loss, want_grads = loss_and_gradients(eager, episodes)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(want_grads) > 0
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=grad_atol)


@pytest.mark.slow  # a real compilation of a short unrolled recurrence: about 20-60 s on one CPU core
def test_compiled_mann_step_gives_the_eager_loss_and_gradients():
    learner = build("mann", online=True, **TINY["mann"]).train()
    episodes = [episode(shots=1, queries=1, index=i) for i in range(2)]  # online: 2 sequences of 6 steps
    assert_compiled_step_matches_eager(learner, episodes, ("sequence",))


@pytest.mark.slow  # a real compilation of a first-order inner loop and its backward: 15-60 s on one CPU core
def test_compiled_first_order_maml_step_gives_the_eager_loss_and_gradients():
    from .test_learners import episode as toy_episode

    torch.manual_seed(0)
    learner = create_learner("maml", backbone=dict(BACKBONE), ways=3, first_order=True).train()
    episodes = [toy_episode(index=i) for i in range(4)]  # one group of 4 same-shape tasks
    # (a convolution's bias before BatchNorm has a gradient of 0 in exact arithmetic, about 1e-6 in float32's)
    assert_compiled_step_matches_eager(learner, episodes, ("group_loss",), grad_atol=1e-5)
    second_order = create_learner("maml", backbone=dict(BACKBONE), ways=3)  # no double backward when compiled
    assert second_order.compile_training() == ()


def recording_compile(monkeypatch) -> list[str]:
    """torch.compile replaced by a pass-through that records which function each call of a compiled form runs."""
    calls = []

    def fake(function, **options):
        assert options == {"dynamic": False}

        def compiled(*args, **kwargs):
            calls.append(function.__name__)
            return function(*args, **kwargs)
        return compiled
    monkeypatch.setattr(torch, "compile", fake)
    return calls


def test_the_compiled_forms_run_only_in_training_with_gradients(monkeypatch):
    calls = recording_compile(monkeypatch)
    learner = build("mann", online=True, **TINY["mann"])
    episodes = [episode(shots=1, queries=1, index=i) for i in range(2)]
    want = loss_and_gradients(copy.deepcopy(learner).train(), episodes)
    learner.compile_training()
    got = loss_and_gradients(learner.train(), episodes)
    assert calls == ["sequence"]  # online training: one batch of sequences
    torch.testing.assert_close(got, want)
    with torch.no_grad():  # training mode without gradients, or eval mode: as it is
        learner.meta_loss(episodes)
    learner.eval()
    learner.meta_loss(episodes)
    assert calls == ["sequence"]
    episodic = build("mann", **TINY["mann"])  # its step is mostly the embedding's: nothing declared
    protonet = create_learner("protonet", backbone=dict(BACKBONE))
    assert episodic.compile_training() == () == protonet.compile_training()
    loss_and_gradients(episodic.train(), [episode(shots=1, queries=2, index=i) for i in range(2)])
    assert calls == ["sequence"]


def test_train_compile_compiles_the_training_step_resumes_either_way_and_keeps_the_run_key(
        tmp_path, data_root, monkeypatch, caplog):
    calls = recording_compile(monkeypatch)

    def online(**train):
        config = tiny(data_root, "mann", meta_batch_size=2, **train)
        config.learner["online"] = True
        return config
    with caplog.at_level(logging.INFO, logger="metazoo"):
        meta_train(online(compile=True), tmp_path / "run", progress=False, test=False)
    assert calls == ["sequence"] * 4  # the 4 training steps; validation stays eager
    assert "train.compile: sequence compiled at the first step" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    meta_train(online(steps=6), tmp_path / "run", progress=False, resume=True, test=False)  # resumes without it
    assert calls == ["sequence"] * 4
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    assert training_key(online(compile=True)) == training_key(online())  # not part of the run's identity
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metazoo"):
        meta_train(tiny(data_root, compile=True), tmp_path / "protonet", progress=False, test=False)
    assert "train.compile: learner 'protonet' declares nothing faster compiled" in caplog.text
