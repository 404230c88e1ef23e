import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from metazoo.data import DatasetNotFoundError, EpisodeSampler, Omniglot, create_dataset
from metazoo.data import omniglot as omni
from metazoo.data.storage import download

from .test_sampler import digest

OMNIGLOT_28_SHA256 = "255fbb66efe334ae4ffdf873a5d430b6232d966a38612f804baa3297751298c5"


def test_real_counts(data_root):
    names, chars = omni.load_characters(data_root)
    assert len(names) == 964 + 659 == 1623
    assert chars.shape == (1623, 20, 28, 28) and chars.dtype == torch.uint8
    assert len({n.split("/")[0] for n in names}) == 50
    # strokes are bright on a dark background, and every drawing has some ink
    assert (chars.flatten(2).amax(-1) > 100).all()
    assert chars.float().mean() < 60
    # the decoded pixels never change (the cache key may): sha256 of the tensor's bytes
    assert hashlib.sha256(chars.numpy().tobytes()).hexdigest() == OMNIGLOT_28_SHA256


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
    with pytest.raises(ValueError, match="valid: vinyals, random, background"):
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


def _alphabets(data_root: Path, part: str) -> set[str]:
    """The alphabets inside one of the two official archives, read from the archive itself."""
    with zipfile.ZipFile(data_root / "omniglot" / f"{part}.zip") as z:
        return {n.split("/")[1] for n in z.namelist() if n.count("/") >= 2 and n.split("/")[1]}


def _characters(character_split: str, names: list[str]) -> dict[str, set[str]]:
    return {s: set(omni.CHARACTER_SPLITS[character_split](s, names, 1)) for s in ("train", "val", "test", "trainval")}


@pytest.mark.parametrize("character_split,counts", [
    ("vinyals", (1028, 172, 423, 1200)), ("random", (1100, 100, 423, 1200)), ("background", (792, 172, 659, 964)),
])
def test_trainval_is_train_and_val_and_no_test_character(data_root, character_split, counts):
    names, _ = omni.load_characters(data_root)
    chars = _characters(character_split, names)
    assert tuple(len(chars[s]) for s in ("train", "val", "test", "trainval")) == counts
    assert chars["trainval"] == chars["train"] | chars["val"]
    assert not chars["train"] & chars["val"] and not chars["trainval"] & chars["test"]  # by character
    assert chars["trainval"] | chars["test"] == set(names)


def test_vinyals_trainval_dataset_has_1200_characters(data_root, omniglot):
    trainval = Omniglot("trainval", root=data_root)
    assert trainval.num_classes == 4800 and trainval.info["characters"] == 1200 and len(trainval) == 4800 * 20
    assert set(trainval.class_names) == set(omniglot["train"].class_names) | set(omniglot["val"].class_names)
    test_chars = {c.rsplit("/", 1)[0] for c in omniglot["test"].class_names}
    assert not {c.rsplit("/", 1)[0] for c in trainval.class_names} & test_chars


def test_background_split_tests_on_the_evaluation_alphabets(data_root):
    names, _ = omni.load_characters(data_root)
    chars = _characters("background", names)
    alphabets = {s: {c.split("/")[0] for c in v} for s, v in chars.items()}
    assert alphabets["test"] == _alphabets(data_root, omni.EVALUATION) == set(omni.EVALUATION_ALPHABETS)
    assert alphabets["trainval"] == _alphabets(data_root, omni.BACKGROUND) and len(alphabets["trainval"]) == 30
    assert alphabets["val"] == set(omni.VINYALS_VAL) and not alphabets["train"] & alphabets["val"]
    test = Omniglot("test", root=data_root, character_split="background")
    assert test.num_classes == 4 * 659 and test.info["split"] == "background"
    assert EpisodeSampler(test, 5, 1, 1, episodes=1).protocol()["class_split"] == "background"
    assert Omniglot("val", root=data_root, character_split="background").num_classes == 4 * 172


def test_vinyals_training_has_seen_8_of_the_20_evaluation_alphabets(data_root):
    names, _ = omni.load_characters(data_root)
    evaluation = _alphabets(data_root, omni.EVALUATION)
    seen = [c for c in omni.vinyals_characters("train", names) if c.split("/")[0] in evaluation]
    assert sorted({c.split("/")[0] for c in seen}) == [
        "Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Avesta", "Ge_ez", "Glagolitic", "Gurmukhi"]
    assert len(seen) == 236  # of the 659 evaluation characters; the other 423 are the Vinyals test split


def test_default_episodes_are_those_of_the_code_before_per_task_rotations(omniglot):
    # hashes taken with the data code as it was before per-task rotations and the background split
    train = EpisodeSampler(omniglot["train"], 60, 5, 5, seed=0)
    test = EpisodeSampler(omniglot["test"], 5, 1, 15, seed=3)
    assert [digest(train[i]) for i in (0, 1, 999)] == ["5df735a8b295be1a", "02224c721a397169", "28c2289a4501bf79"]
    assert [digest(test[i]) for i in (0, 1, 999)] == ["626af41d1f88bbeb", "38cde507a1f3e2ba", "6f1b8952526f8cee"]
    assert train.protocol()["rotations"] == "classes" and train.protocol()["image_size"] == 28


def test_per_task_rotations_hold_each_character_once_and_turn_it_per_episode(data_root, omniglot):
    test = Omniglot("test", root=data_root, rotations="per_task")
    assert test.num_classes == 423 and test.class_names[0] == "Gurmukhi/character42"
    unrotated = [c for c in omniglot["test"].class_names if c.endswith("/rot000")]
    assert [f"{c}/rot000" for c in test.class_names] == unrotated
    rotated = omniglot["test"]  # the same characters, rotations as classes: every 4th class is unrotated
    assert torch.equal(test.images.view(423, 20, 1, 28, 28), rotated.images.view(423, 4, 20, 1, 28, 28)[:, 0])
    assert test.task_rotations == (0, 90, 180, 270) and test.info["protocol"]["rotations"] == "per task"
    sampler = EpisodeSampler(test, 5, 1, 15, seed=3)
    assert sampler.protocol()["rotations"] == "per task"
    for i in (0, 1):
        ep, (_, idx), turns = sampler[i], sampler.indices(i), sampler.turns(i)
        x = torch.cat([ep.support.inputs.view(5, 1, 1, 28, 28), ep.query.inputs.view(5, 15, 1, 28, 28)], 1)
        stored = test.images[idx]  # (5, 16, 1, 28, 28) as stored, unrotated
        for k in range(5):
            assert torch.equal((x[k] * 255).round().to(torch.uint8), torch.rot90(stored[k], int(turns[k]), (2, 3)))
    assert Omniglot("val", root=data_root, rotations=[0]).info["protocol"]["rotations"] == "none"
    shared = Omniglot("test", root=data_root, rotations="per_episode")  # Relation Networks' code
    assert shared.class_names == test.class_names and torch.equal(shared.images, test.images)
    episodes = EpisodeSampler(shared, 5, 1, 15, seed=3)
    assert episodes.protocol()["rotations"] == "per episode"
    for i in (0, 1, 2):
        ep, (_, idx), turns = episodes[i], episodes.indices(i), episodes.turns(i)
        assert len(set(turns.tolist())) == 1 and torch.equal(idx, sampler.indices(i)[1])
        x = (ep.support.inputs.view(5, 1, 28, 28) * 255).round().to(torch.uint8)
        assert torch.equal(x, torch.rot90(test.images[idx[:, 0]], int(turns[0]), (2, 3)).view(5, 1, 28, 28))
    with pytest.raises(ValueError, match="valid: classes, per_task, per_episode"):
        Omniglot("test", root=data_root, rotations="maml")
    with pytest.raises(ValueError, match="distinct angles"):
        Omniglot("test", root=data_root, rotations=[0, 45])
