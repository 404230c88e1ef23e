"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split.

The images are not distributed with metazoo (ImageNet terms); users bring their own copy in one of
three forms under ``<root>/mini-imagenet/`` (or ``mini_imagenet/``, ``miniImageNet/``):

- ``images/*.jpg`` with the split files ``train.csv``, ``val.csv``, ``test.csv`` (rows
  ``filename,label``) beside ``images/`` or in ``splits/ravi/``;
- per-split class folders ``<split>/<wnid>/*.jpg``;
- the pickled caches ``mini-imagenet-cache-<split>.pkl``: a dict with ``image_data`` uint8
  (n, 84, 84, 3) (or floats in [0, 1]) and ``class_dict`` {wnid: [indices]}, read by an unpickler
  that admits only numpy arrays, lists, dicts, strings and numbers.

The first form found is used, in that order. The decoded split is cached as one uint8 tensor keyed
by the source files, the class list and the image size.
"""
from __future__ import annotations

import csv
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import FewShotDataset
from .images import FileTree, decode_all
from .storage import DataError, DatasetNotFoundError, cache_dir, cached, data_root, source_key

FOLDERS = ("mini-imagenet", "mini_imagenet", "miniImageNet")
IMAGES_PER_CLASS = 600
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The Ravi & Larochelle split files' classes (ImageNet wnids), in their order (sorted).
RAVI_TRAIN = [
    "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747", "n02074367",
    "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551", "n02108915", "n02111277",
    "n02113712", "n02120079", "n02165456", "n02457408", "n02606052", "n02687172", "n02747177", "n02795169",
    "n02823428", "n02966193", "n03017168", "n03047690", "n03062245", "n03207743", "n03220513", "n03337140",
    "n03347037", "n03400231", "n03476684", "n03527444", "n03676483", "n03838899", "n03854065", "n03888605",
    "n03908618", "n03924679", "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548",
    "n04296562", "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
    "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560", "n13133613",
]
RAVI_VAL = [
    "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356", "n02981792",
    "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504", "n03980874", "n09256479",
]
RAVI_TEST = [
    "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165", "n02219486",
    "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143", "n03775546", "n04146614",
    "n04149813", "n04418357", "n04522168", "n07613480",
]
RAVI_SPLITS = {"train": RAVI_TRAIN, "val": RAVI_VAL, "test": RAVI_TEST}
SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}

HOW_TO_GET = (
    "mini-ImageNet images are not distributed with metazoo (ImageNet terms): bring your own copy "
    "into <data root>/mini-imagenet/ in one of three forms:\n"
    "  (a) images/*.jpg with train.csv, val.csv, test.csv (rows filename,label) beside images/ "
    "or in splits/ravi/;\n"
    "  (b) per-split class folders train/<wnid>/*.jpg, val/<wnid>/*.jpg, test/<wnid>/*.jpg;\n"
    "  (c) the pickled caches mini-imagenet-cache-{train,val,test}.pkl (dict with image_data uint8 "
    "(N,84,84,3) and class_dict {wnid: [indices]}).\n"
    "Point --data-root / $METAZOO_DATA at the folder that holds mini-imagenet/."
)


def _find_source(root: Path, part: str) -> tuple[str, list[Path]]:
    """The first form present for split ``part``: (``"images" | "folders" | "pickle"``, its paths)."""
    looked: list[str] = []
    hint = ""
    for folder in FOLDERS:
        base = root / folder
        images = base / "images"
        csvs = [base / f"{part}.csv", base / "splits" / "ravi" / f"{part}.csv"]
        csv_path = next((c for c in csvs if c.is_file()), None)
        if images.is_dir() and csv_path is not None:
            return "images", [images, csv_path]
        if (base / part).is_dir():
            return "folders", [base / part]
        pickled = base / f"mini-imagenet-cache-{part}.pkl"
        if pickled.is_file():
            return "pickle", [pickled]
        if csv_path is not None and not hint:
            hint = f"\nFound the split file {csv_path}, but no {images}/: split files alone hold no images."
        if images.is_dir() and not hint:
            hint = (f"\nFound {images}/, but no {part}.csv: put the Ravi split files (the data bundle's "
                    "mini-imagenet/splits/ravi/*.csv) beside it or in splits/ravi/.")
        looked += [f"{images}/*.jpg with {csvs[0]} or {csvs[1]}", f"{base / part}/<wnid>/*.jpg", str(pickled)]
    raise DatasetNotFoundError(f"mini-ImageNet split {part!r}", looked, HOW_TO_GET + hint)


def _check_classes(found: set[str], classes: list[str], part: str, where: Path) -> None:
    unknown = sorted(found - set(classes))
    if unknown:
        raise ValueError(
            f"{where} has classes outside the Ravi & Larochelle {part!r} split ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}): it follows another split. Use the Ravi split files."
        )


def _listing(form: str, paths: list[Path], part: str, classes: list[str]) -> tuple[FileTree, list[list[str]]]:
    """The image files of each class (in ``classes`` order, sorted by name) that are present."""
    tree = FileTree(paths[0])
    present = tree.images()
    by_class: dict[str, list[str]] = {}
    if form == "images":
        rows = [r for r in csv.reader(io.StringIO(_utf8(paths[1]), newline="")) if len(r) >= 2 and r[0] != "filename"]
        _check_classes({label for _, label in rows}, classes, part, paths[1])
        have = set(present)
        for filename, label in rows:
            if filename in have:
                by_class.setdefault(label, []).append(filename)
    else:
        for name in present:
            parts = name.split("/")
            if len(parts) == 2:
                by_class.setdefault(parts[0], []).append(name)
        _check_classes(set(by_class), classes, part, paths[0])
    return tree, [sorted(by_class.get(c, [])) for c in classes]


def _utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}, line {line}: {err.reason}): save the split "
                        "file as UTF-8, rows filename,label") from err


# The globals a pickle of numpy arrays needs: numpy 1 names numpy.core, numpy 2 numpy._core; protocols
# below 3 encode bytes with _codecs.encode.
PICKLE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers; refuses every other global."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise DataError(f"{self.path}: refused to unpickle {module}.{name}: a mini-ImageNet cache holds only "
                            "numpy arrays, lists, dicts, strings and numbers, and loading anything else could run "
                            "code. Use a copy you trust that holds image_data and class_dict only.")
        try:
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        except (ImportError, AttributeError):  # numpy before 1.26 has no numpy._core
            return super().find_class(module.replace("numpy._core.", "numpy.core."), name)


def _unpickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as err:  # truncated or damaged: EOFError, UnpicklingError, ValueError from numpy, ...
        raise DataError(f"{path} cannot be read as a pickle ({type(err).__name__}: {err}): the file is truncated "
                        "or damaged; copy it again and compare its size and checksum with the original") from err


def _uint8(path: Path, images: np.ndarray) -> np.ndarray:
    """uint8 as is; floats in [0, 1] scaled by 255 and rounded; anything else refused."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind == "f" and (images.size == 0 or (images.min() >= 0 and images.max() <= 1)):
        return np.rint(images * 255).astype(np.uint8)
    values = f" from {images.min()} to {images.max()}" if images.size and images.dtype.kind in "fiub" else ""
    raise DataError(f"{path}: image_data is {images.dtype}{values}: expected uint8 (0-255) or floats in [0, 1] "
                    "(scaled by 255); convert it to uint8 first")


def _class_indices(path: Path, class_dict: object, classes: list[str], part: str, images: int) -> list[list[int]]:
    """The image indices of each class, ascending, checked against the ``images`` there are."""
    if not isinstance(class_dict, dict):
        raise DataError(f"{path}: class_dict is a {type(class_dict).__name__}, expected a dict {{wnid: [indices]}}")
    _check_classes(set(class_dict), classes, part, path)
    index = []
    for c in classes:
        try:
            idx = sorted(int(i) for i in class_dict.get(c, []))
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: class_dict[{c!r}] is not a list of image indices ({err})") from err
        bad = [i for i in idx if not 0 <= i < images]
        if bad:
            raise DataError(f"{path}: class_dict[{c!r}] holds image indices outside image_data: "
                            f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''} (image_data has "
                            f"{images} images): the pickle is damaged or its two parts do not belong together")
        index.append(idx)
    return index


def _read_pickle(path: Path, part: str, classes: list[str], size: int) -> tuple[list[int], torch.Tensor]:
    """A pickled cache -> (class sizes, uint8 (n, 3, size, size)), read by a restricted unpickler."""
    data = _unpickle(path)
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        raise DataError(f"{path} is not a mini-ImageNet cache: expected a dict with 'image_data' and 'class_dict'")
    images = np.asarray(data["image_data"])
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: image_data must be (n, height, width, 3), got {images.shape}")
    index = _class_indices(path, data["class_dict"], classes, part, len(images))
    picked = _uint8(path, images[[i for idx in index for i in idx]])  # (n, h, w, 3)
    if picked.shape[1:3] != (size, size):
        resized = [np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS)) for a in picked]
        picked = np.stack(resized) if resized else np.empty((0, size, size, 3), dtype=np.uint8)
    return [len(i) for i in index], torch.from_numpy(np.ascontiguousarray(picked.transpose(0, 3, 1, 2)))


def load_split(root: Path, part: str, size: int = 84, cache: str | os.PathLike | None = None) -> dict:
    """One Ravi split through the cache: a dict with ``classes``, ``sizes``, ``images`` uint8
    (n, 3, size, size) class by class, ``form`` and ``sources``."""
    classes = list(RAVI_SPLITS[part])
    form, paths = _find_source(root, part)
    key = source_key(paths, form, part, size, ",".join(classes), "v2")
    path = cache_dir(cache) / f"mini_imagenet-{part}-{size}-{key}.pt"

    def build() -> dict:
        if form == "pickle":
            sizes, images = _read_pickle(paths[0], part, classes, size)
        else:
            tree, files = _listing(form, paths, part, classes)
            try:
                images = decode_all(tree, [f for fs in files for f in fs], size, "RGB")
            finally:
                tree.close()
            sizes = [len(fs) for fs in files]
        if not any(sizes):
            raise DatasetNotFoundError(f"mini-ImageNet split {part!r}", paths,
                                       f"They hold no images of the split's classes.\n{HOW_TO_GET}")
        return {"classes": classes, "sizes": sizes, "images": images, "form": form,
                "sources": [str(p) for p in paths]}

    return {**cached(path, build), "sources": [str(p) for p in paths]}  # as spelled now, whichever built it


class MiniImageNet(FewShotDataset):
    """mini-ImageNet classes of one Ravi & Larochelle split, 600 images of each.

    Args:
        split: ``"train"`` (64 classes), ``"val"`` (16), ``"test"`` (20) or ``"trainval"`` (80).
        root: data root (else ``$METAZOO_DATA``, else ``~/.metazoo/data``) holding ``mini-imagenet/``.
        image_size: side of the resized square RGB images (84 in the papers).
        cache: folder for the decoded tensor cache.

    Classes follow the split files' order; images within a class are sorted by file name (pickle
    indices ascending). A class with missing images is kept with what is there and listed in
    ``info["incomplete"]`` ({wnid: images}); the sampler rejects classes too small for an episode.
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 84,
                 cache: str | os.PathLike | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown mini-ImageNet split {split!r}; valid: {sorted(SPLITS)}")
        base = data_root(root)
        entries = [load_split(base, part, image_size, cache) for part in SPLITS[split]]
        classes = [c for e in entries for c in e["classes"]]
        sizes = [s for e in entries for s in e["sizes"]]
        images = torch.cat([e["images"] for e in entries]) if len(entries) > 1 else entries[0]["images"]
        super().__init__(
            images, sizes, classes, name="mini_imagenet", split=split, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            info={"root": str(base), "split": "ravi", "forms": [e["form"] for e in entries],
                  "sources": [s for e in entries for s in e["sources"]], "image_size": image_size,
                  "incomplete": {c: s for c, s in zip(classes, sizes) if s != IMAGES_PER_CLASS}},
        )
