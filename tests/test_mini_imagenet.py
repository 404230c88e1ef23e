"""mini-ImageNet: the Ravi lists, and tiny fixtures in each of the three accepted forms."""
from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metazoo.data import DatasetNotFoundError, EpisodeSampler, EpisodeSizeError, create_dataset
from metazoo.data import mini_imagenet
from metazoo.data.mini_imagenet import MiniImageNet

CLASSES = {
    "train": ["n01000003", "n01000001", "n01000002"],  # not sorted: the list's order must be kept
    "val": ["n02000001", "n02000002", "n02000003"],
    "test": ["n03000001", "n03000002", "n03000003"],
}
PER_CLASS = 4
FORMS = ("images", "images_splits_ravi", "folders", "pickle")


def _jpeg(rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """A smooth random 84x84 RGB JPEG and its decoded pixels (84, 84, 3)."""
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((84, 84), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def images() -> dict[str, dict[str, list[tuple[str, bytes, np.ndarray]]]]:
    """split -> wnid -> [(filename, jpeg bytes, pixels)], sorted by filename."""
    rng = np.random.default_rng(0)
    return {s: {c: [(f"{c}{i:08d}.jpg", *_jpeg(rng)) for i in range(1, PER_CLASS + 1)] for c in cs}
            for s, cs in CLASSES.items()}


@pytest.fixture(autouse=True)
def small_lists(monkeypatch):
    for split, classes in CLASSES.items():
        monkeypatch.setitem(mini_imagenet.RAVI_SPLITS, split, classes)


def write(root: Path, form: str, images) -> Path:
    """Write the fixture in one form under ``root``; returns ``root``."""
    if form.startswith("images"):
        base = root / "mini-imagenet"
        csv_dir = base / "splits" / "ravi" if form == "images_splits_ravi" else base
        (base / "images").mkdir(parents=True)
        csv_dir.mkdir(parents=True, exist_ok=True)
        for split, by_class in images.items():
            rows = [(f, c) for c, files in by_class.items() for f, _, _ in files]
            rows = rows[::-1]  # loaders must sort, not trust the file's order
            with open(csv_dir / f"{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([("filename", "label"), *rows])
            for c, files in by_class.items():
                for name, data, _ in files:
                    (base / "images" / name).write_bytes(data)
    elif form == "folders":
        for split, by_class in images.items():
            for c, files in by_class.items():
                (root / "mini_imagenet" / split / c).mkdir(parents=True)
                for name, data, _ in files:
                    (root / "mini_imagenet" / split / c / name).write_bytes(data)
    else:
        (root / "miniImageNet").mkdir(parents=True)
        for split, by_class in images.items():
            # interleave the classes, as the real caches do not group them
            order = [(c, i) for i in range(PER_CLASS) for c in by_class]
            data = np.stack([by_class[c][i][2] for c, i in order])  # (n, 84, 84, 3)
            class_dict = {c: [k for k, (cc, _) in enumerate(order) if cc == c] for c in by_class}
            with open(root / "miniImageNet" / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    return root


def expected(images, split: str, size: int = 84) -> torch.Tensor:
    """The fixture's images of ``split`` class by class, uint8 (n, 3, size, size)."""
    arrays = [a for c in CLASSES[split] for _, _, a in images[split][c]]
    if size != 84:
        arrays = [np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS)) for a in arrays]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())


def test_ravi_lists_match_the_split_files(data_root):
    """``data_root`` (conftest.py) is ../shared/data beside the repository, else $METAZOO_DATA."""
    sizes = {"train": 64, "val": 16, "test": 20}
    lists = {"train": mini_imagenet.RAVI_TRAIN, "val": mini_imagenet.RAVI_VAL, "test": mini_imagenet.RAVI_TEST}
    for split, classes in lists.items():
        with open(data_root / "mini-imagenet" / "splits" / "ravi" / f"{split}.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
        labels = [label for _, label in rows]
        assert classes == list(dict.fromkeys(labels))  # same classes, in the file's order
        assert len(classes) == sizes[split]
        assert all(labels.count(c) == mini_imagenet.IMAGES_PER_CLASS for c in classes)
        assert all(name.startswith(label) for name, label in rows)
    assert not set(lists["train"]) & set(lists["val"]) | set(lists["train"]) & set(lists["test"])
    assert not set(lists["val"]) & set(lists["test"])


@pytest.mark.parametrize("form", FORMS)
def test_each_form_reads_the_same_images(tmp_path, images, form):
    root = write(tmp_path / "data", form, images)
    for split in ("train", "val", "test"):
        d = MiniImageNet(split, root=root, cache=tmp_path / "cache")
        assert d.class_names == CLASSES[split]
        assert d.class_sizes.tolist() == [PER_CLASS] * 3
        assert d.images.dtype == torch.uint8 and d.images.shape == (3 * PER_CLASS, 3, 84, 84)
        assert torch.equal(d.images, expected(images, split))
        assert d.info["forms"] == [form.removesuffix("_splits_ravi")]
        assert d.name == "mini_imagenet" and d.split == split
    assert torch.allclose(d.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(d.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    small = MiniImageNet("train", root=root, image_size=32, cache=tmp_path / "cache")
    assert torch.equal(small.images, expected(images, "train", 32))


def test_trainval_and_registry(tmp_path, images):
    root = write(tmp_path / "data", "folders", images)
    d = create_dataset("mini_imagenet", split="trainval", root=root, cache=tmp_path / "cache")
    assert d.class_names == CLASSES["train"] + CLASSES["val"]
    assert torch.equal(d.images, torch.cat([expected(images, "train"), expected(images, "val")]))
    with pytest.raises(ValueError, match="unknown mini-ImageNet split"):
        MiniImageNet("training", root=root)


@pytest.mark.parametrize("form", ["images", "pickle"])
def test_second_load_comes_from_the_cache(tmp_path, images, form, monkeypatch):
    root = write(tmp_path / "data", form, images)
    first = MiniImageNet("test", root=root, cache=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("mini_imagenet-test-84-*.pt"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of loading the cache")

    monkeypatch.setattr(mini_imagenet, "decode_all", refuse)
    monkeypatch.setattr(mini_imagenet, "_read_pickle", refuse)
    second = MiniImageNet("test", root=root, cache=tmp_path / "cache")
    assert torch.equal(first.images, second.images) and second.class_names == first.class_names
    with pytest.raises(AssertionError, match="decoded again"):  # the image size is part of the key
        MiniImageNet("test", root=root, image_size=40, cache=tmp_path / "cache")


def test_missing_images_are_recorded_and_the_sampler_reports_them(tmp_path, images, monkeypatch):
    monkeypatch.setattr(mini_imagenet, "IMAGES_PER_CLASS", PER_CLASS)
    root = write(tmp_path / "data", "images", images)
    gone = CLASSES["train"][1]
    (root / "mini-imagenet" / "images" / f"{gone}00000002.jpg").unlink()
    d = MiniImageNet("train", root=root, cache=tmp_path / "cache")
    assert d.class_sizes.tolist() == [PER_CLASS, PER_CLASS - 1, PER_CLASS]
    assert d.info["incomplete"] == {gone: PER_CLASS - 1}
    keep = [i for i in range(3 * PER_CLASS) if i != PER_CLASS + 1]
    assert torch.equal(d.images, expected(images, "train")[keep])
    with pytest.raises(EpisodeSizeError, match=gone):
        EpisodeSampler(d, ways=3, shots=2, queries=2)


def test_a_copy_with_another_split_fails(tmp_path, images):
    images["train"]["n09999999"] = images["train"].pop(CLASSES["train"][0])
    root = write(tmp_path / "data", "folders", images)
    with pytest.raises(ValueError, match="n09999999.*another split"):
        MiniImageNet("train", root=root, cache=tmp_path / "cache")


def test_missing_data_names_every_place_and_the_three_forms(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        MiniImageNet("val", root=tmp_path, cache=tmp_path / "cache")
    message = str(error.value)
    for folder in ("mini-imagenet", "mini_imagenet", "miniImageNet"):
        base = tmp_path / folder
        for place in (base / "images", base / "val.csv", base / "splits" / "ravi" / "val.csv",
                      base / "val", base / "mini-imagenet-cache-val.pkl"):
            assert str(place) in message
    for words in ("(a)", "(b)", "(c)", "not distributed", "--data-root", "METAZOO_DATA"):
        assert words in message


def test_split_files_without_images_say_so(data_root, tmp_path):
    if (data_root / "mini-imagenet" / "images").exists():
        pytest.skip("needs the data bundle as shipped: split files, no images")
    with pytest.raises(DatasetNotFoundError, match="Found the split file .*splits/ravi/train.csv"):
        MiniImageNet("train", root=data_root, cache=tmp_path)


def test_images_without_split_files_say_so(tmp_path, images):
    root = write(tmp_path / "data", "images", images)
    (root / "mini-imagenet" / "val.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match="no val.csv: put the Ravi split files"):
        MiniImageNet("val", root=root, cache=tmp_path / "cache")
