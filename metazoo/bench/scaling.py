"""CPU scaling: training throughput of ProtoNet and MAML in one process or two (torchrun, gloo).

``metazoo bench --only scaling`` (or ``python -m metazoo.bench.scaling``) trains each learner with
``metazoo train`` in subprocesses, one configuration after the other:

- ``1 process x 1 thread`` and ``1 process x 2 threads`` (``OMP_NUM_THREADS`` 1 or 2);
- ``torchrun 2 x 1 thread``: ``python -m torch.distributed.run --standalone --nproc_per_node=2``, gloo,
  each rank taking half of every step's meta-batch;
- ``2 independent x 1 thread``: two 1-thread processes of the whole configuration side by side, the
  hardware's ceiling for two ranks (their throughputs summed).

Throughput is episodes (tasks) per second of the training loop alone: global meta-batch x the steps
between the first and the last logged ``train`` row of ``metrics.jsonl``, over the difference of those
rows' ``seconds`` (start-up, data loading and the first ``log_every`` steps, warm-up included, are left
out). The last column is each row's throughput over the two independent processes' sum.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..data import data_root
from .common import machine, table

CONFIGS = {
    # learner: (config, --set overrides, steps, log_every); the meta-batch divides by 2 ranks
    "protonet": ("experiments/omniglot/protonet_5w1s.toml",
                 ["train.ways=20", "train.meta_batch_size=2"], 90, 10),
    "maml": ("experiments/omniglot/maml_5w1s.toml", ["train.meta_batch_size=8"], 400, 50),
}
COMMON = ["train.split=train", "train.val_every=0", "train.val_episodes=5"]
SETUPS = ("1 x 1", "1 x 2", "torchrun 2 x 1", "2 independent x 1")
LABELS = {"1 x 1": "1 process", "1 x 2": "1 process", "torchrun 2 x 1": "torchrun (gloo)",
          "2 independent x 1": "2 independent processes"}
HEADER = ("learner", "configuration", "processes x threads", "episodes/s", "process wall s", "/ 2 independent")


def repo_file(path: str) -> Path:
    """A config of the repository's ``experiments/`` (metazoo/bench/../../)."""
    return Path(__file__).resolve().parents[2] / path


def train_command(learner: str, out: Path, root: Path, scale: float, torchrun: bool) -> tuple[list[str], int, int]:
    config, sets, steps, log_every = CONFIGS[learner]
    steps = max(2 * log_every, round(steps * scale / log_every) * log_every)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    command = [*launch, "-m", "metazoo.cli", "train", str(repo_file(config)), "-o", str(out), "-q", "--no-test",
               "--device", "cpu", "--data-root", str(root)]
    for item in [*COMMON, *sets, f"train.steps={steps}", f"train.log_every={log_every}"]:
        command += ["--set", item]
    return command, steps, int(sets[-1].split("=")[1])


def throughput(run: Path, meta_batch: int) -> float:
    """Episodes/s between the first and the last logged training row of ``run/metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    first, last = rows[0], rows[-1]
    return meta_batch * (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def launch(command: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, command: list[str]) -> None:
    output, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{output[-3000:]}")


def measure(learner: str, setup: str, root: Path, scale: float, work: Path) -> tuple[float, float]:
    """(episodes/s, wall seconds of the process(es)) of one configuration."""
    runs = [work / f"{learner}-{setup.replace(' ', '_')}-{i}" for i in range(2 if setup.startswith("2 ind") else 1)]
    threads = 2 if setup == "1 x 2" else 1
    commands = [train_command(learner, run, root, scale, setup.startswith("torchrun"))[0] for run in runs]
    meta_batch = train_command(learner, runs[0], root, scale, False)[2]
    start = time.perf_counter()
    procs = [launch(c, threads) for c in commands]
    for proc, command in zip(procs, commands):
        finish(proc, command)
    wall = time.perf_counter() - start
    return sum(throughput(run, meta_batch) for run in runs), wall


def rows(root: Path, learners: Sequence[str], scale: float) -> list[list[str]]:
    found = []
    with tempfile.TemporaryDirectory(prefix="metazoo-scaling-") as tmp:
        for learner in learners:
            rates = {setup: measure(learner, setup, root, scale, Path(tmp)) for setup in SETUPS}
            ceiling = rates["2 independent x 1"][0]
            for setup, (rate, wall) in rates.items():
                procs = "2 x 1" if setup.startswith(("torchrun", "2 ind")) else setup
                found.append([learner, LABELS[setup], procs, f"{rate:.1f}", f"{wall:.0f}", f"{rate / ceiling:.0%}"])
    return found


def report(root: Path, learners: Sequence[str] = tuple(CONFIGS), scale: float = 1.0) -> str:
    steps = ", ".join(f"{name} {train_command(name, Path('x'), root, scale, False)[1]} steps" for name in learners)
    notes = (f"Episodes/s of the training loop between the first and last logged rows of metrics.jsonl "
             f"(start-up and the first log interval left out); {steps}; process wall s: the launch to the "
             "exit, start-up, data loading and the final validation included. Last column: the row's "
             "episodes/s over the two independent processes' sum.")
    return f"## (d) CPU scaling, 1 or 2 processes\n\n{table(HEADER, rows(root, learners, scale))}\n\n{notes}\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metazoo.bench.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="data root holding omniglot/ (default: $METAZOO_DATA, else ~/.metazoo/data)")
    p.add_argument("--learners", default=",".join(CONFIGS), help="comma-separated from protonet,maml (default: both)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps (default 1)")
    args = p.parse_args(argv)
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    if not learners or any(name not in CONFIGS for name in learners):
        p.error(f"--learners: give one or more of {','.join(CONFIGS)}")
    start = time.perf_counter()
    print(f"machine: {machine()}\n", flush=True)
    print(report(data_root(args.data_root), learners, args.scale), flush=True)
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
