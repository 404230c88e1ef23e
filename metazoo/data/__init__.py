"""Datasets (each split a FewShotDataset), episode sampling, and the dataset registry."""
from __future__ import annotations

from ..registry import Registry
from .base import FewShotDataset
from .sampling import EpisodeSampler, EpisodeSizeError
from .storage import DatasetNotFoundError, cache_dir, data_root

DATASETS = Registry("dataset")


def create_dataset(name: str, split: str = "train", **kwargs) -> FewShotDataset:
    """One split of a registered dataset; unknown names or settings list the valid ones."""
    return DATASETS.create(name, split=split, **kwargs)


def list_datasets() -> list[str]:
    return DATASETS.names()


from .image_folder import Caltech101, ImageFolder  # noqa: E402
from .mini_imagenet import MiniImageNet  # noqa: E402
from .omniglot import Omniglot  # noqa: E402

DATASETS.register("omniglot")(Omniglot)
DATASETS.register("mini_imagenet")(MiniImageNet)
DATASETS.register("image_folder")(ImageFolder)
DATASETS.register("caltech101")(Caltech101)

__all__ = [
    "DATASETS", "Caltech101", "DatasetNotFoundError", "EpisodeSampler", "EpisodeSizeError", "FewShotDataset",
    "ImageFolder", "MiniImageNet", "Omniglot", "cache_dir", "create_dataset", "data_root",
    "list_datasets",
]
