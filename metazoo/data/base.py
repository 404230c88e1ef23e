"""FewShotDataset: one split of a dataset as a class-major uint8 tensor cache.

Every dataset in metazoo ends up as this value, so the sampler indexes one tensor and never
decodes an image while sampling episodes.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

RIGHT_ANGLES = (0, 90, 180, 270)
# FewShotDataset's rotation_scope: what one angle drawn for an episode turns, and how results record it
ROTATION_SCOPES = {"class": "per task", "episode": "per episode"}


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
        info: provenance (source paths, split seed, ...). Its ``"split"`` (the class split) and the
            keys of its ``"protocol"`` dict go into every results row (:meth:`EpisodeSampler.protocol`).
        task_rotations: angles (multiples of 90 degrees) from which the sampler draws one per class
            of each episode, turning all that class's support and query images by it (MAML's
            Omniglot protocol); empty: images as stored. Recorded as ``info["protocol"]["rotations"]``.
        rotation_scope: what one drawn angle turns: ``"class"`` (each class of an episode its own angle,
            as above) or ``"episode"`` (one angle for all the episode's images: Relation Networks'
            Omniglot code). Recorded as ``per task`` or ``per episode``.
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
        task_rotations: Sequence[int] = (),
        rotation_scope: str = "class",
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
        self.task_rotations = tuple(int(a) for a in task_rotations)
        if rotation_scope not in ROTATION_SCOPES:
            raise ValueError(f"unknown rotation_scope {rotation_scope!r}; valid: {', '.join(ROTATION_SCOPES)}")
        self.rotation_scope = rotation_scope
        if self.task_rotations:
            check_angles(self.task_rotations, images.shape[-2:])
            self.info["protocol"] = {**self.info.get("protocol", {}), "rotations": describe_rotations(
                ROTATION_SCOPES[rotation_scope], self.task_rotations)}

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

    def to(self, device: torch.device | str) -> "FewShotDataset":
        """This split with its uint8 images (and the normalisation) on ``device``, copied there once: a
        shallow copy sharing everything else (``self`` where they are already there). An
        :class:`~metazoo.data.EpisodeSampler` of it gathers its episodes on ``device``; its random draws stay
        on the CPU, so episode ``i`` is the same, bit for bit, wherever the images are."""
        images = self.images.to(device)
        if images is self.images:
            return self
        moved = copy.copy(self)
        moved.images, moved.mean, moved.std = images, self.mean.to(device), self.std.to(device)
        return moved

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, c, h, w) -> normalised float32 (n, c, h, w)."""
        x = images.float().mul_(1.0 / 255.0)
        return x if self._identity else x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"classes={self.num_classes}, images={len(self)}, shape={self.image_shape})"
        )


def describe_rotations(kind: str, angles: Sequence[int]) -> str:
    """How images are rotated, for results rows: ``"none"`` (only 0 degrees), else ``kind`` (``"classes"``,
    ``"per task"``, ``"per episode"``), followed by the angles unless they are all four right angles."""
    angles = tuple(angles)
    if angles == (0,):
        return "none"
    return kind if sorted(angles) == list(RIGHT_ANGLES) else f"{kind} ({', '.join(map(str, angles))})"


def check_angles(angles: Sequence[int], size: Sequence[int] | None = None) -> None:
    """Raises unless ``angles`` are distinct right angles (and ``size``, (height, width), is square where
    they turn images by 90 or 270 degrees)."""
    if not angles or any(a not in RIGHT_ANGLES for a in angles) or len(set(angles)) != len(angles):
        raise ValueError(f"rotations must be distinct angles among {RIGHT_ANGLES}, got {tuple(angles)}")
    if size is not None and any(a % 180 for a in angles) and size[0] != size[1]:
        raise ValueError(f"rotating by 90 or 270 degrees needs square images, got {tuple(size)}")
