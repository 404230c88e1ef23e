"""The ``metazoo`` command under glibc's malloc tunables (metazoo.allocator): when it restarts, with what, and
that training under them computes the same weights, bit for bit."""
import os
import platform
import subprocess
import sys

import pytest
import torch

from metazoo import allocator, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736"
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_the_environment_adds_the_tunables_once_and_respects_the_users():
    assert allocator.environment({"PATH": "/bin"}, ("glibc", "2.36")) == {"PATH": "/bin", "GLIBC_TUNABLES": OURS}
    kept = allocator.environment({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}, ("glibc", "2.36"))
    assert kept["GLIBC_TUNABLES"] == "glibc.rtld.optional_static_tls=512:" + OURS  # another tunable stays
    assert allocator.environment({"GLIBC_TUNABLES": OURS}, ("glibc", "2.36")) is None  # the second start goes on
    assert allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, ("glibc", "2.36")) is None
    assert allocator.environment({"METAZOO_MALLOC": "system"}, ("glibc", "2.36")) is None
    older = allocator.environment({}, ("glibc", "2.31"))  # no glibc.malloc.hugetlb before 2.35
    assert older["GLIBC_TUNABLES"] == "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736"
    for libc in [("glibc", "2.17"), ("", ""), ("musl", "1.2"), ("glibc", "unknown")]:
        assert allocator.environment({}, libc) is None


def test_the_command_runs_tune_before_anything_else(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "tune", lambda: calls.append("tune"))
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 0)
    assert cli.run() == 0 and calls == ["tune", "main"]


@pytest.mark.skipif(not GLIBC, reason="glibc's tunables: Linux with glibc only")
def test_tune_starts_the_process_again_once_with_the_tunables(tmp_path):
    starts = tmp_path / "starts"
    code = ("import os, sys; open(sys.argv[1], 'a').write(os.environ.get('GLIBC_TUNABLES', '-') + '\\n'); "
            "from metazoo.allocator import tune; tune(); print('after', os.environ['GLIBC_TUNABLES'])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "METAZOO_MALLOC")}
    env["PYTHONPATH"] = REPO
    done = subprocess.run([sys.executable, "-c", code, str(starts)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert starts.read_text().splitlines() == ["-", OURS] and done.stdout.strip() == f"after {OURS}"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "system")], capture_output=True, text=True,
                          env={**env, "METAZOO_MALLOC": "system"})
    assert (tmp_path / "system").read_text().splitlines() == ["-"]


@pytest.mark.skipif(not GLIBC, reason="glibc's tunables: Linux with glibc only")
def test_training_under_the_tunables_gives_the_same_weights(tmp_path, data_root):
    """Two runs of ``python -m metazoo.cli train`` (which tunes), one with ``METAZOO_MALLOC=system``: equal
    weights after the same steps."""
    config = os.path.join(REPO, "experiments", "omniglot", "protonet_5w1s.toml")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "METAZOO_MALLOC")}
    env.update(PYTHONPATH=REPO, METAZOO_DATA=str(data_root), OMP_NUM_THREADS="1")
    weights = []
    for name, extra in [("tuned", {}), ("system", {"METAZOO_MALLOC": "system"})]:
        done = subprocess.run([sys.executable, "-m", "metazoo.cli", "train", config, "-o", str(tmp_path / name), "-q",
                               "--no-test", "--set", "train.steps=3", "--set", "train.ways=20",
                               "--set", "train.val_episodes=2"],
                              capture_output=True, text=True, cwd=REPO, env={**env, **extra})
        assert done.returncode == 0, done.stderr
        weights.append(torch.load(tmp_path / name / "last.pt", weights_only=True)["learner"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
