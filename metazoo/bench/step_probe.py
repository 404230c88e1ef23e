"""Where a training step's time goes: ``python -m metazoo.bench.step_probe OUT train CONFIG ...`` runs
``metazoo train CONFIG ...`` (alone or as a torchrun rank) with timers around the trainer's pieces and writes,
per process, ``OUT/rank<R>.json`` (``rank0.json`` for one process): the seconds of every training step, of its
forward and backward passes (``meta_backward``), of its gradient all-reduce and of the stop agreement.

A diagnostic for the scaling table (:mod:`metazoo.bench.scaling`, ``--breakdown``): it wraps the functions the
trainer calls, so the trainer runs unchanged.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from .. import distributed, trainer

PIECES = ("step", "compute", "all-reduce", "agreement")


def timed(log: list, function: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            log.append(time.perf_counter() - start)
    return wrapper


def install(times: dict) -> None:
    """Wrap the trainer's step, the objective's passes, the step's reduction and the stop agreement."""
    step = trainer.train_step

    def train_step(run, batch):
        objective = run.objective
        objective.meta_backward = timed(times["compute"], type(objective).meta_backward.__get__(objective))
        try:
            return timed(times["step"], step)(run, batch)
        finally:
            del objective.meta_backward

    trainer.train_step = train_step
    distributed.reduce_step = timed(times["all-reduce"], distributed.reduce_step)
    distributed.most = timed(times["agreement"], distributed.most)


def summary(folder: Path, skip: int = 10) -> dict:
    """Per rank file in ``folder``: the mean milliseconds of each piece, the first ``skip`` steps left out."""
    found = {}
    for path in sorted(folder.glob("rank*.json")):
        times = json.loads(path.read_text())
        found[path.stem] = {k: 1000 * statistics.fmean(v[skip:]) for k, v in times.items() if len(v) > skip}
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    out = Path(argv.pop(0))
    out.mkdir(parents=True, exist_ok=True)
    times: dict = {piece: [] for piece in PIECES}
    install(times)
    from ..cli import main as cli
    try:
        return cli(argv)
    finally:
        (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(times))


if __name__ == "__main__":
    from ..allocator import tune

    tune()  # as the metazoo command does (docs/benchmarks.md (g))
    raise SystemExit(main())
