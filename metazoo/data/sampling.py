"""EpisodeSampler: N-way K-shot episodes drawn from a FewShotDataset's tensor cache.

Episode ``i`` is a pure function of ``(seed, i)``: the same for any worker count or order of
requests, so validation and test episodes are fixed sets and a resumed run sees the episodes it
would have seen.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..episode import Episode, LabeledSet
from .base import FewShotDataset


class EpisodeSizeError(ValueError):
    """The asked-for ways, shots and queries do not fit the split."""


_MASK64 = (1 << 64) - 1
# protocol keys the sampler and evaluation write, which a dataset's info["protocol"] may not use
RESERVED_KEYS = ("dataset", "split", "ways", "shots", "queries", "seed", "class_split", "episodes", "bn",
                 "protocol")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def episode_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for episode ``index`` of a sampler seeded with ``seed`` (SplitMix64)."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(index) & _MASK64)) >> 1


def from_host(drawn: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (indices a CPU generator drew) on ``device``, without a host sync: to a GPU through
    pinned memory, asynchronously (torch's plain copy from pageable memory waits for the GPU's stream)."""
    if device.type == "cuda":
        return drawn.pin_memory().to(device, non_blocking=True)
    return drawn.to(device)


def move_images(images: torch.Tensor, shifts: torch.Tensor | None = None,
                angles: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` (n, c, h, w), each turned by ``angles[i]`` degrees counterclockwise about its centre, then moved
    down by ``shifts[i, 0]`` and right by ``shifts[i, 1]`` pixels (negative: up, left). Each pixel takes the
    nearest pixel it comes from, clamped to the image, so the edge pixels are repeated into the space left: with
    (cy, cx) = ((h - 1) / 2, (w - 1) / 2), dr = r - dy - cy and dq = q - dx - cx, out[i, :, r, q] =
    images[i, :, clamp(round(cy + cos(a) dr + sin(a) dq)), clamp(round(cx - sin(a) dr + cos(a) dq))]; without
    angles, images[i, :, clamp(r - dy), clamp(q - dx)] exactly. Any dtype (the uint8 cache), on the images'
    device; either argument may be None (no move)."""
    n, c, h, w = images.shape
    rows = torch.arange(h, device=images.device)[None, :, None].expand(n, h, w)
    cols = torch.arange(w, device=images.device)[None, None, :].expand(n, h, w)
    if shifts is not None:
        rows, cols = rows - shifts[:, :1, None], cols - shifts[:, 1:, None]
    if angles is not None:
        turn = angles.to(torch.float32).deg2rad()[:, None, None]
        cos, sin, cy, cx = turn.cos(), turn.sin(), (h - 1) / 2, (w - 1) / 2
        dr, dq = rows - cy, cols - cx
        rows = (cy + cos * dr + sin * dq).round().long()
        cols = (cx - sin * dr + cos * dq).round().long()
    where = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # (n, h, w) flat source pixel
    return images.flatten(2).gather(2, where.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


class EpisodeSampler(torch.utils.data.Dataset):
    """Map-style dataset of episodes: ``sampler[i]`` is episode ``i``.

    Args:
        dataset: the split to sample from.
        ways: classes per episode.
        shots: support examples per class.
        queries: query examples per class.
        seed: fixes the whole sequence of episodes.
        episodes: length reported by ``len()`` (the number of fixed episodes for evaluation);
            indexing past it is still allowed, for open-ended training.
        translate: shift every image of an episode by up to this many pixels down or up and right or
            left (each offset drawn uniformly, per image, per episode), the edge pixels repeated into
            the space it leaves: the translation augmentation of Santoro et al. 2016 (for training
            episodes; 0: images as stored).
        rotate: turn every image of an episode about its centre by an angle drawn uniformly within
            +- this many degrees (per image, per episode; nearest pixel, edges repeated), before its
            translation: Santoro et al.'s rotation augmentation (0: none).

    If the dataset has ``task_rotations``, each episode also draws one of those angles per class,
    after its classes and images, and turns all that class's support and query images by it (with the
    dataset's ``rotation_scope = "episode"``, one angle for all its classes). The
    translations are drawn after that and the small angles last, so an episode has the same classes,
    images and turns with or without them (and the same translations with or without the angles).

    Episodes come out where the dataset's images are (a GPU after :meth:`FewShotDataset.to`); their random
    draws are always made on the CPU by ``torch.Generator``, so they do not depend on the device.
    """

    def __init__(self, dataset: FewShotDataset, ways: int, shots: int, queries: int,
                 seed: int = 0, episodes: int = 1_000_000_000, translate: int = 0, rotate: float = 0.0) -> None:
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.seed, self.episodes, self.translate, self.rotate = seed, episodes, int(translate), float(rotate)
        self._check()
        sizes = dataset.class_sizes
        self._max_size = int(sizes.max())
        # positions past a class's size sort last, so they are never picked
        self._pad = None if bool((sizes == self._max_size).all()) else \
            torch.arange(self._max_size)[None, :] >= sizes[:, None]  # (classes, max_size)
        turns = [a // 90 for a in dataset.task_rotations]
        self._turns = torch.tensor(turns) if turns else None  # quarter turns an episode draws from
        self._turn_draws = 1 if dataset.rotation_scope == "episode" else ways  # angles it draws
        labels = torch.arange(ways, device=dataset.images.device)[:, None]
        self._support_labels = labels.expand(ways, shots).flatten()  # (ways * shots,) class-major
        self._query_labels = labels.expand(ways, queries).flatten()  # (ways * queries,)

    def _check(self) -> None:
        d, per_class = self.dataset, self.shots + self.queries
        where = f"{d.name} split {d.split!r}"
        if self.ways < 1 or self.shots < 1 or self.queries < 0:
            raise EpisodeSizeError(f"need ways >= 1, shots >= 1, queries >= 0; got ways={self.ways}, "
                                   f"shots={self.shots}, queries={self.queries}")
        if not 0 <= self.translate < min(d.images.shape[-2:]):
            raise ValueError(f"translate must be 0 or more pixels and less than the images' side "
                             f"({tuple(d.images.shape[-2:])} in {where}); got {self.translate}")
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"rotate is the largest angle in degrees an image is turned by, from 0 to 180; got "
                             f"{self.rotate}")
        if self.ways > d.num_classes:
            raise EpisodeSizeError(f"{self.ways}-way episodes need {self.ways} classes, but {where} "
                                   f"has {d.num_classes}")
        clash = sorted(set(d.info.get("protocol", {})) & set(RESERVED_KEYS))
        if clash:
            raise ValueError(f"{where}: info['protocol'] key(s) {', '.join(clash)} clash with what the sampler and "
                             f"evaluation record ({', '.join(RESERVED_KEYS)}); rename them")
        small = (d.class_sizes < per_class).nonzero().flatten().tolist()
        if small:
            named = ", ".join(f"{d.class_names[c]!r} has {int(d.class_sizes[c])}" for c in small[:5])
            more = f" and {len(small) - 5} more" if len(small) > 5 else ""
            raise EpisodeSizeError(
                f"{self.shots} shots + {self.queries} queries need {per_class} images per class, but in "
                f"{where} class {named}{more}. Lower shots/queries or drop those classes."
            )

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[Episode]:
        """Episodes ``0 .. len - 1`` (without this, Python would iterate until indexing failed,
        which it never does)."""
        return (self[i] for i in range(self.episodes))

    def indices(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Episode ``index`` as (classes (ways,), image indices (ways, shots + queries))."""
        return self._draw(index)[:2]

    def turns(self, index: int) -> torch.Tensor | None:
        """Quarter turns (ways,) counterclockwise that episode ``index`` gives the images of each of its
        classes (all one where the dataset's ``rotation_scope`` is ``"episode"``), if the dataset has
        ``task_rotations``; else None."""
        return self._draw(index)[2]

    def shifts(self, index: int) -> torch.Tensor | None:
        """Pixel offsets (ways, shots + queries, 2) down and right that episode ``index`` moves each image by,
        if ``translate``; else None."""
        return self._draw(index)[3]

    def angles(self, index: int) -> torch.Tensor | None:
        """Angles (ways, shots + queries) in degrees counterclockwise that episode ``index`` turns each image by,
        if ``rotate``; else None."""
        return self._draw(index)[4]

    def _draw(self, index: int) -> tuple[torch.Tensor, ...]:
        """Classes, image indices, quarter turns, pixel shifts and small angles of episode ``index`` (the last
        three None where not asked for). The turns are drawn after the images, then the shifts, the angles last,
        so classes and images are those the same episode has without rotations or translations."""
        g = torch.Generator().manual_seed(episode_seed(self.seed, index))
        classes = self._choose_classes(g)
        keys = torch.rand(self.ways, self._max_size, generator=g)
        if self._pad is not None:
            keys.masked_fill_(self._pad[classes], 2.0)
        picks = keys.argsort(dim=1)[:, : self.shots + self.queries]  # (ways, shots + queries)
        turns = None
        if self._turns is not None:
            drawn = torch.randint(len(self._turns), (self._turn_draws,), generator=g)
            turns = self._turns[drawn].expand(self.ways)  # (ways,)
        shifts = None
        if self.translate:
            t = self.translate
            shifts = torch.randint(-t, t + 1, (self.ways, self.shots + self.queries, 2), generator=g)
        angles = None
        if self.rotate:
            angles = (2 * torch.rand(self.ways, self.shots + self.queries, generator=g) - 1) * self.rotate
        return classes, picks + self.dataset.class_offsets[classes, None], turns, shifts, angles

    def _choose_classes(self, g: torch.Generator) -> torch.Tensor:
        """``ways`` distinct classes, uniformly: the first distinct values of a stream of uniform
        draws when classes are many, else a random permutation, cut."""
        total = self.dataset.num_classes
        if 4 * self.ways > total:
            return torch.randperm(total, generator=g)[: self.ways]
        chosen: dict[int, None] = {}
        while len(chosen) < self.ways:
            for c in torch.randint(total, (2 * self.ways,), generator=g).tolist():
                chosen.setdefault(c)
        return torch.tensor(list(chosen)[: self.ways])

    def __getitem__(self, index: int) -> Episode:
        """Episode ``index``, on the device of the dataset's images: drawn on the CPU, then gathered and
        made float where the images are (:meth:`FewShotDataset.to`), only the classes and image indices copied
        there (in one copy, and the small angles of ``rotate`` in a second)."""
        classes, idx, turns, shifts, angles = self._draw(index)
        drawn = [classes, idx.flatten()] + ([shifts.flatten()] if shifts is not None else [])
        both = from_host(torch.cat(drawn), self.dataset.images.device)
        classes, idx = both[: self.ways], both[self.ways: self.ways + idx.numel()]
        x = self.dataset.images.index_select(0, idx)
        x = x.view(self.ways, self.shots + self.queries, *x.shape[1:])  # (ways, shots + queries, c, h, w)
        if turns is not None:
            x = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for images, k in zip(x, turns.tolist())])
        if shifts is not None or angles is not None:
            shifts = None if shifts is None else both[self.ways + idx.numel():].view(-1, 2)
            angles = None if angles is None else from_host(angles.flatten(), x.device)
            x = move_images(x.flatten(0, 1), shifts, angles).view_as(x)
        x = self.dataset.to_float(x.flatten(0, 1)).view_as(x)
        support = LabeledSet(x[:, : self.shots].flatten(0, 1), self._support_labels, self.ways)
        query = LabeledSet(x[:, self.shots:].flatten(0, 1), self._query_labels, self.ways)
        return Episode(support, query, classes, index)

    def protocol(self) -> dict:
        """What fixes these episodes, for results rows: dataset, split, ways, shots, queries and seed;
        ``class_split``, the class split the dataset was made by where it records one (``info["split"]``:
        ``vinyals``, ``ravi``, ``random (seed s)``, ``background``); and every key of the dataset's
        ``info["protocol"]`` (Omniglot's ``rotations``, an image folder's ``source``, ``mode``, ...)."""
        out = {"dataset": self.dataset.name, "split": self.dataset.split, "ways": self.ways,
               "shots": self.shots, "queries": self.queries, "seed": self.seed}
        if "split" in self.dataset.info:
            out["class_split"] = self.dataset.info["split"]
        return {**out, **self.dataset.info.get("protocol", {})}
