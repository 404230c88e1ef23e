"""``metazoo``: list | train | eval | data check | bench."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib
from pathlib import Path

import torch

from . import __version__


def cmd_list(args: argparse.Namespace) -> int:
    from .backbones import list_backbones
    from .data import list_datasets
    from .learners import list_learners

    print("learners: ", ", ".join(list_learners()))
    print("backbones:", ", ".join(list_backbones()))
    print("datasets: ", ", ".join(list_datasets()))
    configs = sorted(Path("experiments").glob("**/*.toml"))
    if configs:
        print("configs:  ", ", ".join(str(c) for c in configs))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluate import EvalResult
    from .trainer import meta_train

    config = load_config(args.config, args.set)
    run_dir = Path(args.output or Path("runs") / Path(args.config).stem)
    summary = meta_train(config, run_dir, resume=args.resume, data_root=args.data_root,
                         progress=not args.quiet, test=not args.no_test)
    print(f"run: {run_dir}")
    print(f"best validation accuracy {100 * summary['best']['accuracy']:.2f}% at step {summary['best']['step']}; "
          f"training took {summary['train_seconds']:.0f} s")
    if "test" in summary:
        t = summary["test"]
        p = t["protocol"]
        if t.get("tasks"):
            print(f"test: {EvalResult(**t)} -> {run_dir / 'result.json'}")
            for name, metric in t["tasks"].items():
                value = (f"{100 * metric['accuracy']:.2f} +- {100 * metric['ci95']:.2f}%" if "accuracy" in metric
                         else f"mse {metric['mse']:.4f}")
                print(f"  {name}: {value} ({metric['items']} images)")
            return 0
        what = f"{p['ways']}-way {p['shots']}-shot"
        if t.get("curve"):
            what = f"online, {p['ways']} classes x {p['shots'] + p['queries']} presentations"
        print(f"test: {p['dataset']} {p['split']} {what}, {t['episodes']} episodes: "
              f"{100 * t['mean']:.2f} +- {100 * t['ci95']:.2f}% (95% CI) -> {run_dir / 'result.json'}")
        if t.get("curve"):
            print("by presentation: " + ", ".join(f"{k + 1}: {100 * m:.2f} +- {100 * c:.2f}%"
                                                  for k, (m, c) in enumerate(t["curve"])))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .build import build_dataset, build_evaluation_sampler, build_learner, resolve_device
    from .config import apply_overrides, from_dict
    from .evaluate import evaluate, write_result

    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {run_dir} a metazoo run directory?")
    config = from_dict(apply_overrides(tomllib.loads(config_path.read_text()), args.set))
    e = config.eval
    for key in ("split", "ways", "shots", "queries", "episodes", "seed", "bn", "checkpoint", "protocol"):
        if getattr(args, key) is not None:
            setattr(e, key, getattr(args, key))
    sampler = build_evaluation_sampler(config, "test", args.data_root)
    device = resolve_device(config.train.device)
    learner = build_learner(config, build_dataset(config, e.split, args.data_root)).to(device)
    weights = torch.load(run_dir / f"{e.checkpoint}.pt", map_location=device, weights_only=False)
    learner.load_state_dict(weights["learner"])
    result = evaluate(learner, sampler, bn=e.bn, device=device, progress=not args.quiet, protocol=e.protocol)
    result = dataclasses.replace(result, protocol={**result.protocol, "checkpoint": e.checkpoint,
                                                   "step": weights["step"],
                                                   **({"overrides": args.set} if args.set else {})})
    write_result(result, run_dir)
    print(result)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data import DATASETS, create_dataset, data_root

    root = data_root(args.data_root)
    print(f"data root: {root}")
    found = 0
    for name in args.datasets or ["omniglot", "mini_imagenet", "caltech101"]:
        if name not in DATASETS:
            DATASETS.get_factory(name)  # raises, listing the valid names
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
    from .benchmarks import main

    return main(argv) or 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metazoo", description="Few-shot meta-learning and multi-task learning.")
    p.add_argument("--version", action="version", version=f"metazoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="registered learners, backbones, datasets and configs")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", help="meta-train from a TOML config, then test the best checkpoint")
    s.add_argument("config")
    s.add_argument("-o", "--output", help="run directory (default runs/<config name>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    s.add_argument("--data-root", help="data root (else data.root, $METAZOO_DATA, ~/.metazoo/data)")
    s.add_argument("--no-test", action="store_true", help="skip the final test evaluation")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a run's checkpoint on fixed test episodes")
    s.add_argument("run_dir")
    s.add_argument("--split")
    s.add_argument("--ways", type=int)
    s.add_argument("--shots", type=int)
    s.add_argument("--queries", type=int)
    s.add_argument("--episodes", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--bn", choices=["running", "transductive"])
    s.add_argument("--checkpoint", choices=["best", "last"])
    s.add_argument("--protocol", choices=["episodic", "online", "multitask"],
                   help="online: MANN's protocol (sequence learners), accuracy by presentation; multitask: the "
                        "held-out images of a multi-task run's tasks (episodic on such a run: few-shot transfer)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config for this evaluation, e.g. test-time settings such as "
                        "--set learner.lr=0.001 (a fine-tuned head's learning rate); recorded in the result")
    s.add_argument("--data-root")
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
    if argv[:1] == ["bench"]:  # its own options, parsed by metazoo.benchmarks
        return cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, TypeError, ValueError, FileNotFoundError, FileExistsError) as err:
        if isinstance(err, TypeError) and "has no setting" not in str(err):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"metazoo: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
