"""The C allocator under the ``metazoo`` command: glibc's malloc, told to keep the memory it frees.

PyTorch takes a CPU tensor's memory from the C library's ``malloc``. By default glibc serves a large block
(over 128 KiB, a threshold that grows to at most 32 MiB) with a fresh ``mmap`` and returns it to the system when
it is freed, and trims its heap whenever 128 KiB are free at the top. A training step allocates and frees the
same activations and gradients every step, so the kernel hands out and zeroes those pages again each time: on
this project's machine a ProtoNet step spent about a third of its CPU time in the kernel, serving page faults
(docs/benchmarks.md (g)).

:func:`tune` runs first in the ``metazoo`` command (and ``python -m metazoo.cli``): on Linux with glibc it
starts the same command again, once, with :data:`TUNABLES` added to ``GLIBC_TUNABLES`` (glibc reads them at
the start of a process only): blocks up to 32 MiB come from the heap, the heap is not trimmed, and the heap
and the larger blocks ask for transparent huge pages (glibc 2.35 and later; the kernel grants them where
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``). The computations are the same,
bit for bit; the memory a process holds stays near its peak. ``METAZOO_MALLOC=system`` keeps the C library's
defaults, and a ``GLIBC_TUNABLES`` that already sets a ``glibc.malloc`` tunable is left as it is. A library
user's own process is never restarted: set the variable before Python starts (docs/benchmarks.md (g)).
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

TUNABLES = {"glibc.malloc.hugetlb": "1",  # madvise(MADV_HUGEPAGE) on the heap and on mmap'd blocks
            "glibc.malloc.mmap_threshold": str(32 << 20),  # blocks up to 32 MiB from the heap (glibc's maximum)
            "glibc.malloc.trim_threshold": str(64 << 30)}  # never give the heap's top back
HUGETLB_SINCE = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def environment(env: Mapping[str, str], libc: tuple[str, str]) -> dict[str, str] | None:
    """The environment to start the command again with, or None to go on as it is: not glibc, too old a glibc
    (before 2.26, no malloc tunables), ``METAZOO_MALLOC=system``, or a ``glibc.malloc`` tunable already set
    (by the user, or by the start this function asked for)."""
    name, version = libc
    if env.get("METAZOO_MALLOC", "").lower() == "system" or name != "glibc":
        return None
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    if release < (2, 26):
        return None
    present = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in present:
        return None
    wanted = {k: v for k, v in TUNABLES.items() if k != "glibc.malloc.hugetlb" or release >= HUGETLB_SINCE}
    value = ":".join([*([present] if present else []), *(f"{k}={v}" for k, v in wanted.items())])
    return {**env, "GLIBC_TUNABLES": value}


def tune() -> None:
    """Start this command again (the same process, :func:`os.execve`) under :func:`environment`, where it asks;
    else return. Only the ``metazoo`` command calls it, before torch is imported."""
    if not sys.platform.startswith("linux"):
        return
    env = environment(os.environ, platform.libc_ver())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
