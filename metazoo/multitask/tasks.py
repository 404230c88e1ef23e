"""Tasks as data: ``T_i = (inputs, labels, loss)`` with a descriptor ``z_i``, over one image split.

A :class:`TaskSet` holds, for each task, the dataset images it uses and their targets. Two
Omniglot task sets (class names are ``alphabet/character/rotation``):

- :func:`alphabet_tasks`: multi-task classification, different inputs and labels per task: task
  i classifies the characters (with rotations) of alphabet i;
- :func:`attribute_tasks`: multi-label learning, the same inputs with different labels per task:
  character, alphabet and rotation classification, plus a regression target (the image's ink,
  its mean intensity, standardised) so that tasks with different losses share one model.

and one for any dataset, :func:`class_group_tasks`: its classes dealt into disjoint groups by a
seeded permutation, task i classifying the classes of group i (multi-task pretraining on
Caltech-101 or an image folder).

Multi-task learning is tested on held-out images of the same tasks: :meth:`TaskSet.holdout`
splits every class's images into train / val / test parts with a seeded permutation.
:class:`TaskBatchSampler` draws what one optimisation step uses: a mini-batch of tasks and a
mini-batch of data per task, batch ``i`` a pure function of ``(seed, i)``.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.base import FewShotDataset
from ..data.sampling import episode_seed
from ..registry import TASKSETS, accepted_kwargs

LOSSES = ("classification", "regression")
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    name: str
    outputs: int  # classes, or the size of a regression target
    loss: str = "classification"


@dataclass(frozen=True)
class TaskBatch:
    """A mini-batch of one task's data."""

    task: int
    inputs: torch.Tensor
    targets: torch.Tensor  # class indices (long) or regression targets (float, (n, outputs))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "TaskBatch":
        """Moved to ``device``; ``dtype`` converts the inputs only."""
        return TaskBatch(self.task, self.inputs.to(device, dtype, non_blocking=non_blocking),
                         self.targets.to(device, non_blocking=non_blocking))


class TaskSet:
    """``tasks[i]`` uses images ``items[i]`` (indices into ``dataset``) with targets ``targets[i]``.

    ``descriptors`` (T, k): each task's ``z`` (default one-hot; a config's ``[multitask] descriptors``
    replaces them, see :func:`taskset_from_config`). ``part`` (n images,) assigns every
    image of the dataset to a held-out part (0 train, 1 val, 2 test).
    """

    def __init__(self, dataset: FewShotDataset, tasks: list[Task], items: list[torch.Tensor],
                 targets: list[torch.Tensor], descriptors: torch.Tensor | None = None,
                 fractions: tuple[float, float] = (0.7, 0.15), seed: int = 0) -> None:
        if not len(tasks) == len(items) == len(targets):
            raise ValueError(f"{len(tasks)} tasks, {len(items)} item lists, {len(targets)} target lists")
        for task in tasks:
            if task.loss not in LOSSES:
                raise ValueError(f"task {task.name!r}: unknown loss {task.loss!r}; valid: {', '.join(LOSSES)}")
        self.dataset, self.tasks, self.items, self.targets = dataset, tasks, items, targets
        self.descriptors = torch.eye(len(tasks)) if descriptors is None else descriptors
        self.part = _holdout_parts(dataset, fractions, seed)
        self.part_name = "all"

    def __len__(self) -> int:
        return len(self.tasks)

    def holdout(self, part: str) -> "TaskSet":
        """The same tasks restricted to the images of one held-out part."""
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
        code = PARTS.index(part)
        out = object.__new__(TaskSet)
        out.__dict__.update(self.__dict__)
        keep = [self.part[i] == code for i in self.items]
        out.items = [i[k] for i, k in zip(self.items, keep)]
        out.targets = [t[k] for t, k in zip(self.targets, keep)]
        out.part_name = part
        return out

    def batch(self, task: int, positions: torch.Tensor) -> TaskBatch:
        """Task ``task``'s items at ``positions`` (into ``items[task]``) as float inputs and targets, gathered
        where the dataset's images are (a GPU's, see :func:`metazoo.build.image_device`): only the item indices
        cross, asynchronously; the targets stay on the host."""
        index = self.items[task][positions].to(self.dataset.images.device, non_blocking=True)
        images = self.dataset.images.index_select(0, index)
        return TaskBatch(task, self.dataset.to_float(images), self.targets[task][positions])


def _holdout_parts(dataset: FewShotDataset, fractions: tuple[float, float], seed: int) -> torch.Tensor:
    """Per image: 0, 1 or 2 (train, val, test), splitting each class's images by a seeded permutation."""
    part = torch.empty(len(dataset), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for c in range(dataset.num_classes):
        start, size = int(dataset.class_offsets[c]), int(dataset.class_sizes[c])
        train, val = round(fractions[0] * size), round(fractions[1] * size)
        codes = torch.cat([torch.zeros(train), torch.ones(val), torch.full((size - train - val,), 2.0)]).long()
        part[start:start + size] = codes[torch.randperm(size, generator=generator)]
    return part


def _parse(dataset: FewShotDataset) -> list[tuple[str, str, str]]:
    parts = [name.split("/") for name in dataset.class_names]
    if any(len(p) != 3 for p in parts):
        raise ValueError(f"{dataset.name} class names are not alphabet/character/rotation "
                         f"(e.g. {dataset.class_names[0]!r}): these task sets need Omniglot")
    return [tuple(p) for p in parts]


def _class_of_image(dataset: FewShotDataset) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(dataset.num_classes), dataset.class_sizes)


def alphabet_tasks(dataset: FewShotDataset, **holdout) -> TaskSet:
    """One task per alphabet: classify its characters (each rotation a class, as in the split)."""
    names = _parse(dataset)
    alphabets = list(dict.fromkeys(a for a, _, _ in names))
    groups = {alphabet: torch.tensor([c for c, (a, _, _) in enumerate(names) if a == alphabet])
              for alphabet in alphabets}
    return _class_subset_tasks(dataset, groups, **holdout)


def class_group_tasks(dataset: FewShotDataset, groups: int = 8, seed: int = 0, **holdout) -> TaskSet:
    """Any dataset: its classes dealt into ``groups`` disjoint groups (sizes differing by at most
    one) by a permutation seeded with ``seed`` (also the holdout seed); task i classifies group i's classes."""
    if not 1 <= groups <= dataset.num_classes:
        raise ValueError(f"{groups} class groups asked of {dataset.name}, which has {dataset.num_classes} "
                         f"classes: groups must be between 1 and {dataset.num_classes}")
    order = torch.randperm(dataset.num_classes, generator=torch.Generator().manual_seed(seed))
    subsets = {f"group{g}": classes.sort().values for g, classes in enumerate(order.tensor_split(groups))}
    return _class_subset_tasks(dataset, subsets, seed=seed, **holdout)


def _class_subset_tasks(dataset: FewShotDataset, subsets: dict[str, torch.Tensor], **holdout) -> TaskSet:
    """One classification task per named subset of the dataset's classes, labels in subset order."""
    image_class = _class_of_image(dataset)
    tasks, items, targets = [], [], []
    for name, classes in subsets.items():
        local = torch.full((dataset.num_classes,), -1, dtype=torch.long)
        local[classes] = torch.arange(len(classes))
        images = torch.nonzero(local[image_class] >= 0)[:, 0]
        tasks.append(Task(name, len(classes)))
        items.append(images)
        targets.append(local[image_class[images]])
    return TaskSet(dataset, tasks, items, targets, **holdout)


def attribute_tasks(dataset: FewShotDataset, **holdout) -> TaskSet:
    """The same images, four labels each: character, alphabet, rotation (classification) and ink (regression)."""
    names = _parse(dataset)
    image_class = _class_of_image(dataset)
    every = torch.arange(len(dataset))
    tasks, targets = [], []
    keys_by_task = {"character": [f"{a}/{c}" for a, c, _ in names], "alphabet": [a for a, _, _ in names],
                    "rotation": [r for _, _, r in names]}
    for name, keys in keys_by_task.items():  # each class's label for the task, in first-seen order
        values = list(dict.fromkeys(keys))
        index = torch.tensor([values.index(key) for key in keys])
        tasks.append(Task(name, len(values)))
        targets.append(index[image_class])
    ink = torch.cat([dataset.to_float(chunk).mean((1, 2, 3)).cpu() for chunk in dataset.images.split(4096)])
    tasks.append(Task("ink", 1, "regression"))
    targets.append(((ink - ink.mean()) / ink.std())[:, None])
    return TaskSet(dataset, tasks, [every] * len(tasks), targets, **holdout)


class TaskBatchSampler:
    """Mini-batches of tasks with a mini-batch of data per task, one task's batch per item.

    Items ``s * tasks_per_batch .. (s + 1) * tasks_per_batch - 1`` make optimisation step ``s``:
    ``tasks_per_batch`` distinct tasks drawn by a generator seeded with ``(seed, s)``, and for
    each of them ``batch_size`` of its items without replacement (seeded by the step and slot).
    Batching ``tasks_per_batch`` consecutive items (as the trainer does with ``meta_batch_size``)
    gives one step's tasks; every item is a pure function of ``(seed, index)``.
    """

    def __init__(self, taskset: TaskSet, tasks_per_batch: int, batch_size: int, seed: int = 0,
                 steps: int = 1_000_000_000) -> None:
        if not 1 <= tasks_per_batch <= len(taskset):
            raise ValueError(f"tasks_per_batch={tasks_per_batch}, but there are {len(taskset)} tasks")
        small = [(t.name, len(i)) for t, i in zip(taskset.tasks, taskset.items) if len(i) < batch_size]
        if small:
            raise ValueError(f"batch_size={batch_size}, but task {small[0][0]!r} has {small[0][1]} items")
        self.taskset, self.tasks_per_batch, self.batch_size = taskset, tasks_per_batch, batch_size
        self.seed, self.steps = seed, steps

    def __len__(self) -> int:
        return self.steps * self.tasks_per_batch

    def __getitem__(self, index: int) -> TaskBatch:
        if not 0 <= index < len(self):
            raise IndexError(index)
        step, slot = divmod(index, self.tasks_per_batch)
        step_seed = episode_seed(self.seed, step)
        task = int(torch.randperm(len(self.taskset), generator=torch.Generator().manual_seed(step_seed))[slot])
        generator = torch.Generator().manual_seed(episode_seed(step_seed, slot))
        positions = torch.randperm(len(self.taskset.items[task]), generator=generator)[:self.batch_size]
        return self.taskset.batch(task, positions)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class TaskEvalSampler:
    """Every item of every task once, in order, in batches of at most ``batch_size``."""

    def __init__(self, taskset: TaskSet, batch_size: int = 256) -> None:
        self.taskset = taskset
        self.chunks = [(t, start) for t in range(len(taskset))
                       for start in range(0, len(taskset.items[t]), batch_size)]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> TaskBatch:
        task, start = self.chunks[index]
        stop = min(start + self.batch_size, len(self.taskset.items[task]))
        return self.taskset.batch(task, torch.arange(start, stop))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def protocol(self) -> dict:
        return {"dataset": self.taskset.dataset.name, "split": self.taskset.dataset.split,
                "tasks": len(self.taskset), "part": self.taskset.part_name}


def taskset_from_config(config, train_set: FewShotDataset) -> TaskSet:
    """The ``[multitask] tasks`` task set (a registered one) over the training split's images, with the
    ``[multitask] descriptors``: ``"onehot"``, a list of per-task vectors, or a .json / .csv file of them."""
    m = config.multitask
    if not m.tasks:
        raise ValueError(f"multi-task training needs [multitask] tasks: one of {', '.join(TASKSETS.names())}")
    factory = TASKSETS.get_factory(m.tasks)
    options = {"groups": m.groups} if "groups" in accepted_kwargs(factory) else {}
    taskset = factory(train_set, fractions=tuple(m.holdout), seed=config.train.seed, **options)
    if m.descriptors != "onehot":
        taskset.descriptors = load_descriptors(m.descriptors, taskset)
    return taskset


def load_descriptors(value: str | list, taskset: TaskSet) -> torch.Tensor:
    """Task descriptors (T, k) from a list of T vectors or a file: JSON (a list of T lists) or CSV (T rows
    of numbers, an optional header row)."""
    where = "[multitask] descriptors"
    if isinstance(value, str):
        path, where = Path(value), f"descriptors file {value}"
        if not path.exists():
            raise FileNotFoundError(f"{where} not found (a .json or .csv path, relative to the working directory)")
        if path.suffix == ".json":
            value = json.loads(path.read_text())
        else:
            rows = [r for r in csv.reader(path.read_text().splitlines()) if r]
            value = rows[1:] if rows and not _numeric(rows[0]) else rows
    try:
        z = torch.tensor([[float(x) for x in row] for row in value], dtype=torch.get_default_dtype())
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: not a table of numbers ({err})") from None
    if z.dim() != 2 or len(z) != len(taskset):
        raise ValueError(f"{where}: {len(z)} descriptors for {len(taskset)} tasks "
                         f"({', '.join(t.name for t in taskset.tasks[:5])}, ...); need one row per task")
    return z


def _numeric(row: list[str]) -> bool:
    try:
        [float(x) for x in row]
        return True
    except ValueError:
        return False
