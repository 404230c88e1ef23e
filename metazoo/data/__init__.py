"""Datasets (each split a FewShotDataset), episode sampling, and the dataset registry."""
from __future__ import annotations

from ..registry import Registry
from .base import FewShotDataset
from .sampling import EpisodeSampler, EpisodeSizeError, episode_seed
from .storage import DatasetNotFoundError, cache_dir, data_root

DATASETS = Registry("dataset")


def create_dataset(name: str, split: str = "train", **kwargs) -> FewShotDataset:
    """One split of a registered dataset; unknown names or settings list the valid ones."""
    return DATASETS.create(name, split=split, **kwargs)


def list_datasets() -> list[str]:
    return DATASETS.names()


from .omniglot import Omniglot  # noqa: E402

DATASETS.register("omniglot")(Omniglot)

__all__ = [
    "DATASETS", "DatasetNotFoundError", "EpisodeSampler", "EpisodeSizeError", "FewShotDataset",
    "Omniglot", "cache_dir", "create_dataset", "data_root", "episode_seed", "list_datasets",
]
