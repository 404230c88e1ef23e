"""Data that cannot lie: safe cache entries and pickles, decode errors that name the file, a cache that
never goes stale, 16-bit PNGs and unsafe zip members. Tiny fixtures only; nothing real is decoded."""
from __future__ import annotations

import csv
import io
import logging
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metazoo.cli import main
from metazoo.data import mini_imagenet
from metazoo.data import omniglot as omni
from metazoo.data.image_folder import ImageFolder, load_tree
from metazoo.data.mini_imagenet import MiniImageNet

WNIDS = ["n03000001", "n03000002"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def grey(seed: int, side: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def tree_files(classes: int = 3, per_class: int = 2) -> dict[str, bytes]:
    return {f"c{c}/img{i}.png": png(grey(10 * c + i)) for c in range(classes) for i in range(per_class)}


def member_offset(archive: Path, member: str) -> int:
    """Where ``member``'s data starts in a zip file (after its local header)."""
    with zipfile.ZipFile(archive) as z:
        start = z.getinfo(member).header_offset
    with open(archive, "rb") as f:
        f.seek(start + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return start + 30 + name_len + extra_len


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def write_marker(marker: str) -> None:
    Path(marker).write_text("ran")


class Planted:
    """Runs ``write_marker`` when unpickled by a loader that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


# ---- a tiny Omniglot: 2 + 1 characters of 2 drawings, in the official archives' layout ----

@pytest.fixture
def tiny_omniglot(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(omni, "EXPECTED_CHARACTERS", {omni.BACKGROUND: 2, omni.EVALUATION: 1})
    monkeypatch.setattr(omni, "DRAWINGS", 2)
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    characters = {omni.BACKGROUND: ["Alpha/character01", "Alpha/character02"], omni.EVALUATION: ["Beta/character01"]}
    for part, names in characters.items():
        with zipfile.ZipFile(root / "omniglot" / f"{part}.zip", "w", zipfile.ZIP_STORED) as z:
            for k, name in enumerate(names):
                for d in range(2):
                    z.writestr(f"{part}/{name}/{k:02d}_{d:02d}.png", png(grey(100 * k + d, 12)))
    return root


def test_a_planted_cache_entry_runs_no_code_and_is_rebuilt(tmp_path, caplog):
    folder = write_tree(tmp_path / "tree", tree_files())
    first = load_tree(folder, 8, "L", tmp_path / "cache")
    [entry] = (tmp_path / "cache").glob("*.pt")
    marker = tmp_path / "marker"
    torch.save({**first, "planted": Planted(marker)}, entry)
    with caplog.at_level(logging.WARNING, logger="metazoo"):
        again = load_tree(folder, 8, "L", tmp_path / "cache")
    assert not marker.exists()
    assert "planted" not in again and torch.equal(again["images"], first["images"])
    assert str(entry) in caplog.text


def test_every_cache_entry_loads_with_weights_only(tmp_path, tiny_omniglot, monkeypatch):
    monkeypatch.setitem(mini_imagenet.RAVI_SPLITS, "test", WNIDS)
    cache = tmp_path / "cache"
    omni.load_characters(tiny_omniglot, 12, cache)
    ImageFolder(write_tree(tmp_path / "tree", tree_files()), image_size=8, cache=cache)
    write_pickle(tmp_path / "mini", np.stack([np.stack([grey(i)] * 3, -1) for i in range(4)]), CLASS_DICT)
    MiniImageNet("test", root=tmp_path / "mini", image_size=8, cache=cache)
    entries = sorted(cache.glob("*.pt"))
    assert [p.name.split("-")[0] for p in entries] == ["image_folder", "mini_imagenet", "omniglot"]
    for p in entries:
        torch.load(p, weights_only=True)


# ---- the mini-ImageNet pickle form ----

def write_pickle(root: Path, image_data, class_dict, protocol: int = pickle.HIGHEST_PROTOCOL, **extra) -> Path:
    (root / "miniImageNet").mkdir(parents=True, exist_ok=True)
    path = root / "miniImageNet" / "mini-imagenet-cache-test.pkl"
    with open(path, "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": class_dict, **extra}, f, protocol=protocol)
    return path


@pytest.fixture
def pixels(monkeypatch) -> np.ndarray:
    """Four 8x8 RGB images, uint8 (4, 8, 8, 3); the test split is two classes of two."""
    monkeypatch.setitem(mini_imagenet.RAVI_SPLITS, "test", WNIDS)
    return np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


CLASS_DICT = {WNIDS[0]: [0, 2], WNIDS[1]: [3, 1]}


def expected_pickle_images(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels[[0, 2, 1, 3]].transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_plain_pickle_loads_under_every_protocol(tmp_path, pixels, protocol):
    write_pickle(tmp_path, pixels, {w: [np.int64(i) for i in v] for w, v in CLASS_DICT.items()}, protocol)
    d = MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")
    assert torch.equal(d.images, expected_pickle_images(pixels))


def test_a_pickle_that_runs_code_is_refused_naming_the_file(tmp_path, pixels):
    marker = tmp_path / "marker"
    path = write_pickle(tmp_path, pixels, CLASS_DICT, planted=Planted(marker))
    with pytest.raises(ValueError, match=rf"{path}.*refused.*write_marker") as error:
        MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")
    assert not marker.exists()
    assert "numpy arrays, lists, dicts, strings and numbers" in str(error.value)


def test_float_image_data_in_0_1_is_scaled_not_blackened(tmp_path, pixels):
    write_pickle(tmp_path, pixels.astype(np.float32) / 255, CLASS_DICT)
    d = MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")
    assert torch.equal(d.images, expected_pickle_images(pixels))


@pytest.mark.parametrize("data", [np.full((4, 8, 8, 3), 200.0), np.full((4, 8, 8, 3), np.nan),
                                  np.zeros((4, 8, 8, 3), dtype=np.int16)], ids=["float 0-255", "nan", "int16"])
def test_other_image_data_is_refused(tmp_path, pixels, data):
    path = write_pickle(tmp_path, data, CLASS_DICT)
    with pytest.raises(ValueError, match=rf"{path}: image_data .*uint8.*\[0, 1\]"):
        MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")


def test_an_out_of_range_class_dict_index_names_the_file_and_class(tmp_path, pixels):
    path = write_pickle(tmp_path, pixels, {WNIDS[0]: [0, 2], WNIDS[1]: [1, 99]})
    with pytest.raises(ValueError, match=rf"{path}: class_dict\['{WNIDS[1]}'\].* 99.* 4 images"):
        MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")


def test_a_truncated_pickle_names_the_file(tmp_path, pixels):
    path = write_pickle(tmp_path, pixels, CLASS_DICT)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"{path}.*truncated or damaged"):
        MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")


def test_a_non_utf8_split_file_names_the_file(tmp_path, pixels):
    base = write_tree(tmp_path / "mini-imagenet", {f"images/{WNIDS[0]}0{i}.jpg": b"" for i in range(2)})
    with open(base / "test.csv", "w", newline="", encoding="latin-1") as f:
        csv.writer(f).writerows([("filename", "label"), (f"{WNIDS[0]}00.jpg", WNIDS[0]), ("caf\u00e9.jpg", WNIDS[0])])
    with pytest.raises(ValueError, match=rf"{base / 'test.csv'} is not UTF-8 text.*line 3"):
        MiniImageNet("test", root=tmp_path, image_size=8, cache=tmp_path / "cache")


# ---- unreadable archives and images ----

def test_a_truncated_zip_names_the_archive_and_how_to_check(tiny_omniglot, tmp_path):
    archive = tiny_omniglot / "omniglot" / f"{omni.BACKGROUND}.zip"
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"(?s){archive} is not a readable zip archive.*sha256sum -c SHA256SUMS"):
        omni.load_characters(tiny_omniglot, 12, tmp_path / "cache")


def test_a_bad_crc_names_the_archive_and_the_member(tiny_omniglot, tmp_path):
    archive = tiny_omniglot / "omniglot" / f"{omni.EVALUATION}.zip"
    member = f"{omni.EVALUATION}/Beta/character01/00_01.png"
    flip(archive, member_offset(archive, member) + 40)
    with pytest.raises(ValueError, match=rf"(?s){archive}: {member}: .*CRC.*sha256sum -c SHA256SUMS"):
        omni.load_characters(tiny_omniglot, 12, tmp_path / "cache")


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_every_broken_image_is_named_with_its_folder_or_archive(tmp_path, kind):
    files = tree_files() | {"c0/img0.png": b"not a png", "c2/img1.png": png(grey(5))[:60]}
    source = write_tree(tmp_path / "tree", files)
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "tree.zip", "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        source = tmp_path / "tree.zip"
    with pytest.raises(ValueError) as error:
        ImageFolder(source, image_size=8, cache=tmp_path / "cache")
    message = str(error.value)
    assert f"{source}: c0/img0.png: cannot decode" in message and f"{source}: c2/img1.png: " in message
    assert "BytesIO" not in message and "c1/img0.png" not in message
    assert ("sha256sum -c SHA256SUMS" if kind == "zip" else "remove or replace") in message


def test_data_check_reports_every_bad_file_and_exits_nonzero(tmp_path, tiny_omniglot, monkeypatch, capsys):
    monkeypatch.setenv("METAZOO_CACHE", str(tmp_path / "cache"))
    folder = write_tree(tmp_path / "tree", tree_files() | {"c0/img0.png": b"x", "c1/img1.png": b"y"})
    assert main(["data", "check", "image_folder", "--path", str(folder), "--image-size", "8"]) == 1
    out = capsys.readouterr().out
    assert f"{folder}: c0/img0.png" in out and f"{folder}: c1/img1.png" in out
    archive = tiny_omniglot / "omniglot" / f"{omni.BACKGROUND}.zip"
    archive.write_bytes(archive.read_bytes()[:200])
    assert main(["data", "check", "omniglot", "--data-root", str(tiny_omniglot)]) == 1
    assert f"{archive} is not a readable zip archive" in capsys.readouterr().out


def test_data_check_shows_what_an_image_folder_becomes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METAZOO_CACHE", str(tmp_path / "cache"))
    folder = write_tree(tmp_path / "tree", tree_files(classes=10))
    assert main(["data", "check", "image_folder", "--path", str(folder), "--image-size", "8", "--mode", "L"]) == 0
    out = capsys.readouterr().out
    assert f"source: {folder}" in out and "10 classes, 20 images" in out and "class split: seed 0" in out
    assert "train:     6 classes" in out and "of (1, 8, 8)" in out and "2-2 per class" in out
    with pytest.raises(SystemExit):
        main(["data", "check", "image_folder", "--mode", "CMYK"])
    assert main(["data", "check", "image_folder"]) == 2
    assert "image_folder needs --path" in capsys.readouterr().err


# ---- a cache that never goes stale ----

def test_an_image_replaced_in_place_is_decoded_again(tmp_path):
    folder = write_tree(tmp_path / "tree", tree_files() | {"c1/deep/x.png": png(grey(7))})
    first = load_tree(folder, 8, "L", tmp_path / "cache")
    target = folder / "c1" / "deep" / "x.png"
    stat = target.stat()
    target.write_bytes(png(np.full((8, 8), 9, dtype=np.uint8)))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_tree(folder, 8, "L", tmp_path / "cache")
    changed = (first["images"] != second["images"]).flatten(1).any(1).nonzero().flatten().tolist()
    assert changed == [2] and (second["images"][2] == 9).all()


def test_flipped_bytes_in_a_cache_entry_are_detected_and_rebuilt(tmp_path, caplog):
    folder = write_tree(tmp_path / "tree", tree_files(classes=4, per_class=3))
    first = load_tree(folder, 16, "L", tmp_path / "cache")
    [entry] = (tmp_path / "cache").glob("*.pt")
    storage = next(n for n in zipfile.ZipFile(entry).namelist() if "/data/" in n)
    flip(entry, member_offset(entry, storage) + 100)
    with caplog.at_level(logging.WARNING, logger="metazoo"):
        second = load_tree(folder, 16, "L", tmp_path / "cache")
    assert torch.equal(first["images"], second["images"])
    assert f"{entry}" in caplog.text and "checksum" in caplog.text
    third = load_tree(folder, 16, "L", tmp_path / "cache")  # the rebuilt entry is good again
    assert torch.equal(first["images"], third["images"])


def test_two_spellings_of_a_path_share_one_cache_entry(tiny_omniglot, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a = omni.load_characters(tiny_omniglot, 12, cache)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(omni, "decode_all", lambda *a, **k: pytest.fail("decoded twice"))
    b = omni.load_characters(Path("..") / "data", 12, cache)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert len(list(cache.glob("omniglot-*.pt"))) == 1


# ---- 16-bit PNGs and unsafe zip members ----

@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_16_bit_grey_pngs_are_scaled_to_8_bits(tmp_path, mode):
    values = np.arange(256, dtype=np.uint16).reshape(16, 16)
    darker = (values * 257 - (values > 0) * 100).astype(np.uint16)  # rounds to the same 8-bit values
    folder = write_tree(tmp_path / "tree", {"a/g16.png": png(values * 257), "b/g16.png": png(darker)})
    assert Image.open(folder / "a" / "g16.png").mode == "I;16"
    entry = load_tree(folder, 16, mode, tmp_path / "cache")
    want = torch.from_numpy(values.astype(np.uint8))
    assert all(torch.equal(entry["images"][k, c], want) for k in range(2) for c in range(len(mode)))


def test_a_zip_with_dotdot_or_absolute_members_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as z:
        for name, data in tree_files().items():
            z.writestr(name, data)
        z.writestr("../evil/x.png", png(grey(1)))
        z.writestr("/abs/y.png", png(grey(2)))
    with pytest.raises(ValueError, match=r"tree.zip.*'../evil/x.png'.*'/abs/y.png'"):
        ImageFolder(tmp_path / "tree.zip", image_size=8, cache=tmp_path / "cache")
