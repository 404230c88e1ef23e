"""What every table of ``metazoo bench`` shares: timing in interleaved blocks, the table, the machine line."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


def seconds(block: Callable[[], object]) -> float:
    start = time.perf_counter()
    block()
    return time.perf_counter() - start


def interleaved_medians(blocks: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each block over ``repeats`` rounds, the blocks taking turns in each round.

    A load that comes and goes on the machine so falls on every contender of a row alike.
    """
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(repeats):
        for name, block in blocks.items():
            times[name].append(seconds(block))
    return {name: statistics.median(t) for name, t in times.items()}


def repeat(step: Callable[[], object], n: int) -> Callable[[], None]:
    """A block: ``step`` called ``n`` times."""
    def block() -> None:
        for _ in range(n):
            step()
    return block


def warm_up(blocks: dict[str, Callable[[], None]], rounds: int) -> None:
    """Run every block ``rounds`` times, taking turns, untimed (``--warmup``)."""
    for _ in range(rounds):
        for block in blocks.values():
            block()


def ratio_text(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def bullets(lines: Sequence[str]) -> str:
    """Markdown list items, one a line."""
    return "\n".join(f"- {line}" for line in lines)


def machine() -> str:
    """torch, its threads, the CPUs (:func:`metazoo.build.device_name`), Python and the load average."""
    from ..build import device_name

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    cpu = device_name(torch.device("cpu"))
    return (f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op; {os.cpu_count()} CPUs ({cpu}); "
            f"Python {platform.python_version()}; load average {load}")


def trainings_parser(prog: str, description: str, configs: Sequence[str]) -> argparse.ArgumentParser:
    """The options every table that trains in subprocesses takes: ``--data-root``, ``--learners`` (from
    ``configs``) and ``--rounds``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--data-root", help="data root holding omniglot/ (default: $METAZOO_DATA, else ~/.metazoo/data)")
    p.add_argument("--learners", default=",".join(configs),
                   help=f"configurations, comma-separated from {','.join(configs)} (default: all)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every configuration (default 2)")
    return p


def chosen(p: argparse.ArgumentParser, option: str, text: str, choices: Sequence[str]) -> list[str]:
    """The names of comma-separated ``text``, each one of ``choices`` (else the parser's error, naming ``option``)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in choices for name in names):
        p.error(f"{option}: give one or more of {','.join(choices)}")
    return names


def print_timed(report: Callable[[], str]) -> int:
    """Print the machine, ``report()``, and the seconds it took with the machine at the end."""
    start = time.perf_counter()
    print(f"machine: {machine()}\n", flush=True)
    print(report(), flush=True)
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")
    return 0


def objective_and_batch(config_path: Path, root: Path, seed: int = 0) -> tuple[Any, Any, list]:
    """A config as ``metazoo train`` resolves it, its objective (seeded, training mode, contiguous on the CPU)
    and the first meta-batch of its seeded training items."""
    from ..build import build_dataset, build_objective, resolve_config
    from ..config import load_config

    config = load_config(config_path)
    train_set = build_dataset(config, config.train.split, root)
    config = resolve_config(config, train_set, root)
    torch.manual_seed(seed)
    objective = build_objective(config).train()
    items = objective.training_items(train_set, config)
    return config, objective, [items[i] for i in range(config.train.meta_batch_size)]
