"""Table (f): time to accuracy. metazoo and learn2learn train side by side, then both are tested alike.

For each learner (MAML and ProtoNet, the configs of :data:`metazoo.bench.iteration.CONFIGS`), two
processes start together, one thread each (``OMP_NUM_THREADS=1``), with the same budget of
training time and the same settings (:class:`~metazoo.bench.l2l_loops.Settings`):

- ``metazoo``: the real ``metazoo train CONFIG --no-test`` in a chain of sessions, session ``k``
  with ``--set train.max_minutes=k * budget / snapshots`` and ``--resume``: the trainer counts
  training time across sessions and stops at the first step past the budget, validating on
  :data:`VAL_EPISODES` episodes and checkpointing there (inside its training time). Snapshot ``k``
  is ``last.pt`` after session ``k``, with the step and training seconds it records.
- ``learn2learn``: ``python -m metazoo.bench.l2l_loops``, learn2learn's example loop, which saves
  the network after the first iteration past each ``k * budget / snapshots`` seconds of training.

Afterwards every snapshot of both sides is tested on the same fixed episodes of metazoo's Omniglot
test split (the config's ``[eval]`` ways, shots, queries and seed; ``--test-episodes`` of them):
metazoo's by its evaluation, learn2learn's by its example's adaptation
(:func:`~metazoo.bench.l2l_loops.test_accuracies`), each episode handed over as a learn2learn task.
The notes also count which characters learn2learn's ``get_tasksets("omniglot")`` trains on.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .common import bullets, table
from .iteration import CONFIGS, LABELS, PINNED, resolved
from .scaling import finish, launch, repo_file

DEFAULT_SECONDS = {"maml": 900.0, "protonet": 600.0}
VAL_EPISODES = 20  # validation at each budget stop of a metazoo session (counted in its training time)
DRAW_TASKS = 1000  # task descriptions drawn from get_tasksets("omniglot").train to count its characters
HEADER = ["learner", "snapshot", "metazoo train s", "metazoo steps", "metazoo accuracy %", "learn2learn train s",
          "learn2learn steps", "learn2learn accuracy %"]


def session_command(learner: str, run: Path, root: Path, minutes: float, sets: list[str], resume: bool) -> list[str]:
    """``metazoo train`` for one session of the chain: up to ``minutes`` of training time in all."""
    command = [sys.executable, "-m", "metazoo.cli", "train", str(repo_file(CONFIGS[learner])), "-o", str(run), "-q",
               "--no-test", "--device", "cpu", "--data-root", str(root)]
    for item in [*PINNED, *sets, f"train.max_minutes={minutes!r}", "train.val_every=0",
                 f"train.val_episodes={VAL_EPISODES}"]:
        command += ["--set", item]
    return command + (["--resume"] if resume else [])


def metazoo_chain(learner: str, work: Path, root: Path, seconds: float, snapshots: int, sets: list[str],
                  peer: Callable[[], None] = lambda: None) -> list[dict]:
    """Run the sessions one after the other; snapshot ``k`` is the folder ``work/metazoo-k`` (the run's
    ``config.toml`` and session ``k``'s ``last.pt``), with its step and training seconds. ``peer`` is
    called between sessions (it raises if the other side has failed)."""
    from ..run import CONFIG, LAST, load_checkpoint

    run, entries = work / "metazoo-run", []
    for k in range(1, snapshots + 1):
        peer()
        command = session_command(learner, run, root, seconds * k / snapshots / 60, sets, k > 1)
        finish(launch(command, 1), command)
        state = load_checkpoint(run / LAST)
        folder = work / f"metazoo-{k}"
        folder.mkdir()
        for name in (CONFIG, LAST):
            shutil.copy2(run / name, folder / name)
        entries.append({"snapshot": k, "steps": int(state["step"]), "train_seconds": float(state["train_seconds"]),
                        "path": str(folder)})
    return entries


def l2l_command(settings: Any, data: str, root: Path, seconds: float, snapshots: int, out: Path) -> list[str]:
    from dataclasses import asdict

    return [sys.executable, "-m", "metazoo.bench.l2l_loops", "--settings", json.dumps(asdict(settings)),
            "--data", data, "--data-root", str(root), "--seconds", repr(seconds), "--snapshots", str(snapshots),
            "--out", str(out)]


def run_race(learner: str, settings: Any, args: argparse.Namespace, root: Path, work: Path) -> dict:
    """Both sides started together; their snapshots and the wall seconds of each side's process(es)."""
    seconds = args.race_seconds or DEFAULT_SECONDS[learner]
    command = l2l_command(settings, args.race_data, root, seconds, args.race_snapshots, work)
    start = time.perf_counter()
    l2l = launch(command, 1)

    def peer() -> None:  # a learn2learn side that failed stops the race at once, with its output
        if l2l.poll():
            finish(l2l, command)

    try:
        ours = metazoo_chain(learner, work, root, seconds, args.race_snapshots, args.race_set, peer)
    except BaseException:
        l2l.kill()
        raise
    ours_wall = time.perf_counter() - start
    finish(l2l, command)
    theirs = json.loads((work / "l2l.json").read_text())
    for entry in theirs["snapshots"]:
        entry["path"] = str(work / f"l2l-{entry['snapshot']}.pt")
    return {"seconds": seconds, "metazoo": ours, "learn2learn": theirs["snapshots"], "metazoo_wall": ours_wall,
            "learn2learn_wall": time.perf_counter() - start, "learn2learn_setup": theirs["setup_seconds"]}


def score(race: dict, settings: Any, items: Any, root: Path) -> None:
    """Test every snapshot of both sides on ``items`` (fixed episodes); adds ``accuracy`` and ``ci95`` (%)."""
    from ..evaluate import evaluate
    from ..protocols import mean_ci95
    from ..run import load_run
    from .l2l_loops import network, test_accuracies

    episodes = [items[i] for i in range(len(items))]
    for entry in race["metazoo"]:
        run = load_run(entry["path"], "last", data_root=root, device="cpu")
        result = evaluate(run.objective, items, run.config.eval.protocol, "cpu")
        entry["accuracy"], entry["ci95"] = 100 * result.mean, 100 * result.ci95
    for entry in race["learn2learn"]:
        model = network(settings)
        model.load_state_dict(torch.load(entry["path"], weights_only=True)["model"])
        mean, ci95 = mean_ci95(test_accuracies(model, settings, episodes))
        entry["accuracy"], entry["ci95"] = 100 * mean, 100 * ci95


def learner_race(learner: str, args: argparse.Namespace, root: Path, work: Path) -> tuple[list, list, list, Any]:
    """One learner's race: its rows, notes, the two accuracy curves (:class:`metazoo.plots.Curve`) and the
    settings both sides trained with."""
    from ..plots import Curve
    from ..registry import PROTOCOLS
    from .l2l_loops import Settings

    config, train_set = resolved(learner, [*args.race_set, f"eval.episodes={args.test_episodes}"], root)
    settings = Settings.from_config(config)
    items = PROTOCOLS.create(config.eval.protocol).items(config, "test", root)
    folder = work / learner
    if folder.exists():
        raise FileExistsError(f"{folder} holds an earlier race: give another --race-out")
    folder.mkdir(parents=True)
    race = run_race(learner, settings, args, root, folder)
    score(race, settings, items, root)
    (folder / "race.json").write_text(json.dumps(race, indent=1))
    rows = [[LABELS[learner], str(ours["snapshot"]), f"{ours['train_seconds']:.0f}", str(ours["steps"]),
             f"{ours['accuracy']:.2f} +- {ours['ci95']:.2f}", f"{theirs['train_seconds']:.0f}", str(theirs["steps"]),
             f"{theirs['accuracy']:.2f} +- {theirs['ci95']:.2f}"]
            for ours, theirs in zip(race["metazoo"], race["learn2learn"])]
    curves = [Curve(side, [e["steps"] for e in race[side]],
                    [e["train_seconds"] / 60 for e in race[side]], [e["accuracy"] for e in race[side]],
                    [e["ci95"] for e in race[side]]) for side in ("metazoo", "learn2learn")]
    notes = setup_notes(learner, config, settings, train_set, items, race, args) + outcome_notes(race)
    return rows, notes, curves, settings


def setup_notes(learner: str, config: Any, settings: Any, train_set: Any, items: Any, race: dict,
                args: argparse.Namespace) -> list[str]:
    """What each side of one learner's race did."""
    budget, snapshots, split = race["seconds"], args.race_snapshots, settings.split
    characters, classes = train_set.info.get("characters", "?"), train_set.num_classes
    data = {"benchmark": "learn2learn's Omniglot benchmark pipeline (FullOmniglot PNGs decoded, resized with "
                         "LANCZOS and rotated per item; FusedNWaysKShots, LoadData, RemapLabels, ConsecutiveLabels, "
                         f"RandomClassRotation) on a FilteredMetaDataset of the same {characters} Vinyals {split} "
                         "characters, one rotation drawn per task",
            "interop": "learn2learn's NWays/KShots/LoadData/RemapLabels/ConsecutiveLabels taskset over metazoo's "
                       f"decoded Vinyals {split} split (metazoo.data.l2l.l2l_taskset): the same {classes} "
                       "rotation classes and images"}[args.race_data]
    e = config.eval
    adapt = (f"clone and {settings.test_inner_steps} adapt step(s) of {settings.inner_lr:g} on the support items, "
             "BatchNorm on batch statistics" if learner == "maml" else "prototypes in eval mode (running statistics)")
    return [
        f"{LABELS[learner]}: {CONFIGS[learner]} on both sides: {settings.describe()}; one thread each, started "
        f"together; {budget:g} s of training time each, a snapshot after the first step past every "
        f"{budget / snapshots:g} s",
        f"metazoo: metazoo train in {snapshots} sessions chained with --resume, train.max_minutes = k x "
        f"{budget / snapshots / 60:g}; every budget stop validates on {VAL_EPISODES} val episodes and checkpoints "
        f"(in its training time); trains on the Vinyals {split} split ({characters} characters x 4 rotations as "
        f"{classes} classes); its sessions took {race['metazoo_wall']:.0f} s of wall time in all",
        f"learn2learn: its example loop (python -m metazoo.bench.l2l_loops) over {data}; set-up "
        f"{race['learn2learn_setup']:.1f} s before its training time; its process took "
        f"{race['learn2learn_wall']:.0f} s of wall time",
        f"test: the same {len(items)} fixed episodes of metazoo's Omniglot test split ({e.ways}-way {e.shots}-shot "
        f"{e.queries}-query, seed {e.seed}); metazoo: its evaluation (BatchNorm {config.learner.get('bn')}); "
        f"learn2learn: its example's procedure on each episode as a task: {adapt}",
    ]


def outcome_notes(race: dict) -> list[str]:
    """Time per iteration, when metazoo reached learn2learn's final accuracy, at how many snapshots it led."""
    ours, theirs = race["metazoo"], race["learn2learn"]

    def ms(side: list[dict]) -> float:
        return 1000 * side[-1]["train_seconds"] / max(side[-1]["steps"], 1)

    final = theirs[-1]
    reached = next((e for e in ours if e["accuracy"] >= final["accuracy"]), None)
    when = (f"snapshot {reached['snapshot']}, at {reached['train_seconds']:.0f} s "
            f"({reached['train_seconds'] / final['train_seconds']:.2f}x learn2learn's training time)"
            if reached else "none of its snapshots")
    ahead = sum(a["accuracy"] > b["accuracy"] for a, b in zip(ours, theirs))
    return [f"time per iteration (last snapshot's training seconds over its steps): metazoo {ms(ours):.0f} ms, "
            f"learn2learn {ms(theirs):.0f} ms, metazoo / learn2learn {ms(ours) / ms(theirs):.2f}x",
            f"learn2learn's last snapshot: {final['accuracy']:.2f}% at {final['train_seconds']:.0f} s; metazoo's "
            f"first snapshot at or above it: {when}; metazoo's accuracy above learn2learn's at {ahead} of "
            f"{len(ours)} snapshots"]


def draws_note(root: Path, ways: int, samples: int) -> str:
    """What learn2learn's get_tasksets("omniglot").train draws from, measured (:func:`standard_train_draws`)."""
    from .standard import l2l_omniglot_root, standard_train_draws

    d = standard_train_draws(l2l_omniglot_root(root), ways, samples, DRAW_TASKS)
    return (f"learn2learn's own get_tasksets('omniglot').train (not used in the race), counted over {d['tasks']} "
            f"sampled {ways}-way task descriptions ({d['items']} items): {d['characters']} distinct characters of "
            f"FullOmniglot's 1623; {d['outside_own']} items ({100 * d['outside_own'] / d['items']:.0f}%) from "
            f"{d['characters_outside_own']} characters outside its own {d['own_split']}-character train split, "
            f"{d['in_vinyals_test']} items ({100 * d['in_vinyals_test'] / d['items']:.0f}%) from "
            f"{d['characters_in_vinyals_test']} of the {d['vinyals_test']} Vinyals test characters metazoo tests "
            "on: its train transforms are built on the unfiltered MetaDataset")


def draw(panels: dict, out: Path | None) -> str:
    """The accuracy-against-time figure, or why there is none."""
    if out is None:
        return "no plot (give --race-out or --race-plot)"
    from ..plots import plot_race

    try:
        return f"plot: {plot_race(panels, out)}"
    except ImportError as error:
        return f"no plot: {error}"


def report(root: Path, args: argparse.Namespace) -> str:
    """Table (f) with its notes (and the plot, where asked for)."""
    rows, notes, panels, settings = [], [], {}, []
    if args.race_out is not None:
        Path(args.race_out).mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory(prefix="metazoo-race-") if args.race_out is None else
          contextlib.nullcontext(args.race_out)) as work:
        for learner in args.learners:
            learner_rows, learner_notes, curves, learner_settings = learner_race(learner, args, root, Path(work))
            rows += learner_rows
            notes += learner_notes
            settings.append(learner_settings)
            panels[f"{LABELS[learner]} (Omniglot test, {args.test_episodes} episodes)"] = curves
    notes.append(draws_note(root, settings[0].ways, settings[0].shots + settings[0].queries))
    plot = args.race_plot or (Path(args.race_out) / "race.png" if args.race_out else None)
    notes.append(draw(panels, plot))
    return f"## (f) Time to accuracy, metazoo vs learn2learn side by side\n\n{table(HEADER, rows)}\n\n" \
           f"{bullets(notes)}\n"
