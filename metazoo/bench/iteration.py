"""Table (e): one training iteration end to end, episode sampling included, metazoo against learn2learn.

Each row is one of metazoo's experiment configs (:data:`CONFIGS`) and the same settings on both
sides (:class:`~metazoo.bench.l2l_loops.Settings`, read from the resolved config):

- ``metazoo``: its trainer's step (``metazoo.trainer.prepare`` and ``train_step``): the step's
  ``meta_batch_size`` episodes from the objective's seeded ``EpisodeSampler`` over the Omniglot
  tensor cache, ``zero_grad``, ``meta_backward``, the loss check, the optimiser's and the schedule's step;
- ``learn2learn``: its example loop (:class:`~metazoo.bench.l2l_loops.Loop`) over its own Omniglot
  benchmark taskset, ``get_tasksets("omniglot", train_ways, train_samples=shots + queries).train``
  (a PNG decoded, resized and rotated per item of every task).

Two more columns time the sampling alone (a meta-batch of episodes, or of ``taskset.sample()``),
to show where each side's time goes. All four take turns in interleaved blocks (median reported).
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any, Callable

import torch

from .common import bullets, interleaved_medians, repeat, table, warm_up
from .scaling import repo_file

CONFIGS = {"maml": "experiments/omniglot/maml_5w1s.toml", "protonet": "experiments/omniglot/protonet_5w1s.toml"}
LABELS = {"maml": "MAML", "protonet": "ProtoNet"}
# learn2learn's side draws from the Vinyals characters (its benchmark, or a FilteredMetaDataset of the Vinyals
# split in the race): every row's config is pinned to that split (MAML's configs draw MAML's own since 2026-12-06)
PINNED = ["data.options.character_split=vinyals"]
HEADER = ["learner", "episodes", "metazoo ms/iteration", "learn2learn ms/iteration", "metazoo / learn2learn",
          "metazoo sampling ms", "learn2learn sampling ms"]


def resolved(learner: str, overrides: list[str], root: Path) -> tuple[Any, Any]:
    """(resolved config, training split) of a row's config with ``overrides`` (``KEY=VALUE``), as
    ``metazoo train`` resolves it."""
    from ..build import build_dataset, resolve_config
    from ..config import load_config

    config = load_config(repo_file(CONFIGS[learner]), [*PINNED, *overrides])
    train_set = build_dataset(config, config.train.split, root)
    return resolve_config(config, train_set, root), train_set


def metazoo_side(config: Any, root: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one trainer step with its sampling, the sampling of one step alone) of a config: the trainer's own
    ``prepare`` and ``train_step`` (nothing is written: the run directory is never created)."""
    from ..trainer import prepare, train_step

    run = prepare(config, Path("metazoo-bench-iteration-unused"), root, test=False)
    size, steps, sampled = config.train.meta_batch_size, itertools.count(), itertools.count()

    def batch(k: int) -> list:  # the trainer's step k: items k * B .. (k + 1) * B - 1
        return [run.items[i] for i in range(k * size, (k + 1) * size)]

    return (lambda: train_step(run, batch(next(steps)))), lambda: batch(next(sampled))


def learn2learn_side(settings: Any, root: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one iteration of its example loop, the sampling of one iteration's tasks alone)."""
    from .l2l_loops import Loop
    from .standard import l2l_omniglot_root, l2l_standard_taskset

    taskset = l2l_standard_taskset(l2l_omniglot_root(root), settings.ways, settings.shots, settings.queries)
    loop = Loop(settings, taskset)
    return loop.iteration, lambda: [taskset.sample() for _ in range(settings.meta_batch)]


def row(learner: str, args: argparse.Namespace, root: Path) -> tuple[list[str], str]:
    """One row of the table and its note (the settings both sides use)."""
    from .l2l_loops import Settings

    config, _ = resolved(learner, [], root)
    settings = Settings.from_config(config)
    torch.manual_seed(args.seed)
    step, sample = metazoo_side(config, root)
    l2l_step, l2l_sample = learn2learn_side(settings, root)
    blocks = {"metazoo": repeat(step, args.steps), "learn2learn": repeat(l2l_step, args.steps),
              "metazoo sampling": repeat(sample, args.steps), "learn2learn sampling": repeat(l2l_sample, args.steps)}
    warm_up(blocks, args.warmup)
    ms = {name: 1000 * s / args.steps for name, s in interleaved_medians(blocks, args.repeats).items()}
    cells = [LABELS[learner], f"{settings.ways}-way {settings.shots}-shot {settings.queries}-query x "
             f"{settings.meta_batch}", f"{ms['metazoo']:.0f}", f"{ms['learn2learn']:.0f}",
             f"{ms['metazoo'] / ms['learn2learn']:.2f}x", f"{ms['metazoo sampling']:.1f}",
             f"{ms['learn2learn sampling']:.1f}"]
    note = (f"{LABELS[learner]}: {CONFIGS[learner]} on both sides: {settings.describe()}; metazoo trains on "
            f"the Vinyals {settings.split} split")
    return cells, note


def report(root: Path, args: argparse.Namespace) -> str:
    """Table (e) with its notes."""
    rows, notes = [], []
    for learner in args.learners:
        cells, note = row(learner, args, root)
        rows.append(cells)
        notes.append(note)
    notes += [
        f"median of {args.repeats} interleaved blocks of {args.steps} iterations after {args.warmup} warm-up "
        "block(s); metazoo / learn2learn: the ratio of the time per iteration",
        "metazoo: the trainer's step (the objective's EpisodeSampler over the Omniglot tensor cache, zero_grad, "
        "meta_backward, Adam and schedule steps); networks: conv4 as the config sets it",
        "learn2learn: get_tasksets('omniglot', train_ways, train_samples=shots + queries).train (PNGs decoded, "
        "resized and rotated per item), its examples' loop (MAML: clone, adapt, query loss backward per task, "
        "gradients averaged; ProtoNet: pairwise-distance logits, cross-entropy), networks OmniglotCNN (MAML) "
        "and CNN4Backbone with max-pooling (ProtoNet); the examples' meta-validation left out",
        "sampling columns: one iteration's episodes (metazoo) or taskset.sample() calls (learn2learn) alone",
    ]
    return f"## (e) End-to-end iteration, sampling included, metazoo vs learn2learn\n\n{table(HEADER, rows)}\n\n" \
           f"{bullets(notes)}\n"
