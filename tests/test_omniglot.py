import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from metazoo.data import DatasetNotFoundError, EpisodeSampler, Omniglot, create_dataset
from metazoo.data import omniglot as omni
from metazoo.data.storage import download


def test_real_counts(data_root):
    names, chars = omni.load_characters(data_root)
    assert len(names) == 964 + 659 == 1623
    assert chars.shape == (1623, 20, 28, 28) and chars.dtype == torch.uint8
    assert len({n.split("/")[0] for n in names}) == 50
    # strokes are bright on a dark background, and every drawing has some ink
    assert (chars.flatten(2).amax(-1) > 100).all()
    assert chars.float().mean() < 60


@pytest.mark.parametrize("split,characters", [("train", 1028), ("val", 172), ("test", 423), ("trainval", 1200)])
def test_vinyals_split_equals_the_split_files(data_root, split, characters):
    names, _ = omni.load_characters(data_root)
    ours = omni.vinyals_classes(split, names)
    theirs = (data_root / "omniglot" / "splits" / "vinyals" / f"{split}.txt").read_text().splitlines()
    assert ours == theirs  # line for line
    assert len(ours) == 4 * characters


def test_splits_are_disjoint_and_gurmukhi_is_cut_at_41(omniglot):
    chars = {s: {c.rsplit("/", 1)[0] for c in d.class_names} for s, d in omniglot.items()}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert "Gurmukhi/character41" in chars["train"] and "Gurmukhi/character42" in chars["test"]


def test_split_datasets_have_rotated_classes(omniglot):
    test = omniglot["test"]
    assert test.num_classes == 4 * 423 and len(test) == 4 * 423 * 20
    assert test.image_shape == (1, 28, 28)
    i0 = test.class_names.index("Kannada/character01/rot000")
    i90 = test.class_names.index("Kannada/character01/rot090")
    first = test.images[test.class_offsets[i0]: test.class_offsets[i0 + 1]]
    turned = test.images[test.class_offsets[i90]: test.class_offsets[i90 + 1]]
    assert torch.equal(torch.rot90(first, 1, dims=(2, 3)), turned)


def test_second_load_comes_from_the_cache(data_root, monkeypatch, omniglot):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded images although the cache holds them")

    monkeypatch.setattr(omni, "decode_all", no_decoding)
    assert Omniglot("val", root=data_root).num_classes == 688
    assert create_dataset("omniglot", split="val", root=data_root).num_classes == 688


def test_extracted_folders_are_read_like_the_archives(tmp_path):
    # a tiny fake Omniglot in torchvision's extracted layout: counts are checked
    root = tmp_path / "omniglot-py"
    (root / "images_background" / "Alpha" / "character01").mkdir(parents=True)
    (root / "images_evaluation").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds 0 characters, expected 964"):
        omni.load_characters(tmp_path, cache=tmp_path / "cache")


def test_random_character_split_has_maml_counts_and_follows_its_seed(data_root):
    names, _ = omni.load_characters(data_root)
    chars = {s: {c.rsplit("/", 1)[0] for c in omni.random_classes(s, names, seed=1)}
             for s in ("train", "val", "test", "trainval")}
    assert [len(chars[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert chars["trainval"] == chars["train"] | chars["val"]
    # unlike the Vinyals split, test characters share alphabets with training ones
    alphabets = {s: {c.split("/")[0] for c in v} for s, v in chars.items()}
    assert alphabets["test"] <= alphabets["train"]
    assert omni.random_classes("test", names, seed=1) == omni.random_classes("test", names, seed=1)
    assert set(omni.random_classes("test", names, seed=2)) != set(omni.random_classes("test", names, seed=1))
    test = Omniglot("test", root=data_root, character_split="random", split_seed=1)
    assert test.num_classes == 4 * 423 and test.info["split"] == "random (seed 1)"
    assert set(test.class_names) == set(omni.random_classes("test", names, seed=1))
    assert EpisodeSampler(test, 5, 1, 1, seed=0, episodes=1).protocol()["class_split"] == "random (seed 1)"
    with pytest.raises(ValueError, match="valid: vinyals, random"):
        Omniglot("test", root=data_root, character_split="maml")


def test_missing_data_names_every_place_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        Omniglot("train", root=tmp_path / "nowhere")
    text = str(err.value)
    assert str(tmp_path / "nowhere" / "omniglot" / "images_background.zip") in text
    assert "omniglot-py" in text and "download=True" in text and "METAZOO_DATA" in text


def test_unknown_split_lists_valid_ones(data_root):
    with pytest.raises(ValueError, match="valid: \\['test', 'train', 'trainval', 'val'\\]"):
        Omniglot("training", root=data_root)


def _archive(path: Path) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images_background/readme.txt", "x" * 1000)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_checksum_and_writes_atomically(tmp_path):
    source = tmp_path / "served.zip"
    md5 = _archive(source)
    dest = tmp_path / "data" / "omniglot" / "images_background.zip"
    download(source.as_uri(), dest, md5)
    assert dest.read_bytes() == source.read_bytes()
    other = tmp_path / "data" / "other.zip"
    with pytest.raises(IOError, match="checksum mismatch"):
        download(source.as_uri(), other, "0" * 32)
    assert not other.exists() and list(other.parent.glob(".other.zip.*")) == []


def test_fetch_downloads_missing_archives(tmp_path, monkeypatch):
    served = {}
    for part in (omni.BACKGROUND, omni.EVALUATION):
        source = tmp_path / "served" / f"{part}.zip"
        source.parent.mkdir(exist_ok=True)
        served[part] = (source.as_uri(), _archive(source))
    monkeypatch.setattr(omni, "URLS", served)
    omni.fetch(tmp_path / "root")
    assert (tmp_path / "root" / "omniglot" / "images_background.zip").exists()
    assert (tmp_path / "root" / "omniglot" / "images_evaluation.zip").exists()
