"""What every table of ``metazoo bench`` shares: timing in interleaved blocks, the table, the machine line."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Sequence

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
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    cpu = platform.processor() or platform.machine()
    return (f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op; {os.cpu_count()} CPUs ({cpu}); "
            f"Python {platform.python_version()}; load average {load}")
