"""The one evaluation path: fixed, seeded episodes -> mean accuracy with a 95% confidence interval."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data.sampling import EpisodeSampler
from .data.storage import atomic_write_text
from .learners.base import Learner
from .learners.blackbox import all_items, presentation_index

BN_MODES = ("running", "transductive")
PROTOCOLS = ("episodic", "online", "multitask")


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
    """

    mean: float
    ci95: float
    episodes: int
    protocol: dict = field(default_factory=dict)
    loss: float = float("nan")
    seconds: float = 0.0
    curve: list = field(default_factory=list)
    tasks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        p = self.protocol
        what = f"{p.get('dataset', '?')} {p.get('split', '?')} {p.get('ways')}-way {p.get('shots')}-shot"
        if self.curve:
            what = (f"{p.get('dataset', '?')} {p.get('split', '?')} online, {p.get('ways')} classes x "
                    f"{p.get('shots', 0) + p.get('queries', 0)} presentations")
        if self.tasks:
            return (f"{p.get('dataset', '?')} {p.get('split', '?')} multi-task, held-out {p.get('part')} images: "
                    f"mean accuracy {100 * self.mean:.2f} +- {100 * self.ci95:.2f}% over {self.episodes} "
                    f"classification tasks")
        text = f"{what}: {100 * self.mean:.2f} +- {100 * self.ci95:.2f}% over {self.episodes} episodes"
        if self.curve:
            text += "; by presentation: " + " / ".join(f"{100 * m:.1f}" for m, _ in self.curve)
        return text


def mean_ci95(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, 1.96 * std / math.sqrt(n)


def evaluate(learner: Learner, sampler: EpisodeSampler, bn: str = "running", device: torch.device | str = "cpu",
             progress: bool = False, num_workers: int = 0, protocol: str = "episodic") -> EvalResult:
    """Accuracy of ``learner`` on episodes ``0 .. len(sampler) - 1`` of ``sampler``.

    ``bn="running"`` evaluates with BatchNorm's running statistics (no information flows
    between query examples); ``bn="transductive"`` uses each batch's own statistics, as MAML's
    paper did, on a copy of the learner so its running statistics are left untouched.

    ``protocol="episodic"``: adapt on the support set, classify the queries. ``"online"`` (MANN's
    protocol, sequence learners only): all items of an episode (support and query) in a random
    order seeded by the episode's index, each step given the previous step's label; accuracy over
    all steps, and by presentation (the accuracy on a class's 1st, 2nd, ... item) in ``curve``.
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown BatchNorm mode {bn!r}; valid: {', '.join(BN_MODES)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if protocol == "multitask":
        return _evaluate_tasks(learner, sampler, bn, device, progress)
    if protocol == "online" and not hasattr(learner, "online_logits"):
        raise ValueError(f"the online protocol needs a sequence learner (lstm, mann, snail); "
                         f"{type(learner).__name__} is not one")
    was_training = learner.training
    model = learner.eval() if bn == "running" else copy.deepcopy(learner).train()
    loader = torch.utils.data.DataLoader(sampler, batch_size=None, shuffle=False, num_workers=num_workers)
    accuracies, losses, curves, start = [], [], [], time.perf_counter()
    with torch.no_grad():
        for episode in tqdm(loader, total=len(sampler), desc="eval", disable=not progress, leave=False):
            episode = episode.to(device)
            if protocol == "online":
                order = torch.Generator().manual_seed(episode.index)
                logits, labels = model.online_logits(all_items(episode), order)
                index, right = presentation_index(labels), logits.argmax(-1) == labels
                curves.append([float(right[index == k].float().mean()) for k in range(1, int(index.max()) + 1)])
            else:
                logits, labels = model(episode), episode.query.labels
            losses.append(float(model.loss(logits, labels)))
            accuracies.append(float((logits.argmax(-1) == labels).float().mean()))
    learner.train(was_training)
    mean, ci95 = mean_ci95(accuracies)
    curve = [list(mean_ci95([c[k] for c in curves])) for k in range(len(curves[0]))] if curves else []
    settings = {**sampler.protocol(), "episodes": len(sampler), "bn": bn, "protocol": protocol}
    return EvalResult(mean, ci95, len(accuracies), settings, sum(losses) / len(losses),
                      time.perf_counter() - start, curve)


def _evaluate_tasks(learner: Learner, sampler, bn: str, device, progress: bool) -> EvalResult:
    """Multi-task learning: every task's metric on its held-out images (a TaskEvalSampler)."""
    if not hasattr(learner, "task_loss"):
        raise ValueError(f"the multitask protocol needs a multi-task learner; {type(learner).__name__} is not one")
    was_training = learner.training
    model = learner.eval() if bn == "running" else copy.deepcopy(learner).train()
    tasks = sampler.taskset.tasks
    sums, counts, start = [0.0] * len(tasks), [0] * len(tasks), time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(sampler, total=len(sampler), desc="eval", disable=not progress, leave=False):
            batch = batch.to(device)
            loss, out = model.task_loss(batch)
            if tasks[batch.task].loss == "classification":
                sums[batch.task] += float((out.argmax(-1) == batch.targets).sum())
            else:
                sums[batch.task] += float(loss) * len(batch.targets)
            counts[batch.task] += len(batch.targets)
    learner.train(was_training)
    per_task, accuracies = {}, []
    for task, total, n in zip(tasks, sums, counts):
        value = total / max(n, 1)
        if task.loss == "classification":
            accuracies.append(value)
            per_task[task.name] = {"accuracy": value, "ci95": 1.96 * math.sqrt(value * (1 - value) / max(n, 1)),
                                   "items": n}
        else:
            per_task[task.name] = {"mse": value, "items": n}
    mean, ci95 = mean_ci95(accuracies) if accuracies else (float("nan"), float("nan"))
    settings = {**sampler.protocol(), "bn": bn, "protocol": "multitask"}
    return EvalResult(mean, ci95, len(accuracies), settings, float("nan"), time.perf_counter() - start,
                      tasks=per_task)


def meta_test(learner: Learner, dataset, ways: int = 5, shots: int = 1, queries: int = 15, episodes: int = 1000,
              seed: int = 1000, bn: str = "running", device: torch.device | str = "cpu", run_dir=None,
              progress: bool = False, extra: dict | None = None, protocol: str = "episodic") -> EvalResult:
    """Evaluate ``learner`` on ``episodes`` fixed episodes of ``dataset`` (a FewShotDataset split).

    With ``run_dir``, the result is written to ``run_dir/result.json`` and appended to
    ``run_dir/results.jsonl``.
    """
    sampler = EpisodeSampler(dataset, ways, shots, queries, seed=seed, episodes=episodes)
    result = evaluate(learner, sampler, bn=bn, device=device, progress=progress, protocol=protocol)
    if extra:
        result = dataclasses.replace(result, protocol={**result.protocol, **extra})
    if run_dir is not None:
        write_result(result, Path(run_dir))
    return result


def write_result(result: EvalResult, run_dir: Path) -> None:
    row = json.dumps(result.to_dict(), indent=2)
    atomic_write_text(run_dir / "result.json", row + "\n")
    with open(run_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(result.to_dict()) + "\n")
