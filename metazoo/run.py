"""A run directory is an artefact: everything needed to reload, re-test and explain a trained model.

It holds ``config.toml`` (every resolved value, the data root included), ``last.pt`` and
``best.pt`` (written atomically), ``metrics.jsonl`` (training and validation rows), ``result.json``
(the latest evaluation with its protocol) and ``results.jsonl`` (every evaluation).
:func:`load_run` is the one way back from a directory to a trained objective; the trainer (to
test its best weights) and ``metazoo eval`` use it. Also here: what keeps a run directory honest
while it trains (docs/reliability.md): the resume check, the metrics log and its truncation, the
directory lock, and the signal handling.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import build_dataset, build_objective, place_objective, resolve_config, resolve_device
from .config import ZOO_PREFIX, Config, apply_overrides, from_dict, zoo_entries, zoo_roots
from .data import data_root as find_data_root
from .errors import RunLockedError
from .evaluate import json_text
from .objective import Objective

LOG = logging.getLogger("metazoo")

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.toml"
RESULT, RESULTS = "result.json", "results.jsonl"


@dataclass
class Run:
    """A reloaded run: its directory, resolved config, objective (weights loaded, on ``device``), the
    checkpoint it came from and the training step that checkpoint was written at."""

    dir: Path
    config: Config
    objective: Objective
    checkpoint: str
    step: int
    device: torch.device


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by the trainer, loaded as data only (``weights_only``: no code runs); a model-zoo
    entry's weights stored smaller (its ``storage``, :func:`pack_weights`) come back as float32."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the run has no such checkpoint (best.pt or last.pt)")
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("storage", "float32") != "float32":
        state["learner"] = unpack_weights(state["learner"])
    return state


STORAGES = ("float32", "float16", "int8")  # how a model-zoo entry's weights are stored, largest first


def pack_weights(weights: dict, storage: str) -> dict:
    """A state dict stored in ``storage`` (:data:`STORAGES`): ``float32`` as it is; ``float16`` every floating
    tensor in half precision; ``int8`` every floating matrix or kernel (two or more dimensions) as symmetric 8-bit
    integers with one float32 scale per row of its first dimension, ``{"int8": q, "scale": s}`` (``q * s``, within
    half a scale of the original), its vectors and scalars (biases, batch-norm statistics) kept in float32.
    :func:`unpack_weights` (which :func:`load_checkpoint` applies) reverses it."""
    if storage not in STORAGES:
        raise ValueError(f"unknown weight storage {storage!r}; valid: {', '.join(STORAGES)}")
    packed = {}
    for name, value in weights.items():
        if storage == "float32" or not value.is_floating_point():
            packed[name] = value
        elif storage == "float16":
            packed[name] = value.half()
        elif value.dim() < 2:
            packed[name] = value.float()
        else:
            rows = value.float().reshape(value.shape[0], -1)
            scale = rows.abs().amax(dim=1) / 127
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = (rows / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            packed[name] = {"int8": q.reshape(value.shape).contiguous(), "scale": scale.contiguous()}
    return packed


def unpack_weights(packed: dict) -> dict:
    """:func:`pack_weights`' state dict back in float32 (integer tensors as they are)."""
    weights = {}
    for name, value in packed.items():
        if isinstance(value, dict):
            q, scale = value["int8"], value["scale"]
            weights[name] = (q.float().reshape(q.shape[0], -1) * scale[:, None]).reshape(q.shape)
        else:
            weights[name] = value.float() if value.is_floating_point() else value
    return weights


def resolve_run_dir(name: str | Path) -> Path:
    """A run directory, or a model-zoo entry ``zoo:<dataset>/<name>`` (``experiments/zoo/...`` under the
    working directory or beside the package)."""
    text = str(name)
    if not text.startswith(ZOO_PREFIX):
        return Path(name)
    entry = text[len(ZOO_PREFIX):]
    for root in zoo_roots():
        if (root / entry / CONFIG).exists():
            return root / entry
    known = list(zoo_entries())
    raise FileNotFoundError(f"no model-zoo entry {text!r}; the zoo holds: {', '.join(known) or 'nothing yet'}")


def read_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A run directory's ``config.toml`` with dotted overrides applied (checked as any config). An
    override of ``data.dataset`` (evaluating a run on another dataset) starts that dataset from its
    own default settings unless ``data.options`` are overridden too."""
    path = resolve_run_dir(run_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a metazoo run directory?")
    values = tomllib.loads(path.read_text())
    changed = apply_overrides(values, list(overrides))
    other_dataset = changed.get("data", {}).get("dataset") != values.get("data", {}).get("dataset")
    if other_dataset and not any(o.split("=", 1)[0].strip().startswith("data.options") for o in overrides):
        changed["data"]["options"] = {}  # the run's dataset settings belong to its own dataset
    return from_dict(changed)


def load_run(run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | tuple[str, ...] = (),
             data_root: str | Path | None = None, device: str | torch.device | None = None) -> Run:
    """Reload a run (a directory, or ``zoo:<dataset>/<name>`` for a model-zoo entry): its objective with
    the ``checkpoint`` weights (``best`` or ``last``) and its fully resolved config. ``overrides``
    (``key=value``) change settings for this use, e.g. a test-time ``learner.lr``; ``data_root``
    replaces the recorded data root (a run moved to another machine; a zoo entry records none, so
    the usual setting applies); ``device`` defaults to the run's ``train.device``. Runs written
    before config.toml held every resolved value are resolved again from their training split."""
    run_dir = resolve_run_dir(run_dir)
    config = read_config(run_dir, overrides)
    if "bn" not in config.learner:  # written before config.toml held every resolved value
        config = resolve_config(config, build_dataset(config, config.train.split, data_root), data_root)
    elif data_root is not None:  # the run moved to another machine
        config.data.root = str(find_data_root(data_root).resolve())
    device = resolve_device(str(device) if device is not None else config.train.device)
    objective = place_objective(build_objective(config), config, device)
    state = load_checkpoint(run_dir / f"{checkpoint}.pt", device)
    objective.load_state_dict(state["learner"])
    return Run(run_dir, config, objective, checkpoint, int(state["step"]), device)


RESUMABLE = ("train.steps", "train.max_minutes", "train.device", "train.memory_format", "train.compile",
             "train.num_workers", "train.log_every", "train.pin_cores", "train.tensorboard", "data.root")


def check_resumable(saved: dict, new: dict, run_dir: Path) -> None:
    """Refuse to resume with a config that differs from the checkpoint's in anything but the step and
    wall-clock budgets (and where it runs, how often it logs, where the data is): name the keys."""
    saved, new = flatten_config(saved), flatten_config(new)
    changed = [k for k in sorted(set(saved) & set(new)) if saved[k] != new[k] and k not in RESUMABLE]
    if changed:
        diffs = "; ".join(f"{k}: {saved[k]!r} in the checkpoint, {new[k]!r} now" for k in changed)
        raise ValueError(f"cannot resume {run_dir} with another config ({diffs}); only {', '.join(RESUMABLE)} "
                         "may change on --resume: train into another directory instead")


def flatten_config(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and not prefix:  # sections; a section's own tables stay whole
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MetricsLog:
    """``metrics.jsonl`` rows, written as they come (and as TensorBoard scalars with ``train.tensorboard``)."""

    def __init__(self, run_dir: Path, tensorboard: bool, step: int, write: bool = True) -> None:
        self.file = open(run_dir / METRICS, "a") if write else None  # (torchrun: rank 0 writes)
        self.board = None
        if tensorboard and write:
            from .tensorboard import metrics_writer

            self.board = metrics_writer(run_dir, purge_step=step + 1 if step else None)

    def __call__(self, row: dict) -> None:
        if self.file is None:
            return
        self.file.write(json_text(row) + "\n")
        self.file.flush()
        if self.board is not None:
            self.board(row)

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint being resumed, so the log has no repeated steps, and a torn
    last line (a process killed mid-write), with a warning."""
    if not path.exists():
        return
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            LOG.warning(f"{path}: dropping line {n}, cut short by an interrupted write")
            continue
        if row is not None and row["step"] <= step:
            rows.append(line)
    path.write_text("".join(r + "\n" for r in rows))


class RunLock:
    """An exclusive lock on a run directory (``.lock``) for one training process at a time."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"

    def __enter__(self) -> "RunLock":
        import fcntl

        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise RunLockedError(f"another process (pid {holder}) is training in {self.path.parent}; wait for it, "
                                 "or train into another directory") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # closing releases the lock

    @staticmethod
    def holder(run_dir: Path, locks: Path = Path("/proc/locks")) -> int | None:
        """The process training in ``run_dir`` now (the pid holding its lock), found without taking the lock
        (which, even for an instant, could make a trainer starting then refuse the run): from the kernel's table
        of held locks (Linux's ``/proc/locks``). None where no process holds it, and where the system keeps no
        such table (elsewhere than Linux: unknown)."""
        try:
            stat = (run_dir / ".lock").stat()
            table = locks.read_text()
        except OSError:
            return None
        where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
        for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 28805 fe:00:5309376 0 EOF"
            fields = line.split()
            if "->" not in fields and len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == where:
                return int(fields[4])  # (a waiter's line has "->"; the trainer never waits)
        return None


@contextlib.contextmanager
def stop_on_signals(run):
    """SIGINT and SIGTERM (Ctrl-C, preemption) ask the run to stop at the next step boundary, where it
    writes a checkpoint; a second signal stops at once. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum, frame):
        if run.requested == "signal":
            raise KeyboardInterrupt
        run.requested = "signal"
        LOG.warning(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint")

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
