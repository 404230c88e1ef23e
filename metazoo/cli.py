"""``metazoo``: list | train | eval | data check | bench.

Only the commands that train, evaluate or read data import torch; ``--help``, ``--version`` and
``list`` do not.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__

EVAL_FLAGS = ("split", "ways", "shots", "queries", "episodes", "seed", "protocol")


def config_files() -> list[Path]:
    """Runnable configs: ``experiments/**/*.toml`` under the working directory and, for a source
    checkout, beside the package (base configs in ``base/`` folders are not runnable cells)."""
    roots = [Path("experiments"), Path(__file__).resolve().parents[1] / "experiments"]
    seen: dict[Path, Path] = {}
    for root in roots:
        for path in sorted(root.glob("**/*.toml")) if root.is_dir() else ():
            if "base" not in path.relative_to(root).parts[:-1]:
                seen.setdefault(path.resolve(), path)
    return list(seen.values())


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
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .registry import load_plugins
    from .trainer import meta_train

    load_plugins(args.plugin)
    config = load_config(args.config, args.set)
    config.plugins = list(dict.fromkeys([*config.plugins, *args.plugin]))
    run_dir = Path(args.output or Path("runs") / Path(args.config).stem)
    print(f"run: {run_dir} ({config.learner.get('name')} on {config.data.dataset}, {config.train.steps} steps)")
    summary = meta_train(config, run_dir, resume=args.resume, data_root=args.data_root,
                         progress=not args.quiet, test=not args.no_test)
    print(f"best validation accuracy {100 * summary['best']['accuracy']:.2f}% at step {summary['best']['step']}; "
          f"training took {summary['train_seconds']:.0f} s")
    if "test" in summary:
        from .evaluate import EvalResult

        print(f"test: {EvalResult(**summary['test']).report()}\nwrote {run_dir / 'result.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .registry import load_plugins
    from .trainer import test_run

    load_plugins(args.plugin)
    overrides = [f"eval.{key}={getattr(args, key)}" for key in EVAL_FLAGS if getattr(args, key) is not None]
    overrides += [f"learner.bn={args.bn}"] if args.bn is not None else []
    result = test_run(args.run_dir, args.checkpoint or "best", args.data_root, not args.quiet,
                      [*overrides, *args.set])
    print(f"{result.report()}\nwrote {Path(args.run_dir) / 'result.json'} (and appended to results.jsonl)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data import DATASETS, create_dataset, data_root

    root = data_root(args.data_root)
    print(f"data root: {root}")
    found = 0
    for name in args.datasets or ["omniglot", "mini_imagenet", "caltech101"]:
        DATASETS.check_name(name)
        for split in ("train", "val", "test"):
            try:
                d = create_dataset(name, split=split, root=root)
            except FileNotFoundError as err:
                print(f"{name}: not found\n  " + str(err).replace("\n", "\n  "))
                break
            sizes = d.class_sizes
            print(f"{name:>14} {split:>5}: {d.num_classes:5d} classes, {len(d):6d} images of {d.image_shape}, "
                  f"{int(sizes.min())}-{int(sizes.max())} per class")
            found += 1
    return 0 if found else 1


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

    s = sub.add_parser("list", parents=[plugin], help="every registry's entries with a line each, and the configs")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", parents=[plugin], help="meta-train from a TOML config, then test the best checkpoint")
    s.add_argument("config")
    s.add_argument("-o", "--output", help="run directory (default runs/<config name>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable; docs/config.md)")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    s.add_argument("--data-root", help="data root (else data.root, $METAZOO_DATA, ~/.metazoo/data)")
    s.add_argument("--no-test", action="store_true", help="skip the final test evaluation")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", parents=[plugin], help="evaluate a run's checkpoint on fixed test items")
    s.add_argument("run_dir")
    s.add_argument("--split")
    s.add_argument("--ways", type=int)
    s.add_argument("--shots", type=int)
    s.add_argument("--queries", type=int)
    s.add_argument("--episodes", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--bn", choices=["running", "transductive"],
                   help="BatchNorm mode (the learner's bn setting; a gradient learner's is fixed by its training)")
    s.add_argument("--checkpoint", choices=["best", "last"])
    s.add_argument("--protocol", help="episodic, online (MANN's protocol: accuracy by presentation), multitask "
                                      "(held-out images of a multi-task run's tasks), or a plugin's")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config for this evaluation, e.g. test-time settings such as "
                        "--set learner.lr=0.001 (a fine-tuned head's learning rate); recorded in the result")
    s.add_argument("--data-root", help="data root (else the one the run recorded)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("data", help="data utilities")
    data_sub = s.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="what is found under the data root, with counts")
    c.add_argument("datasets", nargs="*", help="dataset names (default: omniglot mini_imagenet caltech101)")
    c.add_argument("--data-root")
    c.set_defaults(func=cmd_data_check)

    sub.add_parser("bench", add_help=False,
                   help="speed benchmarks against learn2learn (see docs/benchmarks.md; `metazoo bench --help`)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own options, parsed by metazoo.bench
        return cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="metazoo: %(message)s")
    try:
        return args.func(args)
    except (KeyError, TypeError, ValueError, FileNotFoundError, FileExistsError, ModuleNotFoundError) as err:
        if isinstance(err, TypeError) and "has no setting" not in str(err):
            raise
        if isinstance(err, ModuleNotFoundError) and not str(err).startswith("plugin module"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"metazoo: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
