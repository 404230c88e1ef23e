"""The multi-task study: Omniglot alphabets as tasks, sharing and weighting choices side by side.

    python experiments/multitask/study.py --data-root ../shared/data --out runs/multitask_study

Trains experiments/multitask/alphabets.toml once per variant (a run directory each; finished runs
are skipped, an interrupted one resumes), then prints a markdown report: mean held-out accuracy
per variant with its wall time, the paired difference to the independent networks, the tasks that
do worse shared than alone (negative transfer; "clearly" when by more than their held-out
intervals), and per-task accuracies. ``--plot FILE`` also draws per-task
accuracy differences against independent networks (needs ``pip install "metazoo[plots]"``; an .svg
name keeps the plot a text file); it refuses to replace an existing file unless ``--force`` is given.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

from metazoo.config import load_config
from metazoo.evaluate import mean_ci95
from metazoo.plots import figure, require_matplotlib, save
from metazoo.trainer import meta_train

HERE = Path(__file__).parent
VARIANTS = {  # name -> overrides of alphabets.toml, most informative first
    "independent": ["learner.sharing=independent"],
    "multi-head": ["learner.sharing=multihead"],
    "FiLM": ["learner.sharing=film"],
    "concat": ["learner.sharing=concat"],
    "additive": ["learner.sharing=additive"],
    "multiplicative": ["learner.sharing=multiplicative"],
    "multi-head + DWA": ["learner.sharing=multihead", "learner.weighting=dwa", "learner.period=50"],
    "multi-head + uncertainty": ["learner.sharing=multihead", "learner.weighting=uncertainty"],
    "independent + soft sharing 1e-4": ["learner.sharing=independent", "learner.soft_sharing=0.0001"],
    "independent + soft sharing 1e-3": ["learner.sharing=independent", "learner.soft_sharing=0.001"],
    "independent, common init": ["learner.sharing=independent", "learner.common_init=true"],
    "common init + soft sharing 1e-4": ["learner.sharing=independent", "learner.common_init=true",
                                        "learner.soft_sharing=0.0001"],
    "common init + soft sharing 1e-3": ["learner.sharing=independent", "learner.common_init=true",
                                        "learner.soft_sharing=0.001"],
    "FiLM + DWA": ["learner.sharing=film", "learner.weighting=dwa", "learner.period=50"],
}


def run_key(name: str, config) -> str:
    """A run directory name from the variant and every setting that shapes its result, so a finished
    run is reused only for the same settings (another --steps is another run)."""
    settings = json.dumps({k: v for k, v in config.to_dict().items() if k != "data"}, sort_keys=True)
    slug = name.replace(" ", "_").replace("+", "and").replace(",", "")
    return f"{slug}-{config.train.steps}steps-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"


def run(name: str, overrides: list[str], args) -> dict:
    config = load_config(HERE / "alphabets.toml", [*overrides, f"train.steps={args.steps}"])
    run_dir = Path(args.out) / run_key(name, config)
    result = run_dir / "result.json"
    if not result.exists():
        start = time.perf_counter()
        meta_train(config, run_dir, resume=(run_dir / "last.pt").exists(), data_root=args.data_root,
                   progress=False)
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    wall = run_dir / "wall_seconds.txt"
    return {**json.loads(result.read_text()), "wall": wall.read_text().strip() if wall.exists() else "?"}


def report(results: dict[str, dict]) -> str:
    """Per variant: mean held-out accuracy (interval over tasks), the paired difference to the
    independent networks (mean over tasks of the per-task difference, with its interval over
    tasks), and the tasks that do worse shared than alone: all of them, and those worse by more
    than their two held-out intervals combined (sqrt(ci_a^2 + ci_b^2))."""
    alone = results.get("independent")
    lines = ["| variant | mean held-out accuracy (95% CI over tasks) | paired difference to independent, "
             "points | tasks worse than alone (clearly worse) | wall s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        paired = worse = ""
        if alone is not None and name != "independent":
            a, b = alone["tasks"], r["tasks"]
            diff, ci = mean_ci95([b[t]["accuracy"] - a[t]["accuracy"] for t in b])
            paired = f"{100 * diff:+.2f} +- {100 * ci:.2f}"
            clearly = sum(b[t]["accuracy"] - a[t]["accuracy"] < -math.hypot(a[t]["ci95"], b[t]["ci95"]) for t in b)
            worse = f"{sum(b[t]['accuracy'] < a[t]['accuracy'] for t in b)} ({clearly})"
        lines.append(f"| {name} | {100 * r['mean']:.2f} +- {100 * r['ci95']:.2f} | {paired} | {worse} | {r['wall']} |")
    names = list(next(iter(results.values()))["tasks"])
    lines += ["", "Per task (held-out test accuracy, %):", "",
              "| task | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for task in names:
        lines.append(f"| {task} | " + " | ".join(f"{100 * r['tasks'][task]['accuracy']:.1f}"
                                                 for r in results.values()) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict], path: str) -> Path:
    """Per-task accuracy differences to the independent networks, a line per variant (needs the ``plots``
    extra; the figure setup and saving are metazoo.plots')."""
    alone = results["independent"]["tasks"]
    names = list(alone)
    fig = figure(figsize=(12, 4))
    ax = fig.subplots()
    for name, r in results.items():
        if name != "independent":
            ax.plot(range(len(names)), [100 * (r["tasks"][t]["accuracy"] - alone[t]["accuracy"]) for t in names],
                    marker="o", linewidth=1, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n[:12] for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("accuracy - independent (points)")
    ax.legend(fontsize=7, ncol=3)
    return save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root")
    parser.add_argument("--out", default="runs/multitask_study")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--only", action="append", choices=list(VARIANTS), help="run these variants only")
    parser.add_argument("--plot", help="write the per-task plot here (SVG keeps it text in docs/; plots extra)")
    parser.add_argument("--force", action="store_true", help="let --plot replace an existing file")
    args = parser.parse_args()
    if args.plot:  # fail before training, not after
        require_matplotlib()
        if Path(args.plot).exists() and not args.force:
            parser.error(f"--plot {args.plot} exists (perhaps a tracked docs/ file): add --force to replace it")
    results = {name: run(name, VARIANTS[name], args) for name in (args.only or VARIANTS)}
    print(report(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
