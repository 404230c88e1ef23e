"""(g) The C allocator: training under glibc's default malloc and under the ``metazoo`` command's tunables.

``metazoo bench --only malloc`` (or ``python -m metazoo.bench.malloc``) trains each configuration with
``python -m metazoo.cli train`` in a 1-thread subprocess, once with ``METAZOO_MALLOC=system`` (glibc's
defaults) and once as the command runs by default (:mod:`metazoo.allocator`), taking turns for ``--rounds``
rounds, one process at a time. Per run: steps/s of the training loop (between the first and the last logged
``train`` rows of ``metrics.jsonl``, as in (d)), and, of the whole process (start-up and data loading
included), the share of its CPU time spent in the kernel and its minor page faults (``getrusage`` of the
finished child). The last column is the tuned run's steps/s over the system run's of the same round.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ..data import data_root
from .common import chosen, print_timed, table, trainings_parser
from .scaling import repo_file, throughput

CONFIGS = {  # name: (config, --set overrides, steps, log_every): the paper's configurations, one step a row
    "protonet": ("experiments/omniglot/protonet_5w1s.toml", [], 40, 10),  # 60-way 1-shot, 5 queries
    "maml": ("experiments/omniglot/maml_5w1s.toml", [], 40, 10),  # 32 tasks a step, second order
}
COMMON = ["train.split=train", "train.val_every=0", "train.val_episodes=5"]
ALLOCATORS = {"system": "glibc's defaults (METAZOO_MALLOC=system)", "tuned": "metazoo's tunables (the default)"}
HEADER = ("learner", "allocator", "steps/s", "kernel share of CPU", "minor page faults", "tuned / system")


def command(learner: str, out: Path, root: Path) -> list[str]:
    config, sets, steps, log_every = CONFIGS[learner]
    argv = [sys.executable, "-m", "metazoo.cli", "train", str(repo_file(config)), "-o", str(out), "-q", "--no-test",
            "--device", "cpu", "--data-root", str(root)]
    for item in [*COMMON, *sets, f"train.steps={steps}", f"train.log_every={log_every}"]:
        argv += ["--set", item]
    return argv


def environment(allocator: str) -> dict[str, str]:
    """One thread; the system run with glibc's defaults, the tuned run left to the command (which tunes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "METAZOO_MALLOC")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if allocator == "system":
        env["METAZOO_MALLOC"] = "system"
    return env


def measure(learner: str, allocator: str, root: Path, work: Path) -> dict:
    """Steps/s of the loop, and the whole process's kernel share of CPU time and minor faults."""
    out = work / f"{learner}-{allocator}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command(learner, out, root), env=environment(allocator), capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command(learner, out, root))} exited with {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"rate": throughput(out, 1), "kernel": system / max(user + system, 1e-9),
            "faults": after.ru_minflt - before.ru_minflt}


def rows(root: Path, learners: Sequence[str], rounds: int) -> list[list[str]]:
    found = []
    for learner in learners:
        runs: dict = {name: [] for name in ALLOCATORS}
        with tempfile.TemporaryDirectory(prefix="metazoo-malloc-") as tmp:
            for round_ in range(rounds):
                for name in ALLOCATORS:
                    runs[name].append(measure(learner, name, root, Path(tmp) / str(round_)))
        speedups = [t["rate"] / s["rate"] for t, s in zip(runs["tuned"], runs["system"])]
        for name, measured in runs.items():
            shown = ""
            if name == "tuned":
                shown = f"{statistics.fmean(speedups):.2f}x" + (
                    f" ({', '.join(f'{r:.2f}x' for r in speedups)})" if rounds > 1 else "")
            found.append([learner, ALLOCATORS[name], f"{statistics.fmean(m['rate'] for m in measured):.2f}",
                          f"{statistics.fmean(m['kernel'] for m in measured):.0%}",
                          f"{statistics.fmean(m['faults'] for m in measured) / 1e3:.0f}k", shown])
    return found


def report(root: Path, learners: Sequence[str] = tuple(CONFIGS), rounds: int = 2) -> str:
    counts = ", ".join(f"{name} {CONFIGS[name][2]} steps ({CONFIGS[name][0]})" for name in learners)
    notes = (f"One 1-thread process at a time, the two allocators taking turns, {rounds} round(s); {counts}. "
             "steps/s: the training loop between the first and last logged rows (start-up left out), the mean "
             "over the rounds; kernel share and page faults: the whole process, start-up included; last column: "
             "the tuned run's steps/s over the system run's in the same round (the mean, and each round's).")
    title = "## (g) The C allocator: glibc's defaults or metazoo's tunables"
    return f"{title}\n\n{table(HEADER, rows(root, learners, rounds))}\n\n{notes}\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = trainings_parser("python -m metazoo.bench.malloc", __doc__.split("\n")[0], tuple(CONFIGS))
    args = p.parse_args(argv)
    learners = chosen(p, "--learners", args.learners, tuple(CONFIGS))
    if args.rounds < 1:
        p.error("--rounds: at least 1")
    return print_timed(lambda: report(data_root(args.data_root), learners, args.rounds))


if __name__ == "__main__":
    raise SystemExit(main())
