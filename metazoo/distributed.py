"""Several processes, one run: torchrun's environment, the process group, and the few collectives that the
trainer and evaluation use.

``torchrun --nproc_per_node=N -m metazoo.cli train CONFIG`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. With
``WORLD_SIZE`` > 1, :func:`session` joins them (NCCL on CUDA, gloo otherwise); rank ``r`` of ``R``
takes items ``r, r + R, ...`` of each step's items (:func:`shard`), its gradient is weighted by its
share of them and summed over the ranks (:func:`reduce_step`), so the result is one process's mean,
and evaluation gathers every rank's per-episode scores back into episode order (:func:`gather`). A collective
that fails because another process died or stopped answering raises :class:`~metazoo.errors.RankLostError`.
Without ``WORLD_SIZE`` (one process) every function here is the identity, so there is one code path.
See docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
from typing import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from .errors import RankLostError

# How long a gloo collective waits for a process that neither answers nor closes its connections (a hung process,
# a machine gone from the network): torch's default, stated here; NCCL keeps its own. A process that dies closes
# its connections, and the others fail at once (:func:`collective`).
TIMEOUT = datetime.timedelta(minutes=30)


def world_size() -> int:
    """Processes in the run (``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``RANK``; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", str(rank())))


def local_world_size() -> int:
    """Processes of the run on this machine (``LOCAL_WORLD_SIZE``; all of them when torchrun does not say)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, metrics, config.toml and results."""
    return rank() == 0


def check_meta_batch(meta_batch_size: int) -> None:
    """Each rank takes an equal share of a step's items: the meta-batch must divide by the processes."""
    processes = world_size()
    if meta_batch_size % processes:
        raise ValueError(f"train.meta_batch_size = {meta_batch_size} does not divide by the {processes} processes "
                         f"(WORLD_SIZE): each process takes an equal share of a step's items; choose a meta-batch "
                         f"that is a multiple of {processes}, or another number of processes")


def local_device(device: torch.device) -> torch.device:
    """This rank's device: with several processes, ``cuda`` (no index) means GPU ``LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def pin_cores(threads: int) -> list[int] | None:
    """With several processes on this machine, bind this one to its own block of ``threads`` CPU cores: local
    rank r takes the r-th block of the cores this process may use (``os.sched_getaffinity``), so the ranks
    neither share a core nor move between cores. Every thread of the process, and those it starts later, keep
    to the block. Returns the cores (None with one process: nothing to share). An error, before anything is
    bound, where the blocks do not fit in those cores or the system cannot bind."""
    local = local_world_size()
    if world_size() == 1 or local == 1:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("train.pin_cores: this system cannot bind processes to cores (no os.sched_setaffinity); "
                           "set train.pin_cores = false")
    available = sorted(os.sched_getaffinity(0))
    if local * threads > len(available):
        raise ValueError(f"train.pin_cores: {local} processes x {threads} threads (OMP_NUM_THREADS) need "
                         f"{local * threads} cores, but this process may use {len(available)} ({available}); "
                         "use fewer threads or processes, or set train.pin_cores = false")
    cores = available[local_rank() * threads:(local_rank() + 1) * threads]
    for thread in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
        os.sched_setaffinity(int(thread), cores)
    return cores


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[object]:
    """Join the process group for the duration, when ``WORLD_SIZE`` > 1 and not joined already (NCCL for
    CUDA devices, gloo otherwise); leave it after. Yields the group for host-side agreements (:func:`most`):
    a gloo group beside NCCL, else None (the default group)."""
    if world_size() == 1 or dist.is_initialized():
        yield None
        return
    nccl = device.type == "cuda"
    if nccl:
        torch.cuda.set_device(local_device(device))
    dist.init_process_group("nccl" if nccl else "gloo", timeout=None if nccl else TIMEOUT)
    try:
        yield dist.new_group(backend="gloo") if nccl else None
        # every process past its last collective before any closes its connections: a gloo peer still reading
        # when the other side closes can abort its process (SIGABRT, "Connection closed by peer"), seen once in a
        # resumed 2-process run under load (not after an error: the other processes may be gone)
        with collective("barrier at the end of the run"):
            dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Around one collective (``what``): its failure, a backend error when another process died, closed its
    connections or stopped answering within :data:`TIMEOUT`, becomes a :class:`~metazoo.errors.RankLostError`
    naming this rank and what the backend saw (gloo: the peer's address), in one line."""
    try:
        yield
    except RuntimeError as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        seen = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).split(". This is typically")[0]  # (gloo's source line)
        raise RankLostError(f"rank {rank()} of {world_size()}: the {what} across the processes failed ({seen}): "
                            "another process of the run has died or stopped answering") from err


def _joined() -> bool:
    if world_size() == 1:
        return False
    if not dist.is_initialized():
        raise RuntimeError(f"WORLD_SIZE = {world_size()} but this process has not joined the process group: "
                           "run inside metazoo.distributed.session (meta_train and test_run do)")
    return True


def shard(indices: Sequence) -> Sequence:
    """This rank's share of ``indices``: items ``r, r + R, r + 2R, ...`` (all of them for one process)."""
    return indices[rank()::world_size()]


def gather(values: list) -> list:
    """Every rank's ``values`` (its :func:`shard` of a list) on every rank, put back in the list's order."""
    if not _joined():
        return values
    parts: list = [None] * world_size()
    with collective("gathering of evaluation scores"):
        dist.all_gather_object(parts, values)
    return [part[k] for k in range(len(parts[0])) for part in parts if k < len(part)]


def reduce_step(parameters: Iterable[torch.Tensor], buffers: Iterable[torch.Tensor], stats: dict,
                share: float, flags: Sequence[bool] = ()) -> tuple[dict, list[bool] | None]:
    """Sum over ranks of ``share`` x each rank's gradients, floating buffers (BatchNorm's running statistics)
    and metrics, in one all-reduce; ``share`` is the rank's fraction of the step's items, so gradients and
    metrics become the mean over all the step's items, as one process computes it. Every rank must hold
    gradients for the same parameters (true of one model running the same code).

    ``flags`` (each rank's reasons to stop) ride in the same all-reduce when it runs on the host (gloo, CPU
    tensors), so agreeing on them costs no collective of its own. Returns the metrics, and for each flag
    whether any rank raised it; None instead where the reduction ran on a GPU, since reading the flags there
    would wait for the device: agree with :func:`most` on the host then."""
    if not _joined():
        return stats, list(flags)
    grads = [p.grad for p in parameters if p.grad is not None]
    buffers = [b for b in buffers if b.is_floating_point()]
    keys = sorted(stats)
    device = (grads or buffers)[0].device if grads or buffers else torch.device("cpu")
    metrics = torch.stack([torch.as_tensor(stats[k], dtype=torch.float32, device=device) for k in keys])
    carried = device.type == "cpu"
    extra = torch.tensor([float(f) for f in flags] if carried else [], device=device)
    flat = torch.cat([t.reshape(-1).float() for t in (*grads, *buffers)] + [metrics, extra])
    flat[:flat.numel() - extra.numel()] *= share  # (in place: one copy of the gradients a step, as before)
    with collective("gradient all-reduce"):
        dist.all_reduce(flat)
    start = 0
    for t in (*grads, *buffers):
        t.copy_(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    raised = [bool(v > 0) for v in flat[start + len(keys):].tolist()] if carried else None
    return dict(zip(keys, flat[start:start + len(keys)])), raised


def most(value: int, host_group: object = None) -> int:
    """The largest of the ranks' ``value`` (e.g. a reason to stop), agreed on the host (``host_group``: the
    gloo group :func:`session` yields beside NCCL), so without a device sync."""
    if not _joined():
        return value
    on_device = host_group is None and dist.get_backend() == "nccl"  # a group joined outside :func:`session`
    flag = torch.tensor([value], device=torch.device("cuda", torch.cuda.current_device()) if on_device else None)
    with collective("step agreement"):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=host_group)
    return int(flag)


def barrier() -> None:
    """Wait until every rank is here (e.g. until rank 0 has written what the others read next)."""
    if _joined():
        with collective("barrier"):
            dist.barrier()
