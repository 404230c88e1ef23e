"""Datasets (each split a FewShotDataset) and episode sampling; their registry is
:data:`metazoo.registry.DATASETS`."""
from __future__ import annotations

from ..registry import DATASETS
from .base import FewShotDataset
from .sampling import EpisodeSampler, EpisodeSizeError
from .storage import DataError, DatasetNotFoundError, cache_dir, data_root


def create_dataset(name: str, split: str = "train", **kwargs) -> FewShotDataset:
    """One split of a registered dataset; unknown names or settings list the valid ones."""
    return DATASETS.create(name, split=split, **kwargs)


def list_datasets() -> list[str]:
    return DATASETS.names()


from .image_folder import Caltech101, ImageFolder  # noqa: E402
from .mini_imagenet import MiniImageNet  # noqa: E402
from .omniglot import Omniglot  # noqa: E402

__all__ = [
    "DATASETS", "Caltech101", "DataError", "DatasetNotFoundError", "EpisodeSampler", "EpisodeSizeError",
    "FewShotDataset", "ImageFolder", "MiniImageNet", "Omniglot", "cache_dir", "create_dataset", "data_root",
    "list_datasets",
]
