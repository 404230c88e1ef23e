"""Training and evaluation across processes (torch.distributed, gloo on the CPU) give what one process gives.

One 2-process group (``torch.multiprocessing.spawn``) trains ProtoNet, trains MAML in two sessions (the
second ``--resume``s), and evaluates a one-process run; the one-process references run in the test
process. Each rank takes items ``r, r + 2, ...`` of every step's meta-batch; gradients are averaged.
Under torchrun, a process that dies stops the other with a one-line error, and ``--resume`` finishes the run.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from metazoo.config import dump_toml, from_dict
from metazoo.trainer import meta_train
from metazoo.trainer import test_run as reevaluate

pytestmark = pytest.mark.distributed

STEPS = 4
# SGD, whose update is the averaged gradient itself. (Adam would turn the float noise of gradients that are 0
# in exact arithmetic, a conv bias before BatchNorm, into steps of size lr and random sign, in any two runs.)
# BatchNorm's running statistics: each rank's moving average over its share, averaged over the ranks, so
# not one process's moving average over all the items (docs/distributed.md); MAML (transductive) keeps none
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def tiny(data_root, learner: str, **train) -> dict:
    return {"learner": {"name": learner}, "data": {"dataset": "omniglot", "root": str(data_root)},
            "backbone": {"name": "conv4", "width": 8},
            "train": {"steps": STEPS, "ways": 5, "queries": 2, "meta_batch_size": 2, "val_every": 2,
                      "val_episodes": 3, "log_every": 1, "device": "cpu", **train},
            "optim": {"name": "sgd", "lr": 0.1},  # see below
            "eval": {"episodes": 5}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, world: int, port: int, jobs: list) -> None:
    """One rank of the group: torchrun's environment, one process-group session, the jobs in order."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from metazoo import distributed

    with distributed.session(torch.device("cpu")):
        for job, *args in jobs:
            if job == "train":
                config, run_dir, resume = args
                meta_train(from_dict(config), run_dir, resume=resume, progress=False)
            elif job == "budget":  # rank 1 alone finds the budget spent from step 3 on: both stop there
                config, run_dir = args
                from metazoo.trainer import Training

                Training.over_budget = lambda self: rank == 1 and self.step >= 3
                meta_train(from_dict(config), run_dir, progress=False, test=False)
            elif job == "eval":  # a run's last weights, the result written by rank 0 to `out`
                run_dir, out = args
                result = reevaluate(run_dir, "last", write=False)
                if distributed.is_main():
                    with open(out, "w") as f:
                        json.dump(result.to_dict(), f)
            else:  # "reduce": rank r contributes gradients r + 1, buffers 10 (r + 1), its metrics, with share 1/2
                reduce_once(rank, *args)


def reduce_once(rank: int, out: str) -> None:
    from metazoo import distributed

    with_grad, without = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    with_grad.grad = torch.full((3,), rank + 1.0)
    buffer, count = torch.full((2,), 10.0 * (rank + 1)), torch.tensor(rank + 1)  # count: not a float, kept
    stats, raised = distributed.reduce_step([with_grad, without], [buffer, count],
                                            {"loss": torch.tensor(float(rank)), "accuracy": 0.5 + 0.5 * rank}, 0.5,
                                            [rank == 1, False, rank == 0])  # flags: the ranks' reasons to stop
    if distributed.is_main():
        with open(out, "w") as f:
            json.dump({"grad": with_grad.grad.tolist(), "no_grad": without.grad is None, "buffer": buffer.tolist(),
                       "count": int(count), "stats": {k: float(v) for k, v in stats.items()}, "raised": raised}, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """One process: ProtoNet and MAML for STEPS steps. Two processes: the same, MAML stopped at step 2 and
    resumed, an evaluation of the one-process ProtoNet run, one reduction of made-up gradients, and a run whose
    budget only rank 1 finds spent."""
    root = tmp_path_factory.mktemp("distributed")
    torch.set_num_threads(1)
    for learner in ("protonet", "maml"):
        meta_train(from_dict(tiny(data_root, learner)), root / "one" / learner, progress=False)
    jobs = [("train", tiny(data_root, "protonet"), str(root / "two" / "protonet"), False),
            ("train", tiny(data_root, "maml", steps=2), str(root / "two" / "maml"), False),
            ("train", tiny(data_root, "maml"), str(root / "two" / "maml"), True),
            ("eval", str(root / "one" / "protonet"), str(root / "two" / "eval.json")),
            ("reduce", str(root / "two" / "reduce.json")),
            ("budget", tiny(data_root, "protonet", steps=6, val_every=0), str(root / "two" / "budget"))]
    mp.spawn(rank_main, args=(2, free_port(), jobs), nprocs=2)
    return root


def weights(run_dir, skip=BUFFERS) -> dict:
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == STEPS
    return {k: v for k, v in state["learner"].items() if not k.endswith(skip)}


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_two_processes_train_the_weights_one_process_does(runs, learner):
    one, two = weights(runs / "one" / learner), weights(runs / "two" / learner)
    assert one.keys() == two.keys() and one
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    rows = [json.loads(line) for line in (runs / "two" / learner / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, STEPS + 1))  # rank 0 alone wrote
    reference = [json.loads(line) for line in (runs / "one" / learner / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(rows, reference):  # the logged loss is the whole meta-batch's
        if mine["split"] == "train":
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)


def test_the_step_reduction_averages_gradients_buffers_and_metrics_by_share(runs):
    reduced = json.loads((runs / "two" / "reduce.json").read_text())
    assert reduced == {"grad": [1.5, 1.5, 1.5], "no_grad": True, "buffer": [15.0, 15.0], "count": 1,
                       "stats": {"accuracy": 0.75, "loss": 0.5}, "raised": [True, False, True]}


def test_the_ranks_stop_at_the_same_step_when_one_finds_the_budget_spent(runs):
    """The reasons to stop ride in the step's gradient all-reduce (gloo): rank 1's budget, spent after step 3,
    stops rank 0 there too, and the stop is recorded once, with a checkpoint of step 3."""
    run = runs / "two" / "budget"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
    assert rows[-1]["split"] == "stop" and rows[-1]["reason"] == "budget" and rows[-1]["step"] == 3
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3


def test_pin_cores_gives_each_local_rank_its_own_block_of_cores(monkeypatch):
    from metazoo import distributed

    bound = {}
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0, 2, 3, 5, 6, 7}, raising=False)
    monkeypatch.setattr(distributed.os, "sched_setaffinity", lambda tid, cores: bound.update({tid: list(cores)}),
                        raising=False)
    assert distributed.pin_cores(2) is None and not bound  # one process: nothing to share
    monkeypatch.setenv("WORLD_SIZE", "4")  # 2 machines x 2 processes: local rank 1 of 2 takes the second block
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.pin_cores(3) == [5, 6, 7]
    assert bound and all(cores == [5, 6, 7] for cores in bound.values())  # every thread of the process
    bound.clear()
    with pytest.raises(ValueError, match=r"2 processes x 4 threads \(OMP_NUM_THREADS\) need 8 cores, but this "
                                         r"process may use 6 \(\[0, 2, 3, 5, 6, 7\]\)"):
        distributed.pin_cores(4)
    assert not bound  # nothing bound before the error


def test_evaluation_across_two_processes_equals_one_process(runs):
    mine = reevaluate(runs / "one" / "protonet", "last", write=False)
    theirs = json.loads((runs / "two" / "eval.json").read_text())
    assert theirs["episodes"] == mine.episodes == 5  # 3 episodes on rank 0, 2 on rank 1, gathered in order
    assert (theirs["mean"], theirs["ci95"]) == (mine.mean, mine.ci95)
    assert theirs["loss"] == pytest.approx(mine.loss, rel=1e-6)
    assert theirs["protocol"] == mine.protocol
    assert mine.device == "cpu" and theirs["device"] == "2 x cpu"  # where it ran is recorded
    result = json.loads((runs / "two" / "maml" / "result.json").read_text())
    assert result["device"] == "2 x cpu" and result["episodes"] == 5


def test_a_meta_batch_that_does_not_divide_by_the_processes_fails_at_start(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="meta_batch_size = 3 does not divide by the 2 processes"):
        meta_train(from_dict(tiny(data_root, "protonet", meta_batch_size=3)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # before any process group or directory


def test_a_multitask_objective_is_refused_across_processes(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = tiny(data_root, "multitask")
    with pytest.raises(ValueError, match="'multitask' cannot train across processes"):
        meta_train(from_dict(config), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


REPO = Path(__file__).resolve().parents[1]


def torchrun(config: Path, run_dir: Path, logs: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m metazoo.cli train CONFIG -o RUN ...`` on the CPU, each rank's output in
    ``logs`` (``logs/*/attempt_0/RANK/stderr.log``); killed, with its processes, if it runs past a minute."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--log-dir", str(logs), "--redirects", "3", "-m", "metazoo.cli", "train", str(config),
               "-o", str(run_dir), "-q", *args]
    with subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True) as p:
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise AssertionError(f"torchrun {' '.join(args)} still ran after a minute: a process hung") from None
    return subprocess.CompletedProcess(command, p.returncode, out)


def rank_output(logs: Path, rank: int) -> str:
    (path,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
    return path.read_text()


def test_a_rank_that_dies_stops_the_other_with_one_line_and_the_run_resumes_from_its_checkpoint(tmp_path, data_root):
    """Rank 1 exits without a word (``os._exit``, tests/dying_learner.py) at step 3 of 4; the checkpoint is step 2."""
    values = tiny(data_root, "protonet_dying_test")
    values["plugins"] = ["tests.dying_learner"]
    (tmp_path / "run.toml").write_text(dump_toml(values))
    run = tmp_path / "run"
    died = torchrun(tmp_path / "run.toml", run, tmp_path / "logs", METAZOO_TEST_DIE_AT="3")
    assert died.returncode != 0 and "exitcode  : 1" in died.stdout  # torchrun names rank 1's exit as the cause
    survivor = rank_output(tmp_path / "logs", 0)
    assert "Traceback" not in survivor
    (line,) = [line for line in survivor.splitlines() if line.startswith("metazoo: error:")]
    assert line.startswith("metazoo: error: rank 0 of 2: the gradient all-reduce across the processes failed (")
    assert "by peer" in line  # gloo's words: "Connection closed by peer" or "... reset by peer", with its address
    assert line.endswith(f"another process of the run has died or stopped answering; stopped at step 3 of 4, and its "
                         f"last checkpoint is {run / 'last.pt'} (step 2): once every process can run, continue "
                         "with the same torchrun command and --resume")
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2 and not (run / "result.json").exists()

    resumed = torchrun(tmp_path / "run.toml", run, tmp_path / "logs2", "--resume", "--set", "train.pin_cores=true")
    assert resumed.returncode == 0, "\n".join([resumed.stdout[-3000:], *(f"rank {rank}:\n" + rank_output(
        tmp_path / "logs2", rank) for rank in (0, 1))])  # torchrun's account and both ranks' own
    assert torch.load(run / "last.pt", weights_only=True)["step"] == STEPS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]  # step 3 of the dead session: gone
    assert json.loads((run / "result.json").read_text())["device"] == "2 x cpu"


def test_two_machines_with_a_rendezvous_train_the_weights_one_process_does(runs, tmp_path, data_root):
    """docs/distributed.md's several-machines command, both "machines" here: two torchrun launchers of one process
    each (``--nnodes=2``, a c10d rendezvous), so each process is local rank 0 of its machine and global rank 0 or
    1, in one run directory (the shared storage); rank 0 alone writes, and the weights are one process's."""
    (tmp_path / "run.toml").write_text(dump_toml(tiny(data_root, "protonet")))
    run, port = tmp_path / "run", free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-machines",
               "-m", "metazoo.cli", "train", str(tmp_path / "run.toml"), "-o", str(run), "-q"]
    machines = [subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
                for _ in range(2)]
    outputs = []
    for p in machines:
        try:
            outputs.append(p.communicate(timeout=90)[0])
        except subprocess.TimeoutExpired:
            for q in machines:
                os.killpg(q.pid, signal.SIGKILL)
            raise AssertionError("a machine's torchrun still ran after 90 s: a process hung") from None
    assert [p.returncode for p in machines] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    one, two = weights(runs / "one" / "protonet"), weights(run)
    assert one.keys() == two.keys() and one
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, STEPS + 1))  # rank 0 alone wrote
    assert json.loads((run / "result.json").read_text())["device"] == "2 x cpu"  # tested across both
