"""A run directory is an artefact: everything needed to reload, re-test and explain a trained model.

It holds ``config.toml`` (every resolved value, the data root included), ``last.pt`` and
``best.pt`` (written atomically), ``metrics.jsonl`` (training and validation rows), ``result.json``
(the latest evaluation with its protocol) and ``results.jsonl`` (every evaluation).
:func:`load_run` is the one way back from a directory to a trained objective; the trainer (to
test its best weights) and ``metazoo eval`` use it.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import build_dataset, build_objective, resolve_config, resolve_device
from .config import Config, apply_overrides, from_dict
from .objective import Objective

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
    """A checkpoint written by the trainer, loaded as data only (``weights_only``: no code runs)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the run has no such checkpoint (best.pt or last.pt)")
    return torch.load(path, map_location=device, weights_only=True)


def read_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A run directory's ``config.toml`` with dotted overrides applied (checked as any config)."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a metazoo run directory?")
    return from_dict(apply_overrides(tomllib.loads(path.read_text()), list(overrides)))


def load_run(run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | tuple[str, ...] = (),
             data_root: str | Path | None = None, device: str | torch.device | None = None) -> Run:
    """Reload a run: its objective with the ``checkpoint`` weights (``best`` or ``last``) and its fully
    resolved config. ``overrides`` (``key=value``) change settings for this use, e.g. a test-time
    ``learner.lr``; ``data_root`` replaces the recorded data root (a run moved to another machine);
    ``device`` defaults to the run's ``train.device``. Runs written before config.toml held resolved
    values are resolved again from their training split."""
    run_dir = Path(run_dir)
    config = read_config(run_dir, overrides)
    if data_root is not None or not config.data.root:  # moved, or written before the root was recorded
        config = resolve_config(config, build_dataset(config, "train", data_root), data_root)
    device = resolve_device(str(device) if device is not None else config.train.device)
    objective = build_objective(config).to(device)
    state = load_checkpoint(run_dir / f"{checkpoint}.pt", device)
    objective.load_state_dict(state["learner"])
    return Run(run_dir, config, objective, checkpoint, int(state["step"]), device)
