"""Table (a): episodes/s of metazoo's ``EpisodeSampler`` against two learn2learn contenders.

- *pre-decoded*: a learn2learn Taskset (NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels)
  over a MetaDataset built on the same Omniglot train tensors, so neither side decodes images
  (the same footing);
- *standard pipeline*: learn2learn's own Omniglot benchmark taskset (:mod:`metazoo.bench.standard`),
  which opens, decodes, resizes and rotates one PNG per item of every episode: what a learn2learn
  user gets.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Sequence

from ..data import EpisodeSampler, FewShotDataset, Omniglot
from ..data.l2l import FloatImageDataset, episode_from_task, l2l_dataset, l2l_taskset
from .common import bullets, interleaved_medians, ratio_text, repeat, seconds, table, warm_up
from .standard import is_extracted, l2l_omniglot_root, l2l_standard_taskset

SIZES = ((5, 1, 15), (20, 1, 15), (60, 1, 5))  # (ways, shots, queries), one row each
STANDARD = "l2l-standard"  # the --skip value for the standard-pipeline contender
HEADER = ["episode", "metazoo ep/s", "l2l pre-decoded ep/s", "metazoo / pre-decoded", "l2l standard ep/s",
          "metazoo / standard", "metazoo indices() only ep/s", "episode_from_task us"]
WARMUP_EPISODES = 5  # untimed episodes per contender and --warmup round


def load_train(root: Path) -> tuple[FewShotDataset, list[str]]:
    """Omniglot's train split, and notes on what loading it and building a sampler cost."""
    start = time.perf_counter()
    train = Omniglot("train", root=root)
    notes = [f"Omniglot train ({train.num_classes} classes, {len(train)} images) loaded from the tensor "
             f"cache in {time.perf_counter() - start:.2f} s (shared by both sides, not in any rate)"]
    notes.append(f"metazoo EpisodeSampler construction (60-way): "
                 f"{seconds(lambda: EpisodeSampler(train, 60, 1, 5)) * 1e3:.1f} ms")
    return train, notes


def setup_costs(train: FewShotDataset, root: Path, standard: bool = True) -> tuple[object | None, Path | None,
                                                                                   list[str]]:
    """Build learn2learn's MetaDataset over ``train`` and ready its own Omniglot, timing each.

    Returns the MetaDataset (None without learn2learn), learn2learn's Omniglot root for the
    standard pipeline (None without learn2learn or when ``standard`` is false) and notes.
    """
    try:
        import learn2learn
    except ImportError:
        return None, None, ["learn2learn not installed: its columns are n/a"]
    holder: list = []
    fast = seconds(lambda: holder.append(l2l_dataset(train)))
    scan = seconds(lambda: learn2learn.data.MetaDataset(FloatImageDataset(train)))
    build = seconds(lambda: l2l_taskset(holder[0], 60, 1, 5, remap_labels=True))
    notes = [f"learn2learn {learn2learn.__version__} MetaDataset construction: {fast * 1e3:.1f} ms with "
             f"labels_to_indices handed over (as metazoo.data.l2l does), {scan:.2f} s when it scans "
             f"every item itself; Taskset construction (60-way): {build * 1e3:.1f} ms. "
             "None of these is in the rates."]
    if not standard:
        return holder[0], None, notes + [f"learn2learn standard pipeline skipped (--skip {STANDARD})"]
    fresh = not is_extracted()
    start = time.perf_counter()
    folder = l2l_omniglot_root(root)
    extracted = time.perf_counter() - start
    note = f"learn2learn standard pipeline: Omniglot PNGs at {folder}/omniglot-py " + \
        (f"extracted in {extracted:.1f} s" if fresh else "already extracted")
    if not (folder / "omniglot-bookkeeping.pkl").exists():  # learn2learn's first use: MetaDataset scans it all
        first = seconds(lambda: l2l_standard_taskset(folder, 5, 1, 1))
        note += (f"; first get_tasksets('omniglot') {first:.1f} s, most of it MetaDataset's bookkeeping "
                 "(one decode of all 32460 PNGs), which learn2learn caches there for later runs")
    else:
        note += "; learn2learn's bookkeeping already cached there"
    return holder[0], folder, notes + [note + ". Not in any rate."]


def sampling_row(train: FewShotDataset, meta: object | None, standard: Path | None, size: tuple[int, int, int],
                 args: argparse.Namespace) -> tuple[list[str], dict]:
    """One table row for one (ways, shots, queries): episodes/s of metazoo and each learn2learn contender.

    Returns the row and facts for the notes (the standard pipeline's block size and build time).
    """
    ways, shots, queries = size
    episodes, repeats = args.episodes, args.repeats
    sampler = EpisodeSampler(train, ways, shots, queries, seed=args.seed)
    count = itertools.count()
    steps = {"metazoo": lambda: sampler[next(count)], "indices": lambda: sampler.indices(next(count))}
    per_block = dict.fromkeys(steps, episodes)
    info: dict = {}
    if meta is not None:
        taskset = l2l_taskset(meta, ways, shots, queries, remap_labels=True)
        steps["l2l"] = taskset.sample
        per_block["l2l"] = episodes
    warm_up({name: repeat(step, WARMUP_EPISODES) for name, step in steps.items()}, args.warmup)
    if meta is not None and standard is not None:
        start = time.perf_counter()
        standard_set = l2l_standard_taskset(standard, ways, shots, queries)
        info["standard build s"] = time.perf_counter() - start
        warm_up({"standard": standard_set.sample}, args.warmup)
        first = seconds(standard_set.sample)  # a timed episode to size the blocks
        fits = int(args.l2l_standard_seconds / (repeats * first))  # episodes per block within the budget
        steps["standard"] = standard_set.sample
        per_block["standard"] = info["standard episodes"] = max(1, min(args.l2l_standard_episodes, fits))
    blocks = {name: repeat(step, per_block[name]) for name, step in steps.items()}
    rate = {name: per_block[name] / s for name, s in interleaved_medians(blocks, repeats).items()}
    name = f"{ways}-way {shots}-shot {queries}-query"
    if meta is None:
        return [name, f"{rate['metazoo']:.0f}", "n/a", "n/a", "n/a", "n/a", f"{rate['indices']:.0f}", "n/a"], info
    tasks = [taskset.sample() for _ in range(50)]

    def convert() -> None:  # learn2learn task -> metazoo Episode
        for x, y in tasks:
            episode_from_task(x, y, ways, shots, queries)

    warm_up({"convert": convert}, args.warmup)
    adapt = interleaved_medians({"convert": convert}, repeats)["convert"] / len(tasks)
    if "standard" in rate:
        standard_cells = [f"{rate['standard']:.1f}", ratio_text(rate["metazoo"] / rate["standard"])]
    else:
        standard_cells = ["skipped", "n/a"]
    return [name, f"{rate['metazoo']:.0f}", f"{rate['l2l']:.0f}", ratio_text(rate["metazoo"] / rate["l2l"]),
            *standard_cells, f"{rate['indices']:.0f}", f"{adapt * 1e6:.0f}"], info


def legend(infos: Sequence[dict], args: argparse.Namespace) -> list[str]:
    """What the sampling table's columns measure, and how the standard pipeline was timed."""
    lines = [
        "metazoo / pre-decoded = metazoo ep/s divided by l2l pre-decoded ep/s. l2l pre-decoded: a learn2learn "
        "Taskset (NWays, KShots(shots + queries), LoadData, RemapLabels, ConsecutiveLabels) over a "
        "MetaDataset of metazoo's decoded train tensors: the same footing, neither side decodes images.",
        "metazoo / standard = metazoo ep/s divided by l2l standard ep/s. l2l standard: learn2learn's own Omniglot "
        "benchmark taskset, learn2learn.vision.benchmarks.get_tasksets('omniglot', train_ways=ways, "
        "train_samples=shots + queries).train: FullOmniglot (Resize(28, LANCZOS), ToTensor, 1 - x), "
        "FusedNWaysKShots, LoadData, RemapLabels, ConsecutiveLabels, RandomClassRotation([0, 90, 180, 270]); "
        "it opens, decodes, resizes and rotates one PNG per item of every episode.",
    ]
    sized = [info for info in infos if "standard episodes" in info]
    if sized:
        blocks = " / ".join(str(info["standard episodes"]) for info in sized)
        build = max(info["standard build s"] for info in sized)
        lines.append(f"l2l standard timing: median of {args.repeats} blocks of {blocks} episodes (rows in order; at "
                     f"most --l2l-standard-episodes {args.l2l_standard_episodes}, fewer where {args.repeats} blocks "
                     f"would pass --l2l-standard-seconds {args.l2l_standard_seconds:g}), interleaved with the other "
                     f"contenders; rates, not totals. get_tasksets per row: up to {build:.1f} s, not in the rates.")
    return lines


def report(train: FewShotDataset, notes: list[str], root: Path, args: argparse.Namespace) -> str:
    """Table (a) with its legend and notes."""
    meta, standard, more = setup_costs(train, root, standard=STANDARD not in args.skip)
    rows, infos = zip(*(sampling_row(train, meta, standard, size, args) for size in SIZES))
    title = (f"## (a) Episode sampling, Omniglot train, float32 episodes, median of {args.repeats} blocks "
             f"of {args.episodes} episodes (learn2learn standard pipeline: see below)")
    return f"{title}\n\n{table(HEADER, rows)}\n\n{bullets(legend(infos, args) + notes + more)}\n"
