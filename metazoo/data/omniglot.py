"""Omniglot (Lake et al. 2015) with the Vinyals et al. (2016) class split, or MAML's random one.

Read from the two official archives, their extracted folders, or torchvision's ``omniglot-py``
layout under the data root. The decoded images are cached as one uint8 tensor keyed by the
source files and the image size, so a later run loads in about a second.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import FewShotDataset
from .image_folder import class_split
from .images import FileTree, decode_all
from .storage import DatasetNotFoundError, cache_dir, cached, data_root, download, source_key

BACKGROUND, EVALUATION = "images_background", "images_evaluation"
EXPECTED_CHARACTERS = {BACKGROUND: 964, EVALUATION: 659}
DRAWINGS = 20
ROTATIONS = (0, 90, 180, 270)
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
CHARACTER_SPLITS = ("vinyals", "random")
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


def vinyals_classes(split: str, characters: list[str], rotations=ROTATIONS) -> list[str]:
    """Class names ``Alphabet/characterNN/rotDDD`` of a Vinyals split, in the split files' order.

    ``characters`` are all ``Alphabet/characterNN`` names present in the data.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; valid: {sorted(SPLITS)}")
    by_alphabet: dict[str, list[str]] = {}
    for name in characters:
        alphabet, character = name.split("/")
        by_alphabet.setdefault(alphabet, []).append(character)
    out = []
    for alphabet in SPLITS[split]:
        for character in sorted(by_alphabet.get(alphabet, [])):
            if _in_split(split, alphabet, character):
                out += [f"{alphabet}/{character}/rot{r:03d}" for r in rotations]
    return out


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
    images = decode_all(tree, ordered, size, "L")
    tree.close()
    images = 255 - images  # strokes bright, background zero
    return names, images.view(len(names), DRAWINGS, size, size)


def load_characters(root: Path, size: int = 28, cache: str | os.PathLike | None = None):
    """All 1623 characters: (names, uint8 tensor (1623, 20, size, size)), through the cache."""
    sources = _find_sources(root)
    files = [p for p in sources.values()]
    key = source_key([f for f in files if f.is_file()] or files, [str(f) for f in files], size, "v1")
    path = cache_dir(cache) / f"omniglot-{size}-{key}.pt"

    def build() -> dict:
        names, images = [], []
        for part in (BACKGROUND, EVALUATION):
            n, x = _decode_set(sources[part], part, size)
            names += n
            images.append(x)
        return {"names": names, "images": torch.cat(images), "sources": [str(f) for f in files]}

    entry = cached(path, build)
    return entry["names"], entry["images"]


def random_classes(split: str, characters: list[str], seed: int, rotations=ROTATIONS) -> list[str]:
    """Class names of one split of a seeded random character split with MAML's counts
    (:data:`RANDOM_COUNTS`), made by :func:`~metazoo.data.image_folder.class_split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; valid: {sorted(SPLITS)}")
    total = sum(RANDOM_COUNTS)
    if len(characters) != total:
        raise ValueError(f"a random Omniglot split needs all {total} characters, got {len(characters)}")
    record = class_split(characters, [c / total for c in RANDOM_COUNTS], seed)
    picked = record["train"] + record["val"] if split == "trainval" else record[split]
    return [f"{name}/rot{r:03d}" for name in picked for r in rotations]


class Omniglot(FewShotDataset):
    """Omniglot characters of one split, each rotation a separate class.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (train and val); times the
            number of rotations. Vinyals split: 1028 / 172 / 423 / 1200 characters, almost by
            alphabet. Random split: 1100 / 100 / 423 / 1200 characters.
        root: data root (else ``$METAZOO_DATA``, else ``~/.metazoo/data``).
        image_size: side of the resized square images (28 in the papers).
        rotations: rotations in degrees that make classes of their own.
        download: fetch the official archives (md5-checked) into ``<root>/omniglot`` if missing.
        cache: folder for the decoded tensor cache.
        character_split: ``"vinyals"`` (the split files of Vinyals et al., used by most papers)
            or ``"random"``: the characters shuffled with ``split_seed``, as MAML's code does
            (its own shuffle is not reproducible: it follows the file system's listing order).
        split_seed: seed of the random character split (ignored for ``"vinyals"``).
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 28,
                 rotations=ROTATIONS, download: bool = False, cache: str | os.PathLike | None = None,
                 character_split: str = "vinyals", split_seed: int = 1) -> None:
        if character_split not in CHARACTER_SPLITS:
            raise ValueError(f"unknown Omniglot character_split {character_split!r}; "
                             f"valid: {', '.join(CHARACTER_SPLITS)}")
        base = data_root(root)
        if download:
            fetch(base)
        names, chars = load_characters(base, image_size, cache)
        if character_split == "vinyals":
            classes = vinyals_classes(split, names, rotations)
        else:
            classes = random_classes(split, names, split_seed, rotations)
        index = {n: i for i, n in enumerate(names)}
        picked = sorted({c.rsplit("/", 1)[0] for c in classes}, key=index.__getitem__)
        blocks = []
        for name in classes:
            character, rot = name.rsplit("/", 1)
            k = int(rot.removeprefix("rot")) // 90
            blocks.append(torch.rot90(chars[index[character]], k, dims=(1, 2)))
        images = torch.stack(blocks).view(-1, 1, image_size, image_size) if blocks else \
            torch.empty(0, 1, image_size, image_size, dtype=torch.uint8)
        super().__init__(
            images, [DRAWINGS] * len(classes), classes, name="omniglot", split=split,
            info={"root": str(base),
                  "split": "vinyals" if character_split == "vinyals" else f"random (seed {split_seed})",
                  "characters": len(picked), "rotations": list(rotations), "image_size": image_size},
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
