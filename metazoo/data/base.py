"""FewShotDataset: one split of a dataset as a class-major uint8 tensor cache.

Every dataset in metazoo ends up as this value, so the sampler indexes one tensor and never
decodes an image while sampling episodes.
"""
from __future__ import annotations

from typing import Sequence

import torch


class FewShotDataset:
    """Images of one split, stored class by class.

    Args:
        images: uint8 tensor (n, channels, height, width), the images of class 0 first, then
            class 1, and so on.
        class_sizes: number of images of each class, in the same order (classes,).
        class_names: a readable name per class.
        name: the dataset's registered name (``"omniglot"``, ...).
        split: ``"train"``, ``"val"``, ``"test"`` or another split name.
        mean, std: per-channel normalisation applied when images become floats.
        info: provenance recorded with results (source paths, split seed, ...).
    """

    def __init__(
        self,
        images: torch.Tensor,
        class_sizes: Sequence[int] | torch.Tensor,
        class_names: Sequence[str],
        name: str,
        split: str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        info: dict | None = None,
    ) -> None:
        sizes = torch.as_tensor(class_sizes, dtype=torch.long)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (n, c, h, w), got {images.dtype} {tuple(images.shape)}")
        if len(class_names) != len(sizes):
            raise ValueError(f"{len(class_names)} class names for {len(sizes)} classes")
        if int(sizes.sum()) != images.shape[0]:
            raise ValueError(f"class sizes add up to {int(sizes.sum())}, but there are {images.shape[0]} images")
        self.images = images
        self.class_sizes = sizes
        self.class_offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.class_names = list(class_names)
        self.name = name
        self.split = split
        channels = images.shape[1]
        self.mean = torch.tensor(mean if mean is not None else [0.0] * channels).view(1, -1, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * channels).view(1, -1, 1, 1)
        self._identity = bool((self.mean == 0).all() and (self.std == 1).all())
        self.info = dict(info or {})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def labels(self) -> torch.Tensor:
        """Class index of every image (n,)."""
        return torch.repeat_interleave(torch.arange(self.num_classes), self.class_sizes)

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, c, h, w) -> normalised float32 (n, c, h, w)."""
        x = images.float().mul_(1.0 / 255.0)
        return x if self._identity else x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"classes={self.num_classes}, images={len(self)}, shape={self.image_shape})"
        )
