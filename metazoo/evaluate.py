"""The one evaluation path: fixed, seeded items -> a registered protocol -> an EvalResult (mean accuracy
with a 95% confidence interval and the whole protocol that produced it)."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .data.sampling import EpisodeSampler
from .data.storage import atomic_write_text
from .distributed import is_main, world_size
from .objective import Objective, autocast
from .protocols import mean_ci95  # noqa: F401  (part of this module's API)
from .registry import PROTOCOLS


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over a fixed set of episodes; ``mean`` and ``ci95`` are fractions (0..1).

    ``ci95`` is 1.96 * std / sqrt(episodes), with the population std of per-episode accuracies
    (multitask protocol: over tasks, ``episodes`` being the number of classification tasks).
    ``protocol`` records everything that fixes the numbers (dataset, split, ways, shots, queries,
    episodes, seed, BatchNorm mode, evaluation protocol). ``curve`` (online protocol only) holds
    ``[mean, ci95]`` of the accuracy at the 1st, 2nd, ... presentation of a class; ``tasks``
    (multitask protocol only) maps each task to its metric on its held-out images: ``accuracy``
    with a binomial 95% interval for classification, ``mse`` for regression, and ``items``.
    ``device``: where it ran (``cpu``, ``cuda:0``, ...; ``2 x cuda`` for two processes under torchrun);
    ``amp``: its arithmetic (``off``: float32; ``bf16``: bfloat16 autocast, ``train.amp``).
    """

    mean: float
    ci95: float
    episodes: int
    protocol: dict = field(default_factory=dict)
    loss: float = float("nan")
    seconds: float = 0.0
    curve: list = field(default_factory=list)
    tasks: dict = field(default_factory=dict)
    device: str = ""
    amp: str = "off"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        """One line: what was evaluated, the mean with its 95% confidence interval, over how many."""
        p = self.protocol
        where = f"{p.get('dataset', '?')} {p.get('split', '?')}"
        if self.tasks:
            return (f"{where} multi-task, held-out {p.get('part')} images: mean accuracy {100 * self.mean:.2f} +- "
                    f"{100 * self.ci95:.2f}% (95% CI) over {self.episodes} classification tasks")
        what = f"{p.get('ways')}-way {p.get('shots')}-shot"
        if self.curve:
            what = f"online, {p.get('ways')} classes x {p.get('shots', 0) + p.get('queries', 0)} presentations"
        return f"{where} {what}: {100 * self.mean:.2f} +- {100 * self.ci95:.2f}% (95% CI) over {self.episodes} episodes"

    def report(self) -> str:
        """The one line, then the accuracy by presentation or every task's metric where there are any."""
        lines = [str(self)]
        if self.curve:
            steps = (f"{k + 1}: {100 * m:.2f} +- {100 * c:.2f}%" for k, (m, c) in enumerate(self.curve))
            lines.append("by presentation: " + ", ".join(steps))
        for name, metric in self.tasks.items():
            value = (f"{100 * metric['accuracy']:.2f} +- {100 * metric['ci95']:.2f}%" if "accuracy" in metric
                     else f"mse {metric['mse']:.4f}")
            lines.append(f"  {name}: {value} ({metric['items']} images)")
        return "\n".join(lines)


def evaluate(objective: Objective, items, protocol: str = "episodic", device: torch.device | str = "cpu",
             progress: bool = False, amp: str = "off") -> EvalResult:
    """Evaluate ``objective`` on the fixed ``items`` (e.g. an EpisodeSampler's episodes ``0 .. len - 1``)
    by a registered protocol (``metazoo list``: episodic, online, multitask), on ``device``, under
    bfloat16 autocast with ``amp = "bf16"`` (:func:`~metazoo.objective.autocast`; recorded in the result).

    The protocol takes what it evaluates from the objective (the episodic protocol: its few-shot
    learner), which runs in eval mode with its own BatchNorm mode (``bn``: running statistics, or
    transductive batch statistics), and the result records that mode from the learner itself. Under
    torchrun (:mod:`metazoo.distributed`) the episodic protocols split the episodes across the processes
    and gather their scores, so every process gets the result one process would.
    """
    rule = PROTOCOLS.create(protocol)
    model = rule.subject(objective)
    model.check_amp(amp)
    start = time.perf_counter()
    with model.evaluation(), autocast(device, amp):
        fields = rule.run(model, items, device, progress and is_main())
    settings = {**rule.describe(items), "bn": model.bn, "protocol": protocol}
    where = str(device) if world_size() == 1 else f"{world_size()} x {torch.device(device).type}"
    return EvalResult(protocol=settings, seconds=time.perf_counter() - start, device=where, amp=amp, **fields)


def meta_test(learner: Objective, dataset, ways: int = 5, shots: int = 1, queries: int = 15, episodes: int = 1000,
              seed: int = 1000, device: torch.device | str | None = None, run_dir=None, progress: bool = False,
              extra: dict | None = None, protocol: str = "episodic", amp: str = "off") -> EvalResult:
    """Evaluate ``learner`` on ``episodes`` fixed episodes of ``dataset`` (a FewShotDataset split), on
    the learner's device unless ``device`` is given, with the learner's BatchNorm mode (``learner.bn``),
    in float32 or (``amp = "bf16"``) under bfloat16 autocast.

    With ``run_dir``, the result is written to ``run_dir/result.json`` and appended to
    ``run_dir/results.jsonl``.
    """
    if device is None:
        device = next(iter(learner.parameters()), torch.empty(0)).device
    sampler = EpisodeSampler(dataset, ways, shots, queries, seed=seed, episodes=episodes)
    result = evaluate(learner, sampler, device=device, progress=progress, protocol=protocol, amp=amp)
    if extra:
        result = dataclasses.replace(result, protocol={**result.protocol, **extra})
    if run_dir is not None:
        write_result(result, Path(run_dir))
    return result


def write_result(result: EvalResult, run_dir: Path) -> None:
    atomic_write_text(run_dir / "result.json", json_text(result.to_dict(), indent=2) + "\n")
    with open(run_dir / "results.jsonl", "a") as f:
        f.write(json_text(result.to_dict()) + "\n")


def json_text(value, indent: int | None = None) -> str:
    """Strict JSON: a NaN or infinite number (an undefined metric) is written as null, never as bare NaN."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), indent=indent, allow_nan=False)
