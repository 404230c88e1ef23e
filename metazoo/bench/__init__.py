"""Speed benchmarks against learn2learn: episode sampling, a ProtoNet training step, a MAML meta-iteration.

``metazoo bench`` (or ``python -m metazoo.bench``) prints, in one run, up to three Markdown tables
(a fourth, (d) CPU scaling across processes, :mod:`metazoo.bench.scaling`, only with ``--only scaling``):

(a) episodes/s of metazoo's ``EpisodeSampler`` against learn2learn on the same decoded tensors
    and against learn2learn's own Omniglot pipeline (:mod:`metazoo.bench.sampling`);
(b) one ProtoNet meta-training step against a bare Conv4 + linear head on the same images
    (:mod:`metazoo.bench.training`);
(c) one MAML meta-iteration against learn2learn's MAML (:mod:`metazoo.bench.maml`).

The contenders of each row run in alternating blocks and report the median block, so a load
that comes and goes on the machine falls on both sides of each ratio. The ratios are the output.
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
from . import maml, sampling, scaling, training
from .common import bullets, machine, table

DEFAULT_TABLES = ("sampling", "training", "maml")
TABLES = (*DEFAULT_TABLES, "scaling")  # scaling (minutes of subprocess training) only with --only


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
                   help=f"run only these tables, comma-separated from {','.join(TABLES)} (default: all but "
                        "scaling, CPU throughput of 1 or 2 processes, metazoo.bench.scaling)")
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
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    for name in ("episodes", "steps", "repeats", "train_episodes", "l2l_standard_episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must not be negative")
    args.maml_sizes = [int(s) for s in args.maml_sizes]
    args.tables = [t for t in TABLES if t in args.only and t not in args.skip]
    return args


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
    if "maml" in args.tables:
        print("## (c) MAML meta-iteration, metazoo vs learn2learn\n")
        if importlib.util.find_spec("learn2learn") is None:
            print("skipped: the peer, learn2learn, is not installed (README: optional dependency)\n")
        else:
            rows, notes = maml.maml_rows(args, root)
            print(f"{table(maml.header(args.maml_memory), rows)}\n\n{bullets(notes)}\n", flush=True)
    if "scaling" in args.tables:
        print(scaling.report(root), flush=True)
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")
    return 0
