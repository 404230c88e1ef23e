"""Omniglot (Lake et al. 2015) with the Vinyals et al. (2016) character split, MAML's random one, or
Lake et al.'s background / evaluation one; rotations as classes, or drawn per class or per episode of each task.

Read from the two official archives, their extracted folders, or torchvision's ``omniglot-py``
layout under the data root. The decoded images are cached as one uint8 tensor keyed by the
source files and the image size, so a later run loads in about a second.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .base import RIGHT_ANGLES, FewShotDataset, check_angles, describe_rotations
from .image_folder import class_split
from .images import FileTree, decode_all
from .storage import DataError, DatasetNotFoundError, cache_dir, cached, data_root, download, source_key

BACKGROUND, EVALUATION = "images_background", "images_evaluation"
EXPECTED_CHARACTERS = {BACKGROUND: 964, EVALUATION: 659}
DRAWINGS = 20
ROTATIONS = RIGHT_ANGLES
ROTATION_MODES = ("classes", "per_task", "per_episode")
URLS = {
    BACKGROUND: ("https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip",
                 "68d2efa1b9178cc56df9314c21c6e718"),
    EVALUATION: ("https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",
                 "6b91aef0f799c5bb55b94e3f2daec811"),
}

# The Vinyals split as used by Prototypical Networks, alphabet order as in its split files.
# Gurmukhi is the one alphabet cut in two: characters 01-41 train, 42-45 test.
VINYALS_TRAIN = [
    "Angelic", "Grantha", "N_Ko", "Aurek-Besh", "Japanese_(hiragana)", "Malay_(Jawi_-_Arabic)",
    "Asomtavruli_(Georgian)", "Sanskrit", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "Korean",
    "Arcadian", "Greek", "Alphabet_of_the_Magi", "Blackfoot_(Canadian_Aboriginal_Syllabics)",
    "Futurama", "Gurmukhi", "Tagalog", "Anglo-Saxon_Futhorc", "Braille", "Cyrillic",
    "Burmese_(Myanmar)", "Avesta", "Gujarati", "Ge_ez", "Syriac_(Estrangelo)", "Atlantean",
    "Japanese_(katakana)", "Balinese", "Atemayar_Qelisayer", "Glagolitic", "Tifinagh", "Latin",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)",
]
VINYALS_VAL = ["Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali"]
VINYALS_TEST = [
    "Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Syriac_(Serto)", "Sylheti", "Tengwar", "Tibetan",
    "ULOG",
]
GURMUKHI_LAST_TRAIN = 41
# MAML's code (Finn et al. 2017) shuffles all 1623 characters and meta-trains on the first 1100,
# so test characters share alphabets with training ones; here 100 of the rest validate and 423 test.
RANDOM_COUNTS = (1100, 100, 423)
# Lake et al.'s division: the 30 alphabets of images_background train and validate, the 20 of
# images_evaluation test. Validation takes whole alphabets, as the test does, and the same five as
# the Vinyals split (all five are background alphabets), so both splits validate on the same characters.
EVALUATION_ALPHABETS = [
    "Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Avesta", "Ge_ez", "Glagolitic", "Gurmukhi",
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)", "Oriya",
    "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
]
BACKGROUND_VAL = VINYALS_VAL
SPLITS = {
    "train": VINYALS_TRAIN,
    "val": VINYALS_VAL,
    "test": VINYALS_TEST,
    "trainval": VINYALS_TRAIN + VINYALS_VAL,
}


def _in_split(split: str, alphabet: str, character: str) -> bool:
    if alphabet != "Gurmukhi":
        return True
    number = int(character.removeprefix("character"))
    return (number <= GURMUKHI_LAST_TRAIN) == (split in ("train", "trainval"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; valid: {sorted(SPLITS)}")


def vinyals_characters(split: str, characters: list[str]) -> list[str]:
    """Character names ``Alphabet/characterNN`` of a Vinyals split, in the split files' order.

    ``characters`` are all ``Alphabet/characterNN`` names present in the data.
    """
    _check_split(split)
    by_alphabet: dict[str, list[str]] = {}
    for name in characters:
        alphabet, character = name.split("/")
        by_alphabet.setdefault(alphabet, []).append(character)
    return [f"{alphabet}/{character}" for alphabet in SPLITS[split]
            for character in sorted(by_alphabet.get(alphabet, [])) if _in_split(split, alphabet, character)]


def vinyals_classes(split: str, characters: list[str], rotations=ROTATIONS) -> list[str]:
    """Class names ``Alphabet/characterNN/rotDDD`` of a Vinyals split, in the split files' order."""
    return [f"{name}/rot{r:03d}" for name in vinyals_characters(split, characters) for r in rotations]


def _find_sources(root: Path) -> dict[str, Path]:
    """Each of the two Omniglot sets as a zip or a folder; raises if either is missing."""
    found, looked = {}, []
    for part in (BACKGROUND, EVALUATION):
        candidates = [
            root / "omniglot" / f"{part}.zip",
            root / "omniglot" / part,
            root / "omniglot" / "omniglot-py" / part,
            root / "omniglot-py" / part,
            root / f"{part}.zip",
        ]
        looked += candidates
        hit = next((c for c in candidates if c.exists()), None)
        if hit is not None:
            found[part] = hit
    if len(found) < 2:
        raise DatasetNotFoundError(
            "Omniglot", looked,
            "Get images_background.zip and images_evaluation.zip from "
            "https://github.com/brendenlake/omniglot (python/ folder) into <data root>/omniglot/, "
            f"pass Omniglot(..., download=True), or point --data-root / ${'{'}METAZOO_DATA{'}'} at a folder "
            "that has them.",
        )
    return found


def _decode_set(source: Path, part: str, size: int) -> tuple[list[str], torch.Tensor]:
    tree = FileTree(source)
    files = tree.images()
    by_char: dict[str, list[str]] = {}
    for f in files:
        parts = f.split("/")
        if parts[0] == part:  # archives hold a top folder named after the set
            parts = parts[1:]
        if len(parts) != 3:
            continue
        by_char.setdefault(f"{parts[0]}/{parts[1]}", []).append(f)
    if len(by_char) != EXPECTED_CHARACTERS[part]:
        raise ValueError(
            f"{source} holds {len(by_char)} characters, expected {EXPECTED_CHARACTERS[part]}: "
            "the archive is incomplete or not Omniglot's"
        )
    bad = {c: len(v) for c, v in by_char.items() if len(v) != DRAWINGS}
    if bad:
        raise ValueError(f"{source}: characters without {DRAWINGS} drawings: {dict(list(bad.items())[:5])}")
    names = sorted(by_char)
    ordered = [f for c in names for f in sorted(by_char[c])]
    try:
        images = decode_all(tree, ordered, size, "L")
    finally:
        tree.close()
    images = 255 - images  # strokes bright, background zero
    return names, images.view(len(names), DRAWINGS, size, size)


def load_characters(root: Path, size: int = 28, cache: str | os.PathLike | None = None):
    """All 1623 characters: (names, uint8 tensor (1623, 20, size, size)), through the cache."""
    sources = _find_sources(root)
    files = [sources[BACKGROUND], sources[EVALUATION]]
    path = cache_dir(cache) / f"omniglot-{size}-{source_key(files, size, 'v2')}.pt"

    def build() -> dict:
        names, images, errors = [], [], []
        for part in (BACKGROUND, EVALUATION):
            try:
                n, x = _decode_set(sources[part], part, size)
            except DataError as err:  # try both sets, to report every bad file at once
                errors.append(err)
                continue
            names += n
            images.append(x)
        if errors:
            raise DataError.joined(errors)
        return {"names": names, "images": torch.cat(images), "sources": [str(f.resolve()) for f in files]}

    entry = cached(path, build)
    return entry["names"], entry["images"]


def random_characters(split: str, characters: list[str], seed: int) -> list[str]:
    """Character names of one split of a seeded random character split with MAML's counts
    (:data:`RANDOM_COUNTS`), made by :func:`~metazoo.data.image_folder.class_split`."""
    _check_split(split)
    total = sum(RANDOM_COUNTS)
    if len(characters) != total:
        raise ValueError(f"a random Omniglot split needs all {total} characters, got {len(characters)}")
    record = class_split(characters, [c / total for c in RANDOM_COUNTS], seed)
    return record["train"] + record["val"] if split == "trainval" else record[split]


def random_classes(split: str, characters: list[str], seed: int, rotations=ROTATIONS) -> list[str]:
    """Class names ``Alphabet/characterNN/rotDDD`` of one split of :func:`random_characters`."""
    return [f"{name}/rot{r:03d}" for name in random_characters(split, characters, seed) for r in rotations]


def background_characters(split: str, characters: list[str]) -> list[str]:
    """Sorted character names of one split of Lake et al.'s division: test is the 20 evaluation
    alphabets (659 characters), val the :data:`BACKGROUND_VAL` alphabets (172), train the other 25
    background alphabets (792); trainval is all 30 background alphabets (964)."""
    _check_split(split)

    def part(name: str) -> str:
        alphabet = name.split("/")[0]
        return "test" if alphabet in EVALUATION_ALPHABETS else "val" if alphabet in BACKGROUND_VAL else "train"

    parts = {c: part(c) for c in characters}
    evaluation = sum(p == "test" for p in parts.values())
    if evaluation != EXPECTED_CHARACTERS[EVALUATION]:
        raise ValueError(f"the background split needs the {EXPECTED_CHARACTERS[EVALUATION]} characters of the "
                         f"20 evaluation alphabets, found {evaluation}: the alphabets are named differently")
    wanted = ("train", "val") if split == "trainval" else (split,)
    return sorted(c for c, p in parts.items() if p in wanted)


# character_split -> the characters of a split, given all character names and the split seed
CHARACTER_SPLITS = {
    "vinyals": lambda split, names, seed: vinyals_characters(split, names),
    "random": random_characters,
    "background": lambda split, names, seed: background_characters(split, names),
}


def _rotation_angles(rotations: str | Sequence[int]) -> tuple[tuple[int, ...], str | None]:
    """(angles, the sampler's rotation scope: None where rotations make classes) of Omniglot's ``rotations``
    argument."""
    if isinstance(rotations, str):
        if rotations not in ROTATION_MODES:
            raise ValueError(f"unknown Omniglot rotations {rotations!r}; valid: {', '.join(ROTATION_MODES)} "
                             "or a list of angles among 0, 90, 180, 270")
        return ROTATIONS, {"per_task": "class", "per_episode": "episode"}.get(rotations)
    angles = tuple(int(a) for a in rotations)
    check_angles(angles)
    return angles, None


class Omniglot(FewShotDataset):
    """Omniglot characters of one split, each rotation a separate class, or each character one class
    that episodes rotate.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (train and val characters).
            Vinyals split: 1028 / 172 / 423 / 1200 characters, almost by alphabet. Random split:
            1100 / 100 / 423 / 1200. Background split: 792 / 172 / 659 / 964, by alphabet.
        root: data root (else ``$METAZOO_DATA``, else ``~/.metazoo/data``).
        image_size: side of the resized square images (28 in the papers).
        rotations: ``"classes"`` (each character at 0, 90, 180 and 270 degrees is a class of its own:
            most papers), ``"per_task"`` (each character is one class, stored unrotated, and
            :class:`~metazoo.data.EpisodeSampler` turns each class of an episode by an angle drawn
            for that episode: MAML's code), ``"per_episode"`` (the same, one angle for all the classes of
            an episode: Relation Networks' code), or a list of angles that make classes of their own
            (``[0]``: no rotations).
        download: fetch the official archives (md5-checked) into ``<root>/omniglot`` if missing.
        cache: folder for the decoded tensor cache.
        character_split: ``"vinyals"`` (the split files of Vinyals et al., used by most papers),
            ``"random"`` (the characters shuffled with ``split_seed``, as MAML's code does; its own
            shuffle is not reproducible: it follows the file system's listing order) or
            ``"background"`` (Lake et al.: test on the 20 alphabets of ``images_evaluation``, train on
            the 30 of ``images_background`` but the five :data:`BACKGROUND_VAL` alphabets, which
            validate).
        split_seed: seed of the random character split (ignored by the others).

    ``info["split"]`` names the character split (``vinyals``, ``random (seed s)``, ``background``),
    ``info["protocol"]["rotations"]`` how rotations were used (``classes``, ``per task``, ``per episode``, ...).
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 28,
                 rotations: str | Sequence[int] = "classes", download: bool = False,
                 cache: str | os.PathLike | None = None, character_split: str = "vinyals",
                 split_seed: int = 1) -> None:
        if character_split not in CHARACTER_SPLITS:
            raise ValueError(f"unknown Omniglot character_split {character_split!r}; "
                             f"valid: {', '.join(CHARACTER_SPLITS)}")
        angles, scope = _rotation_angles(rotations)
        sampled = scope is not None  # the sampler turns the images, each character one class
        base = data_root(root)
        if download:
            fetch(base)
        names, chars = load_characters(base, image_size, cache)
        characters = CHARACTER_SPLITS[character_split](split, names, split_seed)
        class_angles = (0,) if sampled else angles
        index = {n: i for i, n in enumerate(names)}
        blocks = [torch.rot90(chars[index[c]], r // 90, dims=(1, 2)) for c in characters for r in class_angles]
        images = torch.stack(blocks).view(-1, 1, image_size, image_size) if blocks else \
            torch.empty(0, 1, image_size, image_size, dtype=torch.uint8)
        classes = list(characters) if sampled else [f"{c}/rot{r:03d}" for c in characters for r in angles]
        protocol = {"image_size": image_size}
        if not sampled:  # else FewShotDataset records the rotations it leaves to the sampler
            protocol["rotations"] = describe_rotations("classes", angles)
        super().__init__(
            images, [DRAWINGS] * len(classes), classes, name="omniglot", split=split,
            info={"root": str(base), "split": f"random (seed {split_seed})" if character_split == "random"
                  else character_split, "characters": len(characters), "rotations": list(angles),
                  "image_size": image_size, "protocol": protocol},
            task_rotations=angles if sampled else (), rotation_scope=scope or "class",
        )


def fetch(root: Path) -> None:
    """Download whichever official Omniglot archive is missing under ``root/omniglot``."""
    try:
        _find_sources(root)
        return
    except DatasetNotFoundError:
        pass
    for part, (url, md5) in URLS.items():
        dest = root / "omniglot" / f"{part}.zip"
        if not dest.exists():
            download(url, dest, md5)
