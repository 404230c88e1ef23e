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
