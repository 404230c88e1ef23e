"""Evaluation protocols (a registry: ``eval.protocol``). Each says what it needs from the objective,
which fixed items it evaluates on, and how it scores them; :func:`metazoo.evaluate.evaluate` runs
any of them the same way."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.sampling import EpisodeSampler
from .distributed import gather, shard
from .learners.base import Learner
from .learners.blackbox import SequenceLearner, all_items, presentation_index
from .multitask.objective import MultiTaskObjective
from .multitask.tasks import TaskEvalSampler, taskset_from_config
from .objective import Objective


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 1.96 * population std / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, 1.96 * std / math.sqrt(n)


class Protocol:
    """``needs``: the kind of objective evaluated (``subject`` checks it and returns what is evaluated);
    ``items``: the fixed validation or test items of a run's config; ``run``: scores them, returning
    the fields of an :class:`~metazoo.evaluate.EvalResult` (mean, ci95, episodes, loss, ...)."""

    needs: type = Objective
    needs_text = "an objective"

    def subject(self, objective: Objective) -> Objective:
        if not isinstance(objective, self.needs):
            raise ValueError(f"the {type(self).__name__.lower()} protocol needs {self.needs_text}; "
                             f"{type(objective).__name__} is not one")
        return objective

    def items(self, config: Any, which: str, data_root: str | Path | None = None, train_set: Any = None):
        raise NotImplementedError

    def run(self, model: Objective, items: Any, device: torch.device | str, progress: bool) -> dict:
        raise NotImplementedError

    def describe(self, items: Any) -> dict:
        """What fixes the items, for the result's protocol record."""
        return items.protocol()


class Episodic(Protocol):
    """Adapt on each episode's support set and classify its queries: accuracy per episode, mean with 95% CI."""

    needs, needs_text = Learner, "a few-shot learner"

    def subject(self, objective: Objective) -> Learner:
        return objective.as_learner()

    def items(self, config: Any, which: str, data_root: str | Path | None = None, train_set: Any = None):
        """Validation: ``train.val_episodes`` episodes of the val split (seed ``eval.seed + 1``); test:
        ``eval.episodes`` of ``eval.split`` (seed ``eval.seed``); both with the eval ways, shots, queries."""
        from .build import build_dataset

        e = config.eval
        split, seed, count = ("val", e.seed + 1, config.train.val_episodes) if which == "val" else \
            (e.split, e.seed, e.episodes)
        return EpisodeSampler(build_dataset(config, split, data_root), e.ways, e.shots, e.queries, seed=seed,
                              episodes=count)

    def describe(self, items: EpisodeSampler) -> dict:
        return {**items.protocol(), "episodes": len(items)}

    def run(self, model: Learner, items: EpisodeSampler, device, progress: bool) -> dict:
        """Every episode's accuracy, loss and extra; under torchrun each process scores its share of the
        episodes (:func:`~metazoo.distributed.shard`) and all get every score, in episode order."""
        scores = []
        for index in tqdm(shard(range(len(items))), desc="eval", disable=not progress, leave=False):
            episode = items[index].to(device)
            logits, labels = self.logits(model, episode)
            scores.append((float((logits.argmax(-1) == labels).float().mean()), float(model.loss(logits, labels)),
                           self.extra(logits, labels)))
        accuracies, losses, extra = (list(column) for column in zip(*gather(scores)))
        mean, ci95 = mean_ci95(accuracies)
        return {"mean": mean, "ci95": ci95, "episodes": len(accuracies), "loss": sum(losses) / len(losses),
                **self.summary(extra)}

    def logits(self, model: Learner, episode) -> tuple[torch.Tensor, torch.Tensor]:
        return model(episode), episode.query.labels

    def extra(self, logits: torch.Tensor, labels: torch.Tensor) -> Any:
        return None

    def summary(self, extra: list) -> dict:
        return {}


class Online(Episodic):
    """MANN's protocol (sequence learners): all items of an episode in a random order seeded by its
    index, each step given the previous step's label; accuracy over all steps, and by presentation
    (accuracy on a class's 1st, 2nd, ... item) in ``curve``."""

    needs, needs_text = SequenceLearner, "a sequence learner (lstm, mann, snail)"

    def subject(self, objective: Objective) -> SequenceLearner:
        return Protocol.subject(self, objective)

    def logits(self, model: SequenceLearner, episode) -> tuple[torch.Tensor, torch.Tensor]:
        return model.online_logits(all_items(episode), torch.Generator().manual_seed(episode.index))

    def extra(self, logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
        index, right = presentation_index(labels), logits.argmax(-1) == labels
        return [float(right[index == k].float().mean()) for k in range(1, int(index.max()) + 1)]

    def summary(self, curves: list) -> dict:
        return {"curve": [list(mean_ci95([c[k] for c in curves])) for k in range(len(curves[0]))]}


class PerTask(Protocol):
    """Multi-task learning: every task's metric on its held-out images (accuracy with a binomial 95%
    interval, or mean squared error); the mean and interval are over the classification tasks."""

    needs, needs_text = MultiTaskObjective, "a multi-task objective ([learner] name = \"multitask\")"

    def items(self, config: Any, which: str, data_root: str | Path | None = None, train_set: Any = None):
        """The ``which`` (val or test) held-out part of every task's images."""
        from .build import build_dataset

        train_set = train_set if train_set is not None else build_dataset(config, config.train.split, data_root)
        return TaskEvalSampler(taskset_from_config(config, train_set).holdout(which), config.multitask.eval_batch)

    def run(self, model: MultiTaskObjective, items: TaskEvalSampler, device, progress: bool) -> dict:
        tasks = items.taskset.tasks
        sums, counts = [0.0] * len(tasks), [0] * len(tasks)
        for batch in tqdm(items, total=len(items), desc="eval", disable=not progress, leave=False):
            batch = batch.to(device)
            loss, out = model.task_loss(batch)
            classifying = tasks[batch.task].loss == "classification"
            sums[batch.task] += float((out.argmax(-1) == batch.targets).sum()) if classifying else \
                float(loss) * len(batch.targets)
            counts[batch.task] += len(batch.targets)
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
        return {"mean": mean, "ci95": ci95, "episodes": len(accuracies), "tasks": per_task}
