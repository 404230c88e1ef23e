"""Where data lives: the data root, the tensor cache, atomic writes and checked downloads."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

import torch

LOG = logging.getLogger("metazoo")

DATA_ENV = "METAZOO_DATA"
CACHE_ENV = "METAZOO_CACHE"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset was not found; the message names every place looked and how to get it."""

    def __init__(self, dataset: str, looked: Iterable[Path | str], how: str) -> None:
        places = "\n".join(f"  - {p}" for p in looked)
        super().__init__(f"{dataset} not found. Looked in:\n{places}\n{how}")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$METAZOO_DATA``, else ``~/.metazoo/data``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".metazoo" / "data"


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where decoded tensors are cached: ``cache``, else ``$METAZOO_CACHE``, else ``~/.cache/metazoo``."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "metazoo"


def source_key(paths: Iterable[Path], *extra: object) -> str:
    """A short key for a cache entry: the sources' paths, sizes and modification times."""
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    for e in extra:
        h.update(f"|{e}".encode())
    return h.hexdigest()[:16]


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it into place only if the block succeeds.

    Readers never see half a file, and a failed or interrupted write leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: object, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def cached(path: Path, build) -> object:
    """Load ``path`` if it exists, else ``build()`` it and save it atomically."""
    if path.exists():
        try:
            return torch.load(path, weights_only=False)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    LOG.info("decoding the images into the cache %s (first use of this split: this can take a minute or more)",
             path)
    obj = build()
    atomic_save(obj, path)
    return obj


def download(url: str, dest: Path, md5: str, chunk: int = 1 << 20) -> Path:
    """Fetch ``url`` to ``dest``, verifying its md5; an existing good file is kept.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only after the
    checksum matches, so an interrupted or corrupt download leaves nothing behind.
    """
    if dest.exists() and file_md5(dest) == md5:
        return dest
    h = hashlib.md5()
    with atomic_open(dest, "wb") as out, urllib.request.urlopen(url) as response:
        while block := response.read(chunk):
            h.update(block)
            out.write(block)
        if h.hexdigest() != md5:
            raise IOError(f"checksum mismatch for {url}: expected md5 {md5}, got {h.hexdigest()}")
    return dest


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
