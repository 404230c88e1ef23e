"""metazoo: few-shot meta-learning and multi-task learning behind one interface.

The public names below are imported on first use, so ``import metazoo`` (and ``metazoo --help``,
``--version``, ``list``) does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "create_backbone": "backbones", "list_backbones": "backbones",
    "Config": "config", "load_config": "config",
    "DatasetNotFoundError": "data", "EpisodeSampler": "data", "EpisodeSizeError": "data", "FewShotDataset": "data",
    "Omniglot": "data", "create_dataset": "data", "list_datasets": "data",
    "Episode": "episode", "LabeledSet": "episode",
    "EvalResult": "evaluate", "evaluate": "evaluate", "meta_test": "evaluate",
    "Learner": "learners", "MatchingNet": "learners", "ProtoNet": "learners", "RelationNet": "learners",
    "create_learner": "learners", "create_objective": "learners", "list_learners": "learners",
    "MultiTaskObjective": "multitask", "Objective": "objective",
    "Run": "run", "load_run": "run",
    "meta_train": "trainer",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metazoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
