"""The multi-task toolkit's maths: conditioning modules, task weightings, soft sharing, by hand."""
import math
import os

import pytest
import torch
from torch import nn

from metazoo.multitask import (FiLM, Additive, Concat, DynamicWeightAverage, Multiplicative, StaticWeights,
                               UncertaintyWeights, additive_from_concat, soft_sharing_penalty)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_concatenation_then_linear_equals_additive_conditioning():
    torch.manual_seed(0)
    concat = Concat(5, 3, 4)
    additive = additive_from_concat(concat)
    x, z = torch.randn(6, 5), torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    torch.testing.assert_close(additive(x, z), concat(x, z))
    z = torch.randn(6, 3)  # a metadata vector instead of a one-hot index: the same identity
    torch.testing.assert_close(additive(x, z), concat(x, z))


def _set(linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias))


def test_each_conditioning_by_hand():
    x, z = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]])  # task 1 of 2
    # W x + b = [1*1 + 0*2 + 0.5, 1*1 + 1*2 - 1] = [1.5, 2.0]
    W, b = [[1.0, 0.0], [1.0, 1.0]], [0.5, -1.0]
    G = [[1.0, 3.0], [1.0, -2.0]]  # G z = task 1's column: [3, -2]
    U = [[0.0, 10.0], [0.0, 20.0]]  # U z = [10, 20]
    additive = Additive(2, 2, 2)
    _set(additive.linear, W, b)
    _set(additive.shift, U)
    torch.testing.assert_close(additive(x, z), torch.tensor([[11.5, 22.0]]))
    gating = Multiplicative(2, 2, 2)
    _set(gating.linear, W, b)
    _set(gating.gate, G)
    torch.testing.assert_close(gating(x, z), torch.tensor([[4.5, -4.0]]))
    film = FiLM(2, 2, 2)
    _set(film.linear, W, b)
    _set(film.gate, G)
    _set(film.shift, U)
    torch.testing.assert_close(film(x, z), torch.tensor([[14.5, 16.0]]))
    concat = Concat(2, 2, 1)
    _set(concat.linear, [[1.0, 1.0, 5.0, 7.0]], [0.25])
    torch.testing.assert_close(concat(x, z), torch.tensor([[1.0 + 2.0 + 7.0 + 0.25]]))


def test_gating_and_film_start_as_the_plain_layer_for_one_hot_descriptors():
    torch.manual_seed(0)
    x, z = torch.randn(4, 3), torch.eye(2)[torch.tensor([0, 1, 1, 0])]
    for module in (Multiplicative(3, 2, 5), FiLM(3, 2, 5)):
        torch.testing.assert_close(module(x, z), module.linear(x))


def test_static_weights():
    losses = torch.tensor([1.0, 2.0, 4.0])
    assert float(StaticWeights(3)(losses)) == 7.0
    assert float(StaticWeights(3, [0.5, 0.25, 0.0])(losses)) == 1.0
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        StaticWeights(3, [1.0, 1.0])


def test_uncertainty_weighting_finds_the_known_optimum():
    # for fixed losses the optimum is s_i = log(2 c_i L_i): c = 1 (classification), 1/2 (regression)
    weighting = UncertaintyWeights(["classification", "classification", "regression"])
    losses = torch.tensor([0.5, 2.0, 3.0])
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(2000):
        optimizer.zero_grad()
        weighting(losses).backward()
        optimizer.step()
    expected = torch.log(2 * torch.tensor([1.0, 1.0, 0.5]) * losses)
    torch.testing.assert_close(weighting.log_variance.detach(), expected, atol=1e-3, rtol=0)
    # the noisier task gets the smaller weight: c exp(-s) = 1 / (2 L)
    torch.testing.assert_close(weighting.weights(), 1 / (2 * losses), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="valid: classification, regression"):
        UncertaintyWeights(["ranking"])


def test_dynamic_weight_average_by_hand():
    dwa = DynamicWeightAverage(2, temperature=2.0)
    losses = [torch.tensor([1.0, 1.0]), torch.tensor([0.5, 1.0]), torch.tensor([0.25, 0.8])]
    # the first two steps: equal weights
    assert float(dwa(losses[0])) == 2.0
    assert float(dwa(losses[1])) == 1.5
    # then rates r = L(t-1) / L(t-2) = [0.5, 1.0]; w = 2 * softmax(r / 2)
    w = 2 * torch.softmax(torch.tensor([0.25, 0.5]), 0)
    torch.testing.assert_close(dwa.weights(), w)
    torch.testing.assert_close(dwa(losses[2]), (w * losses[2]).sum())
    assert w[1] > w[0]  # the task whose loss falls more slowly gets more weight


def test_dynamic_weight_average_uses_period_means():
    dwa = DynamicWeightAverage(2, period=2)
    for loss in ([2.0, 1.0], [4.0, 1.0], [1.0, 1.0], [2.0, 3.0]):
        dwa(torch.tensor(loss))
    torch.testing.assert_close(dwa.history, torch.tensor([[3.0, 1.0], [1.5, 2.0]]))


def test_weightings_over_a_mini_batch_of_tasks():
    losses, tasks = torch.tensor([2.0, 4.0]), torch.tensor([2, 0])
    assert float(StaticWeights(3, [0.5, 1.0, 0.25])(losses, tasks)) == 0.25 * 2.0 + 0.5 * 4.0
    uncertainty = UncertaintyWeights(["classification", "regression", "classification"])
    with torch.no_grad():
        uncertainty.log_variance.copy_(torch.tensor([0.0, 1.0, 2.0]))
    expected = (math.exp(-2.0) * 2.0 + 1.0) + (1.0 * 4.0 + 0.0)
    assert abs(float(uncertainty(losses, tasks).detach()) - expected) < 1e-6
    dwa = DynamicWeightAverage(3)
    dwa(torch.tensor([1.0, 1.0, 1.0]))
    dwa(torch.tensor([0.5, 2.0]), torch.tensor([0, 1]))  # task 2 absent: keeps its history
    dwa(torch.tensor([0.25]), torch.tensor([0]))
    torch.testing.assert_close(dwa.history, torch.tensor([[0.5, 1.0, float("nan")], [0.25, 2.0, 1.0]]),
                               equal_nan=True)


def test_soft_sharing_penalty_and_its_gradient_by_hand():
    torch.manual_seed(0)
    nets = [nn.Linear(3, 2) for _ in range(3)]
    penalty = soft_sharing_penalty(nets, weight=0.1)
    flat = [torch.cat([p.detach().flatten() for p in net.parameters()]) for net in nets]
    expected = 0.1 * sum((flat[i] - flat[j]).pow(2).sum() for i in range(3) for j in range(i + 1, 3))
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    for i, net in enumerate(nets):
        grad = torch.cat([p.grad.flatten() for p in net.parameters()])
        torch.testing.assert_close(grad, 2 * 0.1 * sum(flat[i] - flat[j] for j in range(3) if j != i))
    assert float(soft_sharing_penalty(nets, 0.0).detach()) == 0.0
    with pytest.raises(ValueError, match="same architecture"):
        soft_sharing_penalty([nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))], 1.0)


class Trunk(nn.Sequential):
    feature_size = 4

    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(6, 4), nn.ReLU())


@pytest.mark.parametrize("sharing", ["concat", "additive", "multiplicative", "film", "multihead", "independent"])
def test_multitask_net_shapes_and_what_each_task_shares(sharing):
    from metazoo.multitask.model import MultiTaskNet

    torch.manual_seed(0)
    net = MultiTaskNet(Trunk(), outputs=[3, 5, 1], sharing=sharing, hidden=8)
    x = torch.randn(7, 6)
    assert [tuple(net(x, t).shape) for t in range(3)] == [(7, 3), (7, 5), (7, 1)]
    net(x, 1).sum().backward()  # task 1's loss alone
    touched = {name for name, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "heads.1.weight" in touched and "heads.0.weight" not in touched
    if sharing == "independent":
        assert any(n.startswith("towers.1.") for n in touched)
        assert not any(n.startswith(("towers.0.", "towers.2.")) for n in touched)
        assert not torch.equal(net.towers[0][0][1].weight, net.towers[1][0][1].weight)
        alike = MultiTaskNet(Trunk(), outputs=[3, 5, 1], sharing=sharing, hidden=8, common_init=True)
        assert float(soft_sharing_penalty(alike.towers, 1.0).detach()) == pytest.approx(0.0, abs=1e-10)
        assert torch.equal(alike.towers[0][0][1].weight, alike.towers[2][0][1].weight)
        assert alike.towers[0][0][1].weight is not alike.towers[2][0][1].weight  # copies, not shared
    else:
        assert "trunk.1.weight" in touched  # the trunk is shared


def test_conditioned_net_uses_the_task_descriptor():
    from metazoo.multitask.model import MultiTaskNet

    torch.manual_seed(0)
    net = MultiTaskNet(Trunk(), outputs=[2, 2], sharing="additive", hidden=8)
    with torch.no_grad():
        net.heads[1].load_state_dict(net.heads[0].state_dict())  # the same output layer for both tasks
        net.conditioning.shift.weight.normal_()
    x = torch.randn(5, 6)
    assert not torch.allclose(net(x, 0), net(x, 1))  # only z differs
    with pytest.raises(ValueError, match="valid: additive, concat, film, independent, multihead, multiplicative"):
        MultiTaskNet(Trunk(), outputs=[2], sharing="shared")


# --- tasks as data (Omniglot) ---------------------------------------------------------------------
def omniglot_like():
    from metazoo.data.base import FewShotDataset

    names = [f"{a}/character0{c}/rot{r:03d}" for a, chars in (("Alpha", 2), ("Beta", 1)) for c in range(1, chars + 1)
             for r in (0, 90)]  # 6 classes: Alpha has 2 characters x 2 rotations, Beta 1 x 2
    images = torch.arange(6 * 10, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 1, 2, 2).contiguous()
    return FewShotDataset(images, [10] * 6, names, "omniglot", "train")


def test_alphabet_tasks_by_hand():
    from metazoo.multitask.tasks import alphabet_tasks

    tasks = alphabet_tasks(omniglot_like())
    expected = [("Alpha", 4, "classification"), ("Beta", 2, "classification")]
    assert [(t.name, t.outputs, t.loss) for t in tasks.tasks] == expected
    assert tasks.items[1].tolist() == list(range(40, 60))
    assert tasks.targets[0].tolist() == [c for c in range(4) for _ in range(10)]
    assert tasks.targets[1].tolist() == [0] * 10 + [1] * 10


def test_class_group_tasks_deal_every_class_into_one_task():
    from metazoo.multitask.tasks import class_group_tasks

    data = omniglot_like()
    tasks = class_group_tasks(data, groups=4, seed=3)
    assert [t.outputs for t in tasks.tasks] == [2, 2, 1, 1]
    image_class = torch.arange(60) // 10
    seen = []
    for items, targets in zip(tasks.items, tasks.targets):
        classes = image_class[items].unique().tolist()  # sorted: local label = rank within the group
        seen += classes
        assert targets.tolist() == [classes.index(int(c)) for c in image_class[items]]
        assert len(items) == 10 * len(classes)
    assert sorted(seen) == list(range(6))
    assert class_group_tasks(data, groups=4, seed=3).items[0].tolist() == tasks.items[0].tolist()
    assert any(class_group_tasks(data, groups=4, seed=s).items[0].tolist() != tasks.items[0].tolist()
               for s in range(4, 10))
    with pytest.raises(ValueError, match="7 class groups.*6 classes"):
        class_group_tasks(data, groups=7)


def test_attribute_tasks_share_inputs_with_different_labels_and_losses():
    from metazoo.multitask.tasks import attribute_tasks

    data = omniglot_like()
    tasks = attribute_tasks(data)
    assert [(t.name, t.outputs, t.loss) for t in tasks.tasks] == [
        ("character", 3, "classification"), ("alphabet", 2, "classification"), ("rotation", 2, "classification"),
        ("ink", 1, "regression")]
    image = 45  # class 4: Beta/character01/rot000
    assert [int(tasks.targets[t][image]) for t in range(3)] == [2, 1, 0]
    ink = data.to_float(data.images).mean((1, 2, 3))
    torch.testing.assert_close(tasks.targets[3][:, 0], (ink - ink.mean()) / ink.std())


def test_holdout_parts_split_every_class_and_keep_targets_aligned():
    from metazoo.multitask.tasks import alphabet_tasks

    tasks = alphabet_tasks(omniglot_like())
    parts = [tasks.holdout(p) for p in ("train", "val", "test")]
    for t in range(2):
        pieces = [p.items[t] for p in parts]
        assert sorted(torch.cat(pieces).tolist()) == tasks.items[t].tolist()  # a partition
        assert [len(p) for p in pieces] == [7 * tasks.tasks[t].outputs, 2 * tasks.tasks[t].outputs,
                                            1 * tasks.tasks[t].outputs]  # 10 images per class: 7 / 1.5 -> 2 / 1
        for p in parts:  # targets still belong to their images
            lookup = dict(zip(tasks.items[t].tolist(), tasks.targets[t].tolist()))
            assert p.targets[t].tolist() == [lookup[i] for i in p.items[t].tolist()]
    with pytest.raises(ValueError, match="valid: train, val, test"):
        tasks.holdout("dev")


def test_task_batch_sampler_is_seeded_and_draws_distinct_tasks_per_step():
    from metazoo.multitask.tasks import TaskBatchSampler, TaskEvalSampler, alphabet_tasks

    tasks = alphabet_tasks(omniglot_like())
    sampler = TaskBatchSampler(tasks, tasks_per_batch=2, batch_size=5, seed=3, steps=10)
    assert len(sampler) == 20
    step = [sampler[8], sampler[9]]  # step 4
    assert sorted(b.task for b in step) == [0, 1]
    for b in step:
        assert b.inputs.shape == (5, 1, 2, 2) and b.targets.shape == (5,)
        # the image value encodes its index: targets match the images they came with
        index = (b.inputs[:, 0, 0, 0] * 255).round().long()
        lookup = dict(zip(tasks.items[b.task].tolist(), tasks.targets[b.task].tolist()))
        assert b.targets.tolist() == [lookup[int(i)] for i in index]
    again = TaskBatchSampler(tasks, 2, 5, seed=3, steps=10)[9]
    assert torch.equal(again.inputs, step[1].inputs)
    with pytest.raises(ValueError, match="task 'Beta' has 20 items"):
        TaskBatchSampler(tasks, 1, 25)
    evaluation = TaskEvalSampler(tasks.holdout("test"), batch_size=3)
    seen = [(b.task, len(b.targets)) for b in evaluation]
    assert seen == [(0, 3), (0, 1), (1, 2)]  # 4 test images of Alpha (1 per class), 2 of Beta


# --- the multi-task learner and the trainer -------------------------------------------------------
def small_learner(**settings):
    from metazoo.multitask import MultiTaskObjective

    torch.manual_seed(0)
    return MultiTaskObjective(Trunk(), outputs=[3, 2, 1], losses=["classification", "classification", "regression"],
                              hidden=8, **settings)


def task_batches():
    from metazoo.multitask.tasks import TaskBatch

    g = torch.Generator().manual_seed(0)
    return [TaskBatch(0, torch.randn(4, 6, generator=g), torch.tensor([0, 1, 2, 0])),
            TaskBatch(2, torch.randn(3, 6, generator=g), torch.randn(3, 1, generator=g))]


def test_multitask_objective_is_the_weighted_sum_of_task_losses_by_hand():
    import torch.nn.functional as F

    learner = small_learner(weights=[0.5, 1.0, 2.0])
    a, b = task_batches()
    loss, stats = learner.meta_loss([a, b])
    expected = 0.5 * F.cross_entropy(learner.net(a.inputs, 0), a.targets) + 2.0 * F.mse_loss(learner.net(b.inputs, 2),
                                                                                             b.targets)
    torch.testing.assert_close(loss, expected)
    assert float(stats["accuracy"]) == float((learner.net(a.inputs, 0).argmax(-1) == a.targets).float().mean())


def test_multitask_objective_adds_the_soft_sharing_penalty_and_learns_uncertainty_weights():
    learner = small_learner(sharing="independent", soft_sharing=0.3)
    plain = small_learner(sharing="independent")
    batches = task_batches()
    torch.testing.assert_close(learner.meta_loss(batches)[0] - plain.meta_loss(batches)[0],
                               soft_sharing_penalty(learner.net.towers, 0.3))
    with pytest.raises(ValueError, match="needs sharing = \"independent\""):
        small_learner(sharing="film", soft_sharing=0.1)
    with pytest.raises(ValueError, match="common_init.*needs sharing = \"independent\""):
        small_learner(sharing="multihead", common_init=True)
    uncertain = small_learner(weighting="uncertainty")
    uncertain.meta_loss(batches)[0].backward()
    assert uncertain.weighting.log_variance.grad[[0, 2]].abs().min() > 0  # the step's tasks
    assert uncertain.weighting.log_variance.grad[1] == 0  # a task absent from the step


def test_multitask_training_and_evaluation_through_the_one_trainer(tmp_path):
    import json

    from metazoo.config import from_dict
    from metazoo.trainer import meta_train

    config = from_dict({
        "learner": {"name": "multitask", "sharing": "multihead", "hidden": 16},
        "backbone": {"name": "conv4", "width": 8},
        "data": {"dataset": "omniglot"},
        "multitask": {"tasks": "alphabets", "items_per_task": 8},
        "train": {"steps": 4, "meta_batch_size": 3, "val_every": 2, "log_every": 1},
        "eval": {"protocol": "multitask"}})
    summary = meta_train(config, tmp_path / "run", progress=False)
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "outputs = [" in saved  # the task set's output sizes are recorded for later evaluation
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["protocol"]["protocol"] == "multitask" and result["protocol"]["part"] == "test"
    assert len(result["tasks"]) == 33 and result["episodes"] == 33  # the 33 alphabets of the train split
    assert all(0 <= m["accuracy"] <= 1 and m["items"] > 0 for m in result["tasks"].values())
    assert summary["test"]["mean"] == result["mean"]
    # the same run, evaluated as few-shot transfer on new classes (multi-task pretraining baseline)
    from metazoo.cli import main

    assert main(["eval", str(tmp_path / "run"), "--protocol", "episodic", "--episodes", "3", "-q"]) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["protocol"]["ways"] == 5


def test_a_learner_and_a_config_that_disagree_on_tasks_fail_clearly(tmp_path):
    from metazoo.config import from_dict
    from metazoo.trainer import meta_train

    config = from_dict({"learner": {"name": "protonet"}, "multitask": {"tasks": "alphabets"},
                        "backbone": {"name": "conv4", "width": 8}, "train": {"steps": 1}})
    with pytest.raises(ValueError, match="\\[multitask\\] tasks is set, but learner 'protonet' trains on episodes"):
        meta_train(config, tmp_path / "a", progress=False)
    config = from_dict({"learner": {"name": "multitask"}, "backbone": {"name": "conv4", "width": 8},
                        "train": {"steps": 1}})
    with pytest.raises(ValueError, match="multi-task training needs \\[multitask\\] tasks: one of alphabets"):
        meta_train(config, tmp_path / "b", progress=False)


# --- GradNorm, task descriptors from the config, the study's run keys ------------------------------
def test_gradnorm_by_hand_network_follows_the_weighted_loss_weights_follow_the_balance():
    learner = small_learner(sharing="multihead", weighting="gradnorm", alpha=1.0)
    weighting = learner.weighting
    with torch.no_grad():
        weighting.w.fill_(2.0)  # renormalised to sum to T = 3 before the step
    batches = task_batches()
    loss, _ = learner.meta_loss(batches)
    assert torch.allclose(weighting.w, torch.ones(3))
    shared = learner.net.last_shared_weight()
    assert shared is not None and shared.dim() >= 2
    losses = [learner.task_loss(b)[0] for b in batches]  # tasks 0 and 2
    torch.testing.assert_close(loss, losses[0] + losses[1])
    norms = torch.stack([torch.autograd.grad(x, shared, retain_graph=True)[0].norm() for x in losses])
    target = norms.mean()  # first step: every inverse training rate is 1
    loss.backward()
    expected = torch.sign(norms - target) * norms
    torch.testing.assert_close(weighting.w.grad[[0, 2]], expected)
    assert weighting.w.grad[1] == 0  # absent from the step
    plain = small_learner(sharing="multihead")
    plain.meta_loss(batches)[0].backward()
    for (name, p), q in zip(learner.net.named_parameters(), plain.net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)  # the network's gradient: sum_i w_i L_i
    with pytest.raises(ValueError, match="shares none"):
        small_learner(sharing="independent", weighting="gradnorm").meta_loss(batches)


@pytest.mark.parametrize("source", ["list", "csv"])
def test_task_descriptors_come_from_the_config_and_follow_the_networks_dtype(tmp_path, source):
    from metazoo.build import build_objective, resolve_config
    from metazoo.config import from_dict

    from .conftest import toy_dataset

    z = [[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]]
    value = z
    if source == "csv":
        (tmp_path / "z.csv").write_text("a,b,c\n1,0.5,0\n0,2,1\n")
        value = str(tmp_path / "z.csv")
    data = toy_dataset(class_sizes=(8,) * 6, side=16)
    config = from_dict({"learner": {"name": "multitask", "sharing": "film", "hidden": 4},
                        "backbone": {"name": "conv4", "width": 4},
                        "multitask": {"tasks": "class_groups", "groups": 2, "descriptors": value, "items_per_task": 4},
                        "train": {"steps": 2, "meta_batch_size": 2}})
    config = resolve_config(config, data, tmp_path)
    assert config.learner["descriptor_size"] == 3
    objective = build_objective(config)
    items = objective.training_items(data, config)
    torch.testing.assert_close(objective.net.descriptors, torch.tensor(z))
    assert items[0].inputs.shape[0] == 4
    assert objective.double().net.descriptors.dtype == torch.float64
    bad = from_dict({**config.to_dict(), "multitask": {**config.to_dict()["multitask"], "descriptors": [[1.0]]}})
    with pytest.raises(ValueError, match="1 descriptors for 2 tasks"):
        objective.training_items(data, bad)
    moved = from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "translate": 2}})
    with pytest.raises(ValueError, match="train.translate = 2 moves the images of few-shot episodes"):
        objective.training_items(data, moved)
    turned = from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "rotate": 15}})
    with pytest.raises(ValueError, match="train.rotate = 15.0 moves the images of few-shot episodes"):
        objective.training_items(data, turned)


def test_the_study_keys_runs_by_their_settings():
    import importlib.util

    from metazoo.config import load_config

    spec = importlib.util.spec_from_file_location("study", os.path.join(REPO, "experiments", "multitask", "study.py"))
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    base = os.path.join(REPO, "experiments", "multitask", "alphabets.toml")
    keys = {study.run_key("FiLM", load_config(base, [f"train.steps={n}", *extra]))
            for n, extra in [(100, []), (200, []), (100, ["learner.hidden=64"])]}
    assert len(keys) == 3
    assert study.run_key("FiLM", load_config(base, ["train.steps=100"])) in keys  # the same settings, the same run
