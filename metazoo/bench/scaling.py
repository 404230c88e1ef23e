"""CPU scaling: training throughput of ProtoNet and MAML in one process or two (torchrun, gloo).

``metazoo bench --only scaling`` (or ``python -m metazoo.bench.scaling``) trains each learner with
``metazoo train`` in subprocesses, one configuration after the other:

- ``1 process x 1 thread`` and ``1 process x 2 threads`` (``OMP_NUM_THREADS`` 1 or 2);
- ``torchrun 2 x 1 thread``: ``python -m torch.distributed.run --standalone --nproc_per_node=2``, gloo,
  each rank taking half of every step's meta-batch; and the same with ``train.pin_cores = true`` (each rank
  bound to a core of its own);
- ``2 independent x 1 thread, half meta-batch``: two 1-thread processes side by side, each with half the
  meta-batch, so each does a rank's work of a step without waiting for the other: what splitting a step costs
  before any synchronisation (a step's fixed costs paid twice, smaller batches);
- ``2 independent x 1 thread``: two 1-thread processes of the whole configuration side by side, the
  hardware's ceiling for two ranks (their throughputs summed).

Throughput is episodes (tasks) per second of the training loop alone: global meta-batch x the steps
between the first and the last logged ``train`` row of ``metrics.jsonl``, over the difference of those
rows' ``seconds`` (start-up, data loading and the first ``log_every`` steps, warm-up included, are left
out). The ``/ 2 independent`` column is each row's throughput over the two independent processes' sum; the
last one, for the torchrun rows where the half meta-batch pair ran, is their throughput over that pair's: what
the synchronisation alone costs.

The configurations run in ``--rounds`` rounds (default 2), each round every configuration once in the order
above, so a machine whose speed drifts weighs on all of them; each round's ratio is taken within the round.
Every run goes through :mod:`metazoo.bench.step_probe`, and a second table gives where a step's time goes
(milliseconds per step, each process: the whole step, its forward and backward passes, the reduction across
the processes, the stop agreement) in the last round.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..config import load_config
from ..data import data_root
from . import step_probe
from .common import chosen, print_timed, table, trainings_parser

CONFIGS = {
    # name: (config, --set overrides, steps, log_every); the meta-batch divides by 2 ranks
    "protonet": ("experiments/omniglot/protonet_5w1s.toml",
                 ["train.ways=20", "train.meta_batch_size=2"], 90, 10),
    "maml": ("experiments/omniglot/maml_5w1s.toml", [], 120, 20),  # the paper's meta-batch, 32 tasks
    "maml-mb8": ("experiments/omniglot/maml_5w1s.toml", ["train.meta_batch_size=8"], 400, 50),  # short steps
}
COMMON = ["train.split=train", "train.val_every=0", "train.val_episodes=5"]
CEILING, HALVES = "2 independent x 1", "2 independent x 1 half"
SETUPS = ("1 x 1", "1 x 2", "torchrun 2 x 1", "torchrun 2 x 1 pinned", HALVES, CEILING)
SHORT = dict(zip(("1x1", "1x2", "torchrun", "pinned", "halves", "independent"), SETUPS))  # --setups names
LABELS = {"1 x 1": "1 process", "1 x 2": "1 process", "torchrun 2 x 1": "torchrun (gloo)",
          "torchrun 2 x 1 pinned": "torchrun (gloo), ranks pinned", HALVES: "2 independent processes, half meta-batch",
          CEILING: "2 independent processes"}
HEADER = ("learner", "meta-batch", "configuration", "processes x threads", "episodes/s", "process wall s",
          "/ 2 independent", "/ half meta-batch pair")
BREAKDOWN = ("learner", "meta-batch", "configuration", "process", "step ms", "forward + backward ms", "reduction ms",
             "stop agreement ms")


def repo_file(path: str) -> Path:
    """A config of the repository's ``experiments/`` (metazoo/bench/../../)."""
    return Path(__file__).resolve().parents[2] / path


def steps(learner: str, scale: float) -> int:
    """Training steps of configuration ``learner`` (a whole number of log intervals, at least two)."""
    _, _, count, log_every = CONFIGS[learner]
    return max(2 * log_every, round(count * scale / log_every) * log_every)


def meta_batch(learner: str) -> int:
    config, sets, _, _ = CONFIGS[learner]
    return load_config(repo_file(config), sets).train.meta_batch_size


def train_command(learner: str, out: Path, root: Path, scale: float, torchrun: bool, probe: Path,
                  pinned: bool = False, half: bool = False) -> list[str]:
    """The command that trains configuration ``learner`` into ``out`` through the step probe (writing to
    ``probe``), as one process or as two torchrun ranks (``pinned``: each bound to a core, train.pin_cores);
    ``half``: one process with half the meta-batch (a rank's share of each step)."""
    config, sets, _, log_every = CONFIGS[learner]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    command = [*launch, "-m", "metazoo.bench.step_probe", str(probe), "train", str(repo_file(config)), "-o", str(out),
               "-q", "--no-test", "--device", "cpu", "--data-root", str(root)]
    pin = ["train.pin_cores=true"] if pinned else []
    halved = [f"train.meta_batch_size={meta_batch(learner) // 2}"] if half else []
    for item in [*COMMON, *sets, f"train.steps={steps(learner, scale)}", f"train.log_every={log_every}", *pin,
                 *halved]:
        command += ["--set", item]
    return command


def throughput(run: Path, size: int) -> float:
    """Episodes/s between the first and the last logged training row of ``run/metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    first, last = rows[0], rows[-1]
    return size * (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def launch(command: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, command: list[str]) -> None:
    output, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{output[-3000:]}")


def measure(learner: str, setup: str, root: Path, scale: float, work: Path) -> tuple[float, float, dict]:
    """(episodes/s, wall seconds of the process(es), the step probe's summary) of one configuration."""
    name = f"{learner}-{setup.replace(' ', '_')}"
    runs = [work / f"{name}-{i}" for i in range(2 if setup in (CEILING, HALVES) else 1)]
    threads = 2 if setup == "1 x 2" else 1
    commands = [train_command(learner, run, root, scale, setup.startswith("torchrun"), work / f"{run.name}-probe",
                              setup.endswith("pinned"), setup == HALVES) for run in runs]
    start = time.perf_counter()
    procs = [launch(c, threads) for c in commands]
    for proc, command in zip(procs, commands):
        finish(proc, command)
    wall = time.perf_counter() - start
    probes = {f"{i}:{rank}": times for i, run in enumerate(runs)
              for rank, times in step_probe.summary(work / f"{run.name}-probe").items()}
    size = meta_batch(learner) // (2 if setup == HALVES else 1)
    return sum(throughput(run, size) for run in runs), wall, probes


def rows(root: Path, learners: Sequence[str], scale: float, rounds: int = 2,
         setups: Sequence[str] = SETUPS) -> tuple[list[list[str]], list[list[str]]]:
    """The throughput table's rows (means over the rounds; each round's ratio in brackets) and the step
    breakdown's (the last round), of ``setups`` (in :data:`SETUPS` order, the two independent processes always)."""
    found, breakdown = [], []
    setups = [setup for setup in SETUPS if setup in setups or setup == CEILING]
    for learner in learners:
        rates: dict = {setup: [] for setup in setups}
        for round_ in range(rounds):
            with tempfile.TemporaryDirectory(prefix="metazoo-scaling-") as tmp:
                for setup in setups:
                    rates[setup].append(measure(learner, setup, root, scale, Path(tmp)))
        size = meta_batch(learner)
        for setup, measured in rates.items():
            synchronisation = ratios(measured, rates[HALVES], rounds) \
                if setup.startswith("torchrun") and HALVES in rates else ""
            procs = "2 x 1" if setup.startswith("torchrun") or setup in (CEILING, HALVES) else setup
            found.append([learner.split("-")[0], str(size), LABELS[setup], procs,
                          f"{statistics.fmean(r for r, _, _ in measured):.1f}",
                          f"{statistics.fmean(w for _, w, _ in measured):.0f}",
                          ratios(measured, rates[CEILING], rounds), synchronisation])
            for process, ms in measured[-1][2].items():
                run, rank = process.split(":rank")
                name = f"rank {rank}" if setup.startswith("torchrun") else f"process {int(run) + 1}"
                label = f"{LABELS[setup]} {setup}" if setup.startswith("1 x") else LABELS[setup]
                breakdown.append([learner.split("-")[0], str(size), label, name,
                                  *(f"{ms.get(piece, 0.0):.1f}" for piece in step_probe.PIECES)])
    return found, breakdown


def ratios(measured: list, reference: list, rounds: int) -> str:
    """The mean over the rounds of ``measured``'s throughput over ``reference``'s in the same round, and (with
    several rounds) each round's."""
    each = [rate / other for (rate, _, _), (other, _, _) in zip(measured, reference)]
    return f"{statistics.fmean(each):.0%}" + (f" ({', '.join(f'{r:.0%}' for r in each)})" if rounds > 1 else "")


def report(root: Path, learners: Sequence[str] = tuple(CONFIGS), scale: float = 1.0, rounds: int = 2,
           setups: Sequence[str] = SETUPS) -> str:
    counts = ", ".join(f"{name} {steps(name, scale)} steps" for name in learners)
    found, breakdown = rows(root, learners, scale, rounds, setups)
    notes = (f"Episodes/s of the training loop between the first and last logged rows of metrics.jsonl "
             f"(start-up and the first log interval left out), the mean of {rounds} round(s); {counts}; process "
             "wall s: the launch to the exit, start-up, data loading and the final validation included. "
             "/ 2 independent: the row's episodes/s over the same round's two independent processes' sum (the mean, "
             "and each round's); / half meta-batch pair: a torchrun row's over the two independent processes with "
             "half the meta-batch each (what the synchronisation alone costs).")
    where = ("Where a step's time goes (the last round; mean ms per step after the first 10; "
             "reduction: metazoo.distributed.reduce_step, the flattened gradients, buffers and metrics summed "
             "across the processes, waiting for the slower one included; stop agreement: metazoo.distributed.most)")
    return (f"## (d) CPU scaling, 1 or 2 processes\n\n{table(HEADER, found)}\n\n{notes}\n\n{where}\n\n"
            f"{table(BREAKDOWN, breakdown)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = trainings_parser("python -m metazoo.bench.scaling", __doc__.split("\n")[0], tuple(CONFIGS))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps (default 1)")
    p.add_argument("--setups", default=",".join(SHORT),
                   help=f"configurations of processes, comma-separated from {','.join(SHORT)} (default: all; "
                        "independent, the ceiling, always runs)")
    args = p.parse_args(argv)
    learners = chosen(p, "--learners", args.learners, tuple(CONFIGS))
    setups = [SHORT[name] for name in chosen(p, "--setups", args.setups, tuple(SHORT))]
    return print_timed(lambda: report(data_root(args.data_root), learners, args.scale, args.rounds, setups))


if __name__ == "__main__":
    from ..allocator import tune

    tune()  # as the metazoo command does (docs/benchmarks.md (g))
    raise SystemExit(main())
