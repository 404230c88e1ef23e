"""learn2learn's standard Omniglot pipeline: the second contender of the sampling table, the data of
learn2learn's side in the end-to-end and race tables.

Its Omniglot (torchvision's ``omniglot-py`` folders) is extracted once into metazoo's cache from
the data root's archives. The only patching of another library in ``metazoo bench`` is
:func:`extracted_omniglot_accepted`, a context manager used around learn2learn's taskset build.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from ..data.omniglot import _find_sources
from ..data.storage import cache_dir, data_root

L2L_OMNIGLOT = "l2l-omniglot"  # folder under metazoo's cache dir: learn2learn's Omniglot root


def l2l_omniglot_root(root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """learn2learn's Omniglot root for the Omniglot under data root ``root``: ``<cache>/l2l-omniglot``.

    It holds torchvision's layout, ``omniglot-py/images_background`` and
    ``omniglot-py/images_evaluation``, extracted from the two archives the first time (each part
    is extracted into a temporary folder and renamed into place, so an interrupted extraction
    leaves nothing half done) and left alone once present. An already extracted source folder is
    linked instead of copied. ``root`` is resolved by ``metazoo.data.data_root`` and ``cache`` by
    ``metazoo.data.storage.cache_dir()``.
    """
    folder = cache_dir(cache) / L2L_OMNIGLOT / "omniglot-py"
    for part, source in _find_sources(data_root(root)).items():
        dest = folder / part
        if dest.is_dir():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            os.symlink(source.resolve(), dest, target_is_directory=True)
            continue
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{part}.") as tmp:
            with zipfile.ZipFile(source) as archive:
                archive.extractall(tmp)
            extracted = Path(tmp) / part
            if not extracted.is_dir():
                raise ValueError(f"{source} has no top folder {part}/, unlike Omniglot's archives")
            try:
                os.replace(extracted, dest)
            except OSError:
                if not dest.is_dir():  # else another process extracted it meanwhile
                    raise
    return folder.parent


def is_extracted(cache: str | os.PathLike | None = None) -> bool:
    """Whether both parts are already in ``<cache>/l2l-omniglot/omniglot-py``."""
    folder = cache_dir(cache) / L2L_OMNIGLOT / "omniglot-py"
    return (folder / "images_background").is_dir() and (folder / "images_evaluation").is_dir()


@contextlib.contextmanager
def extracted_omniglot_accepted() -> Iterator[None]:
    """Patches ``torchvision.datasets.omniglot.Omniglot._check_integrity`` inside the block; restores it on exit.

    torchvision's Omniglot (under learn2learn's FullOmniglot) checks the md5 of the two *official*
    zip files in ``omniglot-py/`` before it reads the extracted folders, and tries to download
    them when that fails. The data bundle's archives hold the official images but were re-packed
    (other md5s), and what torchvision reads are the folders anyway, so inside this block the
    check is "the extracted folder exists" instead. The original method is put back when the
    block ends, also on an exception. Nothing else of torchvision or learn2learn is touched.
    """
    from torchvision.datasets import omniglot

    cls = omniglot.Omniglot
    original = cls.__dict__["_check_integrity"]
    cls._check_integrity = lambda self: os.path.isdir(os.path.join(self.root, self._get_target_folder()))
    try:
        yield
    finally:
        cls._check_integrity = original


def l2l_standard_taskset(root: str | os.PathLike, ways: int, shots: int, queries: int) -> Any:
    """learn2learn's own Omniglot train Taskset: ``get_tasksets("omniglot", ...).train`` over ``root``.

    Built by learn2learn's code, not re-created here: FullOmniglot (Resize(28, LANCZOS),
    ToTensor, 1 - x), MetaDataset, FusedNWaysKShots(n=ways, k=shots + queries), LoadData,
    RemapLabels, ConsecutiveLabels, RandomClassRotation([0, 90, 180, 270]). ``root`` is an
    ``l2l_omniglot_root()``; learn2learn caches its class bookkeeping there on first use.
    """
    from learn2learn.vision.benchmarks import get_tasksets

    with extracted_omniglot_accepted():
        return get_tasksets("omniglot", train_ways=ways, train_samples=shots + queries, test_ways=ways,
                            test_samples=shots + queries, root=str(root)).train


def full_omniglot_characters(full: Any) -> list[str]:
    """``Alphabet/characterNN`` of each class of learn2learn's ``FullOmniglot`` (torchvision's background
    characters, then its evaluation ones): the names metazoo's Omniglot splits use."""
    background, evaluation = full.dataset.datasets
    return [name.replace(os.sep, "/") for name in (*background._characters, *evaluation._characters)]


def l2l_split_taskset(root: str | os.PathLike, characters: list[str], ways: int, samples: int) -> Any:
    """learn2learn's Omniglot benchmark pipeline restricted to ``characters`` (``Alphabet/characterNN``).

    The same parts as ``get_tasksets("omniglot")`` (FullOmniglot with Resize(28, LANCZOS), ToTensor,
    1 - x; MetaDataset; FusedNWaysKShots(n=ways, k=samples), LoadData, RemapLabels, ConsecutiveLabels,
    RandomClassRotation([0, 90, 180, 270])), with the transforms built on a ``FilteredMetaDataset`` of
    those characters, so every task draws from them alone (``get_tasksets`` builds its train
    transforms on the unfiltered dataset: :func:`standard_train_draws`). ``root``: an ``l2l_omniglot_root()``.
    """
    import learn2learn as l2l
    from learn2learn.data.transforms import ConsecutiveLabels, FusedNWaysKShots, LoadData, RemapLabels
    from learn2learn.vision.transforms import RandomClassRotation
    from PIL.Image import LANCZOS
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(28, interpolation=LANCZOS), transforms.ToTensor(),
                                    lambda x: 1.0 - x])
    with extracted_omniglot_accepted():
        full = l2l.vision.datasets.FullOmniglot(root=str(root), transform=transform, download=False)
    index = {name: i for i, name in enumerate(full_omniglot_characters(full))}
    split = l2l.data.FilteredMetaDataset(l2l.data.MetaDataset(full), labels=[index[c] for c in characters])
    task_transforms = [FusedNWaysKShots(split, n=ways, k=samples), LoadData(split), RemapLabels(split),
                       ConsecutiveLabels(split), RandomClassRotation(split, [0.0, 90.0, 180.0, 270.0])]
    return l2l.data.Taskset(split, task_transforms=task_transforms)


def standard_train_draws(root: str | os.PathLike, ways: int, samples: int, tasks: int) -> dict:
    """Which characters ``get_tasksets("omniglot").train`` trains on, counted over ``tasks`` sampled task
    descriptions (no image is loaded): items drawn, distinct characters, items outside its own train
    split (the 1100 characters of its ``FilteredMetaDataset``) and items of metazoo's Vinyals test
    characters (423). ``root``: an ``l2l_omniglot_root()``."""
    from ..data.omniglot import vinyals_characters

    train = l2l_standard_taskset(root, ways, samples, 0)
    own = set(train.dataset.labels)  # its train split
    unfiltered = train.dataset.dataset  # the MetaDataset its train transforms were built on
    names = full_omniglot_characters(unfiltered.dataset)
    test = set(vinyals_characters("test", names))
    drawn = [unfiltered.indices_to_labels[d.index] for _ in range(tasks) for d in train.sample_task_description()]
    distinct = set(drawn)
    return {"tasks": tasks, "items": len(drawn), "characters": len(distinct), "own_split": len(own),
            "outside_own": sum(c not in own for c in drawn),
            "characters_outside_own": len(distinct - own),
            "in_vinyals_test": sum(names[c] in test for c in drawn),
            "characters_in_vinyals_test": sum(names[c] in test for c in distinct), "vinyals_test": len(test)}
