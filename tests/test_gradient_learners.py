"""MAML, FOMAML, ANIL, Meta-SGD and Reptile against references: learn2learn's MAML on the same
weights and episodes (float64), and plain SGD on a deep copy of the network."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metazoo import create_learner
from metazoo.config import from_dict
from metazoo.data.sampling import episode_seed
from metazoo.episode import Episode
from metazoo.learners.gradient import BATCH_SEED
from metazoo.learners.inner import TaskNet, mini_batches, stack_params
from metazoo.trainer import meta_train

from .test_learners import episode

WAYS = 3


def make(name, global_pool=False, **kw):
    torch.manual_seed(0)
    backbone = {"name": "conv4", "in_channels": 1, "width": 8, "image_size": 16, "global_pool": global_pool}
    return create_learner(name, backbone=backbone, ways=WAYS, **kw).double()


def episodes(count=2):
    return [episode(ways=WAYS, shots=2, queries=3, index=i).to(dtype=torch.float64) for i in range(count)]


def reference_net(learner):
    """learner's network as one ordinary module (BatchNorm: batch statistics, as the learner's)."""
    return nn.Sequential(copy.deepcopy(learner.backbone), copy.deepcopy(learner.head)).train()


def ref_name(name):  # "0.blocks..." -> "backbone.blocks...", "1.weight" -> "head.weight"
    head, rest = name.split(".", 1)
    return ("backbone." if head == "0" else "head.") + rest


def assert_grads_close(learner, reference, rtol=1e-8):
    """Relative error below ``rtol`` for the whole meta-gradient and for each tensor (a tensor whose
    gradient is zero in exact arithmetic, like a conv bias before BatchNorm, is held to the scale of
    the whole gradient)."""
    ours = dict(learner.named_parameters())
    pairs = [(name, ours[ref_name(name)].grad, p.grad) for name, p in reference.named_parameters()]
    scale = torch.cat([ref.flatten() for _, _, ref in pairs]).norm()
    total = torch.cat([(mine - ref).flatten() for _, mine, ref in pairs]).norm() / scale
    assert total < rtol, float(total)
    for name, mine, ref in pairs:
        err = (mine - ref).norm() / torch.maximum(ref.norm(), 1e-6 * scale)
        assert err < rtol, (name, float(err))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batch_tasks", [True, False])
@pytest.mark.parametrize("global_pool", [False, True])
def test_maml_meta_gradients_equal_learn2learn(first_order, batch_tasks, global_pool):
    l2l = pytest.importorskip("learn2learn")
    learner = make("maml", global_pool, inner_steps=2, inner_lr=0.3, first_order=first_order, batch_tasks=batch_tasks)
    assert (learner._body.plan is not None) == batch_tasks
    reference = reference_net(learner)
    eps = episodes(2)

    loss, _ = learner.meta_loss(eps)
    loss.backward()

    maml = l2l.algorithms.MAML(reference, lr=0.3, first_order=first_order)
    total = 0
    for ep in eps:
        clone = maml.clone()
        for _ in range(2):
            clone.adapt(F.cross_entropy(clone(ep.support.inputs), ep.support.labels))
        total = total + F.cross_entropy(clone(ep.query.inputs), ep.query.labels)
    (total / len(eps)).backward()
    torch.testing.assert_close(loss, total.detach() / len(eps), rtol=1e-10, atol=0)
    assert_grads_close(learner, reference)


def manual_sgd(reference, ep, steps, lr, with_query=False, batch=0):
    """Plain SGD on the support set of ``ep`` (and its query set), on a deep copy of ``reference``; with
    ``batch``, step s on the s-th slice of ``batch`` items of passes over them in an order of their own
    (drawn here as the contract says: randperm passes, seeded by the episode's index)."""
    net = copy.deepcopy(reference)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    inputs, labels = ep.support.inputs, ep.support.labels
    if with_query:
        inputs, labels = torch.cat([inputs, ep.query.inputs]), torch.cat([labels, ep.query.labels])
    order = []
    generator = torch.Generator().manual_seed(episode_seed(BATCH_SEED, ep.index))
    while batch and len(order) < steps * batch:
        order += torch.randperm(len(inputs), generator=generator).tolist()
    for step in range(steps):
        rows = order[step * batch:(step + 1) * batch] if batch else slice(None)
        optimizer.zero_grad()
        F.cross_entropy(net(inputs[rows]), labels[rows]).backward()
        optimizer.step()
    return net


@pytest.mark.parametrize("batch", [0, 4])
def test_first_order_maml_equals_query_gradient_after_manual_sgd(batch):
    """Also with inner mini-batches (4 of the 6 support items a step, drawn from the episode's index)."""
    learner = make("maml", inner_steps=3, inner_lr=0.2, first_order=True, inner_batch=batch)
    reference, eps = reference_net(learner), episodes(2)
    loss, _ = learner.meta_loss(eps)
    loss.backward()
    expected = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for ep in eps:
        adapted = manual_sgd(reference, ep, 3, 0.2, batch=batch)
        grads = torch.autograd.grad(F.cross_entropy(adapted(ep.query.inputs), ep.query.labels),
                                    list(adapted.parameters()))
        for (n, _), g in zip(adapted.named_parameters(), grads):
            expected[n] += g / len(eps)
    for n, p in reference.named_parameters():
        p.grad = expected[n]
    assert_grads_close(learner, reference)


def test_reptile_outer_step_moves_toward_manually_adapted_weights():
    learner = make("reptile", inner_steps=4, inner_lr=0.1)
    reference, eps = reference_net(learner), episodes(3)
    epsilon = 0.5
    optimizer = torch.optim.SGD(learner.parameters(), lr=epsilon)
    loss, stats = learner.meta_loss(eps)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    nets = [manual_sgd(reference, ep, 4, 0.1, with_query=True) for ep in eps]
    adapted = [dict(net.named_parameters()) for net in nets]
    ours = dict(learner.named_parameters())
    for n, theta in reference.named_parameters():
        phi = torch.stack([a[n] for a in adapted]).mean(0)
        torch.testing.assert_close(ours[ref_name(n)], theta + epsilon * (phi - theta), rtol=1e-10, atol=1e-12)
    # the loss it reports is the adapted weights' query loss; evaluation adapts on the support set only
    learner.eval()
    ep, adapted_on_support = eps[0], manual_sgd(reference_net(learner), eps[0], 4, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(learner(ep), adapted_on_support(ep.query.inputs))
    with torch.no_grad():
        query_loss = sum(F.cross_entropy(net(ep.query.inputs), ep.query.labels)
                         for net, ep in zip(nets, eps)) / len(eps)
    torch.testing.assert_close(stats["loss"], query_loss, rtol=1e-10, atol=0)


def test_mini_batches_are_consecutive_slices_of_random_passes():
    batches = mini_batches(5, 3, 4, torch.Generator().manual_seed(7))
    assert batches.shape == (4, 3)
    order = batches.flatten().tolist()  # 12 items: two whole passes over the 5, and 2 of a third
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5)) and order[:5] != order[5:10]
    torch.testing.assert_close(batches, mini_batches(5, 3, 4, torch.Generator().manual_seed(7)))


def test_reptile_inner_mini_batches_equal_manual_sgd_on_each_batch():
    """Each inner step on its own mini-batch of the episode's 15 items (support and query), drawn from the
    episode's index; the outer step moves toward the mean of those adapted weights, not the full-batch ones."""
    learner = make("reptile", inner_steps=4, inner_lr=0.1, inner_batch=5)
    reference, eps = reference_net(learner), episodes(3)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5)
    loss, _ = learner.meta_loss(eps)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    ours = dict(learner.named_parameters())
    for batch, close in ((5, True), (0, False)):
        adapted = [dict(manual_sgd(reference, ep, 4, 0.1, with_query=True, batch=batch).named_parameters())
                   for ep in eps]
        expected = {n: theta + 0.5 * (torch.stack([a[n] for a in adapted]).mean(0) - theta)
                    for n, theta in reference.named_parameters()}
        errors = [float((ours[ref_name(n)] - e).detach().abs().max()) for n, e in expected.items()]
        assert (max(errors) < 1e-12) == close, (batch, max(errors))


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_test_inner_batch_adapts_on_mini_batches_of_the_support_set_seeded_by_the_episode(name):
    learner = make(name, inner_steps=1, inner_lr=0.3, test_inner_steps=4, test_inner_batch=4).eval()
    ep = episodes(2)[1]  # 6 support items, 4 a step; its index seeds the batches
    reference = reference_net(learner)
    unnumbered = Episode(ep.support, ep.query, ep.classes, -1)
    batched, full, anonymous = (manual_sgd(reference, e, 4, 0.3, batch=b)
                                for e, b in ((ep, 4), (ep, 0), (unnumbered, 4)))
    with torch.no_grad():
        torch.testing.assert_close(learner(ep), batched(ep.query.inputs))
        assert not torch.allclose(learner(ep), full(ep.query.inputs))
        # adapted without an episode index: index -1's batches
        torch.testing.assert_close(learner.adapt(ep.support)(ep.query.inputs), anonymous(ep.query.inputs))
    assert learner.train().inner_batches([0], 6, torch.device("cpu")) is None  # inner_batch 0 while training
    with pytest.raises(ValueError, match="inner_batch"):
        make(name, inner_batch=-1)


def test_meta_sgd_learns_its_step_sizes_and_starts_as_maml():
    metasgd = make("metasgd", inner_steps=2, inner_lr=0.3)
    maml = make("maml", inner_steps=2, inner_lr=0.3)
    with torch.no_grad():  # exactly 0.3 in float64 (the learner was built in float32)
        for lr in metasgd.lrs.values():
            lr.fill_(0.3)
    eps = episodes(2)
    loss, _ = metasgd.meta_loss(eps)
    torch.testing.assert_close(loss, maml.meta_loss(eps)[0], rtol=1e-12, atol=0)
    loss.backward()
    assert len(metasgd.lrs) == len(metasgd.adapted_names())
    for name, lr in metasgd.lrs.items():
        assert lr.grad is not None and lr.grad.abs().sum() > 0, name


def test_meta_sgd_step_sizes_are_per_weight():
    learner = make("metasgd", inner_steps=1, inner_lr=0.3)
    ep = episodes(1)[0]
    with torch.no_grad():
        learner.lrs["head__bias"].copy_(torch.tensor([0.0, 1.0, 2.0]))
    params = learner.fast_weights(ep.support.inputs[None], ep.support.labels[None], create_graph=False)
    logits = learner.logits(stack_params(dict(learner.named_parameters()), 1), 0, ep.support.inputs[None])[0]
    grad = torch.autograd.grad(F.cross_entropy(logits, ep.support.labels), learner.head.bias)[0]
    step_sizes = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(params["head.bias"][0], learner.head.bias - step_sizes * grad)


def test_anil_adapts_only_the_head():
    learner = make("anil", inner_steps=3, inner_lr=0.5)
    ep = episodes(1)[0]
    params = learner.fast_weights(ep.support.inputs[None], ep.support.labels[None], create_graph=True)
    for name, p in learner.named_parameters():
        if name.startswith("backbone."):
            assert torch.equal(params[name][0], p), name
        else:
            assert not torch.equal(params[name][0], p), name
    # and its head-only inner loop is MAML's inner loop restricted to the head
    maml = make("maml", inner_steps=3, inner_lr=0.5)
    maml.adapted_names = lambda: ["head.weight", "head.bias"]
    expected = maml.fast_weights(ep.support.inputs[None], ep.support.labels[None], create_graph=True)
    for name in ("head.weight", "head.bias"):
        torch.testing.assert_close(params[name], expected[name], rtol=1e-12, atol=1e-14)


def test_eval_adapts_with_the_test_steps_without_tracking_gradients():
    learner = make("maml", inner_steps=1, inner_lr=0.3, test_inner_steps=4).eval()
    ep = episodes(1)[0]
    with torch.no_grad():
        classifier = learner.adapt(ep.support)
        logits = classifier(ep.query.inputs)
    assert classifier.step == 4 and not logits.requires_grad
    reference = reference_net(learner)
    adapted = manual_sgd(reference, ep, 4, 0.3)
    with torch.no_grad():
        torch.testing.assert_close(logits, adapted(ep.query.inputs), rtol=1e-10, atol=1e-12)


def test_per_step_batchnorm_keeps_statistics_per_step_and_classifies_queries_alone():
    learner = make("maml", inner_steps=2, inner_lr=0.3, bn="per_step")
    bn = learner.backbone.blocks[0][1]
    assert bn.running_mean.shape == (3, 8)
    before = bn.running_mean.clone()
    learner.meta_loss(episodes(2))
    assert all(not torch.equal(before[k], bn.running_mean[k]) for k in range(3))
    learner.eval()
    ep = episodes(1)[0]
    with torch.no_grad():
        classifier = learner.adapt(ep.support)
        together = classifier(ep.query.inputs)
        alone = torch.cat([classifier(x[None]) for x in ep.query.inputs])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("name", ["maml", "anil", "reptile"])
def test_query_with_support_classifies_each_query_in_a_batch_with_the_support_set(name, monkeypatch):
    """Reptile's non-transductive test: manual SGD on a deep copy, then each query's logits from a forward
    pass of the support set and that query alone (BatchNorm on that batch's statistics)."""
    learner = make(name, inner_steps=2, inner_lr=0.3, test_inner_steps=3, bn="query_with_support").eval()
    transductive = make(name, inner_steps=2, inner_lr=0.3, test_inner_steps=3).eval()
    ep = episodes(1)[0]
    reference = reference_net(learner)
    if name == "anil":  # its inner loop moves the head only
        for p in reference[0].parameters():
            p.requires_grad_(False)
    adapted = manual_sgd(reference, ep, 3, 0.3)
    with torch.no_grad():
        expected = torch.stack([adapted(torch.cat([ep.support.inputs, x[None]]))[-1] for x in ep.query.inputs])
        logits = learner(ep)
        torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(transductive(ep), expected, atol=1e-6)  # a query batch's statistics differ
        monkeypatch.setattr("metazoo.learners.gradient.QUERY_PASS_IMAGES", 7)  # one query per pass: the same
        torch.testing.assert_close(learner(ep), expected, rtol=1e-10, atol=1e-12)


def test_query_with_support_meta_loss_equals_task_by_task():
    """While meta-training too, and for a meta-batch of tasks adapted together: the same loss and gradients as
    each task's query loss computed query by query."""
    eps = episodes(2)
    learner = make("maml", inner_steps=2, inner_lr=0.3, bn="query_with_support")
    loss, _ = learner.meta_loss(eps)
    loss.backward()
    batched = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad()
    total = 0
    for ep in eps:
        params = learner.fast_weights(ep.support.inputs[None], ep.support.labels[None], create_graph=True)
        rows = [learner.logits(params, 2, torch.cat([ep.support.inputs, x[None]])[None])[0, -1]
                for x in ep.query.inputs]
        total = total + F.cross_entropy(torch.stack(rows), ep.query.labels) / len(eps)
    torch.testing.assert_close(loss, total, rtol=1e-10, atol=1e-12)
    total.backward()
    for a, p in zip(batched, learner.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-9, atol=1e-12)


def test_batched_per_step_gradients_equal_task_by_task():
    eps = episodes(3)
    grads = []
    for batch_tasks in (True, False):
        learner = make("maml", inner_steps=2, inner_lr=0.3, bn="per_step", batch_tasks=batch_tasks)
        learner.meta_loss(eps)[0].backward()
        grads.append([p.grad for p in learner.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_task_net_batched_equals_functional_call():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    params = {n: p + 0.1 * torch.randn(3, *p.shape, dtype=p.dtype) for n, p in net.named_parameters()}
    x = torch.randn(3, 5, 2, 8, 8, dtype=torch.float64)
    batched, alone = TaskNet(net), TaskNet(net, batched=False)
    assert batched.plan is not None
    torch.testing.assert_close(batched(params, {}, x), alone(params, {}, x), rtol=1e-12, atol=1e-12)


def test_wrong_way_count_is_a_clear_error():
    learner = make("maml")
    with pytest.raises(ValueError, match="3-way.*learner.ways"):
        learner.adapt(episode(ways=4, shots=1, queries=1).to(dtype=torch.float64).support)
    with pytest.raises(ValueError, match="valid: transductive, query_with_support, per_step"):
        make("maml", bn="running")


@pytest.mark.parametrize("name,settings", [
    ("maml", {"inner_steps": 1, "inner_lr": 0.4, "test_inner_steps": 3}),
    ("maml", {"inner_steps": 1, "inner_lr": 0.4, "test_inner_steps": 3, "first_order": True}),
    ("anil", {"inner_steps": 5, "inner_lr": 0.4, "test_inner_steps": 10}),
    ("metasgd", {"inner_steps": 1, "inner_lr": 0.4, "test_inner_steps": 3}),
    ("reptile", {"inner_steps": 5, "inner_lr": 0.2, "test_inner_steps": 10}),
])
@pytest.mark.slow
def test_short_real_run_beats_chance(tmp_path, data_root, name, settings):
    """80 meta-iterations on real Omniglot 5-way 1-shot (small Conv-4): test accuracy far above 20%."""
    reptile = name == "reptile"
    config = from_dict({
        "learner": {"name": name, **settings},
        "backbone": {"name": "conv4", "width": 32, "pooling": False, "global_pool": True},
        "data": {"dataset": "omniglot", "root": str(data_root)},
        "train": {"steps": 80, "meta_batch_size": 4, "ways": 5, "shots": 1, "queries": 5, "val_every": 0,
                  "val_episodes": 20, "device": "cpu"},
        "optim": {"name": "sgd", "lr": 1.0, "momentum": 0.0} if reptile else {"name": "adam", "lr": 3e-3},
        "eval": {"episodes": 200, "queries": 5},
    })
    test = meta_train(config, tmp_path / "run", progress=False)["test"]
    assert test["episodes"] == 200
    assert test["mean"] - test["ci95"] > 0.4, test


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_backward_part_by_part_gives_the_same_gradients(name):
    eps, grads = episodes(3), []
    for per_pass in (0, 1, 2):
        learner = make(name, inner_steps=2, inner_lr=0.3, tasks_per_pass=per_pass)
        stats = learner.meta_backward(eps)
        grads.append(([p.grad for p in learner.parameters()], stats))
    for other, stats in grads[1:]:
        for a, b in zip(grads[0][0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(stats["loss"], grads[0][1]["loss"], rtol=1e-10, atol=0)
        torch.testing.assert_close(stats["accuracy"], grads[0][1]["accuracy"])
