"""Runs that cannot lie: a run killed with SIGKILL mid-training and resumed ends bit-identical to one
trained straight through, for one learner of every family (metric, gradient, sequence, multi-task).

Each test trains a tiny config straight through in this process; starts the same run in a child
process and kills it (SIGKILL, no clean-up) once it has checkpointed and trained on past the
checkpoint; resumes it here; and compares the two runs' checkpoints (weights, optimiser, schedule,
step, best) with ``torch.equal`` and their metric rows value for value. The child runs with this
process's thread count, so both compute in the same order.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metazoo.config import from_dict
from metazoo.trainer import meta_train

REPO = Path(__file__).resolve().parents[1]
STEPS, VAL_EVERY = 24, 4
KILL_AFTER = VAL_EVERY + VAL_EVERY // 2  # the child is killed once it has logged this step, between checkpoints
STARTUP_SECONDS = 120  # the longest wait for the child to reach step KILL_AFTER before the test skips
CHILD = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[3])); "
         "from metazoo.config import from_dict; from metazoo.trainer import meta_train; "
         "meta_train(from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False, test=False)")

FAMILIES = {
    "protonet": {"learner": {"name": "protonet"}},
    "maml": {"learner": {"name": "maml", "inner_steps": 1}, "train": {"meta_batch_size": 2}},
    "lstm": {"learner": {"name": "lstm", "hidden": 16}},
    "mann-online": {"learner": {"name": "mann", "hidden": 16, "slots": 8, "slot_size": 4, "heads": 1, "online": True},
                    "eval": {"protocol": "online"}},
    "multitask": {"learner": {"name": "multitask", "sharing": "multihead", "hidden": 16, "weighting": "dwa"},
                  "multitask": {"tasks": "alphabets", "items_per_task": 4, "holdout": [0.9, 0.03]},
                  "train": {"meta_batch_size": 3}, "eval": {"protocol": "multitask"}},
}


def tiny_config(data_root, family: str) -> dict:
    """Conv-4 of width 8 on Omniglot, 5-way 1-shot with one query per class, tiny validations."""
    config = {"data": {"dataset": "omniglot", "root": str(data_root)}, "backbone": {"name": "conv4", "width": 8},
              "train": {"steps": STEPS, "ways": 5, "shots": 1, "queries": 1, "val_every": VAL_EVERY,
                        "val_episodes": 2, "log_every": 1, "device": "cpu"},
              "optim": {"lr": 1e-3, "step_size": 10, "gamma": 0.5}, "eval": {"queries": 2, "episodes": 2}}
    for section, values in FAMILIES[family].items():
        config[section] = {**config.get(section, {}), **values}
    return config


def metric_rows(run_dir: Path) -> list[dict]:
    """The complete rows of ``metrics.jsonl`` (a line still being written is left out)."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def kill_mid_run(config: dict, run_dir: Path) -> tuple[int, int]:
    """Start the run in a child process and SIGKILL it once it has written its first checkpoint and
    logged step ``KILL_AFTER``; (the first checkpoint's step, the last step it logged)."""
    threads = torch.get_num_threads()
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config), str(run_dir), str(threads)],
                             cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, first = time.monotonic() + STARTUP_SECONDS, None
    try:
        while child.poll() is None:
            rows = metric_rows(run_dir)
            first = first or next((r["step"] for r in rows if r["split"] == "val"), None)
            if first is not None and any(r["split"] == "train" and r["step"] >= KILL_AFTER for r in rows):
                child.send_signal(signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                pytest.skip(f"the child run had not checkpointed and logged step {KILL_AFTER} within "
                            f"{STARTUP_SECONDS} s: machine too slow")
            time.sleep(0.002)
    finally:
        if child.poll() is None:
            child.kill()
        stderr = child.communicate()[1].decode()
    if child.returncode == 0:
        pytest.skip(f"the child run finished all {STEPS} steps before it could be killed: machine too fast")
    assert child.returncode == -signal.SIGKILL, f"the child run failed:\n{stderr}"
    return first, max(r["step"] for r in metric_rows(run_dir))


def assert_same(a, b, where: str = "") -> None:
    """Nested checkpoint contents equal: tensors bit for bit (``torch.equal``, NaN where NaN), the rest by ``==``."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        same_nans = a.is_floating_point() and torch.equal(a.isnan(), b.isnan())  # NaN is not equal to itself
        assert a.dtype == b.dtype, where
        assert torch.equal(a, b) or same_nans and torch.equal(a.nan_to_num(), b.nan_to_num()), where
    else:
        assert a == b, where


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_killed_and_resumed_run_ends_bit_identical_to_a_straight_one(tmp_path, data_root, family):
    config = tiny_config(data_root, family)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    meta_train(from_dict(config), straight, progress=False, test=False)
    first, at_kill = kill_mid_run(config, killed)
    if at_kill >= STEPS:
        pytest.skip(f"the child run logged all {STEPS} steps before it was killed: machine too fast")
    resumed_from = torch.load(killed / "last.pt", weights_only=True)["step"]
    assert first == VAL_EVERY <= resumed_from <= at_kill and first < at_kill < STEPS, (first, resumed_from, at_kill)
    meta_train(from_dict(config), killed, resume=True, progress=False, test=False)
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(run / name, weights_only=True) for run in (straight, killed))
        for key in ("step", "best", "learner", "optimizer", "scheduler"):
            assert_same(a[key], b[key], f"{name}:{key}")
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(killed)]
    steps = [(r["step"], r["split"]) for r in rows]
    assert len(steps) == len(set(steps)), "metrics.jsonl repeats steps"
    assert rows == [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(straight)]
