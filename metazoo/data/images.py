"""Reading image trees from a folder or a zip archive, and decoding them to uint8 tensors."""
from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}


class FileTree:
    """The files of a folder or of a zip archive, by POSIX relative path."""

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        self._zip = zipfile.ZipFile(self.source) if self.source.is_file() else None

    def files(self) -> list[str]:
        if self._zip is not None:
            return sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        return sorted(
            p.relative_to(self.source).as_posix() for p in self.source.rglob("*") if p.is_file()
        )

    def images(self) -> list[str]:
        return [f for f in self.files() if PurePosixPath(f).suffix.lower() in IMAGE_SUFFIXES
                and not PurePosixPath(f).name.startswith(".")]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.source / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def decode(data: bytes, size: int, mode: str) -> np.ndarray:
    """Image bytes -> uint8 array (channels, size, size); ``mode`` is ``"L"`` or ``"RGB"``."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_all(tree: FileTree, names: Sequence[str], size: int, mode: str, workers: int = 4) -> torch.Tensor:
    """Decode ``names`` from ``tree`` into one uint8 tensor (n, channels, size, size)."""
    channels = 1 if mode == "L" else 3
    out = np.empty((len(names), channels, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode(tree.read(names[i]), size, mode)

    if tree._zip is not None:  # zipfile reads are not thread-safe: read serially, decode in threads
        blobs = [tree.read(n) for n in names]

        def work(i: int) -> None:  # noqa: F811
            out[i] = decode(blobs[i], size, mode)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(names))))
    return torch.from_numpy(out)
