"""Benchmarks (not tests): episode sampling and MAML against learn2learn, ProtoNet's step against a bare one.

``python -m metazoo.benchmarks --data-root ../shared/data`` prints, in one run:

(a) episodes/s of metazoo's ``EpisodeSampler`` (everything up to a ready float Episode) against
    two learn2learn contenders:

    - *pre-decoded*: a learn2learn Taskset (NWays, KShots, LoadData, RemapLabels,
      ConsecutiveLabels) over a MetaDataset built on the same Omniglot train tensors, so neither
      side decodes images (the same footing);
    - *standard pipeline*: learn2learn's own Omniglot benchmark taskset,
      ``learn2learn.vision.benchmarks.get_tasksets("omniglot", ...).train`` (FullOmniglot on
      torchvision's extracted ``omniglot-py`` folders with Resize(28, LANCZOS), ToTensor, 1 - x;
      FusedNWaysKShots, LoadData, RemapLabels, ConsecutiveLabels, RandomClassRotation), which
      opens, decodes, resizes and rotates one PNG per item of every episode: what a learn2learn
      user gets. The same Omniglot archives are extracted once into
      ``<metazoo cache>/l2l-omniglot/omniglot-py/`` for it;
(b) one ProtoNet meta-training step (``meta_loss`` + Adam) against a bare Conv4 + linear head
    trained with cross-entropy on the same images, on 60-way 1-shot 5-query episodes;
(c) one MAML meta-iteration against learn2learn's MAML (see :mod:`metazoo.bench_maml`).

The contenders of each row run in alternating blocks and report the median block, so a load
that comes and goes on the machine falls on both sides of each ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import os
import platform
import random
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import EpisodeSampler, FewShotDataset, Omniglot
from .data.l2l import FloatImageDataset, episode_from_task, l2l_dataset, l2l_taskset
from .data.omniglot import _find_sources
from .data.storage import cache_dir, data_root
from .episode import Episode

SAMPLING = ((5, 1, 15), (20, 1, 15), (60, 1, 5))  # (ways, shots, queries)
TRAINING = (60, 1, 5)
SAMPLING_GOAL, TRAINING_GOAL = 50.0, 0.10
L2L_OMNIGLOT = "l2l-omniglot"  # folder under metazoo's cache dir: learn2learn's Omniglot root
STANDARD = "l2l-standard"  # the --skip value for the standard-pipeline contender


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


def l2l_omniglot_root(root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """learn2learn's Omniglot root for the Omniglot under data root ``root``: ``<cache>/l2l-omniglot``.

    It holds torchvision's layout, ``omniglot-py/images_background`` and
    ``omniglot-py/images_evaluation``, extracted from the two archives the first time (each part
    is extracted into a temporary folder and renamed into place, so an interrupted extraction
    leaves nothing half done) and left alone once present. An already extracted source folder is
    linked instead of copied. ``cache`` defaults to ``metazoo.data.storage.cache_dir()``.
    """
    folder = cache_dir(cache) / L2L_OMNIGLOT / "omniglot-py"
    for part, source in _find_sources(data_root(root)).items():
        dest = folder / part
        if dest.is_dir():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            os.symlink(source.resolve(), dest, target_is_directory=True)
            continue
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{part}.") as tmp:
            with zipfile.ZipFile(source) as archive:
                archive.extractall(tmp)
            extracted = Path(tmp) / part
            if not extracted.is_dir():
                raise ValueError(f"{source} has no top folder {part}/, unlike Omniglot's archives")
            try:
                os.replace(extracted, dest)
            except OSError:
                if not dest.is_dir():  # else another process extracted it meanwhile
                    raise
    return folder.parent


@contextlib.contextmanager
def extracted_omniglot_accepted() -> Iterator[None]:
    """Let torchvision's Omniglot (under learn2learn's FullOmniglot) read the extracted folders.

    torchvision checks the md5 of the two *official* zip files in ``omniglot-py/`` before it reads
    the extracted folders, and tries to download them when that fails. The data bundle's archives
    hold the official images but were re-packed (other md5s), and what torchvision reads are the
    folders anyway, so inside this block the check is "the extracted folder exists" instead.
    The check is restored on exit.
    """
    from torchvision.datasets import omniglot

    cls = omniglot.Omniglot
    original = cls._check_integrity
    cls._check_integrity = lambda self: os.path.isdir(os.path.join(self.root, self._get_target_folder()))
    try:
        yield
    finally:
        cls._check_integrity = original


def l2l_standard_taskset(root: str | os.PathLike, ways: int, shots: int, queries: int) -> Any:
    """learn2learn's own Omniglot train Taskset: ``get_tasksets("omniglot", ...).train`` over ``root``.

    Built by learn2learn's code, not re-created here: FullOmniglot (Resize(28, LANCZOS),
    ToTensor, 1 - x), MetaDataset, FusedNWaysKShots(n=ways, k=shots + queries), LoadData,
    RemapLabels, ConsecutiveLabels, RandomClassRotation([0, 90, 180, 270]). ``root`` is an
    ``l2l_omniglot_root()``; learn2learn caches its class bookkeeping there on first use.
    """
    from learn2learn.vision.benchmarks import get_tasksets

    with extracted_omniglot_accepted():
        return get_tasksets("omniglot", train_ways=ways, train_samples=shots + queries, test_ways=ways,
                            test_samples=shots + queries, root=str(root)).train


def ratio_text(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


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
    for step in steps.values():  # warm-up
        repeat(step, 5)()
    if meta is not None and standard is not None:
        start = time.perf_counter()
        standard_set = l2l_standard_taskset(standard, ways, shots, queries)
        info["standard build s"] = time.perf_counter() - start
        standard_set.sample()  # warm-up, then a timed episode to size the blocks
        first = seconds(standard_set.sample)
        fits = int(args.l2l_standard_seconds / (repeats * first))  # episodes per block within the budget
        steps["standard"] = standard_set.sample
        per_block["standard"] = info["standard episodes"] = max(1, min(args.l2l_standard_episodes, fits))
    blocks = {name: repeat(step, per_block[name]) for name, step in steps.items()}
    rate = {name: per_block[name] / s for name, s in interleaved_medians(blocks, repeats).items()}
    name = f"{ways}-way {shots}-shot {queries}-query"
    if meta is None:
        return [name, f"{rate['metazoo']:.0f}", "n/a", "n/a", "n/a", "n/a", "n/a", f"{rate['indices']:.0f}",
                "n/a"], info
    tasks = [taskset.sample() for _ in range(50)]

    def convert() -> None:  # learn2learn task -> metazoo Episode
        for x, y in tasks:
            episode_from_task(x, y, ways, shots, queries)

    convert()  # warm-up
    adapt = interleaved_medians({"convert": convert}, repeats)["convert"] / len(tasks)
    ratios = {name: rate["metazoo"] / rate[name] for name in ("l2l", "standard") if name in rate}
    verdicts = ["met" if r >= SAMPLING_GOAL else "missed" for r in ratios.values()]
    goal = ", ".join(verdicts + ["n/a"] * (2 - len(verdicts)))
    if "standard" in rate:
        standard_cells = [f"{rate['standard']:.1f}", ratio_text(ratios["standard"])]
    else:
        standard_cells = ["skipped", "n/a"]
    return [name, f"{rate['metazoo']:.0f}", f"{rate['l2l']:.0f}", ratio_text(ratios["l2l"]), *standard_cells, goal,
            f"{rate['indices']:.0f}", f"{adapt * 1e6:.0f}"], info


def setup_costs(root: str, standard: bool = True) -> tuple[FewShotDataset, object | None, Path | None, list[str]]:
    """Load the split, build learn2learn's MetaDataset and ready its own Omniglot, timing each.

    Returns the split, the MetaDataset over it (None without learn2learn), learn2learn's Omniglot
    root for the standard pipeline (None without learn2learn or when ``standard`` is false) and
    notes for the report.
    """
    start = time.perf_counter()
    train = Omniglot("train", root=root)
    notes = [f"Omniglot train ({train.num_classes} classes, {len(train)} images) loaded from the tensor "
             f"cache in {time.perf_counter() - start:.2f} s (shared by both sides, not in any rate)"]
    notes.append(f"metazoo EpisodeSampler construction (60-way): "
                 f"{seconds(lambda: EpisodeSampler(train, 60, 1, 5)) * 1e3:.1f} ms")
    try:
        import learn2learn
    except ImportError:
        return train, None, None, notes + ["learn2learn not installed: its columns are n/a"]
    holder: list = []
    fast = seconds(lambda: holder.append(l2l_dataset(train)))
    scan = seconds(lambda: learn2learn.data.MetaDataset(FloatImageDataset(train)))
    build = seconds(lambda: l2l_taskset(holder[0], 60, 1, 5, remap_labels=True))
    notes += [f"learn2learn {learn2learn.__version__} MetaDataset construction: {fast * 1e3:.1f} ms with "
              f"labels_to_indices handed over (as metazoo.data.l2l does), {scan:.2f} s when it scans "
              f"every item itself; Taskset construction (60-way): {build * 1e3:.1f} ms. "
              "None of these is in the rates."]
    if not standard:
        return train, holder[0], None, notes + [f"learn2learn standard pipeline skipped (--skip {STANDARD})"]
    folder = cache_dir() / L2L_OMNIGLOT
    fresh = not (folder / "omniglot-py" / "images_background").is_dir() or \
        not (folder / "omniglot-py" / "images_evaluation").is_dir()
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
    notes.append(note + ". Not in any rate.")
    return train, holder[0], folder, notes


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
    parser.add_argument("--l2l-standard-episodes", type=int, default=20,
                        help="most episodes per timed block of the learn2learn standard pipeline")
    parser.add_argument("--l2l-standard-seconds", type=float, default=20.0,
                        help="rough budget for the standard pipeline's timed blocks in one row: blocks "
                             "are cut (to 1 episode at least) when --repeats blocks would take longer")
    parser.add_argument("--skip", choices=["sampling", "training", "maml", STANDARD], action="append", default=[],
                        help=f"leave out a part (repeatable); {STANDARD}: the learn2learn standard pipeline")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # learn2learn's transforms draw from Python's random
    start = time.perf_counter()
    print(f"# metazoo benchmarks\n\nmachine: {machine()}\n")
    train, meta, standard, notes = setup_costs(args.data_root, standard=not {"sampling", STANDARD} & set(args.skip))
    if "sampling" not in args.skip:
        rows, infos = zip(*(sampling_row(train, meta, standard, size, args) for size in SAMPLING))
        print(f"## (a) Episode sampling, Omniglot train, float32 episodes, median of {args.repeats} blocks "
              f"of {args.episodes} episodes (learn2learn standard pipeline: see below)\n")
        print(table(["episode", "metazoo ep/s", "l2l pre-decoded ep/s", "metazoo / pre-decoded", "l2l standard ep/s",
                     "metazoo / standard", f"goal >= {SAMPLING_GOAL:.0f}x (pre-decoded, standard)",
                     "metazoo indices() only ep/s", "episode_from_task us"], rows))
        print("\n" + "\n".join(f"- {line}" for line in legend(infos, args)))
        print("\n".join(f"- {note}" for note in notes) + "\n")
    if "training" not in args.skip:
        rows, summary = training_rows(train, args)
        print("## (b) Training step, ProtoNet vs bare backbone\n")
        print(table(["step", "ms/step", "ratio to bare"], rows))
        print(f"\n{summary}\n")
    if "maml" not in args.skip:
        from .bench_maml import HEADER, maml_rows

        print("## (c) MAML meta-iteration, metazoo vs learn2learn\n")
        if importlib.util.find_spec("learn2learn") is None:
            print("skipped: the peer, learn2learn, is not installed (README: optional dependency)\n")
        else:
            rows, notes = maml_rows(args, interleaved_medians, repeat)
            print(table(HEADER, rows))
            print("\n" + "\n".join(f"- {note}" for note in notes) + "\n")
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")


if __name__ == "__main__":
    main()
