"""Table (c): one MAML meta-iteration, metazoo against learn2learn, in the same run.

Every contender starts from the same weights and trains on the same pre-sampled episodes: 5-way
1-shot, 15 queries per class, 5 inner steps, meta-batch 4, Adam outer step (``--lr``), second and
first order. Contenders:

- ``metazoo``: :class:`~metazoo.learners.MAML` (tasks of a meta-batch adapted together through
  grouped convolutions);
- ``metazoo task-by-task``: the same learner with ``batch_tasks=False`` (one
  ``torch.func.functional_call`` per task), to show what batching the tasks buys;
- ``metazoo 1 task/pass``: ``tasks_per_pass=1``: each task adapted and back-propagated on its
  own, so one task's graph is alive at a time (the memory-lean setting);
- ``learn2learn``: ``learn2learn.algorithms.MAML`` over the same network as one ``nn.Module``,
  the loop of its examples (``clone``, ``adapt`` per inner step, query loss per task, backward).

Sizes: Omniglot 28x28 with MAML's Omniglot network (64 filters, strided, averaged over space),
and 84x84 (mini-ImageNet sized) with MAML's mini-ImageNet network (32 filters, max-pooling) on
Caltech-101 84x84 images. Time: median of interleaved blocks. Peak memory: each contender's
meta-iteration runs in a fresh process; reported is the peak resident memory during it (VmHWM,
reset just before) minus the resident memory just before it (Linux only).
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import create_dataset
from ..data.sampling import EpisodeSampler
from ..learners import create_learner
from .common import interleaved_medians, repeat, warm_up

CONTENDERS = ("metazoo", "metazoo task-by-task", "metazoo 1 task/pass", "learn2learn")
SIZES = {28: ("omniglot", {"in_channels": 1, "width": 64, "image_size": 28, "pooling": False, "global_pool": True}),
         84: ("caltech101", {"in_channels": 3, "width": 32, "image_size": 84, "pooling": True})}
ORDERS = {"second": False, "first": True}  # --maml-orders value: first_order
WAYS, SHOTS, QUERIES, INNER_STEPS, META_BATCH, INNER_LR = 5, 1, 15, 5, 4, 0.01


def episodes(size: int, root: Path, count: int, seed: int = 0) -> list:
    dataset = create_dataset(SIZES[size][0], split="train", root=root)
    return list(EpisodeSampler(dataset, WAYS, SHOTS, QUERIES, seed=seed, episodes=count))


def contender(name: str, size: int, first_order: bool, lr: float = 1e-3, seed: int = 0,
              device: torch.device | str = "cpu") -> Callable[[list], None]:
    """One meta-iteration (meta-batch in, Adam step done) of contender ``name``, its weights on ``device`` (the
    episodes given to it must be there too)."""
    torch.manual_seed(seed)
    learner = create_learner("maml", backbone={"name": "conv4", **SIZES[size][1]}, ways=WAYS, inner_steps=INNER_STEPS,
                             inner_lr=INNER_LR, first_order=first_order, batch_tasks=name != "metazoo task-by-task",
                             tasks_per_pass=1 if name == "metazoo 1 task/pass" else 0).to(device)
    if name != "learn2learn":
        optimizer = torch.optim.Adam(learner.parameters(), lr=lr)

        def step(batch: list) -> None:  # what the trainer does
            optimizer.zero_grad(set_to_none=True)
            learner.meta_backward(batch)
            optimizer.step()
        return step

    import learn2learn as l2l

    maml = l2l.algorithms.MAML(nn.Sequential(copy.deepcopy(learner.backbone), copy.deepcopy(learner.head)),
                               lr=INNER_LR, first_order=first_order)
    optimizer = torch.optim.Adam(maml.parameters(), lr=lr)

    def l2l_step(batch: list) -> None:
        optimizer.zero_grad(set_to_none=True)
        for episode in batch:
            clone = maml.clone()
            for _ in range(INNER_STEPS):
                clone.adapt(F.cross_entropy(clone(episode.support.inputs), episode.support.labels))
            (F.cross_entropy(clone(episode.query.inputs), episode.query.labels) / len(batch)).backward()
        optimizer.step()
    return l2l_step


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_child(name: str, size: int, first_order: bool, root: Path, threads: int, lr: float, seed: int,
                out) -> None:
    if threads:
        torch.set_num_threads(threads)
    batch = episodes(size, root, META_BATCH, seed)
    step = contender(name, size, first_order, lr, seed)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident size
        f.write("5")
    before = _status_kib("VmRSS")
    step(batch)
    out.put(_status_kib("VmHWM") - before)


def peak_memory_mib(name: str, size: int, first_order: bool, root: Path, threads: int = 0, lr: float = 1e-3,
                    seed: int = 0) -> float:
    """Peak resident memory added by one meta-iteration, in a fresh process (MiB)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_peak_child, args=(name, size, first_order, root, threads, lr, seed, out))
    child.start()
    kib = out.get()
    child.join()
    return kib / 1024


def header(memory: bool) -> list[str]:
    return ["images", "order", *(f"{n} ms" for n in CONTENDERS), "metazoo / l2l", "task-by-task / l2l",
            "1 task/pass / l2l", *((f"{n} peak MiB" for n in CONTENDERS) if memory else ())]


def maml_rows(args: argparse.Namespace, root: Path) -> tuple[list[list[str]], list[str]]:
    """Table rows (size, order, ms and peak MiB per contender, ratios) and summary lines."""
    rows = []
    for size in args.maml_sizes:
        pool = episodes(size, root, META_BATCH * 2, args.seed)
        batches = [pool[:META_BATCH], pool[META_BATCH:]]
        for order in args.maml_orders:
            first_order = ORDERS[order]
            steps = {name: contender(name, size, first_order, args.lr, args.seed) for name in CONTENDERS}
            cycle = {name: [0] for name in CONTENDERS}

            def block(name: str) -> Callable[[], None]:
                def one() -> None:
                    steps[name](batches[cycle[name][0] % 2])
                    cycle[name][0] += 1
                return repeat(one, args.steps)
            blocks = {name: block(name) for name in CONTENDERS}
            warm_up(blocks, args.warmup)
            ms = {k: 1000 * v / args.steps for k, v in interleaved_medians(blocks, args.repeats).items()}
            mem = {name: peak_memory_mib(name, size, first_order, root, args.threads, args.lr, args.seed)
                   for name in CONTENDERS} if args.maml_memory else {}
            rows.append([f"{size}x{size}", order, *(f"{ms[n]:.0f}" for n in CONTENDERS),
                         *(f"{ms[n] / ms['learn2learn']:.2f}x" for n in CONTENDERS[:3]),
                         *(f"{mem[n]:.0f}" for n in mem)])
    notes = [f"{WAYS}-way {SHOTS}-shot, {QUERIES} queries per class, {INNER_STEPS} inner steps (lr {INNER_LR}), "
             f"meta-batch {META_BATCH}, Adam outer step (lr {args.lr:g}); median of {args.repeats} interleaved "
             f"blocks of {args.steps} meta-iterations after {args.warmup} warm-up blocks"]
    if args.maml_memory:
        notes.append("peak MiB: one meta-iteration of each contender in a fresh process, peak resident memory "
                     "(VmHWM) minus the resident memory just before it")
    else:
        notes.append("peak memory not measured (--no-maml-memory)")
    return rows, notes
