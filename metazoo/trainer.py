"""The one meta-training loop, for every objective.

Step ``s`` (1-based) trains on items ``(s-1)*B .. s*B-1`` of the objective's seeded training items
(B = meta-batch size; episodes for a few-shot learner, one task's data batch each for multi-task
learning), so a resumed run sees exactly the items it would have seen. No global state:
everything a run needs is built from its Config, which makes splitting a meta-batch across
processes a matter of giving each rank its share of those item indices.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .build import (build_dataset, build_objective, build_optimizer, place_objective, resolve_config,
                    resolve_device)
from .config import TRAIN_AUGMENTATIONS, Config, dump_toml
from .data.storage import atomic_save
from .errors import Interrupted, NonFiniteLossError, RankLostError, RunExistsError, RunLockedError  # noqa: F401
from .evaluate import EvalResult, evaluate, write_result
from .objective import Objective, autocast
from .optim import clip_gradients
from .learners import objective_factory
from .registry import PROTOCOLS, load_plugins
from .run import (BEST, CONFIG, LAST, METRICS, MetricsLog, RunLock, check_resumable, load_checkpoint, load_run,
                  stop_on_signals, truncate_metrics)

LOG = logging.getLogger("metazoo")


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
    stopped: str | None = None  # the reason to stop that the ranks agreed on (STOPS)
    requested: str | None = None  # this rank's own reason (the budget, a signal), until they agree on it
    agreed: int | None = None  # the STOPS index the last step's reduction carried (None: not carried, ask)
    host_group: object = None  # torchrun: the group that agrees on stopping without a device sync
    check_every_step: bool = True  # the loss is checked every step (CPU), else at log and validation steps
    bad_step: torch.Tensor | None = None  # on the device: the first step whose loss was not finite (0: none yet)
    bad_loss: torch.Tensor | None = None

    def seconds(self) -> float:
        """Wall-clock seconds this run has trained, over all its sessions."""
        return self.seconds_before + time.perf_counter() - self.started

    def over_budget(self) -> bool:
        budget = self.config.train.max_minutes
        return budget > 0 and self.seconds() >= 60 * budget

    def checkpoint(self, path: Path) -> None:
        """Write a checkpoint (rank 0 only under torchrun; the ranks hold the same weights)."""
        if distributed.is_main():
            atomic_save({"step": self.step, "best": self.best, "learner": self.objective.state_dict(),
                         "config": self.config.to_dict(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "train_seconds": self.seconds()}, path)

    def watch(self, loss: torch.Tensor) -> None:
        """Note the first step whose training loss is not finite, where the loss is (no host sync)."""
        if self.bad_step is None:
            self.bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
            self.bad_loss = torch.zeros((), device=loss.device)
        fresh = ~torch.isfinite(loss) & (self.bad_step == 0)
        self.bad_step = torch.where(fresh, self.step, self.bad_step)
        self.bad_loss = torch.where(fresh, loss.detach().float(), self.bad_loss)

    def check_losses(self) -> None:
        """Raise if a loss was not finite (the CPU checks every step, before the optimiser steps; a GPU at
        log and validation steps and before a checkpoint, so that no step waits for the device)."""
        if self.bad_step is None or not int(self.bad_step):
            return
        step = int(self.bad_step)
        where = "there" if step == self.step else \
            f"at step {self.step}, where it was checked (on {self.device.type}, at log and validation steps)"
        raise NonFiniteLossError(f"step {step}: the training loss is {float(self.bad_loss)}; the run stopped {where}, "
                                 f"and its last good checkpoint is {self.run_dir / LAST} (step {self.validated}). "
                                 "Lower optim.lr, or check the data, before resuming.")


def meta_train(config: Config, run_dir: str | Path, resume: bool = False, data_root: str | Path | None = None,
               progress: bool = True, test: bool = True) -> dict:
    """Meta-train the configured objective, validating and checkpointing into ``run_dir``.

    Writes ``config.toml`` (every resolved value), ``metrics.jsonl``, ``last.pt`` and ``best.pt``
    (by validation accuracy), and, if ``test``, evaluates the ``eval.checkpoint`` weights with the
    ``[eval]`` protocol into ``result.json``. Nothing is written until the run could be built (a
    bad setting, missing data or an impossible test episode leaves no directory behind); a resumed
    run must have the checkpoint's config but for its budgets (:data:`RESUMABLE`); one process at a
    time trains in a directory; SIGINT and SIGTERM stop at the next step with a checkpoint
    (:class:`Interrupted`); a non-finite loss stops the run before the optimiser steps
    (:class:`NonFiniteLossError`; on a GPU, at the next log or validation step). Returns a summary dict.
    See docs/reliability.md. Under torchrun (``WORLD_SIZE`` > 1) the processes split every step's items and
    the evaluation episodes, and rank 0 alone writes (docs/distributed.md).
    """
    run_dir = Path(run_dir)
    if (run_dir / LAST).exists() and not resume:
        raise RunExistsError(f"{run_dir} already holds a run ({LAST}); pass --resume to continue it, "
                             "or choose another run directory")
    if resume and not (run_dir / LAST).exists() and distributed.is_main():
        LOG.warning(f"--resume: {run_dir} holds no checkpoint ({LAST}) yet, so the run starts from step 0")
    check_start(config)
    if config.train.pin_cores:
        cores = distributed.pin_cores(torch.get_num_threads())
        if cores is not None:
            LOG.info(f"rank {distributed.rank()}: bound to cores {cores} (train.pin_cores)")
    with distributed.session(resolve_device(config.train.device)) as host_group:
        run = prepare(config, run_dir, data_root, test)
        run.host_group = host_group
        with own(run_dir):
            begin(run)
            with stop_on_signals(run), lost_ranks(run):
                train_steps(run, progress)
        distributed.barrier()  # rank 0's checkpoints are written before any rank reads them
        if run.stopped == "signal":
            raise Interrupted(f"stopped at step {run.step} by a signal, with a checkpoint; continue with --resume "
                              f"(e.g. metazoo train CONFIG -o {run_dir} --resume)")
        summary = {"run_dir": str(run_dir), "steps": run.step, "best": run.best, "train_seconds": run.seconds(),
                   "stopped": run.stopped}
        if test:
            summary["test"] = test_run(run_dir, run.config.eval.checkpoint, data_root, progress).to_dict()
    return summary


@contextlib.contextmanager
def lost_ranks(run: Training):
    """Under torchrun: a process of the run that dies fails the others' next collective
    (:class:`RankLostError`); say at which step, and where the run continues from."""
    try:
        yield
    except RankLostError as err:
        last = f"its last checkpoint is {run.run_dir / LAST} (step {run.validated})" if run.validated else \
            "it has no checkpoint yet"
        raise RankLostError(f"{err}; stopped at step {run.step} of {run.config.train.steps}, and {last}: once every "
                            "process can run, continue with the same torchrun command and --resume") from err


def check_start(config: Config) -> None:
    """What the config alone settles, before the data are read (a minute or more at a split's first use) and
    the processes join: the objective's own (``check_config``: sound under ``train.amp``; a learner with a head of
    fixed size, episodes of its ways for training, validation and test); under torchrun, the meta-batch divides by
    the processes, and the objective declares its step loss the mean over the step's items
    (``loss_is_item_mean``: so the mean of the ranks' means); the multi-task objective's (task weightings, a
    penalty) is not."""
    distributed.check_meta_batch(config.train.meta_batch_size)
    load_plugins(config.plugins)
    name = config.learner.get("name", "protonet")
    objective_factory(name).check_config(config, name)
    if distributed.world_size() > 1 and not objective_factory(name).loss_is_item_mean:
        raise ValueError(f"learner {name!r} cannot train across processes: its step's loss is not a mean over "
                         "the step's items (task weightings, a penalty); train it in one process")


@contextlib.contextmanager
def own(run_dir: Path):
    """The writing process (rank 0; the only one outside torchrun) creates and locks the run directory and
    removes the half-written files of a killed process; the other ranks only read its checkpoint."""
    if not distributed.is_main():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        yield


def begin(run: Training) -> None:
    """Restore ``last.pt`` if there is one (every rank), else drop the rows of a run that died before its
    first checkpoint; then write the resolved ``config.toml``."""
    if (run.run_dir / LAST).exists():
        restore(run)
    elif distributed.is_main():
        truncate_metrics(run.run_dir / METRICS, 0)
    if distributed.is_main():
        (run.run_dir / CONFIG).write_text(dump_toml(run.config.to_dict()))


def prepare(config: Config, run_dir: Path, data_root: str | Path | None, test: bool = True) -> Training:
    """Build the run's objects from ``config``: data, resolved config, objective, optimiser, items (and
    the test items, so that an impossible test episode fails before training rather than after)."""
    train_set = build_dataset(config, config.train.split, data_root)
    config = resolve_config(config, train_set, data_root)
    device = resolve_device(config.train.device)
    if train_set.images.device.type != device.type and distributed.is_main():  # (see build.image_device)
        LOG.info(f"the images stay on the CPU (train.num_workers = {config.train.num_workers}, or an objective that "
                 f"indexes them there), and every step's items are copied to {device}")
    torch.manual_seed(config.train.seed)
    objective = place_objective(build_objective(config), config, device)
    if config.train.compile:
        compiled = objective.compile_training()
        if distributed.is_main():
            LOG.info(f"train.compile: {', '.join(compiled)} compiled at the first step (minutes on a CPU)" if compiled
                     else f"train.compile: learner {config.learner['name']!r} declares nothing faster compiled")
    optimizer, scheduler = build_optimizer(config, objective)
    items = objective.training_items(train_set, config)
    protocol = PROTOCOLS.create(config.eval.protocol)
    protocol.subject(objective)
    val_items = protocol.items(config, "val", data_root, train_set)
    if test:
        protocol.items(config, "test", data_root, train_set)
    return Training(config, run_dir, objective, optimizer, scheduler, items, val_items, device,
                    check_every_step=device.type == "cpu")


def restore(run: Training) -> None:
    """Continue from ``last.pt``: weights, optimiser, schedule, step and best; later metric rows go. The
    checkpoint's config must be the run's but for :data:`RESUMABLE` settings."""
    state = load_checkpoint(run.run_dir / LAST, run.device)
    check_resumable(state.get("config", {}), run.config.to_dict(), run.run_dir)
    run.objective.load_state_dict(state["learner"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.best = state["step"], state["best"]
    run.validated, run.seconds_before, run.started = run.step, state.get("train_seconds", 0.0), time.perf_counter()
    if distributed.is_main():
        truncate_metrics(run.run_dir / METRICS, run.step)


STOPS = (None, "budget", "signal")  # reasons to stop, in the order the ranks agree on them (the last wins)


def stop_flags(run: Training) -> list[bool]:
    """This rank's reason to stop now, as flags for the agreement in the step's reduction: flag k is raised when
    the reason is ``STOPS[k + 1]`` or a later one, so the number of flags any rank raised is the agreed index."""
    if run.over_budget() and STOPS.index(run.requested) < STOPS.index("budget"):
        run.requested = "budget"
    return [STOPS.index(run.requested) > k for k in range(len(STOPS) - 1)]


def train_steps(run: Training, progress: bool) -> None:
    """Steps ``run.step + 1 .. train.steps``: log every ``log_every``, validate and checkpoint every
    ``val_every`` and at the end; with ``train.max_minutes``, stop at the first step past the budget
    (validating and checkpointing there) and record the stop."""
    t = run.config.train
    bar = tqdm(total=t.steps, initial=run.step, desc="train", disable=not (progress and distributed.is_main()),
               dynamic_ncols=True)
    first, shown = run.step, None if bar.disable else bar
    with MetricsLog(run.run_dir, t.tensorboard, run.step, write=distributed.is_main()) as metrics:
        for step, batch in enumerate(step_loader(run), run.step + 1):
            if run.agreed is None:  # the first step, or the last reduction could not carry the agreement
                run.agreed = distributed.most(sum(stop_flags(run)), run.host_group)
            run.stopped, run.agreed = STOPS[run.agreed], None
            if run.stopped:
                break
            run.step = step
            stats = train_step(run, batch)
            bar.update()
            if step % t.log_every == 0 or step == t.steps:
                run.check_losses()
                row = {"step": step, "split": "train", **{k: float(v) for k, v in stats.items()},
                       "lr": run.scheduler.get_last_lr()[0], "seconds": run.seconds()}
                metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
            if (t.val_every and step % t.val_every == 0) or step == t.steps:
                validate(run, metrics, shown)
                run.agreed = None  # the budget may have run out while validating: ask before the next step
        finish(run, metrics, shown, first)
    bar.close()


def step_loader(run: Training) -> torch.utils.data.DataLoader:
    """The items of steps ``run.step + 1 ..``: B per step, or under torchrun this rank's share of them (items
    ``r, r + R, ...`` of each step's B), batched by step."""
    t = run.config.train
    share = t.meta_batch_size // distributed.world_size()
    indices = distributed.shard(range(run.step * t.meta_batch_size, t.steps * t.meta_batch_size))
    return torch.utils.data.DataLoader(torch.utils.data.Subset(run.items, indices), batch_size=share,
                                       collate_fn=list, num_workers=t.num_workers)


def finish(run: Training, metrics: "MetricsLog", bar, first: int) -> None:
    """After the last step of a session: validate or checkpoint where a stop left the run, and record the stop."""
    t = run.config.train
    if run.stopped == "budget" and run.validated != run.step:
        validate(run, metrics, bar)
    elif run.stopped == "signal" and run.validated != run.step:
        run.check_losses()
        run.checkpoint(run.run_dir / LAST)  # quickly: no validation when asked to stop
        run.validated = run.step
    if run.stopped and run.step > first:  # (a session that finds its budget spent adds nothing)
        metrics({"step": run.step, "split": "stop", "reason": run.stopped, "seconds": run.seconds(),
                 "max_minutes": t.max_minutes})
        if run.stopped == "budget" and distributed.is_main():
            LOG.info(f"stopped at step {run.step} of {t.steps}: the {t.max_minutes:g}-minute budget is spent "
                     "(resume with a larger train.max_minutes to continue)")


def train_step(run: Training, batch: list) -> dict:
    """One optimiser step on one meta-batch (under torchrun, this rank's share of it, the gradients averaged
    over the ranks), its forward and backward passes under ``train.amp``; the step's detached metrics. A
    non-finite loss raises before the optimiser steps on the CPU, so every checkpoint holds finite weights
    (elsewhere :meth:`Training.check_losses` guards them)."""
    run.objective.train()
    run.optimizer.zero_grad(set_to_none=True)
    with autocast(run.device, run.config.train.amp):
        stats = run.objective.meta_backward([item.to(run.device) for item in batch])
    stats, raised = distributed.reduce_step(run.objective.parameters(), run.objective.buffers(), stats,
                                            len(batch) / run.config.train.meta_batch_size, stop_flags(run))
    run.agreed = None if raised is None else sum(raised)  # whether the ranks go on to the next step
    run.watch(stats["loss"])
    if run.check_every_step:
        run.check_losses()
    clip_gradients(run.objective, run.config.optim)
    run.optimizer.step()
    run.scheduler.step()
    return stats


def validate(run: Training, metrics: "MetricsLog", bar=None) -> EvalResult:
    """Evaluate on the fixed validation items and log it; checkpoint ``best.pt`` when better, and ``last.pt``
    (never non-finite weights: a step can take finite losses to infinite weights, e.g. ``optim.lr = inf``)."""
    run.check_losses()
    if not all(bool(torch.isfinite(p).all()) for p in run.objective.parameters()):
        raise NonFiniteLossError(f"step {run.step}: the weights are no longer finite (the loss was finite); the "
                                 f"last good checkpoint is {run.run_dir / LAST} (step {run.validated}). Lower "
                                 "optim.lr, or check the data, before resuming.")
    result = evaluate(run.objective, run.val_items, run.config.eval.protocol, run.device, bar is not None,
                      run.config.train.amp)
    if result.mean > run.best["accuracy"]:
        run.best = {"step": run.step, "accuracy": result.mean}
        run.checkpoint(run.run_dir / BEST)
    run.checkpoint(run.run_dir / LAST)
    run.validated = run.step
    metrics({"step": run.step, "split": "val", "loss": result.loss, "accuracy": result.mean, "ci95": result.ci95,
             "seconds": run.seconds()})
    if distributed.is_main():
        (bar.write if bar is not None else LOG.info)(
            f"step {run.step}: val {100 * result.mean:.2f} +- {100 * result.ci95:.2f}% "
            f"(best {100 * run.best['accuracy']:.2f}% at step {run.best['step']})")
    return result


def test_run(run_dir: str | Path, checkpoint: str = "best", data_root: str | Path | None = None,
             progress: bool = False, overrides: list[str] | tuple[str, ...] = (), write: bool = True,
             out: str | Path | None = None) -> EvalResult:
    """Reload a run (:func:`~metazoo.run.load_run`), evaluate it on the test items of its ``[eval]``
    protocol, and (``write``) record the result in the run (``result.json``, ``results.jsonl``), with
    the checkpoint, its step, the training split and any ``overrides`` (test-time settings; where and in what
    arithmetic it ran are the result's ``device`` and ``amp``, not overrides). ``out``: write it in that folder
    instead (made if missing), naming the evaluated run or ``zoo:`` entry as ``protocol["run"]``: the one way a
    model-zoo entry's re-test is kept. Under torchrun the processes share the test episodes and rank 0 writes."""
    run = load_run(run_dir, checkpoint, overrides, data_root)
    name = run.config.learner.get("name", "protonet")
    objective_factory(name).check_config(run.config, name)
    rule = PROTOCOLS.create(run.config.eval.protocol)
    rule.subject(run.objective)  # the protocol evaluates this kind of objective: said before the data are read
    items = rule.items(run.config, "test", data_root)
    with distributed.session(run.device):
        result = evaluate(run.objective, items, run.config.eval.protocol, run.device, progress, run.config.train.amp)
    settings = [o for o in overrides if not o.replace(" ", "").startswith(("train.device=", "train.amp=",
                                                                          "train.memory_format=", "train.compile="))]
    extra = {"checkpoint": checkpoint, "step": run.step, "train_split": run.config.train.split,
             **{f"train_{key}": getattr(run.config.train, key) for key in TRAIN_AUGMENTATIONS
                if getattr(run.config.train, key)},
             **({"overrides": settings} if settings else {}), **({"run": str(run_dir)} if out is not None else {})}
    result = EvalResult(**{**result.to_dict(), "protocol": {**result.protocol, **extra}})
    if (write or out is not None) and distributed.is_main():
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
        write_result(result, run.dir if out is None else Path(out))
    return result
