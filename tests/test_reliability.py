"""Runs that cannot lie: resume guards, non-finite losses, settings checked before training, and
interrupted or repeated runs (docs/reliability.md)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metazoo.config import ConfigError, from_dict
from metazoo.errors import NonFiniteLossError, RunLockedError
from metazoo.run import RunLock
from metazoo.trainer import meta_train

REPO = Path(__file__).resolve().parents[1]


def tiny(data_root, learner="protonet", **train):
    return from_dict({
        "learner": {"name": learner}, "data": {"dataset": "omniglot", "root": str(data_root)},
        "backbone": {"name": "conv4", "width": 8},
        "train": {"steps": 4, "ways": 5, "queries": 2, "val_every": 2, "val_episodes": 3, "log_every": 1,
                  "device": "cpu", **train},
        "eval": {"episodes": 4}})


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"bare {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


# --- 1. --resume with a different config --------------------------------------------------------
def test_resume_refuses_a_changed_config_naming_the_key_and_keeps_the_run(tmp_path, data_root):
    run = tmp_path / "run"
    meta_train(tiny(data_root, steps=2), run, progress=False, test=False)
    saved = (run / "config.toml").read_text()
    for change, message in [({"learner": "matching"}, "learner.name: 'protonet' in the checkpoint, 'matching' now"),
                            ({"lr": 0.01}, "optim.lr: 0.001 in the checkpoint, 0.01 now")]:
        config = tiny(data_root, learner=change.get("learner", "protonet"), steps=4)
        config.optim.lr = change.get("lr", config.optim.lr)
        with pytest.raises(ValueError, match=message):
            meta_train(config, run, resume=True, progress=False, test=False)
        assert (run / "config.toml").read_text() == saved  # written only once the checkpoint loaded
    summary = meta_train(tiny(data_root, steps=4, max_minutes=30), run, resume=True, progress=False, test=False)
    assert summary["steps"] == 4  # the budgets may change


# --- 3. a non-finite loss stops the run ------------------------------------------------------------
def test_a_non_finite_loss_stops_at_once_and_leaves_no_poisoned_checkpoint(tmp_path, data_root):
    run = tmp_path / "run"
    config = tiny(data_root, steps=6, val_every=1)
    config.optim.lr = float("inf")
    with pytest.raises(NonFiniteLossError, match="step [12]"):
        meta_train(config, run, progress=False)
    for name in ("best.pt", "last.pt"):
        if (run / name).exists():
            state = torch.load(run / name, weights_only=True)
            assert all(torch.isfinite(v).all() for v in state["learner"].values() if v.is_floating_point()), name
    assert not (run / "result.json").exists()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        strict_json(line)


def test_results_are_strict_json_even_when_a_metric_is_undefined(tmp_path):
    from metazoo.evaluate import EvalResult, write_result

    write_result(EvalResult(float("nan"), float("nan"), 0, {"protocol": "multitask"}), tmp_path)
    assert strict_json((tmp_path / "result.json").read_text())["mean"] is None


# --- 7. settings checked before anything runs --------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("train.steps=0", "train.steps = 0: expected at least 1"),
    ("train.log_every=0", "train.log_every = 0: expected at least 1"),
    ("eval.episodes=1e2", "eval.episodes = 100.0: expected an integer"),
    ("train.steps=abc", "train.steps = 'abc': expected an integer"),
])
def test_bad_settings_fail_at_load_naming_the_key(override, message):
    from metazoo.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "experiments" / "omniglot" / "protonet_5w1s.toml", [override])


def test_an_impossible_test_episode_fails_before_training(tmp_path, data_root):
    config = tiny(data_root)
    config.eval.shots = 30  # Omniglot classes have 20 images
    with pytest.raises(ValueError, match="need 45 images per class"):
        meta_train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- 8. interrupted and repeated runs -----------------------------------------------------------
def test_a_run_that_died_before_its_first_checkpoint_starts_clean(tmp_path, data_root, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 9.0}\n{"step": 2, "spl')
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    meta_train(tiny(data_root), run, resume=True, progress=False, test=False)
    assert "holds no checkpoint" in caplog.text  # --resume without a checkpoint says it starts over
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4] and 9.0 not in [json.loads(x).get("loss") for x in
                                                       (run / "metrics.jsonl").read_text().splitlines()]
    assert not list(run.glob(".*.tmp"))


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, data_root, caplog):
    run = tmp_path / "run"
    meta_train(tiny(data_root, steps=2), run, progress=False, test=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tr')
    meta_train(tiny(data_root, steps=4), run, resume=True, progress=False, test=False)
    assert "cut short by an interrupted write" in caplog.text
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4]


def test_two_processes_on_one_run_directory_are_refused(tmp_path, data_root):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            meta_train(tiny(data_root), run, progress=False, test=False)
    meta_train(tiny(data_root), run, progress=False, test=False)  # free again


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="the kernel's lock table is Linux's")
def test_the_process_training_in_a_run_is_found_without_taking_its_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert RunLock.holder(run) is None  # no lock file
    with RunLock(run):
        assert RunLock.holder(run) == os.getpid()
        assert RunLock.holder(tmp_path) is None
    assert RunLock.holder(run) is None  # the file stays, the lock is gone
    ino = (run / ".lock").stat()
    where = f"{os.major(ino.st_dev):02x}:{os.minor(ino.st_dev):02x}:{ino.st_ino}"
    table = tmp_path / "locks"  # a waiter's line and other files' locks are not the holder
    table.write_text(f"1: POSIX  ADVISORY  WRITE 11 {where} 0 EOF\n2: FLOCK  ADVISORY  WRITE 12 {where}9 0 EOF\n"
                     f"3: FLOCK  ADVISORY  WRITE 13 {where} 0 EOF\n3: -> FLOCK  ADVISORY  WRITE 14 {where} 0 EOF\n")
    assert RunLock.holder(run, table) == 13
    table.write_text(f"3: -> FLOCK  ADVISORY  WRITE 14 {where} 0 EOF\n")
    assert RunLock.holder(run, table) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_and_say_how_to_resume(tmp_path, data_root, signum):
    run = tmp_path / "run"
    config = REPO / "experiments" / "omniglot" / "protonet_5w1s.toml"
    args = [sys.executable, "-m", "metazoo.cli", "train", str(config), "-o", str(run), "-q", "--data-root",
            str(data_root), "--set", "train.steps=400", "--set", "train.ways=5", "--set", "train.val_every=2",
            "--set", "train.val_episodes=2", "--set", "backbone.width=8", "--set", "train.split=train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signum)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    stopped = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 2 <= stopped < 400
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["split"] == "stop" and rows[-1]["reason"] == "signal" and rows[-1]["step"] == stopped


def test_files_are_written_with_the_users_umask(tmp_path, data_root):
    old = os.umask(0o022)
    try:
        meta_train(tiny(data_root, steps=1), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for name in ("last.pt", "best.pt", "result.json", "config.toml", "metrics.jsonl"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
