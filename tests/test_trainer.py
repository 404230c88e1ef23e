import json

import pytest
import torch

from metazoo.config import from_dict
from metazoo.trainer import RunExistsError, meta_train


def tiny_config(data_root, **train):
    return from_dict({
        "data": {"dataset": "omniglot", "root": str(data_root)},
        "backbone": {"name": "conv4", "width": 16},
        "train": {"steps": 4, "ways": 5, "shots": 1, "queries": 2, "val_every": 2, "val_episodes": 5,
                  "log_every": 1, "device": "cpu", **train},
        "optim": {"lr": 1e-3, "step_size": 3, "gamma": 0.5},
        "eval": {"episodes": 10},
    })


def test_run_directory_holds_everything(tmp_path, data_root):
    summary = meta_train(tiny_config(data_root), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "result.json", "results.jsonl"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["split"] == "val"] == [2, 4]
    assert rows[-2]["lr"] == 0.5e-3  # halved after step 3
    result = json.loads((run / "result.json").read_text())
    assert result["protocol"] == {"dataset": "omniglot", "split": "test", "ways": 5, "shots": 1, "queries": 15,
                                  "seed": 1000, "class_split": "vinyals", "image_size": 28, "rotations": "classes",
                                  "episodes": 10, "bn": "running",
                                  "protocol": "episodic", "checkpoint": "best", "step": summary["best"]["step"],
                                  "train_split": "train"}
    assert 0 <= result["mean"] <= 1 and result["episodes"] == 10


def test_resume_continues_exactly(tmp_path, data_root):
    straight = tmp_path / "straight"
    meta_train(tiny_config(data_root), straight, progress=False, test=False)
    parted = tmp_path / "parted"
    meta_train(tiny_config(data_root, steps=2), parted, progress=False, test=False)  # "interrupted" at step 2
    with pytest.raises(RunExistsError, match="--resume"):
        meta_train(tiny_config(data_root), parted, progress=False, test=False)
    meta_train(tiny_config(data_root), parted, resume=True, progress=False, test=False)
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(parted / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for name, value in a["learner"].items():
        torch.testing.assert_close(value, b["learner"][name], rtol=1e-5, atol=1e-6, msg=name)
    steps = [json.loads(line)["step"] for line in (parted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (straight / "metrics.jsonl").read_text().splitlines()]


def test_a_wall_clock_budget_stops_cleanly_and_a_larger_one_continues_exactly(tmp_path, data_root, monkeypatch):
    straight = tmp_path / "straight"
    meta_train(tiny_config(data_root, steps=6, val_every=3), straight, progress=False, test=False)
    from metazoo.trainer import Training

    # A clock on which every step takes one second (a real one, under load, may spend a tiny budget before step 1)
    monkeypatch.setattr(Training, "seconds", lambda self: float(self.step) + 1e-3)
    run = tmp_path / "budget"
    summary = meta_train(tiny_config(data_root, steps=6, val_every=3, max_minutes=2.5 / 60), run, progress=False)
    assert summary["stopped"] == "budget" and summary["steps"] == 3  # the first step past 2.5 s
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["step"] == summary["steps"] and last["train_seconds"] > 0  # checkpointed where it stopped
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {**rows[-1], "split": "stop", "reason": "budget", "step": summary["steps"]}
    assert rows[-2]["split"] == "val" and rows[-2]["step"] == summary["steps"]
    assert "result.json" in {p.name for p in run.iterdir()}  # the budget-stopped run is tested as it is
    again = meta_train(tiny_config(data_root, steps=6, val_every=3, max_minutes=2.5 / 60), run, resume=True,
                       progress=False, test=False)
    assert again["steps"] == summary["steps"]  # the same budget: nothing more, weights untouched
    assert torch.equal(torch.load(run / "last.pt", weights_only=True)["learner"]["backbone.blocks.0.0.weight"],
                       last["learner"]["backbone.blocks.0.0.weight"])
    done = meta_train(tiny_config(data_root, steps=6, val_every=3, max_minutes=60), run, resume=True,
                      progress=False, test=False)
    assert done["steps"] == 6 and done["stopped"] is None
    a, b = torch.load(straight / "last.pt", weights_only=True), torch.load(run / "last.pt", weights_only=True)
    for name, value in a["learner"].items():
        torch.testing.assert_close(value, b["learner"][name], rtol=1e-5, atol=1e-6, msg=name)
    assert b["train_seconds"] >= last["train_seconds"]


def test_trainval_training_is_recorded(tmp_path, data_root):
    summary = meta_train(tiny_config(data_root, steps=1, split="trainval"), tmp_path / "run", progress=False)
    assert summary["test"]["protocol"]["train_split"] == "trainval"
    assert 'split = "trainval"' in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.slow
def test_short_real_training_beats_chance(tmp_path, data_root):
    """ProtoNet trained for 100 steps on real Omniglot: 5-way 1-shot test accuracy far above 20% chance."""
    torch.manual_seed(0)
    config = from_dict({
        "data": {"dataset": "omniglot", "root": str(data_root)},
        "train": {"steps": 100, "ways": 20, "shots": 1, "queries": 5, "val_every": 0, "val_episodes": 20,
                  "device": "cpu"},
        "eval": {"episodes": 200},
    })
    summary = meta_train(config, tmp_path / "run", progress=False)
    test = summary["test"]
    assert test["episodes"] == 200
    assert test["mean"] - test["ci95"] > 0.6, test


def test_tensorboard_gets_the_metrics_rows(tmp_path, data_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    meta_train(tiny_config(data_root, steps=2, tensorboard=True), tmp_path / "run", progress=False, test=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("val/accuracy")] == [2]


def test_rmsprop_takes_the_step_computed_by_hand():
    """optim.name = "rmsprop" (MANN's optimiser): squared-gradient average with decay alpha, momentum on the
    scaled gradient."""
    from metazoo.registry import OPTIMIZERS
    from metazoo.reproduce import training_key

    config = from_dict({"optim": {"name": "rmsprop", "lr": 0.1, "alpha": 0.95, "momentum": 0.9}})
    weights = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = OPTIMIZERS.get_factory("rmsprop")([weights], config.optim)
    expected, average, velocity = weights.detach().clone(), torch.zeros(2), torch.zeros(2)
    for _ in range(3):
        optimizer.zero_grad()
        (weights ** 2).sum().backward()
        optimizer.step()
        grad = 2 * expected
        average = 0.95 * average + 0.05 * grad ** 2
        velocity = 0.9 * velocity + grad / (average.sqrt() + 1e-8)
        expected = expected - 0.1 * velocity
    torch.testing.assert_close(weights.detach(), expected)
    # the default is left out of the key (tests/test_reproduce.py: every record's run keeps its name); others count
    assert training_key(from_dict({"optim": {"alpha": 0.95}})) != training_key(from_dict({}))


def test_gradient_clipping_scales_all_gradients_or_each_module_to_the_norm_by_hand():
    """optim.clip_norm: the gradient scaled to that L2 norm where longer; clip_scope "module" bounds each top-level
    module's on its own (Relation Networks' code clips its two networks so). Against the norms computed by hand."""
    from metazoo.optim import clip_gradients
    from metazoo.reproduce import training_key

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    grads = [torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]), torch.tensor([0.0, 12.0]),
             torch.tensor([[0.1, 0.0]]), torch.tensor([0.0])]

    def clipped(**optim):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        clip_gradients(model, from_dict({"optim": optim}).optim)
        return [p.grad for p in model.parameters()]

    for got, g in zip(clipped(), grads):
        assert torch.equal(got, g)  # clip_norm = 0: untouched
    total = (25 + 144 + 0.01) ** 0.5
    for got, g in zip(clipped(clip_norm=1.0), grads):
        torch.testing.assert_close(got, g / total, rtol=1e-5, atol=1e-7)  # one vector of norm 1
    first, second = clipped(clip_norm=1.0, clip_scope="module")[:2], clipped(clip_norm=1.0, clip_scope="module")[2:]
    for got, g in zip(first, grads[:2]):
        torch.testing.assert_close(got, g / 13.0, rtol=1e-5, atol=1e-7)  # the first module: norm 13 -> 1
    for got, g in zip(second, grads[2:]):
        assert torch.equal(got, g)  # the second: norm 0.1, under the bound
    assert training_key(from_dict({})) == training_key(from_dict({"optim": {"clip_scope": "module"}}))  # 0: off
    assert training_key(from_dict({"optim": {"clip_norm": 0.5}})) != training_key(from_dict({}))


def test_a_clipped_training_step_equals_sgd_on_the_gradient_clipped_by_hand(tmp_path, data_root):
    from metazoo.trainer import prepare

    config = tiny_config(data_root, steps=1, val_every=1)  # SGD: unlike Adam's first step, moved by the scale
    config.optim.name, config.optim.lr, config.optim.momentum = "sgd", 0.5, 0.0
    config.optim.clip_norm, config.optim.clip_scope = 0.01, "module"
    meta_train(config, tmp_path / "run", progress=False, test=False)
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["learner"]
    reference = prepare(config, tmp_path / "again", data_root, test=False)  # the same seeded start and items
    start = {k: v.clone() for k, v in reference.objective.state_dict().items()}
    reference.objective.train()
    reference.objective.meta_backward([reference.items[0]])
    norm = torch.cat([p.grad.flatten() for p in reference.objective.parameters()]).norm()  # ProtoNet: one module
    assert norm > 0.01  # the bound binds
    with torch.no_grad():
        for p in reference.objective.parameters():
            p -= 0.5 * p.grad * 0.01 / (norm + 1e-6)
    for name, value in reference.objective.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=1e-5, atol=1e-6, msg=name)
    unclipped = tmp_path / "plain"
    config.optim.clip_norm = 0.0
    meta_train(config, unclipped, progress=False, test=False)
    plain = torch.load(unclipped / "last.pt", weights_only=False)["learner"]
    moved = [float((plain[k] - start[k]).norm() / (trained[k] - start[k]).norm()) for k in trained
             if k.endswith("weight")]
    assert min(moved) > 5  # unclipped, the same step moves every weight much further
