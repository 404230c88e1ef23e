"""Interop with learn2learn: its tasks as metazoo Episodes, metazoo splits as its MetaDatasets.

learn2learn is optional. It is imported only inside the functions that need it, so metazoo
imports without it. learn2learn 0.2.0 does not build with a plain ``pip install`` on Python
3.11; what works::

    pip install cython
    pip install --no-deps --no-build-isolation --use-pep517 \\
        --config-settings=--global-option=build_ext learn2learn==0.2.0
    pip install gym scipy requests
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from ..episode import Episode, LabeledSet
from .base import FewShotDataset
from .sampling import EpisodeSizeError

INSTALL_HINT = (
    "learn2learn is not installed. On Python 3.11: pip install cython && pip install --no-deps "
    "--no-build-isolation --use-pep517 --config-settings=--global-option=build_ext learn2learn==0.2.0 "
    "&& pip install gym scipy requests"
)


def _import_l2l() -> Any:
    try:
        import learn2learn
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return learn2learn


def episode_from_task(data: torch.Tensor, labels: torch.Tensor, ways: int, shots: int, queries: int,
                      index: int = -1) -> Episode:
    """One learn2learn task ``(X, y)`` as an Episode.

    Args:
        data: the task's inputs (ways * (shots + queries), ...), in any order.
        labels: their class ids (ways * (shots + queries),): dataset classes, or the 0..ways-1
            of learn2learn's ``RemapLabels``.
        ways, shots, queries: the episode's size; every class must have ``shots + queries`` items.
        index: recorded as ``Episode.index``.

    Classes sorted by id become episode labels ``0..ways-1`` and ``Episode.classes`` holds the ids
    (ways,). Within a class the first ``shots`` items, in task order, are the support set and the
    rest the query set; both come out class-major.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(f"a task needs labels (n,) for data (n, ...); got data {tuple(data.shape)}, "
                         f"labels {tuple(labels.shape)}")
    labels = labels.long()
    per_class = shots + queries
    classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    if len(classes) != ways:
        raise EpisodeSizeError(f"expected a {ways}-way task, but it has {len(classes)} classes "
                               f"({classes.tolist()[:10]}{' ...' if len(classes) > 10 else ''})")
    wrong = (counts != per_class).nonzero().flatten().tolist()
    if wrong:
        named = ", ".join(f"class {int(classes[c])} has {int(counts[c])}" for c in wrong[:5])
        raise EpisodeSizeError(f"{shots} shots + {queries} queries need {per_class} items per class, but "
                               f"{named}. Build the taskset with KShots(dataset, k={per_class}).")
    order = torch.sort(inverse, stable=True).indices  # class-major, task order within a class
    x = data.index_select(0, order.to(data.device))
    x = x.view(ways, per_class, *data.shape[1:])  # (ways, shots + queries, ...)
    episode_labels = torch.arange(ways, device=data.device)[:, None]
    support = LabeledSet(x[:, :shots].flatten(0, 1), episode_labels.expand(-1, shots).flatten(), ways)
    query = LabeledSet(x[:, shots:].flatten(0, 1), episode_labels.expand(-1, queries).flatten(), ways)
    return Episode(support, query, classes.cpu(), index)


def task_from_episode(episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """A metazoo Episode as a learn2learn task ``(X, y)`` sorted by label, each class's support items
    first: the inverse of :func:`metazoo.data.l2l.episode_from_task` (up to the order within a class)."""
    ways = episode.ways
    support = episode.support.inputs[torch.sort(episode.support.labels, stable=True).indices]
    query = episode.query.inputs[torch.sort(episode.query.labels, stable=True).indices]
    blocks = torch.cat([support.view(ways, -1, *support.shape[1:]), query.view(ways, -1, *query.shape[1:])], 1)
    labels = torch.arange(ways).repeat_interleave(blocks.shape[1])
    return blocks.flatten(0, 1), labels


def episodes_from_taskset(taskset: Any, ways: int, shots: int, queries: int,
                          episodes: int | None = None) -> Iterator[Episode]:
    """Episodes from a learn2learn ``Taskset``/``TaskDataset``: ``taskset.sample()`` each time.

    Yields ``episodes`` episodes (numbered from 0), or forever when ``episodes`` is None.
    The taskset must yield ``(X, y)`` (its transforms end with ``LoadData`` and optionally
    ``RemapLabels``/``ConsecutiveLabels``) with ``shots + queries`` items for each of ``ways`` classes.
    """
    index = 0
    while episodes is None or index < episodes:
        task = taskset.sample()
        yield episode_from_task(task[0], task[1], ways, shots, queries, index)
        index += 1


class FloatImageDataset(torch.utils.data.Dataset):
    """A FewShotDataset as a plain classification Dataset: item ``i`` is (float image (c, h, w), class)."""

    def __init__(self, dataset: FewShotDataset) -> None:
        self.dataset = dataset
        self.targets = dataset.labels().tolist()  # (n,) class of every image

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset.to_float(self.dataset.images[index: index + 1])[0], self.targets[index]


def l2l_dataset(dataset: FewShotDataset) -> Any:
    """A learn2learn ``MetaDataset`` over a metazoo split, so learn2learn tasksets can sample it.

    Items are (normalised float image (c, h, w), dataset class index). The class -> images map is
    handed over from the split's class offsets, so learn2learn does not scan the dataset.
    """
    l2l = _import_l2l()
    offsets = dataset.class_offsets.tolist()
    labels_to_indices = {c: list(range(offsets[c], offsets[c + 1])) for c in range(dataset.num_classes)}
    return l2l.data.MetaDataset(FloatImageDataset(dataset), labels_to_indices=labels_to_indices)


def l2l_taskset(dataset: FewShotDataset | Any, ways: int, shots: int, queries: int, remap_labels: bool = False,
                num_tasks: int = -1) -> Any:
    """learn2learn's usual N-way K-shot Taskset over a metazoo split (or over an ``l2l_dataset``).

    Transforms: ``NWays``, ``KShots(shots + queries)``, ``LoadData``, then ``RemapLabels`` if
    ``remap_labels``, then ``ConsecutiveLabels``. Without remapping, labels stay dataset class
    indices, so ``episode_from_task`` gives Episodes whose ``classes`` index ``dataset``.
    """
    l2l = _import_l2l()
    from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels

    meta = dataset if isinstance(dataset, l2l.data.MetaDataset) else l2l_dataset(dataset)
    transforms = [NWays(meta, n=ways), KShots(meta, k=shots + queries), LoadData(meta)]
    if remap_labels:
        transforms.append(RemapLabels(meta))
    transforms.append(ConsecutiveLabels(meta))
    return l2l.data.Taskset(meta, task_transforms=transforms, num_tasks=num_tasks)
