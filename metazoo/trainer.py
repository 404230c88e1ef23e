"""The one meta-training loop, for every objective.

Step ``s`` (1-based) trains on items ``(s-1)*B .. s*B-1`` of the objective's seeded training items
(B = meta-batch size; episodes for a few-shot learner, one task's data batch each for multi-task
learning), so a resumed run sees exactly the items it would have seen. No global state:
everything a run needs is built from its Config, which makes splitting a meta-batch across
processes a matter of giving each rank its share of those item indices.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .build import build_dataset, build_objective, build_optimizer, resolve_config, resolve_device
from .config import Config, dump_toml
from .data.storage import atomic_save
from .evaluate import EvalResult, evaluate, write_result
from .objective import Objective
from .registry import PROTOCOLS
from .run import BEST, CONFIG, LAST, METRICS, load_checkpoint, load_run

LOG = logging.getLogger("metazoo")


class RunExistsError(FileExistsError):
    pass


@dataclass
class Training:
    """Everything one meta-training run holds while it trains."""

    config: Config
    run_dir: Path
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: object
    items: torch.utils.data.Dataset
    val_items: object
    device: torch.device
    step: int = 0
    best: dict = field(default_factory=lambda: {"step": 0, "accuracy": -1.0})
    seconds_before: float = 0.0  # training seconds of earlier sessions (a resumed run)
    started: float = field(default_factory=time.perf_counter)
    validated: int = 0  # the step of the latest checkpoint
    stopped: str | None = None

    def seconds(self) -> float:
        """Wall-clock seconds this run has trained, over all its sessions."""
        return self.seconds_before + time.perf_counter() - self.started

    def over_budget(self) -> bool:
        budget = self.config.train.max_minutes
        return budget > 0 and self.seconds() >= 60 * budget

    def checkpoint(self, path: Path) -> None:
        atomic_save({"step": self.step, "best": self.best, "learner": self.objective.state_dict(),
                     "config": self.config.to_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "train_seconds": self.seconds()}, path)


def meta_train(config: Config, run_dir: str | Path, resume: bool = False, data_root: str | Path | None = None,
               progress: bool = True, test: bool = True) -> dict:
    """Meta-train the configured objective, validating and checkpointing into ``run_dir``.

    Writes ``config.toml`` (every resolved value), ``metrics.jsonl``, ``last.pt`` and ``best.pt``
    (by validation accuracy), and, if ``test``, evaluates the ``eval.checkpoint`` weights with the
    ``[eval]`` protocol into ``result.json``. Nothing is written until the run could be built (a
    bad setting or missing data leaves no directory behind). Returns a summary dict.
    """
    run_dir = Path(run_dir)
    if (run_dir / LAST).exists() and not resume:
        raise RunExistsError(f"{run_dir} already holds a run ({LAST}); pass --resume to continue it, "
                             "or choose another run directory")
    run = prepare(config, run_dir, data_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(dump_toml(run.config.to_dict()))
    if resume and (run_dir / LAST).exists():
        restore(run)
    train_steps(run, progress)
    summary = {"run_dir": str(run_dir), "steps": run.step, "best": run.best, "train_seconds": run.seconds(),
               "stopped": run.stopped}
    if test:
        summary["test"] = test_run(run_dir, run.config.eval.checkpoint, data_root, progress).to_dict()
    return summary


def prepare(config: Config, run_dir: Path, data_root: str | Path | None) -> Training:
    """Build the run's objects from ``config``: data, resolved config, objective, optimiser, items."""
    train_set = build_dataset(config, config.train.split, data_root)
    config = resolve_config(config, train_set, data_root)
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    objective = build_objective(config).to(device)
    optimizer, scheduler = build_optimizer(config, objective)
    items = objective.training_items(train_set, config)
    val_items = PROTOCOLS.create(config.eval.protocol).items(config, "val", data_root, train_set)
    return Training(config, run_dir, objective, optimizer, scheduler, items, val_items, device)


def restore(run: Training) -> None:
    """Continue from ``last.pt``: weights, optimiser, schedule, step and best; later metric rows go."""
    state = load_checkpoint(run.run_dir / LAST, run.device)
    run.objective.load_state_dict(state["learner"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.best = state["step"], state["best"]
    run.validated, run.seconds_before, run.started = run.step, state.get("train_seconds", 0.0), time.perf_counter()
    _truncate_metrics(run.run_dir / METRICS, run.step)


def train_steps(run: Training, progress: bool) -> None:
    """Steps ``run.step + 1 .. train.steps``: log every ``log_every``, validate and checkpoint every
    ``val_every`` and at the end; with ``train.max_minutes``, stop at the first step past the budget
    (validating and checkpointing there) and record the stop."""
    t = run.config.train
    indices = range(run.step * t.meta_batch_size, t.steps * t.meta_batch_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(run.items, indices), batch_size=t.meta_batch_size,
                                         collate_fn=list, num_workers=t.num_workers)
    bar = tqdm(total=t.steps, initial=run.step, desc="train", disable=not progress, dynamic_ncols=True)
    with MetricsLog(run.run_dir, t.tensorboard, run.step) as metrics:
        for step, batch in enumerate(loader, run.step + 1):
            if run.over_budget():
                run.stopped = "budget"
                break
            run.step = step
            stats = train_step(run, batch)
            bar.update()
            if step % t.log_every == 0 or step == t.steps:
                row = {"step": step, "split": "train", **{k: float(v) for k, v in stats.items()},
                       "lr": run.scheduler.get_last_lr()[0], "seconds": run.seconds()}
                metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
            if (t.val_every and step % t.val_every == 0) or step == t.steps:
                validate(run, metrics, bar if progress else None)
        if run.stopped and run.validated != run.step:
            validate(run, metrics, bar if progress else None)
        if run.stopped:
            metrics({"step": run.step, "split": "stop", "reason": run.stopped, "seconds": run.seconds(),
                     "max_minutes": t.max_minutes})
            LOG.info(f"stopped at step {run.step} of {t.steps}: the {t.max_minutes:g}-minute budget is spent "
                     "(resume with a larger train.max_minutes to continue)")
    bar.close()


def train_step(run: Training, batch: list) -> dict:
    """One optimiser step on one meta-batch; the step's detached metrics."""
    run.objective.train()
    run.optimizer.zero_grad(set_to_none=True)
    stats = run.objective.meta_backward([item.to(run.device) for item in batch])
    run.optimizer.step()
    run.scheduler.step()
    return stats


def validate(run: Training, metrics: "MetricsLog", bar=None) -> EvalResult:
    """Evaluate on the fixed validation items and log it; checkpoint ``best.pt`` when better, and ``last.pt``."""
    result = evaluate(run.objective, run.val_items, run.config.eval.protocol, run.device, bar is not None)
    if result.mean > run.best["accuracy"]:
        run.best = {"step": run.step, "accuracy": result.mean}
        run.checkpoint(run.run_dir / BEST)
    run.checkpoint(run.run_dir / LAST)
    run.validated = run.step
    metrics({"step": run.step, "split": "val", "loss": result.loss, "accuracy": result.mean, "ci95": result.ci95,
             "seconds": run.seconds()})
    (bar.write if bar is not None else LOG.info)(
        f"step {run.step}: val {100 * result.mean:.2f} +- {100 * result.ci95:.2f}% "
        f"(best {100 * run.best['accuracy']:.2f}% at step {run.best['step']})")
    return result


def test_run(run_dir: str | Path, checkpoint: str = "best", data_root: str | Path | None = None,
             progress: bool = False, overrides: list[str] | tuple[str, ...] = (), write: bool = True) -> EvalResult:
    """Reload a run (:func:`~metazoo.run.load_run`), evaluate it on the test items of its ``[eval]``
    protocol, and (``write``) record the result in the run (``result.json``, ``results.jsonl``), with
    the checkpoint, its step, the training split and any ``overrides`` (test-time settings)."""
    run = load_run(run_dir, checkpoint, overrides, data_root)
    rule = PROTOCOLS.create(run.config.eval.protocol)
    items = rule.items(run.config, "test", data_root)
    result = evaluate(run.objective, items, run.config.eval.protocol, run.device, progress)
    extra = {"checkpoint": checkpoint, "step": run.step, "train_split": run.config.train.split,
             **({"overrides": list(overrides)} if overrides else {})}
    result = EvalResult(**{**result.to_dict(), "protocol": {**result.protocol, **extra}})
    if write:
        write_result(result, run.dir)
    return result


class MetricsLog:
    """``metrics.jsonl`` rows, written as they come (and as TensorBoard scalars with ``train.tensorboard``)."""

    def __init__(self, run_dir: Path, tensorboard: bool, step: int) -> None:
        self.file = open(run_dir / METRICS, "a")
        self.board = None
        if tensorboard:
            from .tensorboard import metrics_writer

            self.board = metrics_writer(run_dir, purge_step=step + 1 if step else None)

    def __call__(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.board is not None:
            self.board(row)

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint being resumed, so the log has no repeated steps."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))
