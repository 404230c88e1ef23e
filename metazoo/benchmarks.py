"""Benchmarks (not tests): episode sampling against learn2learn, ProtoNet's step against a bare one.

``python -m metazoo.benchmarks --data-root ../shared/data`` prints, in one run:

(a) episodes/s of metazoo's ``EpisodeSampler`` (everything up to a ready float Episode) against a
    learn2learn Taskset (NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels) over a
    MetaDataset built on the same Omniglot train tensors, so neither side decodes images;
(b) one ProtoNet meta-training step (``meta_loss`` + Adam) against a bare Conv4 + linear head
    trained with cross-entropy on the same images, on 60-way 1-shot 5-query episodes.

The contenders of each row run in alternating blocks and report the median block, so a load
that comes and goes on the machine falls on both sides of each ratio.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import statistics
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import EpisodeSampler, FewShotDataset, Omniglot
from .data.l2l import FloatImageDataset, episode_from_task, l2l_dataset, l2l_taskset
from .episode import Episode

SAMPLING = ((5, 1, 15), (20, 1, 15), (60, 1, 5))  # (ways, shots, queries)
TRAINING = (60, 1, 5)
SAMPLING_GOAL, TRAINING_GOAL = 50.0, 0.10


def seconds(block: Callable[[], None]) -> float:
    start = time.perf_counter()
    block()
    return time.perf_counter() - start


def interleaved_medians(blocks: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each block over ``repeats`` rounds, the blocks taking turns in each round."""
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(repeats):
        for name, block in blocks.items():
            times[name].append(seconds(block))
    return {name: statistics.median(t) for name, t in times.items()}


def repeat(step: Callable[[], object], n: int) -> Callable[[], None]:
    def block() -> None:
        for _ in range(n):
            step()
    return block


def sampling_row(train: FewShotDataset, meta: object | None, size: tuple[int, int, int], episodes: int,
                 repeats: int, seed: int) -> list[str]:
    """One table row: metazoo and learn2learn episodes/s for one (ways, shots, queries)."""
    ways, shots, queries = size
    sampler = EpisodeSampler(train, ways, shots, queries, seed=seed)
    count = itertools.count()
    steps = {"metazoo": lambda: sampler[next(count)], "indices": lambda: sampler.indices(next(count))}
    if meta is not None:
        taskset = l2l_taskset(meta, ways, shots, queries, remap_labels=True)
        steps["l2l"] = taskset.sample
    for step in steps.values():  # warm-up
        repeat(step, 5)()
    blocks = {name: repeat(step, episodes) for name, step in steps.items()}
    rate = {name: episodes / s for name, s in interleaved_medians(blocks, repeats).items()}
    name = f"{ways}-way {shots}-shot {queries}-query"
    if meta is None:
        return [name, f"{rate['metazoo']:.0f}", "n/a", "n/a", "n/a", f"{rate['indices']:.0f}", "n/a"]
    tasks = [taskset.sample() for _ in range(50)]

    def convert() -> None:  # learn2learn task -> metazoo Episode
        for x, y in tasks:
            episode_from_task(x, y, ways, shots, queries)

    convert()  # warm-up
    adapt = interleaved_medians({"convert": convert}, repeats)["convert"] / len(tasks)
    ratio = rate["metazoo"] / rate["l2l"]
    shown = f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"
    return [name, f"{rate['metazoo']:.0f}", f"{rate['l2l']:.0f}", shown,
            "met" if ratio >= SAMPLING_GOAL else "missed", f"{rate['indices']:.0f}", f"{adapt * 1e6:.0f}"]


def setup_costs(root: str) -> tuple[FewShotDataset, object | None, list[str]]:
    """Load the split and build learn2learn's MetaDataset, timing each; notes for the report."""
    start = time.perf_counter()
    train = Omniglot("train", root=root)
    notes = [f"Omniglot train ({train.num_classes} classes, {len(train)} images) loaded from the tensor "
             f"cache in {time.perf_counter() - start:.2f} s (shared by both sides, not in any rate)"]
    notes.append(f"metazoo EpisodeSampler construction (60-way): "
                 f"{seconds(lambda: EpisodeSampler(train, 60, 1, 5)) * 1e3:.1f} ms")
    try:
        import learn2learn
    except ImportError:
        return train, None, notes + ["learn2learn not installed: its columns are n/a"]
    holder: list = []
    fast = seconds(lambda: holder.append(l2l_dataset(train)))
    scan = seconds(lambda: learn2learn.data.MetaDataset(FloatImageDataset(train)))
    build = seconds(lambda: l2l_taskset(holder[0], 60, 1, 5, remap_labels=True))
    notes += [f"learn2learn {learn2learn.__version__} MetaDataset construction: {fast * 1e3:.1f} ms with "
              f"labels_to_indices handed over (as metazoo.data.l2l does), {scan:.2f} s when it scans "
              f"every item itself; Taskset construction (60-way): {build * 1e3:.1f} ms. "
              "None of these is in the rates."]
    return train, holder[0], notes


def training_blocks(episodes: Sequence[Episode], steps: int, lr: float, seed: int) -> dict[str, Callable[[], None]]:
    """Blocks of ``steps`` optimiser steps: ProtoNet (meta_loss + Adam) and bare Conv4 + linear head."""
    from .backbones import create_backbone
    from .learners import create_learner

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
    ways, shots, queries = TRAINING
    sampler = EpisodeSampler(train, ways, shots, queries, seed=args.seed)
    episodes = [sampler[i] for i in range(args.train_episodes)]
    blocks = training_blocks(episodes, args.steps, args.lr, args.seed)
    for _ in range(args.warmup):  # warm-up steps, alternating
        for block in blocks.values():
            block()
    median = interleaved_medians(blocks, args.repeats)
    per_step = {name: s / args.steps for name, s in median.items()}
    ratio = per_step["protonet"] / per_step["bare"]
    images = ways * (shots + queries)
    rows = [["ProtoNet: meta_loss([episode]) + Adam step", f"{per_step['protonet'] * 1e3:.1f}", f"{ratio:.3f}"],
            [f"bare: Conv4 + Linear(64, {ways}), cross-entropy + Adam step", f"{per_step['bare'] * 1e3:.1f}",
             "1.000"]]
    verdict = "met" if ratio - 1 <= TRAINING_GOAL else "missed"
    summary = (f"{ways}-way {shots}-shot {queries}-query, {images} images per step, median of {args.repeats} "
               f"blocks of {args.steps} steps after {args.warmup} warm-up blocks; ProtoNet overhead "
               f"{(ratio - 1) * 100:+.1f}% (goal <= {TRAINING_GOAL * 100:.0f}%: {verdict})")
    return rows, summary


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    cpu = platform.processor() or platform.machine()
    return (f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op; {os.cpu_count()} CPUs ({cpu}); "
            f"Python {platform.python_version()}; load average {load}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="metazoo bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("METAZOO_DATA") or "../shared/data",
                        help="folder holding omniglot/ (default: $METAZOO_DATA, else ../shared/data)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per timed sampling block")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per timed training block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training blocks per contender first")
    parser.add_argument("--train-episodes", type=int, default=8, help="pre-sampled training episodes, cycled")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--skip", choices=["sampling", "training"], action="append", default=[])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # learn2learn's transforms draw from Python's random
    start = time.perf_counter()
    print(f"# metazoo benchmarks\n\nmachine: {machine()}\n")
    train, meta, notes = setup_costs(args.data_root)
    if "sampling" not in args.skip:
        rows = [sampling_row(train, meta, size, args.episodes, args.repeats, args.seed) for size in SAMPLING]
        print(f"## (a) Episode sampling, Omniglot train, float32 episodes, median of {args.repeats} blocks "
              f"of {args.episodes} episodes\n")
        print(table(["episode", "metazoo ep/s", "learn2learn ep/s", "metazoo / l2l",
                     f"goal >= {SAMPLING_GOAL:.0f}x", "metazoo indices() only ep/s", "episode_from_task us"], rows))
        print("\n" + "\n".join(f"- {note}" for note in notes) + "\n")
    if "training" not in args.skip:
        rows, summary = training_rows(train, args)
        print("## (b) Training step, ProtoNet vs bare backbone\n")
        print(table(["step", "ms/step", "ratio to bare"], rows))
        print(f"\n{summary}\n")
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")


if __name__ == "__main__":
    main()
