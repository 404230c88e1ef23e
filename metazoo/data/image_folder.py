"""Any ``<class>/<image>`` tree as a few-shot dataset, with a seeded, recorded class split.

The tree is a folder or a zip of one; when every image sits under one top-level folder (as in a
zip of a folder), that folder is stripped. The sorted class names are permuted with a seeded
generator whose stream never changes (NumPy's legacy ``RandomState``) and cut into train / val /
test by fractions, so a seed names one split for good. The decoded tree is cached as one uint8
tensor. Caltech-101 is such a tree, with a split fixed by this module.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import FewShotDataset
from .images import IMAGE_SUFFIXES, FileTree, decode_all
from .mini_imagenet import IMAGENET_MEAN, IMAGENET_STD
from .storage import DatasetNotFoundError, cache_dir, cached, data_root, source_key

SPLITS = ("train", "val", "test", "trainval")
MODES = {"RGB": 3, "L": 1}


def split_counts(classes: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Classes per split: train and val get ``floor(fraction * classes)``, test the rest."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test) adding "
                         f"up to 1, got {tuple(fractions)}")
    train, val = (int(f * classes + 1e-9) for f in fractions[:2])
    return train, val, classes - train - val


def class_split(class_names: Sequence[str], fractions: Sequence[float] = (0.64, 0.16, 0.20),
                seed: int = 0) -> dict:
    """The record of a seeded class split: ``seed``, ``fractions`` and the sorted class names of
    ``train``, ``val`` and ``test`` (disjoint, covering all classes). JSON-ready, to be written
    beside a run's outputs."""
    names = sorted(class_names)
    order = np.random.RandomState(seed).permutation(len(names))  # legacy stream: fixed for good
    train, val, _ = split_counts(len(names), fractions)
    cuts = {"train": order[:train], "val": order[train:train + val], "test": order[train + val:]}
    return {"seed": int(seed), "fractions": [float(f) for f in fractions],
            **{s: sorted(names[i] for i in idx) for s, idx in cuts.items()}}


def _resolve(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """An absolute ``path`` as is; a relative one under the data root, else the working directory."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [data_root(root) / p, Path.cwd() / p]
    hit = next((c for c in candidates if c.exists()), None)
    if hit is None:
        raise DatasetNotFoundError(
            f"image folder {str(path)!r}", candidates,
            "Give path= a folder of <class>/<image> files or a zip of one; a relative path is looked "
            "up under the data root (root=, --data-root, $METAZOO_DATA) and then the working directory.",
        )
    return hit


def _class_files(names: list[str]) -> dict[str, list[str]]:
    """Image paths of a tree grouped by class folder, a single top-level folder stripped."""
    parts = [n.split("/") for n in names]
    strip = bool(parts) and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1
    by_class: dict[str, list[str]] = {}
    for name, p in zip(names, parts):
        p = p[1:] if strip else p
        if len(p) >= 2 and not p[0].startswith("."):
            by_class.setdefault(p[0], []).append(name)
    return by_class


def load_tree(source: Path, size: int, mode: str, cache: str | os.PathLike | None = None) -> dict:
    """A whole tree through the cache: ``classes`` (sorted), ``sizes`` and ``images`` uint8
    (n, channels, size, size) class by class, images sorted by path within a class."""
    tree = FileTree(source)
    try:
        by_class = _class_files(tree.images())
        if not by_class:
            raise ValueError(f"{source} holds no <class>/<image> files: expected one folder per class "
                             f"holding images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        classes = sorted(by_class)
        files = [f for c in classes for f in by_class[c]]
        key = source_key([source], size, mode, "\n".join(files), "v2")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", source.stem)
        path = cache_dir(cache) / f"image_folder-{stem}-{size}-{mode}-{key}.pt"
        return cached(path, lambda: {"classes": classes, "sizes": [len(by_class[c]) for c in classes],
                                     "images": decode_all(tree, files, size, mode), "source": str(source)})
    finally:
        tree.close()


class ImageFolder(FewShotDataset):
    """The classes of one split of a ``<class>/<image>`` tree (a folder or a zip of one).

    Args:
        path: the folder or zip. An absolute path is used as is (``root`` is then ignored); a
            relative one is looked up under the data root, then in the working directory, so
            ``create_dataset("image_folder", split=s, root=data_root, path="birds.zip")`` works.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (train and val classes).
        root: data root (else ``$METAZOO_DATA``, else ``~/.metazoo/data``) for a relative ``path``.
        split_fractions: shares of the classes for (train, val, test); see :func:`split_counts`.
        split_seed: seed of the class permutation; with the fractions it fixes the split.
        image_size: side of the resized square images.
        mode: ``"RGB"`` (normalised with ImageNet mean/std) or ``"L"`` (grey, scaled to 0..1).
        cache: folder for the decoded tensor cache.
        min_images: classes of the split with fewer images are left out (listed in
            ``info["dropped"]``); the split itself is made over all classes, so it does not change.

    ``info["class_split"]`` is the full split record (:func:`class_split`) to save with a run.
    Results rows record ``class_split`` (``random (seed s)``) and ``info["protocol"]``: ``source`` (the
    resolved path), ``image_size``, ``mode``, ``split_fractions`` and ``min_images``.
    """

    dataset_name = "image_folder"
    expected: tuple[int, int] | None = None  # (classes, images) the whole tree must hold

    def __init__(self, path: str | os.PathLike, split: str = "train", root: str | os.PathLike | None = None,
                 split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                 image_size: int = 84, mode: str = "RGB", cache: str | os.PathLike | None = None,
                 min_images: int = 1) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        if mode not in MODES:
            raise ValueError(f"unknown image mode {mode!r}; valid: {sorted(MODES)}")
        source = _resolve(path, root)
        entry = load_tree(source, image_size, mode, cache)
        counts = (len(entry["classes"]), sum(entry["sizes"]))
        if self.expected is not None and counts != self.expected:
            raise ValueError(f"{source} holds {counts[0]} classes and {counts[1]} images, expected "
                             f"{self.expected[0]} and {self.expected[1]}: it is incomplete or another copy")
        record = class_split(entry["classes"], split_fractions, split_seed)
        wanted = record["train"] + record["val"] if split == "trainval" else record[split]
        sizes = dict(zip(entry["classes"], entry["sizes"]))
        offsets = dict(zip(entry["classes"], np.cumsum([0] + entry["sizes"][:-1]).tolist()))
        kept = [c for c in wanted if sizes[c] >= min_images]
        if not kept:
            raise ValueError(f"split {split!r} of {source} has no classes with >= {min_images} images "
                             f"({len(wanted)} classes before min_images); change split_fractions or min_images")
        images = torch.cat([entry["images"][offsets[c]:offsets[c] + sizes[c]] for c in kept])
        rgb = mode == "RGB"
        super().__init__(
            images, [sizes[c] for c in kept], kept, name=self.dataset_name, split=split,
            mean=IMAGENET_MEAN if rgb else None, std=IMAGENET_STD if rgb else None,
            info={"source": str(source), "image_size": image_size, "mode": mode, "min_images": min_images,
                  "split": f"random (seed {split_seed})", "class_split": record,
                  "dropped": {c: sizes[c] for c in wanted if sizes[c] < min_images},
                  "protocol": {"source": str(source), "image_size": image_size, "mode": mode,
                               "split_fractions": record["fractions"], "min_images": min_images}},
        )


# Caltech-101's split, fixed for good: floor(0.64 * 101) = 64 train and floor(0.16 * 101) = 16 val
# classes, the other 21 test. Seed 19 is the smallest seed that puts the four pairs of views of one
# object (Faces/Faces_easy, crocodile/crocodile_head, cougar_body/cougar_face, flamingo/flamingo_head)
# all in train, so no near-duplicate class straddles train and val/test. tests/test_image_folder.py
# pins the resulting class lists.
CALTECH_SEED = 19
CALTECH_FRACTIONS = (0.64, 0.16, 0.20)
CALTECH_ARCHIVE = "caltech101_84x84"


class Caltech101(ImageFolder):
    """Caltech-101 (Fei-Fei, Fergus & Perona 2004): 101 object classes, 8677 images (31 to 800 per
    class), 84x84 RGB, under metazoo's fixed class split of 64 / 16 / 21 classes.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        root: data root holding ``caltech101/caltech101_84x84.zip`` or its extracted
            ``caltech101/caltech101_84x84/`` folder.
        image_size: side of the resized square images.
        cache: folder for the decoded tensor cache.
    """

    dataset_name = "caltech101"
    expected = (101, 8677)

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 84,
                 cache: str | os.PathLike | None = None) -> None:
        base = data_root(root)
        candidates = [base / "caltech101" / f"{CALTECH_ARCHIVE}.zip", base / "caltech101" / CALTECH_ARCHIVE]
        source = next((c for c in candidates if c.exists()), None)
        if source is None:
            raise DatasetNotFoundError(
                "Caltech-101", candidates,
                f"Put {CALTECH_ARCHIVE}.zip (layout {CALTECH_ARCHIVE}/<class>/image_NNNN.jpg, from the "
                "metazoo data bundle) or its extracted folder into <data root>/caltech101/, or point "
                "--data-root / $METAZOO_DATA at a folder that has them.",
            )
        super().__init__(source, split=split, split_fractions=CALTECH_FRACTIONS, split_seed=CALTECH_SEED,
                         image_size=image_size, mode="RGB", cache=cache)
