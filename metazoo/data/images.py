"""Reading image trees from a folder or a zip archive, and decoding them to uint8 tensors."""
from __future__ import annotations

import io
import re
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .storage import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}


# What a decode error says to do, for an archive and for a folder.
ARCHIVE_ADVICE = ("Check the archive: in the data bundle run `sha256sum -c SHA256SUMS` in the bundle's folder and "
                  "get any file it fails again; in an archive of your own, replace or remove the member "
                  "(`zip -d ARCHIVE MEMBER`).")
FOLDER_ADVICE = "Fix the folder: remove or replace each file named above."


class FileTree:
    """The files of a folder or of a zip archive, by POSIX relative path.

    Unreadable data raises :class:`~metazoo.data.storage.DataError` naming the folder or archive, the
    member, and how to check or fix it.
    """

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        self._zip = _open_zip(self.source) if self.source.is_file() else None
        self.advice = ARCHIVE_ADVICE if self._zip is not None else FOLDER_ADVICE

    @property
    def is_archive(self) -> bool:
        return self._zip is not None

    def files(self) -> list[str]:
        if self._zip is not None:
            names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
            unsafe = [n for n in names if _unsafe(n)]
            if unsafe:
                raise DataError(f"{self.source} holds members with absolute paths or '..' that would land outside "
                                f"its tree: {', '.join(map(repr, unsafe[:10]))}{', ...' if len(unsafe) > 10 else ''}",
                                "Re-pack the archive with paths relative to its top (<class>/<image>).")
            return names
        return sorted(
            p.relative_to(self.source).as_posix() for p in self.source.rglob("*") if p.is_file()
        )

    def images(self) -> list[str]:
        return [f for f in self.files() if PurePosixPath(f).suffix.lower() in IMAGE_SUFFIXES
                and not PurePosixPath(f).name.startswith(".")]

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.source / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise DataError(f"{self.source}: {name}: cannot be read ({err})", self.advice) from err

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{path} is not a readable zip archive ({err}): it is truncated or damaged",
                        ARCHIVE_ADVICE) from err


def _unsafe(name: str) -> bool:
    """An absolute member name, or one with a '..' part."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or re.match(r"[A-Za-z]:", posix) is not None or ".." in posix.split("/")


def decode(data: bytes, size: int, mode: str) -> np.ndarray:
    """Image bytes -> uint8 array (channels, size, size); ``mode`` is ``"L"`` or ``"RGB"``."""
    with Image.open(io.BytesIO(data)) as img:
        img = _eight_bits(img).convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _eight_bits(img: Image.Image) -> Image.Image:
    """A 16-bit grey image scaled to 8 bits, rounded (Pillow's ``convert`` would clip it at 255)."""
    if not (img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG")):  # PNG "I": 16-bit grey
        return img
    values = np.asarray(img).astype(np.uint32)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def decode_all(tree: FileTree, names: Sequence[str], size: int, mode: str, workers: int = 4) -> torch.Tensor:
    """Decode ``names`` from ``tree`` into one uint8 tensor (n, channels, size, size).

    Every file is tried; a :class:`~metazoo.data.storage.DataError` then names all that failed.
    """
    channels = 1 if mode == "L" else 3
    out = np.empty((len(names), channels, size, size), dtype=np.uint8)
    problems: dict[int, str] = {}

    def work(i: int, data: bytes | None = None) -> None:
        try:
            out[i] = decode(tree.read(names[i]) if data is None else data, size, mode)
        except DataError as err:
            problems[i] = err.problems[0]
        except UnidentifiedImageError:  # its message names a BytesIO, not the file
            problems[i] = f"{tree.source}: {names[i]}: cannot decode: not an image format Pillow knows"
        except Exception as err:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, ...)
            problems[i] = f"{tree.source}: {names[i]}: cannot decode ({type(err).__name__}: {err})"

    jobs: list[tuple] = [(i,) for i in range(len(names))]
    if tree.is_archive:  # zipfile reads are not thread-safe: read serially, decode in threads
        blobs = {}
        for i, name in enumerate(names):
            try:
                blobs[i] = tree.read(name)
            except DataError as err:
                problems[i] = err.problems[0]
        jobs = list(blobs.items())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda job: work(*job), jobs))
    if problems:
        raise DataError([problems[i] for i in sorted(problems)], tree.advice)
    return torch.from_numpy(out)
