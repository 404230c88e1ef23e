"""The one meta-training loop, for every learner.

Step ``s`` (1-based) trains on items ``(s-1)*B .. s*B-1`` of the seeded training sampler
(B = meta-batch size; the items are episodes, or for multi-task learning one task's data batch
each), so a resumed run sees exactly the items it would have seen. No global
state: everything a run needs is built from its Config, which makes splitting a meta-batch
across processes a matter of giving each rank its share of those episode indices.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .build import (build_dataset, build_evaluation_sampler, build_learner, build_optimizer, build_training_sampler,
                    resolve_device, resolve_learner_settings)
from .config import Config, dump_toml
from .data.storage import atomic_save
from .evaluate import evaluate, write_result

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.toml"


class RunExistsError(FileExistsError):
    pass


def meta_train(config: Config, run_dir: str | Path, resume: bool = False, data_root: str | Path | None = None,
               progress: bool = True, test: bool = True) -> dict:
    """Meta-train the configured learner, validating and checkpointing into ``run_dir``.

    Writes ``config.toml`` (resolved), ``metrics.jsonl``, ``last.pt`` and ``best.pt`` (by
    validation accuracy), and, if ``test``, evaluates the ``eval.checkpoint`` weights with the
    ``[eval]`` protocol into ``result.json``. Returns a summary dict.
    """
    run_dir = Path(run_dir)
    t, device = config.train, resolve_device(config.train.device)
    if (run_dir / LAST).exists() and not resume:
        raise RunExistsError(f"{run_dir} already holds a run ({LAST}); pass --resume to continue it, "
                             "or choose another run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set = build_dataset(config, "train", data_root)
    config = copy.deepcopy(config)  # the caller's config is left as it was
    resolve_learner_settings(config, train_set)
    (run_dir / CONFIG).write_text(dump_toml(config.to_dict()))

    torch.manual_seed(t.seed)
    learner = build_learner(config, train_set).to(device)
    optimizer, scheduler = build_optimizer(config, learner)
    train_items = build_training_sampler(config, train_set, learner)  # episodes, or task batches
    e = config.eval
    val_items = build_evaluation_sampler(config, "val", data_root, train_set)

    start, best = 0, {"step": 0, "accuracy": -1.0}
    if resume and (run_dir / LAST).exists():
        state = torch.load(run_dir / LAST, map_location=device, weights_only=False)
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best = state["step"], state["best"]
        _truncate_metrics(run_dir / METRICS, start)

    def checkpoint(step: int, path: Path) -> None:
        atomic_save({"step": step, "best": best, "learner": learner.state_dict(), "config": config.to_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)

    indices = range(start * t.meta_batch_size, t.steps * t.meta_batch_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_items, indices), batch_size=t.meta_batch_size,
                                         collate_fn=list, num_workers=t.num_workers)
    bar = tqdm(total=t.steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
    clock, step = time.perf_counter(), start
    with open(run_dir / METRICS, "a") as metrics:
        for step, batch in enumerate(loader, start + 1):
            learner.train()
            optimizer.zero_grad(set_to_none=True)
            stats = learner.meta_backward([item.to(device) for item in batch])
            optimizer.step()
            scheduler.step()
            bar.update()
            if step % t.log_every == 0 or step == t.steps:
                row = {"step": step, "split": "train", **{k: float(v) for k, v in stats.items()},
                       "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - clock}
                _write(metrics, row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
            if (t.val_every and step % t.val_every == 0) or step == t.steps:
                result = evaluate(learner, val_items, bn=e.bn, device=device, protocol=e.protocol)
                _write(metrics, {"step": step, "split": "val", "loss": result.loss, "accuracy": result.mean,
                                 "ci95": result.ci95, "seconds": time.perf_counter() - clock})
                if result.mean > best["accuracy"]:
                    best = {"step": step, "accuracy": result.mean}
                    checkpoint(step, run_dir / BEST)
                checkpoint(step, run_dir / LAST)
                bar.write(f"step {step}: val {100 * result.mean:.2f} +- {100 * result.ci95:.2f}% "
                          f"(best {100 * best['accuracy']:.2f}% at step {best['step']})")
    bar.close()
    summary = {"run_dir": str(run_dir), "steps": step, "best": best,
               "train_seconds": time.perf_counter() - clock}
    if test:
        weights = torch.load(run_dir / (BEST if e.checkpoint == "best" else LAST), map_location=device,
                             weights_only=False)
        learner.load_state_dict(weights["learner"])
        result = evaluate(learner, build_evaluation_sampler(config, "test", data_root, train_set), bn=e.bn,
                          device=device, progress=progress, protocol=e.protocol)
        result = dataclasses.replace(result, protocol={**result.protocol, "checkpoint": e.checkpoint,
                                                       "step": weights["step"]})
        write_result(result, run_dir)
        summary["test"] = result.to_dict()
    return summary


def _write(f, row: dict) -> None:
    f.write(json.dumps(row) + "\n")
    f.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint being resumed, so the log has no repeated steps."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))
