"""The one episode type: a support set and a query set, each a labelled batch.

Labels are episode-local class indices ``0..ways-1``. This module imports nothing of metazoo.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LabeledSet:
    """A labelled batch: ``inputs`` (n, ...) and ``labels`` (n,) in ``0..ways-1``."""

    inputs: torch.Tensor
    labels: torch.Tensor
    ways: int

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"LabeledSet has {self.inputs.shape[0]} inputs but {self.labels.shape[0]} labels"
            )
        if self.labels.dtype != torch.long:
            raise TypeError(f"labels must be torch.long, got {self.labels.dtype}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "LabeledSet":
        """Moved to ``device``; ``dtype`` converts the inputs only (labels stay long)."""
        return LabeledSet(
            self.inputs.to(device, dtype, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.ways,
        )


@dataclass(frozen=True)
class Episode:
    """One few-shot task: ``support`` to adapt on, ``query`` to evaluate on.

    ``classes`` holds the dataset's class index for each episode label (ways,), so that
    ``classes[k]`` is the class behind label ``k``. ``index`` is the episode's number in its
    sampler (episode ``i`` of a split is a pure function of the sampler's seed and ``i``).
    """

    support: LabeledSet
    query: LabeledSet
    classes: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    index: int = -1

    def __post_init__(self) -> None:
        if self.support.ways != self.query.ways:
            raise ValueError(
                f"support has {self.support.ways} ways but query has {self.query.ways}"
            )

    @property
    def ways(self) -> int:
        return self.support.ways

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "Episode":
        return Episode(
            self.support.to(device, dtype, non_blocking),
            self.query.to(device, dtype, non_blocking),
            self.classes,
            self.index,
        )
