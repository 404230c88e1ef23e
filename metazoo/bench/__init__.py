"""Speed benchmarks against learn2learn: sampling, training steps, MAML, end to end, time to accuracy.

``metazoo bench`` (or ``python -m metazoo.bench``) prints, in one run, up to three Markdown tables
by default:

(a) episodes/s of metazoo's ``EpisodeSampler`` against learn2learn on the same decoded tensors
    and against learn2learn's own Omniglot pipeline (:mod:`metazoo.bench.sampling`);
(b) one ProtoNet meta-training step against a bare Conv4 + linear head on the same images
    (:mod:`metazoo.bench.training`);
(c) one MAML meta-iteration against learn2learn's MAML (:mod:`metazoo.bench.maml`).

Six more take minutes and run only when ``--only`` names them: (d) CPU scaling across processes
(:mod:`metazoo.bench.scaling`); (e) one training iteration end to end, sampling included, against
learn2learn's example loops (:mod:`metazoo.bench.iteration`); (f) time to accuracy, metazoo and
learn2learn trained side by side and tested on the same episodes (:mod:`metazoo.bench.race`); (g) training
under glibc's default malloc and under the ``metazoo`` command's tunables (:mod:`metazoo.bench.malloc`);
(h) the sequence learners' meta-batch as one batch against one episode at a time
(:mod:`metazoo.bench.sequence`); (i) the convolutions' memory layout, channels_last against contiguous,
and bfloat16 autocast against float32 (:mod:`metazoo.bench.layout`).

The contenders of each row of (a), (b), (c), (e), (h) and (i) run in alternating blocks and report the median
block, so a load that comes and goes on the machine falls on both sides of each ratio. The ratios are the output.
See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import time
from typing import Sequence

import torch

from ..data import data_root
from . import iteration, l2l_loops, layout, malloc, maml, race, sampling, scaling, sequence, training
from .common import bullets, machine, table

DEFAULT_TABLES = ("sampling", "training", "maml")
# the rest take minutes: only with --only
TABLES = (*DEFAULT_TABLES, "scaling", "iteration", "race", "malloc", "sequence", "layout")
L2L_TABLES = {"maml": "(c) MAML meta-iteration, metazoo vs learn2learn",
              "iteration": "(e) End-to-end iteration, sampling included, metazoo vs learn2learn",
              "race": "(f) Time to accuracy, metazoo vs learn2learn side by side"}


def names(choices: Sequence[str]):
    """An argparse type: a comma-separated list of ``choices``."""
    def parse(text: str) -> list[str]:
        chosen = [word.strip() for word in text.split(",") if word.strip()]
        wrong = [word for word in chosen if word not in choices]
        if wrong or not chosen:
            raise argparse.ArgumentTypeError(f"{text!r}: give one or more of {', '.join(choices)}, comma-separated")
        return chosen
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metazoo bench", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="data root holding omniglot/ (and caltech101/ for the 84x84 MAML rows); "
                                       "default: $METAZOO_DATA, else ~/.metazoo/data")
    p.add_argument("--only", type=names(TABLES), default=list(DEFAULT_TABLES), metavar="TABLES",
                   help=f"run only these tables, comma-separated from {','.join(TABLES)} (default: the first three; "
                        "scaling: CPU throughput of 1 or 2 processes; iteration: (e), a training iteration with "
                        "sampling; race: (f), time to accuracy; malloc: (g), glibc's malloc against metazoo's "
                        "tunables; sequence: (h), sequence learners batched against one episode at a time; "
                        "layout: (i), channels_last against contiguous, and bfloat16; each takes minutes)")
    p.add_argument("--skip", choices=[*TABLES, sampling.STANDARD], action="append", default=[],
                   help=f"leave out a table (repeatable); {sampling.STANDARD}: the learn2learn standard pipeline "
                        "contender of the sampling table")
    p.add_argument("--episodes", type=int, default=100, help="episodes per timed sampling block")
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per timed training or MAML block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per contender (median reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up rounds per contender first: training and MAML blocks; in the sampling "
                        f"table {sampling.WARMUP_EPISODES} episodes (one for the standard pipeline) and one "
                        "conversion pass each (0: none)")
    p.add_argument("--train-episodes", type=int, default=8, help="pre-sampled training episodes, cycled")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (training step, MAML outer step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--l2l-standard-episodes", type=int, default=20,
                   help="most episodes per timed block of the learn2learn standard pipeline")
    p.add_argument("--l2l-standard-seconds", type=float, default=20.0,
                   help="rough budget for the standard pipeline's timed blocks in one row: blocks "
                        "are cut (to 1 episode at least) when --repeats blocks would take longer")
    p.add_argument("--maml-sizes", type=names([str(s) for s in maml.SIZES]), default=[str(s) for s in maml.SIZES],
                   metavar="SIZES", help="image sizes of the MAML table, comma-separated from 28 (Omniglot), "
                                         "84 (Caltech-101) (default: both)")
    p.add_argument("--maml-orders", type=names(tuple(maml.ORDERS)), default=list(maml.ORDERS), metavar="ORDERS",
                   help="MAML orders, comma-separated from second,first (default: both)")
    p.add_argument("--no-maml-memory", dest="maml_memory", action="store_false",
                   help="leave out the MAML table's peak memory columns (each is a fresh process per contender)")
    add_learn2learn_loops(p)
    p.add_argument("--sequence-configs", type=names(tuple(sequence.CONFIGS)), default=list(sequence.DEFAULT),
                   metavar="CONFIGS", help="rows of the sequence table, comma-separated from "
                                           f"{','.join(sequence.CONFIGS)} (default: {','.join(sequence.DEFAULT)})")
    p.add_argument("--sequence-steps", type=int, default=1, help="sequence: training steps per timed block")
    p.add_argument("--sequence-repeats", type=int, default=3, help="sequence: timed blocks per contender")
    p.add_argument("--sequence-amp", choices=("off", "bf16"), default="off",
                   help="sequence: the steps' arithmetic, as train.amp (default off: float32)")
    p.add_argument("--layout-configs", type=names(tuple(layout.CONFIGS)), default=list(layout.DEFAULT),
                   metavar="CONFIGS", help="rows of the layout table, comma-separated from "
                                           f"{','.join(layout.CONFIGS)} (default: all but caltech101's)")
    p.add_argument("--layout-steps", type=int, default=1, help="layout: training steps per timed block")
    p.add_argument("--layout-repeats", type=int, default=5, help="layout: timed blocks per contender")
    return p


def add_learn2learn_loops(p: argparse.ArgumentParser) -> None:
    """The options of tables (e) and (f)."""
    p.add_argument("--learners", type=names(tuple(iteration.CONFIGS)), default=list(iteration.CONFIGS),
                   metavar="LEARNERS", help="rows of the iteration and race tables, comma-separated from "
                                            "maml,protonet (default: both)")
    p.add_argument("--race-seconds", type=float,
                   help=f"race: training time of each side (default {race.DEFAULT_SECONDS['maml']:g} for MAML, "
                        f"{race.DEFAULT_SECONDS['protonet']:g} for ProtoNet)")
    p.add_argument("--race-snapshots", type=int, default=6,
                   help="race: snapshots per side, evenly spaced in training time (default 6)")
    p.add_argument("--test-episodes", type=int, default=1000, help="race: fixed test episodes (default 1000)")
    p.add_argument("--race-set", action="append", default=[], metavar="KEY=VALUE",
                   help="race: override a value of the learner's config on both sides (repeatable)")
    p.add_argument("--race-data", choices=l2l_loops.DATA, default="benchmark",
                   help="race: learn2learn's training data: benchmark (its Omniglot pipeline on the Vinyals "
                        "characters, PNGs decoded per item; default) or interop (its taskset over metazoo's "
                        "decoded split)")
    p.add_argument("--race-out", help="race: keep the runs, snapshots, race.json and race.png here "
                                      "(default: a temporary folder, removed)")
    p.add_argument("--race-plot", help="race: the figure's file (.png, .svg, .pdf; default RACE_OUT/race.png)")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    for name in ("episodes", "steps", "repeats", "train_episodes", "l2l_standard_episodes", "race_snapshots",
                 "test_episodes", "sequence_steps", "sequence_repeats", "layout_steps", "layout_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must not be negative")
    if args.race_seconds is not None and args.race_seconds <= 0:
        p.error("--race-seconds must be positive")
    args.maml_sizes = [int(s) for s in args.maml_sizes]
    args.tables = [t for t in TABLES if t in args.only and t not in args.skip]
    return args


def has_learn2learn(name: str) -> bool:
    """Whether the peer is installed; if not, print the table's title and that it is skipped."""
    if importlib.util.find_spec("learn2learn") is not None:
        return True
    print(f"## {L2L_TABLES[name]}\n\nskipped: the peer, learn2learn, is not installed (README: optional "
          "dependency)\n", flush=True)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # learn2learn's transforms draw from Python's random
    root = data_root(args.data_root)
    start = time.perf_counter()
    print(f"# metazoo benchmarks\n\nmachine: {machine()}\n", flush=True)
    if {"sampling", "training"} & set(args.tables):
        train, notes = sampling.load_train(root)
    if "sampling" in args.tables:
        print(sampling.report(train, notes, root, args), flush=True)
    if "training" in args.tables:
        print(training.report(train, args), flush=True)
    if "maml" in args.tables and has_learn2learn("maml"):
        rows, notes = maml.maml_rows(args, root)
        print(f"## {L2L_TABLES['maml']}\n\n{table(maml.header(args.maml_memory), rows)}\n\n{bullets(notes)}\n",
              flush=True)
    if "scaling" in args.tables:
        print(scaling.report(root), flush=True)
    if "iteration" in args.tables and has_learn2learn("iteration"):
        print(iteration.report(root, args), flush=True)
    if "race" in args.tables and has_learn2learn("race"):
        print(race.report(root, args), flush=True)
    if "malloc" in args.tables:
        print(malloc.report(root), flush=True)
    if "sequence" in args.tables:
        print(sequence.report(root, args), flush=True)
    if "layout" in args.tables:
        print(layout.report(root, args), flush=True)
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")
    return 0
