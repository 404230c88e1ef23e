"""Image folders and zips as few-shot datasets, the seeded class split, and real Caltech-101."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metazoo.data import DatasetNotFoundError, EpisodeSampler, create_dataset
from metazoo.data import image_folder
from metazoo.data.image_folder import Caltech101, ImageFolder, class_split, split_counts

SIZES = {f"class{k:02d}": 2 + k % 5 for k in range(10)}  # 10 classes of 2 to 6 images


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def files() -> dict[str, bytes]:
    """A ``<class>/<image>`` tree as {relative path: PNG bytes}."""
    rng = np.random.default_rng(0)
    return {f"{c}/img{i:02d}.png": _png(rng) for c, n in SIZES.items() for i in range(n)}


@pytest.fixture
def folder(tmp_path, files) -> Path:
    for name, data in files.items():
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / name).write_bytes(data)
    (tmp_path / "tree" / "README.txt").write_text("not an image")
    return tmp_path / "tree"


@pytest.fixture
def archive(tmp_path, files) -> Path:
    """The tree zipped under one top-level folder, with macOS litter beside it."""
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as z:
        for name, data in files.items():
            z.writestr(f"tree/{name}", data)
        z.writestr("__MACOSX/tree/class00/._img00.png", b"junk")
    return tmp_path / "tree.zip"


def test_split_counts_and_bad_fractions():
    assert split_counts(101, (0.64, 0.16, 0.20)) == (64, 16, 21)
    assert split_counts(10, (0.64, 0.16, 0.20)) == (6, 1, 3)
    assert split_counts(100, (0.29, 0.31, 0.40)) == (29, 31, 40)  # no float floor surprises
    for bad in ((0.5, 0.5), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)):
        with pytest.raises(ValueError, match="split_fractions"):
            split_counts(10, bad)


def test_class_split_is_disjoint_complete_seeded_and_recordable():
    names = [f"c{k:03d}" for k in range(101)]
    record = class_split(names[::-1], (0.64, 0.16, 0.20), seed=3)
    parts = [record[s] for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [64, 16, 21]
    assert sorted(sum(parts, [])) == names and all(p == sorted(p) for p in parts)
    assert record == class_split(names, (0.64, 0.16, 0.20), seed=3)  # input order does not matter
    assert record["seed"] == 3 and record["fractions"] == [0.64, 0.16, 0.20]
    assert json.loads(json.dumps(record)) == record
    assert len({tuple(class_split(names, seed=s)["test"]) for s in range(5)}) == 5


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_tree_becomes_split_datasets(tmp_path, files, kind, request):
    source = request.getfixturevalue(kind)
    record = class_split(SIZES, seed=7)
    seen = []
    for split in ("train", "val", "test"):
        d = ImageFolder(source, split=split, split_seed=7, image_size=16, cache=tmp_path / "cache")
        assert d.class_names == record[split] and d.info["class_split"] == record
        assert d.class_sizes.tolist() == [SIZES[c] for c in record[split]]
        assert d.images.shape == (sum(SIZES[c] for c in record[split]), 3, 16, 16)
        assert d.name == "image_folder" and d.split == split
        seen += d.class_names
    assert sorted(seen) == sorted(SIZES)
    first = Image.open(io.BytesIO(files[f"{d.class_names[0]}/img00.png"])).convert("RGB")
    pixels = np.asarray(first.resize((16, 16), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    assert torch.equal(d.images[0], torch.from_numpy(pixels.copy()))
    assert torch.allclose(d.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_folder_and_zip_agree_and_trainval(folder, archive, tmp_path):
    a = ImageFolder(folder, split="trainval", image_size=8, cache=tmp_path / "cache")
    b = ImageFolder(archive, split="trainval", image_size=8, cache=tmp_path / "cache")
    assert a.class_names == b.class_names and torch.equal(a.images, b.images)
    record = class_split(SIZES)
    assert a.class_names == record["train"] + record["val"]


def test_relative_path_root_and_registry(folder, tmp_path, monkeypatch):
    d = create_dataset("image_folder", split="val", path="tree", root=tmp_path, image_size=8, cache=tmp_path / "c")
    assert d.info["source"] == str(folder)
    elsewhere = tmp_path / "elsewhere"
    d = create_dataset("image_folder", split="val", path=folder, root=elsewhere, image_size=8, cache=tmp_path / "c")
    assert d.info["source"] == str(folder)  # an absolute path ignores root
    monkeypatch.chdir(tmp_path)
    d = ImageFolder("tree", split="val", root=elsewhere, image_size=8, cache=tmp_path / "c")
    assert d.info["source"] == str(folder)  # then the working directory
    with pytest.raises(DatasetNotFoundError) as error:
        ImageFolder("nowhere", root=elsewhere, cache=tmp_path / "c")
    assert str(elsewhere / "nowhere") in str(error.value) and str(tmp_path / "nowhere") in str(error.value)


def test_min_images_drops_classes_but_keeps_the_split(folder, tmp_path):
    d = ImageFolder(folder, split="train", image_size=8, cache=tmp_path / "cache", min_images=4)
    record = class_split(SIZES)
    assert d.class_names == [c for c in record["train"] if SIZES[c] >= 4]
    assert d.info["dropped"] == {c: SIZES[c] for c in record["train"] if SIZES[c] < 4}
    assert d.info["class_split"] == record and d.info["split"] == "random (seed 0)"


def test_results_rows_record_path_size_mode_and_class_split(folder, tmp_path):
    d = ImageFolder(folder, split="val", image_size=8, mode="L", split_seed=3, split_fractions=(0.5, 0.2, 0.3),
                    cache=tmp_path / "cache", min_images=2)
    assert d.info["protocol"] == {"source": str(folder), "image_size": 8, "mode": "L",
                                  "split_fractions": [0.5, 0.2, 0.3], "min_images": 2}
    protocol = EpisodeSampler(d, 2, 1, 1, seed=4).protocol()
    assert protocol == {"dataset": "image_folder", "split": "val", "ways": 2, "shots": 1, "queries": 1, "seed": 4,
                        "class_split": "random (seed 3)", **d.info["protocol"]}
    assert json.loads(json.dumps(protocol)) == protocol


def test_grey_mode_and_errors(folder, tmp_path):
    d = ImageFolder(folder, split="test", image_size=8, mode="L", cache=tmp_path / "cache")
    assert d.images.shape[1:] == (1, 8, 8) and d.mean.flatten().tolist() == [0.0]
    with pytest.raises(ValueError, match="unknown image mode"):
        ImageFolder(folder, mode="CMYK")
    with pytest.raises(ValueError, match="unknown split"):
        ImageFolder(folder, split="testing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no <class>/<image> files"):
        ImageFolder(tmp_path / "empty", cache=tmp_path / "cache")


def test_second_load_comes_from_the_cache(archive, tmp_path, monkeypatch):
    first = ImageFolder(archive, split="test", image_size=8, cache=tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of loading the cache")

    monkeypatch.setattr(image_folder, "decode_all", refuse)
    second = ImageFolder(archive, split="test", image_size=8, cache=tmp_path / "cache")
    assert torch.equal(first.images, second.images)
    with pytest.raises(AssertionError, match="decoded again"):
        ImageFolder(archive, split="test", image_size=9, cache=tmp_path / "cache")


# Real Caltech-101 from the data bundle (``data_root`` in conftest.py: ../shared/data beside the
# repository, else $METAZOO_DATA), decoded once per session into a cache of this file's own.

CALTECH_VAL = [
    "accordion", "bonsai", "dollar_bill", "electric_guitar", "gramophone", "hedgehog", "joshua_tree",
    "kangaroo", "ketch", "laptop", "lotus", "okapi", "pagoda", "platypus", "revolver", "yin_yang",
]
CALTECH_TEST = [
    "airplanes", "bass", "beaver", "buddha", "car_side", "chair", "dalmatian", "dragonfly", "ewer", "ferry",
    "helicopter", "inline_skate", "lamp", "nautilus", "pigeon", "pyramid", "scissors", "stapler", "starfish",
    "umbrella", "windsor_chair",
]


CALTECH_84_SHA256 = "b7ee712e0e8bc6085aef10719fb626d37195857fa946632c21551f53bc42d072"


@pytest.fixture(scope="session")
def caltech(data_root, tmp_path_factory) -> dict:
    """The three splits, and the session's cache folder under ``"cache"``."""
    cache = tmp_path_factory.mktemp("caltech-cache")
    return {s: Caltech101(s, root=data_root, cache=cache) for s in ("train", "val", "test")} | {"cache": cache}


def test_caltech_has_its_fixed_split(caltech):
    splits = {s: caltech[s] for s in ("train", "val", "test")}
    assert [d.num_classes for d in splits.values()] == [64, 16, 21]
    assert [len(d) for d in splits.values()] == [5494, 1088, 2095]
    names = [c for d in splits.values() for c in d.class_names]
    assert len(names) == len(set(names)) == 101 and sum(len(d) for d in splits.values()) == 8677
    assert all(int(d.class_sizes.min()) >= 31 for d in splits.values())
    assert splits["val"].class_names == CALTECH_VAL and splits["test"].class_names == CALTECH_TEST
    for a, b in (("Faces", "Faces_easy"), ("crocodile", "crocodile_head"), ("cougar_body", "cougar_face")):
        assert a in splits["train"].class_names and b in splits["train"].class_names
    record = splits["test"].info["class_split"]
    assert record["seed"] == 19 and record["test"] == CALTECH_TEST
    protocol = EpisodeSampler(splits["test"], 5, 1, 1).protocol()
    assert protocol["class_split"] == "random (seed 19)" and protocol["split_fractions"] == [0.64, 0.16, 0.20]
    assert "caltech101_84x84" in protocol["source"] and (protocol["image_size"], protocol["mode"]) == (84, "RGB")
    assert splits["test"].name == "caltech101" and splits["test"].image_shape == (3, 84, 84)


def test_caltech_pixels_never_change(caltech, data_root):
    """The decoded tree, all 8677 images, is pinned by the sha256 of its bytes (the cache key may change)."""
    entry = image_folder.load_tree(data_root / "caltech101" / "caltech101_84x84.zip", 84, "RGB", caltech["cache"])
    assert hashlib.sha256(entry["images"].numpy().tobytes()).hexdigest() == CALTECH_84_SHA256


def test_caltech_episodes(caltech):
    for split in ("train", "test"):
        episode = EpisodeSampler(caltech[split], ways=5, shots=5, queries=15, seed=1)[0]
        assert episode.support.inputs.shape == (25, 3, 84, 84) and episode.query.inputs.shape == (75, 3, 84, 84)
        assert episode.support.labels.tolist() == [k for k in range(5) for _ in range(5)]
        assert episode.support.inputs.dtype == torch.float32 and episode.query.inputs.abs().mean() < 3


def test_caltech_through_the_registry_and_as_a_plain_folder(caltech, data_root):
    cache = caltech["cache"]
    d = create_dataset("caltech101", split="val", root=data_root, cache=cache)
    assert d.class_names == CALTECH_VAL
    plain = create_dataset("image_folder", split="test", root=data_root, path="caltech101/caltech101_84x84.zip",
                           split_seed=19, cache=cache)
    assert plain.class_names == CALTECH_TEST and torch.equal(plain.images, caltech["test"].images)


def test_caltech_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        Caltech101(root=tmp_path, cache=tmp_path)
    assert str(tmp_path / "caltech101" / "caltech101_84x84.zip") in str(error.value)
    assert str(tmp_path / "caltech101" / "caltech101_84x84") in str(error.value)
