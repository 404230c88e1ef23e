"""Where data lives: the data root, the tensor cache, atomic writes and checked downloads."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import torch

LOG = logging.getLogger("metazoo")

DATA_ENV = "METAZOO_DATA"
CACHE_ENV = "METAZOO_CACHE"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset was not found; the message names every place looked and how to get it."""

    def __init__(self, dataset: str, looked: Iterable[Path | str], how: str) -> None:
        places = "\n".join(f"  - {p}" for p in looked)
        super().__init__(f"{dataset} not found. Looked in:\n{places}\n{how}")


class DataError(ValueError):
    """Data that cannot be read. The message names each file (and an archive's member), the problem and
    how to check or fix it; ``problems`` lists every bad file, of which the message shows the first 20."""

    def __init__(self, problems: str | Sequence[str], advice: str = "", shown: int = 20) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.advice = advice
        more = len(self.problems) - shown
        lines = self.problems[:shown] + ([f"... and {more} more"] if more > 0 else []) + ([advice] if advice else [])
        super().__init__("\n".join(lines))

    @classmethod
    def joined(cls, errors: Sequence["DataError"]) -> "DataError":
        """One error holding the problems of several."""
        advice = "\n".join(dict.fromkeys(e.advice for e in errors if e.advice))
        return cls([p for e in errors for p in e.problems], advice)

    def report(self) -> str:
        """Every problem, then the advice."""
        return "\n".join(self.problems + ([self.advice] if self.advice else []))


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
    """A short key for a cache entry: each source's resolved path, and the relative path, size and
    modification time of every file under it (of the source itself if it is a file), then ``extra``.

    Any file changed, added or removed anywhere in a tree gives a new key; two spellings of one path
    (``../data`` and ``/abs/data``) give the same key.
    """
    h = hashlib.sha1()
    for p in paths:
        p = Path(p).resolve()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        h.update(f"{p}\n".encode())
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(p).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
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
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary open() would (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: object, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


CACHE_FORMAT = "metazoo-cache-2"


def cached(path: Path, build: Callable[[], object]) -> object:
    """Load ``path`` if it holds a good entry, else ``build()`` it and save it atomically.

    An entry is ``{"format", "sha256", "entry"}`` where ``entry`` holds only tensors, dicts, lists,
    strings and numbers, so it loads with ``weights_only=True`` (no code runs), and ``sha256`` is its
    content checksum (:func:`content_digest`). An entry that fails to load or to match its checksum is
    rebuilt with a warning, never trusted.
    """
    if path.exists():
        try:
            return _load_entry(path)
        except Exception as err:  # whatever is wrong with an entry, it is rebuilt, never trusted
            LOG.warning("the cache entry %s is unusable (%s): decoding it again", path, _why(err))
            path.unlink(missing_ok=True)
    LOG.info("decoding the images into the cache %s (first use of this split: this can take a minute or more)",
             path)
    obj = build()
    atomic_save({"format": CACHE_FORMAT, "sha256": content_digest(obj), "entry": obj}, path)
    return obj


def _load_entry(path: Path) -> object:
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT:
        raise ValueError(f"not a {CACHE_FORMAT} entry")
    if content_digest(saved["entry"]) != saved["sha256"]:
        raise ValueError("its content does not match its checksum: the file was changed or damaged")
    return saved["entry"]


def _why(err: Exception) -> str:
    if isinstance(err, pickle.UnpicklingError):  # what weights_only=True refuses
        return "it holds objects other than tensors, dicts, lists, strings and numbers"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def content_digest(obj: object) -> str:
    """sha256 of a nest of tensors, dicts, lists, tuples, strings, numbers and None (anything else is
    refused, so cache entries stay loadable with ``weights_only=True``)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {flat.dtype} {tuple(obj.shape)}\n".encode())
        h.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)}\n".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__} {len(obj)}\n".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or type(obj) in (str, int, float, bool):
        h.update(f"{type(obj).__name__} {obj!r}\n".encode())
    else:
        raise TypeError(f"a cache entry holds only tensors, dicts, lists, strings and numbers, not {type(obj)}")


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
