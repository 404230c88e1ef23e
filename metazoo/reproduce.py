"""``metazoo reproduce``: the paper tables, cell by cell, into one output folder.

Each published cell (:mod:`metazoo.published`) names the config that reproduces it. Cells whose
configs differ only in their ``[eval]`` section are tested on one trained model (ProtoNet's 1-shot
model gives 5w1s and 20w1s), so a *run* is a training configuration and its cells are evaluations
of it. Every run trains into ``OUT/<dataset>/<first cell>-<hash>/`` (resumed if interrupted;
left alone if finished) and every tested cell appends one record to ``OUT/records.jsonl``
(:mod:`metazoo.results` reads and renders them); a cell already recorded for the run's current
step with the same test settings is skipped. ``--set eval...`` is not part of the run: a finished
run is tested again with it (other test episodes, ``eval.seed``), a record of its own. ``--budget``
gives each run a wall-clock budget (``train.max_minutes``): a run stopped by it is tested as it is,
recorded as a budget stop, and continued by a later call with a larger budget. ``--until TIME`` stops
training at a wall-clock time (a session's or a job's end): each run's budget is cut to what it has
trained plus the minutes left, so it stops with a checkpoint and is tested, and no run starts after
that time; a later call continues. Loading the data and the tests come on top: leave a margin. A run of
more ``train.steps`` (``--set train.steps=N``) starts from a copy of the same configuration's shorter run in
the folder, where there is one (:func:`shorter_run`).
``--zoo DIR`` copies each run's tested weights with its config and records into a model-zoo entry (in float16 or
int8 where float32 would be over the zoo's 1 MB a file, the records tested again on them: :func:`to_zoo`).
``--jobs N`` trains N runs at once, each a ``metazoo reproduce`` process of its own cells (:func:`run_jobs`).
"""
from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, registry
from .config import TRAIN_AUGMENTATIONS, Config, dump_toml, experiments_roots, load_config
from .errors import ZooTooLargeError
from .evaluate import EvalResult, json_text
from .build import device_name, resolve_device
from .results import duration, read_records
from .run import BEST, CONFIG, LAST, STORAGES, RunLock, load_checkpoint, pack_weights, read_config
from .trainer import meta_train, test_run

LOG = logging.getLogger("metazoo")

RECORDS, CHECK = "records.jsonl", "check.json"
ZOO_BYTES = 1_000_000  # the most a model-zoo entry's weights file may take (the project's rule)
CHECK_EPISODES = 20  # a zoo entry's quick re-test: its first test episodes, to the printed precision


@dataclass
class Plan:
    """One training configuration, the run directory it trains into, and the cells tested on it."""

    run_dir: Path
    config: Config
    cells: list = field(default_factory=list)
    evals: list = field(default_factory=list)  # per cell: its [eval] settings (see test_settings)
    overrides: list = field(default_factory=list)  # the --set items every cell's config was loaded with

    @property
    def name(self) -> str:
        return self.run_dir.name


def experiments_dir() -> Path:
    """The configs: ./experiments, else the folder beside the package (a source checkout)."""
    roots = experiments_roots()
    if not roots:
        raise FileNotFoundError("no experiments/ folder here or beside the package: run from a metazoo checkout")
    return roots[0]


# Settings added after runs existed, with the value every earlier run had: at that value a setting (and the ones
# that only matter with it) stays out of the key, so the earlier runs' directories keep their names.
SINCE = (("train", "amp", "off", ()), *(("train", key, 0, ()) for key in TRAIN_AUGMENTATIONS),
         ("optim", "alpha", 0.99, ()), ("optim", "clip_norm", 0, ("clip_scope",)), ("learner", "embed", "sets", ()),
         ("learner", "inner_batch", 0, ()), ("learner", "test_inner_batch", 0, ()))


def training_key(config: Config) -> str:
    """What identifies a trained model: every setting but the test's, the budget, and where and how it runs (a
    setting added since runs existed, or a dataset option, at its default counts as left out)."""
    values = copy.deepcopy(config.to_dict())
    values.pop("eval")
    for key in ("device", "memory_format", "compile", "max_minutes", "num_workers", "tensorboard", "log_every",
                "pin_cores"):
        values["train"].pop(key)
    for section, key, before, dependent in SINCE:
        if values[section].get(key, before) == before:
            for name in (key, *dependent):
                values[section].pop(name, None)
    values["data"].pop("root")
    values["data"]["options"] = _without_defaults(config.data.dataset, values["data"]["options"])
    values["eval_checkpoint"] = config.eval.checkpoint  # which weights are tested is part of the model
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def _without_defaults(dataset: str, options: dict) -> dict:
    """``options`` less those at the dataset constructor's default: a config that spells out a default (as an
    earlier run's command pins a setting that a config has since changed) trains the run of the config that
    leaves it out."""
    try:
        factory = registry.REGISTRIES["datasets"].get_factory(dataset)
    except (ImportError, AttributeError):  # left to fail, with its own error, when the dataset is built
        return options
    defaults = registry.accepted_kwargs(factory)
    return {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}


def plan(cells: list, out: Path, overrides: list[str] = ()) -> list[Plan]:
    """Group ``cells`` into training runs under ``out`` (in cell order)."""
    plans: dict[str, Plan] = {}
    for cell in cells:
        config = load_config(experiments_dir() / cell.config, list(overrides))
        key = training_key(config)
        if key not in plans:
            name = f"{cell.learner_id}_{cell.ways}w{cell.shots}s-{key}"
            plans[key] = Plan(out / cell.dataset / name, config, overrides=list(overrides))
        plans[key].cells.append(cell)
        plans[key].evals.append(config.to_dict()["eval"])
    return list(plans.values())


def test_settings(p: Plan) -> list[list[str]]:
    """Per cell, the overrides that test it: its [eval] settings that differ from those of the run's
    ``config.toml`` (what ``metazoo eval`` reads), or of the plan's config before the run exists. A cell of
    another size, or a ``--set eval...`` given after the run was trained, is tested as asked, never as the run
    was first tested."""
    stored = (read_config(p.run_dir) if (p.run_dir / CONFIG).exists() else p.config).to_dict()["eval"]
    return [[f"eval.{k}={json.dumps(v)}" for k, v in wanted.items() if v != stored.get(k)] for wanted in p.evals]


def _clock(text: str) -> str:
    """An ``--until`` value as a clock time: a date and time (as ``cli.wall_clock`` reads it) as its HH:MM."""
    from .cli import until_date

    try:
        when = until_date(text)
    except ValueError:
        return text
    return text if when is None else f"{when:%H:%M}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command a record names: this process's arguments, an ``--until`` date and time written as its clock
    time (``HH:MM``). The stop time is when a session ended, not part of the protocol, and a date once past
    makes the command an error, where ``HH:MM`` (its next occurrence) can be run again."""
    args = list(sys.argv[1:] if argv is None else argv)
    for k, a in enumerate(args):
        if a == "--until" and k + 1 < len(args):
            args[k + 1] = _clock(args[k + 1])
        elif a.startswith("--until="):
            args[k] = "--until=" + _clock(a.partition("=")[2])
    return "metazoo " + " ".join(shlex.quote(a) for a in args) if args else "metazoo reproduce"


def describe(plans: list[Plan], budget: float | None) -> str:
    """What ``--dry-run`` prints: every run with the cells tested on it and the command that trains it."""
    lines = [f"{sum(len(p.cells) for p in plans)} cells on {len(plans)} trained models"]
    for p in plans:
        t = p.config.train
        lines.append(f"\n{p.run_dir} ({standing(p)}): {p.config.learner['name']}, {t.split} split, {t.ways}-way "
                     f"{t.shots}-shot, {t.steps} steps{f', budget {budget:g} min' if budget else ''}")
        sets = [*p.overrides, *([f"train.max_minutes={budget:g}"] if budget else [])]
        lines.append(f"  train: metazoo train {p.cells[0].config_path} -o {p.run_dir} --no-test"
                     + "".join(f" --set {shlex.quote(item)}" for item in sets))
        for cell, evals in zip(p.cells, test_settings(p)):
            paper = f"paper {cell.value}" if cell.value is not None else "no paper number"
            lines.append(f"  test {cell.id} ({paper}): metazoo eval {p.run_dir} --checkpoint {p.config.eval.checkpoint}"
                         + "".join(f" --set {shlex.quote(item)}" for item in evals))
    return "\n".join(lines)


def shorter_run(p: Plan) -> Path | None:
    """A run beside ``p``'s, not yet begun, that trained the same configuration for fewer ``train.steps`` (its name
    the key of ``p``'s config with its steps), the longest; None where there is none or where the learning-rate
    schedule depends on the step budget (``linear``). Its steps are those a run of more steps takes first (the
    items, the schedule and the resumed state are functions of the step), so continuing a copy of it is the
    longer run: how a budget is raised after a run finished."""
    if (p.run_dir / LAST).exists() or p.config.optim.schedule == "linear":
        return None
    prefix, found = p.name.rsplit("-", 1)[0] + "-", []
    for folder in p.run_dir.parent.glob(prefix + "*"):
        if folder == p.run_dir or not (folder / LAST).exists() or not (folder / CONFIG).exists():
            continue
        steps = read_config(folder).train.steps
        shorter = copy.deepcopy(p.config)
        shorter.train.steps = steps
        if steps < p.config.train.steps and training_key(shorter) == folder.name[len(prefix):]:
            found.append((steps, folder.name, folder))
    return max(found)[2] if found else None


def continue_shorter(p: Plan) -> None:
    """Start ``p``'s run from a copy of its :func:`shorter_run` (its checkpoints, config and metrics, not its
    tests), taken while no process trains in it; nothing where there is none."""
    source = shorter_run(p)
    if source is None:
        return
    with RunLock(source):
        shutil.copytree(source, p.run_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".lock", "result.json", "results.jsonl"))
    LOG.info(f"{p.name}: continues a copy of {source} (step {load_checkpoint(p.run_dir / LAST)['step']}), "
             f"the same configuration trained for fewer steps, to {p.config.train.steps} steps")


def standing(p: Plan) -> str:
    """Where the run stands, from its last checkpoint: ``to train``, ``at step 4000 of 20000 after 20 min of
    training (0.30 s a step: about 80 min more at that pace), best validation 97.10% at step 3000: resumes``
    (stopped by a budget, ``--until`` or a signal), ``...: training now (process 1234)`` where another process holds
    the run (:meth:`RunLock.holder`), or ``finished at step ...``. The pace is the training time so far
    (validation included) over the steps, for choosing the next ``--budget`` or ``--until``."""
    if not (p.run_dir / LAST).exists():
        holder = RunLock.holder(p.run_dir)
        if holder is not None:
            return f"training now (process {holder}), no checkpoint yet"
        source = shorter_run(p)
        return "to train" if source is None else \
            f"to train from a copy of {source} (step {load_checkpoint(source / LAST)['step']})"
    state = load_checkpoint(p.run_dir / LAST)
    step, best, seconds = state["step"], state.get("best", {}), state.get("train_seconds")
    validated = best.get("accuracy", -1) >= 0
    seen = f", best validation {100 * best['accuracy']:.2f}% at step {best['step']}" if validated else ""
    spent = f" after {duration(seconds)} of training" if seconds else ""
    if step >= p.config.train.steps:
        return f"finished at step {step}{spent}{seen}"
    if seconds and step:
        pace = seconds / step
        spent += f" ({pace:.2f} s a step: about {duration(pace * (p.config.train.steps - step))} more at that pace)"
    holder = RunLock.holder(p.run_dir)
    return f"at step {step} of {p.config.train.steps}{spent}{seen}: " + \
        (f"training now (process {holder})" if holder is not None else "resumes")


def finished(p: Plan) -> bool:
    """The run has trained all its steps (a budget stop is not finished: a larger budget continues it)."""
    if not (p.run_dir / LAST).exists():
        return False
    return load_checkpoint(p.run_dir / LAST)["step"] >= p.config.train.steps


def reproduce(cells: list, out: str | Path, budget: float | None = None, device: str | None = None,
              data_root: str | None = None, zoo: str | Path | None = None, progress: bool = True,
              overrides: list[str] = (), until: float | None = None) -> list[dict]:
    """Train and test every cell (see the module docstring); returns the records written now. ``until``: a
    wall-clock time (seconds since the epoch) after which no training step runs and no run starts."""
    out = Path(out)
    git_commit()  # the code this process runs: the checkout now, not when a record is written hours later
    extra = [*overrides, *([f"train.device={device}"] if device else [])]
    written = []
    for p in plan(cells, out, extra):
        if until is not None and time.time() >= until:
            LOG.info(f"{p.name}: not started, the --until time has passed (a later call continues it)")
            continue
        continue_shorter(p)
        written += run_plan(p, out, budget, data_root, progress, until)
        if zoo is not None and (p.run_dir / LAST).exists():
            try:
                to_zoo(p, Path(zoo), out, data_root)
            except ZooTooLargeError as err:  # the other runs go on: a model too large for the zoo is no failure
                LOG.warning(str(err))
    return written


def job_threads(jobs: int) -> int:
    """Threads per run under ``--jobs``: ``OMP_NUM_THREADS`` where it is set, else the cores shared out."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // jobs))


JOBS_PARENT = "METAZOO_JOBS_PARENT"  # set by run_jobs in its processes' environment: the call's process id


def follow_parent() -> None:
    """In a ``--jobs`` process (:data:`JOBS_PARENT` in its environment): the kernel sends it SIGTERM when the call's
    process dies, however it dies (SIGKILL, a closed terminal's SIGHUP), so that its run stops with a checkpoint
    rather than training on alone (Linux's ``PR_SET_PDEATHSIG``; elsewhere it trains on to its budget)."""
    parent = os.environ.pop(JOBS_PARENT, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
        LOG.warning(f"--jobs: cannot ask to be stopped with the call's process (errno {ctypes.get_errno()})")
    elif os.getppid() != int(parent):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def run_jobs(plans: list[Plan], out: Path, flags: list[str], jobs: int, until: float | None = None,
             poll: float = 1.0) -> list[str]:
    """``--jobs``: train and test the runs of ``plans`` ``jobs`` at a time, each a ``metazoo reproduce`` process of
    its own cells with ``flags`` (the call's other options), ``OMP_NUM_THREADS`` threads each (:func:`job_threads`),
    its output in ``OUT/logs/<run>.log``; each appends its records to ``OUT/records.jsonl`` (one locked line at a
    time) and its command is the record's. No run starts after ``until``. SIGINT or SIGTERM is passed on, once, to
    the running processes (each in a session of its own, so a terminal's Ctrl-C does not reach them twice: a second
    signal would stop a run without its checkpoint), which stop with a checkpoint (:class:`~metazoo.errors.Interrupted`
    then); where this process dies without passing a signal on (SIGKILL), they get SIGTERM (:func:`follow_parent`).
    Returns the runs whose process failed, each with its log."""
    from .errors import Interrupted

    logs, threads = out / "logs", job_threads(jobs)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), JOBS_PARENT: str(os.getpid())}
    waiting, running, failed, stop = list(plans), {}, [], []

    def forward(signum, frame) -> None:
        stop.append(signum)
        for process, _ in running.values():
            process.send_signal(signum)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (waiting and not stop):
            while waiting and len(running) < jobs and not stop:
                p = waiting.pop(0)
                if until is not None and time.time() >= until - 10:
                    LOG.info(f"{p.name}: not started, the --until time has passed (a later call continues it)")
                    continue
                log = logs / f"{p.name}.log"
                command = [sys.executable, "-m", "metazoo.cli", "reproduce", *(c.id for c in p.cells), "-o", str(out),
                           *flags]
                with open(log, "w") as handle:  # a session of its own: a terminal's Ctrl-C reaches it once, from here
                    running[p.name] = (subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                                        start_new_session=True), log)
                LOG.info(f"{p.name}: started, {threads} thread(s), output in {log}")
            time.sleep(poll)
            for name, (process, log) in list(running.items()):
                if process.poll() is not None:
                    del running[name]
                    LOG.info(f"{name}: {'done' if process.returncode == 0 else f'failed ({process.returncode})'}")
                    if process.returncode not in (0, 130):
                        failed.append(f"{name} (exit {process.returncode}; see {log})")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop:
        raise Interrupted(f"stopped by a signal: the running runs stopped with a checkpoint, and the same command "
                          f"continues them{' (failed: ' + '; '.join(failed) + ')' if failed else ''}")
    return failed


def run_budget(p: Plan, budget: float | None, until: float | None) -> float:
    """``train.max_minutes`` for this call: ``budget`` (else the config's own), cut by ``until`` (a time since the
    epoch) to the minutes the run has trained so far plus the minutes left until then."""
    minutes = budget or p.config.train.max_minutes
    if until is None:
        return minutes
    trained = load_checkpoint(p.run_dir / LAST).get("train_seconds", 0.0) if (p.run_dir / LAST).exists() else 0.0
    cap = (trained + max(until - time.time(), 0.0)) / 60
    return min(minutes, cap) if minutes > 0 else cap


def run_plan(p: Plan, out: Path, budget: float | None, data_root: str | None, progress: bool,
             until: float | None = None) -> list[dict]:
    """Train (or resume) one run, then test and record each of its cells not yet recorded at this step."""
    config = copy.deepcopy(p.config)
    config.train.max_minutes = run_budget(p, budget, until)
    if (p.run_dir / CONFIG).exists():  # a run trained before continues with its own [eval] (its validation):
        config.eval = read_config(p.run_dir).eval  # a --set eval... given now only tests it (test_settings)
    summary = None
    if not finished(p):
        if (p.run_dir / LAST).exists():
            LOG.info(f"{p.run_dir.name}: {standing(p)}")
        summary = meta_train(config, p.run_dir, resume=(p.run_dir / LAST).exists(), data_root=data_root,
                             progress=progress, test=False)
    if not (p.run_dir / LAST).exists():  # a new run whose budget (or --until) ran out before its first step
        minutes = config.train.max_minutes
        LOG.warning(f"{p.name}: no step trained: the budget{f' of {minutes:.2g} minutes' if minutes else ''} was "
                    "spent before the first step, so there is nothing to test (a larger --budget or later --until "
                    "trains it)")
        return []
    state = load_checkpoint(p.run_dir / LAST)
    done = {tested(r) for r in recorded(out) if r.get("run") == str(p.run_dir)}
    written = []
    for cell, evals in zip(p.cells, test_settings(p)):
        if (cell.id, state["step"], tuple(evals)) in done:  # (tested()'s key)
            continue
        start = time.perf_counter()
        result = test_run(p.run_dir, config.eval.checkpoint, data_root, progress, evals)
        record = make_record(cell, result, config, state, summary, time.perf_counter() - start, str(p.run_dir))
        append_record(out / RECORDS, record)
        written.append(record)
    return written


def make_record(cell, result: EvalResult, config: Config, state: dict, summary: dict | None, test_seconds: float,
                run: str) -> dict:
    """One test result as a record (the schema in :mod:`metazoo.results`)."""
    t = config.train
    device = resolve_device(t.device)
    curve = {"curve": result.curve} if result.curve else {}
    stopped = "budget" if state["step"] < t.steps else None
    return {
        "cell": cell.id, "learner": config.learner["name"], "dataset": config.data.dataset,
        "ways": cell.ways, "shots": cell.shots,
        "ours": {"mean": 100 * result.mean, "ci95": 100 * result.ci95, "episodes": result.episodes},
        "paper": None if cell.value is None else {"value": cell.value, "source": cell.source},
        "protocol": {**result.protocol, "train": {"split": t.split, "ways": t.ways, "shots": t.shots,
                                                  "queries": t.queries, "meta_batch_size": t.meta_batch_size,
                                                  "steps": t.steps,
                                                  **{key: getattr(t, key) for key in TRAIN_AUGMENTATIONS
                                                     if getattr(t, key)}}},
        **curve,
        "steps": state["step"], "planned_steps": t.steps, "stopped": stopped,
        "train_seconds": state.get("train_seconds"), "test_seconds": round(test_seconds, 1),
        "device": str(device), "machine": device_name(device), "amp": t.amp, "compile": t.compile,
        "threads": torch.get_num_threads(), "version": __version__, "commit": git_commit(),
        "command": command_line(), "run": run, "checkpoint": "kept",
        "date": datetime.date.today().isoformat(), "note": "",
    }


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or None outside one, as it was
    at the first call in this process (:func:`reproduce` calls it before training: the code that ran)."""
    here = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def tested(record: dict) -> tuple:
    """What a record tested: its cell, at its run's step, with its test settings."""
    return record["cell"], record["steps"], tuple(record["protocol"].get("overrides", ()))


def recorded(out: Path) -> list[dict]:
    """The records an output folder holds so far."""
    return read_records(out / RECORDS) if (out / RECORDS).exists() else []


def append_record(path: Path, record: dict) -> None:
    """One line appended to ``path`` under an exclusive lock: under ``--jobs`` several processes append to it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.write((json_text(record) + "\n").encode())


def to_zoo(p: Plan, zoo: Path, out: Path, data_root: str | None = None, limit: int | None = None) -> Path:
    """A model-zoo entry of a run: its tested weights only (no optimiser state), in the largest storage
    (:data:`~metazoo.run.STORAGES`: float32, float16, int8) whose file fits ``limit`` bytes; its resolved config
    without the data root (the user's own applies); and its cells' records of those weights (a resumed run's
    records of earlier checkpoints stay out). Weights stored smaller than float32 are not the ones the records
    tested, so each record is tested again on the stored weights (its own test settings, all its episodes; not
    again where the entry already holds the same stored weights and that test) and the entry's copy carries that
    result, ``"weights"`` naming the storage and its note the float32 weights' figure. ``limit``:
    :data:`ZOO_BYTES` unless given; over it in every storage, :class:`~metazoo.errors.ZooTooLargeError`
    (:func:`reproduce` warns and goes on)."""
    limit = ZOO_BYTES if limit is None else limit
    checkpoint = p.config.eval.checkpoint
    state = load_checkpoint(p.run_dir / (BEST if checkpoint == "best" else LAST))
    sizes = {}
    for storage in STORAGES:
        blob = io.BytesIO()
        torch.save({"learner": pack_weights(state["learner"], storage), "step": state["step"], "best": state["best"],
                    **({} if storage == "float32" else {"storage": storage})}, blob)
        sizes[storage] = blob.tell()
        if blob.tell() <= limit:
            break
    else:
        taken = ", ".join(f"{n} bytes in {s}" for s, n in sizes.items())
        raise ZooTooLargeError(f"{p.run_dir}: its weights take {taken}, over the model zoo's {limit} bytes a file: "
                               "no zoo entry made (the run and its records are kept)")
    entry = zoo / p.cells[0].dataset / f"{p.cells[0].learner_id}_{p.cells[0].ways}w{p.cells[0].shots}s"
    kept = {}  # the entry made before from the same stored weights: its records' tests on them stand
    if storage != "float32" and (entry / RECORDS).exists() and (entry / BEST).exists() \
            and (entry / BEST).read_bytes() == blob.getvalue():
        kept = {tested(r): r for r in read_records(entry / RECORDS)}  # (the file names its storage)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / BEST).write_bytes(blob.getvalue())
    config = load_config_values(p.run_dir / CONFIG)
    config["data"].pop("root", None)
    config["eval"]["checkpoint"] = "best"  # the entry's one checkpoint file
    (entry / CONFIG).write_text(dump_toml(config))
    name = f"zoo:{entry.relative_to(zoo).as_posix()}"
    # the run's records of these weights: a run stopped and resumed holds records of earlier checkpoints too
    records = [{**r, "checkpoint": name} for r in recorded(out)
               if r.get("run") == str(p.run_dir) and r["protocol"].get("step") == state["step"]]
    if storage != "float32":
        records = [stored_record(r, entry, storage, limit, data_root, kept.get(tested(r))) for r in records]
    (entry / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in records))
    evals = [*test_settings(p)[0], f"eval.episodes={CHECK_EPISODES}"]
    check = test_run(entry, "best", data_root, False, evals, write=False)
    (entry / CHECK).write_text(json.dumps({"overrides": evals,
                                           "mean": round(100 * check.mean, 2), "ci95": round(100 * check.ci95, 2)},
                                          indent=1) + "\n")
    return entry


def stored_record(record: dict, entry: Path, storage: str, limit: int, data_root: str | None,
                  kept: dict | None = None) -> dict:
    """A record of a zoo entry whose weights are stored in ``storage``: its test again on those weights, or
    ``kept``'s (the same test of the same stored weights, from the entry made before)."""
    if kept is None:
        result = test_run(entry, "best", data_root, False, record["protocol"].get("overrides", []), write=False)
        ours = {"mean": 100 * result.mean, "ci95": 100 * result.ci95, "episodes": result.episodes}
        curve = result.curve
    else:
        ours, curve = kept["ours"], kept.get("curve")
    first = record["ours"]
    note = (f"Tested on the zoo entry's {storage} weights (the model zoo's {limit} bytes a file); its float32 "
            f"weights gave {first['mean']:.2f} +- {first['ci95']:.2f}.")
    return {**record, "ours": ours, **({"curve": curve} if curve else {}), "weights": storage,
            "note": " ".join(filter(None, [record.get("note"), note]))}


def load_config_values(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())
