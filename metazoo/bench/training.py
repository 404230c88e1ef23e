"""Table (b): one ProtoNet meta-training step (``meta_loss`` + Adam) against a bare classifier step.

The bare step is a Conv4 + linear head trained with cross-entropy on the same images of the
same 60-way 1-shot 5-query episodes, pre-sampled so that sampling is not timed.
"""
from __future__ import annotations

import argparse
import itertools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import EpisodeSampler, FewShotDataset
from ..episode import Episode
from .common import interleaved_medians, repeat, table, warm_up

SIZE = (60, 1, 5)  # (ways, shots, queries)
HEADER = ["step", "ms/step", "ratio to bare"]


def training_blocks(episodes: Sequence[Episode], steps: int, lr: float, seed: int) -> dict[str, Callable[[], None]]:
    """Blocks of ``steps`` optimiser steps: ProtoNet (meta_loss + Adam) and bare Conv4 + linear head."""
    from ..backbones import create_backbone
    from ..learners import create_learner

    ways = episodes[0].ways
    torch.manual_seed(seed)
    learner = create_learner("protonet")
    proto_opt = torch.optim.Adam(learner.parameters(), lr=lr)
    torch.manual_seed(seed)
    backbone = create_backbone("conv4")
    bare = nn.Sequential(backbone, nn.Linear(backbone.feature_size, ways))
    bare_opt = torch.optim.Adam(bare.parameters(), lr=lr)
    proto_stream, bare_stream = itertools.cycle(episodes), itertools.cycle(episodes)

    def proto_step() -> None:
        loss, _ = learner.meta_loss([next(proto_stream)])
        proto_opt.zero_grad()
        loss.backward()
        proto_opt.step()

    def bare_step() -> None:
        episode = next(bare_stream)
        inputs = torch.cat([episode.support.inputs, episode.query.inputs])  # (n_support + n_query, c, h, w)
        labels = torch.cat([episode.support.labels, episode.query.labels])
        loss = F.cross_entropy(bare(inputs), labels)
        bare_opt.zero_grad()
        loss.backward()
        bare_opt.step()

    return {"protonet": repeat(proto_step, steps), "bare": repeat(bare_step, steps)}


def training_rows(train: FewShotDataset, args: argparse.Namespace) -> tuple[list[list[str]], str]:
    """The two rows (ms per step, ratio to bare) and a summary line."""
    ways, shots, queries = SIZE
    sampler = EpisodeSampler(train, ways, shots, queries, seed=args.seed)
    episodes = [sampler[i] for i in range(args.train_episodes)]
    blocks = training_blocks(episodes, args.steps, args.lr, args.seed)
    warm_up(blocks, args.warmup)
    median = interleaved_medians(blocks, args.repeats)
    per_step = {name: s / args.steps for name, s in median.items()}
    ratio = per_step["protonet"] / per_step["bare"]
    images = ways * (shots + queries)
    rows = [["ProtoNet: meta_loss([episode]) + Adam step", f"{per_step['protonet'] * 1e3:.1f}", f"{ratio:.3f}"],
            [f"bare: Conv4 + Linear(64, {ways}), cross-entropy + Adam step", f"{per_step['bare'] * 1e3:.1f}",
             "1.000"]]
    summary = (f"{ways}-way {shots}-shot {queries}-query, {images} images per step, median of {args.repeats} "
               f"blocks of {args.steps} steps after {args.warmup} warm-up blocks; ProtoNet overhead "
               f"{(ratio - 1) * 100:+.1f}%")
    return rows, summary


def report(train: FewShotDataset, args: argparse.Namespace) -> str:
    """Table (b) with its summary line."""
    rows, summary = training_rows(train, args)
    return f"## (b) Training step, ProtoNet vs bare backbone\n\n{table(HEADER, rows)}\n\n{summary}\n"
