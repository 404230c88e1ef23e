"""``metazoo``: list | train | eval | reproduce | report | plot | data check | bench.

Only the commands that train, evaluate or read data import torch; ``--help``, ``--version`` and
``list`` do not.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

from . import __version__

EVAL_FLAGS = ("split", "ways", "shots", "queries", "episodes", "seed", "protocol")


def config_files() -> list[Path]:
    """Runnable configs: ``experiments/**/*.toml`` under the working directory and, for a source
    checkout, beside the package (base configs in ``base/`` folders are not runnable cells, and the
    model zoo's entries are listed as such)."""
    from .config import experiments_roots

    seen: dict[Path, Path] = {}
    for root in experiments_roots():
        for path in sorted(root.glob("**/*.toml")):
            if not {"base", "zoo"} & set(path.relative_to(root).parts[:-1]):
                seen.setdefault(path.resolve(), path)
    return list(seen.values())


def zoo_lines() -> list[str]:
    """A line per model-zoo entry: its name and, for each cell its weights were tested on (a model can serve
    two, as ProtoNet's 5-way and 20-way), the latest record's accuracy beside the paper's and its steps (and the
    weights' storage where it is not float32: the accuracy is theirs)."""
    from .results import read_records, rows, verdict
    from .config import zoo_entries

    lines = []
    for name, path in zoo_entries().items():
        records = read_records(path / "records.jsonl") if (path / "records.jsonl").exists() else []
        tested = []
        for r, _ in rows(records):
            paper, _, judged = verdict(r)
            tested.append(f"{r.get('cell') or '-'} {r['ours']['mean']:.2f} +- {r['ours']['ci95']:.2f}"
                          + (f" / {paper}: {judged}" if paper else "") + f" ({r.get('steps')} steps"
                          + (f", {r['weights']} weights)" if r.get("weights") else ")"))
        lines.append(f"{name}  " + ("; ".join(tested) or "(no record)"))
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import REGISTRIES, load_plugins

    load_plugins(args.plugin)
    for registry in REGISTRIES.values():
        print(f"{registry.plural}: {registry.description}")
        entries = registry.describe()
        width = max((len(name) for name, _ in entries), default=0)
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
    configs = config_files()
    if configs:
        print(f"configs ({len(configs)}):")
        for path in configs:
            print(f"  {path}")
    zoo = zoo_lines()
    if zoo:
        print(f"model zoo ({len(zoo)}; `metazoo eval NAME` re-tests one, `metazoo.load_run(NAME)` loads it):")
        for line in zoo:
            print(f"  {line}")
    return 0


def say(text: str) -> None:
    """Print, from one process only under torchrun (rank 0 is the one that writes)."""
    if os.environ.get("RANK", "0") == "0":
        print(text)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .registry import load_plugins
    from .trainer import meta_train

    load_plugins(args.plugin)
    config = load_config(args.config, [*args.set, *([f"train.device={args.device}"] if args.device else [])])
    config.plugins = list(dict.fromkeys([*config.plugins, *args.plugin]))
    run_dir = Path(args.output or Path("runs") / Path(args.config).stem)
    say(f"run: {run_dir} ({config.learner.get('name')} on {config.data.dataset}, {config.train.steps} steps)")
    summary = meta_train(config, run_dir, resume=args.resume, data_root=args.data_root,
                         progress=not args.quiet, test=not args.no_test)
    say(f"best validation accuracy {100 * summary['best']['accuracy']:.2f}% at step {summary['best']['step']}; "
        f"training took {summary['train_seconds']:.0f} s")
    if "test" in summary:
        from .evaluate import EvalResult

        say(f"test: {EvalResult(**summary['test']).report()}\nwrote {run_dir / 'result.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .registry import load_plugins
    from .config import ZOO_PREFIX
    from .trainer import test_run

    load_plugins(args.plugin)
    overrides = [f"eval.{key}={getattr(args, key)}" for key in EVAL_FLAGS if getattr(args, key) is not None]
    overrides += [f"learner.bn={args.bn}"] if args.bn is not None else []
    overrides += [f"data.dataset={args.dataset}"] if args.dataset is not None else []
    overrides += [f"train.device={args.device}"] if args.device is not None else []
    zoo = args.run_dir.startswith(ZOO_PREFIX)
    result = test_run(args.run_dir, args.checkpoint or "best", args.data_root, not args.quiet,
                      [*overrides, *args.set], write=not zoo, out=args.out)
    if args.out is None and zoo:
        where = "a model-zoo entry: nothing written (--out DIR keeps the result)"
    else:
        where = f"wrote {Path(args.out or args.run_dir) / 'result.json'} (and appended to results.jsonl)"
    say(f"{result.report()}\n{where}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .published import cells
    from .registry import load_plugins
    from .reproduce import describe, follow_parent, job_threads, plan, reproduce

    follow_parent()  # one of a --jobs call's processes: it stops with the call
    load_plugins(args.plugin)
    chosen = cells(args.selection)
    if args.until is not None:  # HH:MM already past today means tomorrow: say which, before hours of training
        say(f"--until: training stops at {until_text(args.until)}")
    if args.dry_run:
        print(describe(plan(chosen, Path(args.output), args.set), args.budget))
        if args.jobs > 1:
            print(f"\n--jobs {args.jobs}: {args.jobs} runs at a time, {job_threads(args.jobs)} thread(s) each "
                  f"(OMP_NUM_THREADS), each run's output in {Path(args.output) / 'logs'}/<run>.log")
        return 0
    if args.jobs > 1:
        return reproduce_in_jobs(args, chosen)
    records = reproduce(chosen, args.output, args.budget, args.device, args.data_root, args.zoo, not args.quiet,
                        args.set, until=args.until)
    for r in records:
        paper = f" (paper {r['paper']['value']})" if r["paper"] else ""
        print(f"{r['cell']}: {r['ours']['mean']:.2f} +- {r['ours']['ci95']:.2f}%{paper} after {r['steps']} steps")
    print(f"{len(records)} new records in {Path(args.output) / 'records.jsonl'}; "
          f"`metazoo report {args.output}` renders them")
    return 0


def reproduce_in_jobs(args: argparse.Namespace, chosen: list) -> int:
    """``metazoo reproduce --jobs N``: the runs of ``chosen`` N at a time, each a process of its own."""
    from .reproduce import RECORDS, plan, run_jobs

    out = Path(args.output)
    plans = plan(chosen, out, args.set)
    flags = [*(["--budget", f"{args.budget:g}"] if args.budget else []),
             *(["--until", datetime.datetime.fromtimestamp(args.until).isoformat(timespec="seconds")]
               if args.until is not None else []),
             *(["--device", args.device] if args.device else []), *(["--zoo", args.zoo] if args.zoo else []),
             *(["--data-root", args.data_root] if args.data_root else []),
             *(item for module in args.plugin for item in ("--plugin", module)),
             *(item for setting in args.set for item in ("--set", setting)), "-q"]
    before = len((out / RECORDS).read_text().splitlines()) if (out / RECORDS).exists() else 0
    failed = run_jobs(plans, out, flags, args.jobs, args.until)
    after = len((out / RECORDS).read_text().splitlines()) if (out / RECORDS).exists() else 0
    print(f"{len(plans)} runs, {args.jobs} at a time: {after - before} new records in {out / RECORDS}; "
          f"`metazoo report {out}` renders them")
    if failed:
        print("metazoo: error: these runs failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .results import report_main

    text = report_main(args.paths, out=args.out, template=args.template, every=args.all)
    print(text if args.out is None else f"wrote {args.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_command

    print(plot_command(args.paths, args.output, args.report))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data import DATASETS, data_root
    from .data.check import check_dataset

    root = data_root(args.data_root)
    names = args.datasets or (["image_folder"] if args.path else ["omniglot", "mini_imagenet", "caltech101"])
    if "image_folder" in names and args.path is None:
        raise ValueError("image_folder needs --path DIR: a folder of <class>/<image> files or a zip of one")
    print(f"data root: {root}")
    status = []
    for name in names:
        DATASETS.check_name(name)
        options = {"image_size": args.image_size} if args.image_size else {}
        if name == "image_folder":
            options |= {"path": args.path} | ({"mode": args.mode} if args.mode else {})
        state, report = check_dataset(name, root, **options)
        print(report)
        status.append(state)
    return 1 if "bad" in status or "ok" not in status else 0


def cmd_bench(argv: list[str]) -> int:
    from .bench import main

    return main(argv) or 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metazoo", description="Few-shot meta-learning and multi-task learning.")
    p.add_argument("--version", action="version", version=f"metazoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: it registers its own learners, backbones, datasets, ... "
                             "(recorded in the run's config, repeatable)")

    s = sub.add_parser("list", parents=[plugin], help="every registry's entries with a line each, the configs, "
                                                      "and the model zoo's entries with their records")
    s.set_defaults(func=cmd_list)
    add_train(sub, plugin)
    add_eval(sub, plugin)
    add_reproduce(sub, plugin)
    add_results(sub)
    add_data(sub)
    sub.add_parser("bench", add_help=False,
                   help="speed benchmarks against learn2learn (see docs/benchmarks.md; `metazoo bench --help`)")
    return p


def add_train(sub, plugin: argparse.ArgumentParser) -> None:
    s = sub.add_parser("train", parents=[plugin], help="meta-train from a TOML config, then test the best checkpoint")
    s.add_argument("config")
    s.add_argument("-o", "--output", help="run directory (default runs/<config name>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable; docs/config.md)")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    s.add_argument("--data-root", help="data root (else data.root, $METAZOO_DATA, ~/.metazoo/data)")
    s.add_argument("--no-test", action="store_true", help="skip the final test evaluation")
    s.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N, mps (train.device)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)


def add_eval(sub, plugin: argparse.ArgumentParser) -> None:
    s = sub.add_parser("eval", parents=[plugin], help="evaluate a run's checkpoint on fixed test items")
    s.add_argument("run_dir", help="a run directory, or zoo:<dataset>/<name> for a model-zoo entry")
    s.add_argument("--dataset",
                   help="evaluate on another registered dataset (its default settings, unless --set data.options...)")
    s.add_argument("--split")
    s.add_argument("--ways", type=int)
    s.add_argument("--shots", type=int)
    s.add_argument("--queries", type=int)
    s.add_argument("--episodes", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--bn", choices=["running", "transductive", "query_with_support"],
                   help="BatchNorm mode (the learner's bn setting; a gradient learner's per_step is fixed by its "
                        "training, its transductive and query_with_support share their weights)")
    s.add_argument("--checkpoint", choices=["best", "last"])
    s.add_argument("--protocol", help="episodic, online (MANN's protocol: accuracy by presentation), multitask "
                                      "(held-out images of a multi-task run's tasks), or a plugin's")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config for this evaluation, e.g. test-time settings such as "
                        "--set learner.lr=0.001 (a fine-tuned head's learning rate); recorded in the result")
    s.add_argument("--data-root", help="data root (else the one the run recorded)")
    s.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N, mps (else the run's train.device)")
    s.add_argument("-o", "--out", metavar="DIR",
                   help="write result.json (and append results.jsonl) in DIR instead of the run, naming the run "
                        "or zoo entry in the result: how a model-zoo entry's re-test is kept")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_eval)


def until_date(text: str) -> datetime.datetime | None:
    """An ``--until`` value that names a date and time (ISO), parsed (ValueError where it does not parse); None
    for a clock time, ``HH:MM``."""
    return datetime.datetime.fromisoformat(text) if "T" in text or "-" in text else None


def wall_clock(text: str, now: datetime.datetime | None = None) -> float:
    """``--until``: ``HH:MM`` (the next time the clock shows it) or an ISO date and time, local time, as seconds
    since the epoch; an ISO time already past is an error."""
    now = now or datetime.datetime.now()
    try:
        when = until_date(text)
        if when is not None:
            if when <= now:
                raise argparse.ArgumentTypeError(f"{text} has passed (now {now:%Y-%m-%dT%H:%M})")
            return when.timestamp()
        clock = datetime.time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HH:MM or YYYY-MM-DDTHH:MM") from None
    when = datetime.datetime.combine(now.date(), clock)
    return (when if when > now else when + datetime.timedelta(days=1)).timestamp()


def positive_int(text: str) -> int:
    """``--jobs``: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return value


def until_text(until: float, now: datetime.datetime | None = None) -> str:
    """An ``--until`` time (seconds since the epoch) as the date and time it means, and how far off it is."""
    from .results import duration

    now = now or datetime.datetime.now()
    when = datetime.datetime.fromtimestamp(until)
    return f"{when:%Y-%m-%d %H:%M} local time, in {duration(max((when - now).total_seconds(), 0.0))}"


def add_reproduce(sub, plugin: argparse.ArgumentParser) -> None:
    s = sub.add_parser("reproduce", parents=[plugin], help="train and test the paper cells (metazoo.published), "
                                                           "one record per cell")
    s.add_argument("selection", nargs="+", help="a dataset (omniglot, mini_imagenet), a learner (protonet), or cells "
                                                "like protonet/omniglot/5w1s")
    s.add_argument("-o", "--output", default="runs/reproduce",
                   help="output folder: a run per trained model and records.jsonl (default runs/reproduce)")
    s.add_argument("--budget", type=float,
                   help="wall-clock minutes per run (train.max_minutes); a later call with a larger budget continues")
    s.add_argument("--until", type=wall_clock, metavar="TIME",
                   help="stop training at this local time, HH:MM (its next occurrence) or YYYY-MM-DDTHH:MM: each run "
                        "stops with a checkpoint then and is tested (leave a margin for the tests), and no run "
                        "starts after it (a date and time already past is an error); a later call continues. It "
                        "prints the date and time it means first. Records write a date and time as its clock time, "
                        "HH:MM, so that their commands run again")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (train.device)")
    s.add_argument("--dry-run", action="store_true",
                   help="list the cells, the runs they need (where one has started: its step and best validation) "
                        "and the commands")
    s.add_argument("--zoo", help="also write a model-zoo entry per run here (e.g. experiments/zoo)")
    s.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="train N runs at once, each a process of its own with OMP_NUM_THREADS threads (where set, "
                        "else the cores shared out), its output in OUT/logs/<run>.log (default 1: one after another, "
                        "in this process)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override every cell's config (e.g. train.steps=100 for a smoke test)")
    s.add_argument("--data-root")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_reproduce)


def add_results(sub) -> None:
    s = sub.add_parser("report", help="render result records (JSON Lines) as Markdown tables beside the papers")
    s.add_argument("paths", nargs="+", help="records files, or folders holding records.jsonl or *.jsonl")
    s.add_argument("--template", help="a Markdown page with <!-- report: DATASET --> markers to fill")
    s.add_argument("--out", help="write here instead of printing")
    s.add_argument("--all", action="store_true", help="every record of a cell, not only the latest")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("plot", help="validation accuracy of runs against steps and wall time, or (--report) ours "
                                    "against the papers per cell (needs the plots extra)")
    s.add_argument("paths", nargs="+", help="run directories, or with --report records files / folders")
    s.add_argument("--report", action="store_true")
    s.add_argument("-o", "--output", required=True, help="figure file (.png or .svg)")
    s.set_defaults(func=cmd_plot)


def add_data(sub) -> None:
    s = sub.add_parser("data", help="data utilities")
    data_sub = s.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="what is found under the data root, with counts, and every unreadable file "
                                          "(exit status 1 if any)")
    c.add_argument("datasets", nargs="*", help="dataset names (default: omniglot mini_imagenet caltech101; "
                                               "image_folder with --path)")
    c.add_argument("--data-root")
    c.add_argument("--path", help="image_folder: the folder of <class>/<image> files or a zip of one")
    c.add_argument("--image-size", type=int, help="side of the decoded images (default: each dataset's own)")
    c.add_argument("--mode", choices=["L", "RGB"], help="image_folder: grey or colour (default RGB)")
    c.set_defaults(func=cmd_data_check)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own options, parsed by metazoo.bench
        return cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="metazoo: %(message)s")
    from .errors import Interrupted, NonFiniteLossError, RankLostError, RunLockedError
    try:
        return args.func(args)
    except Interrupted as err:
        print(f"metazoo: {err}", file=sys.stderr)
        return 130
    except (NonFiniteLossError, RunLockedError, RankLostError) as err:
        print(f"metazoo: error: {err}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        if isinstance(err, TypeError) and "has no setting" not in str(err):
            raise
        if isinstance(err, ImportError) and not str(err).startswith("plugin module") and "pip install" not in str(err):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"metazoo: error: {message}", file=sys.stderr)
        return 2


def run() -> int:
    """The ``metazoo`` command (and ``python -m metazoo.cli``): :func:`main` under the tuned C allocator
    (:mod:`metazoo.allocator`, which may start the command again first)."""
    from .allocator import tune

    tune()
    return main()


if __name__ == "__main__":
    sys.exit(run())
