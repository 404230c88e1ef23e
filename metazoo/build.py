"""From a Config to the objects of a run: dataset splits, the learner, the optimiser."""
from __future__ import annotations

from pathlib import Path

import torch

from .backbones import BACKBONES
from .config import Config
from .data import FewShotDataset, create_dataset
from .learners import LEARNERS, create_learner
from .learners.base import Learner
from .registry import accepted_kwargs


def build_dataset(config: Config, split: str, root: str | Path | None = None) -> FewShotDataset:
    """One split of the configured dataset; ``root`` (e.g. ``--data-root``) wins over ``data.root``."""
    root = root if root is not None else config.data.root
    return create_dataset(config.data.dataset, split=split, root=root, **config.data.options)


def resolve_learner_settings(config: Config, train_set: FewShotDataset) -> None:
    """Fill, in ``config.learner``, the settings a learner takes from the run rather than the paper:
    ``ways`` (from ``train.ways``) for learners with a ways-sized head, ``classes`` (the training
    split's class count) for pretraining heads. The trainer calls this before writing the run's
    ``config.toml``, so evaluating the run later builds the same learner."""
    accepted = accepted_kwargs(LEARNERS.get_factory(config.learner.get("name", "protonet")))
    if "ways" in accepted:
        config.learner.setdefault("ways", config.train.ways)
    if "classes" in accepted:
        config.learner.setdefault("classes", train_set.num_classes)


def build_learner(config: Config, dataset: FewShotDataset) -> Learner:
    """The configured learner; backbone input channels and image size default to the dataset's."""
    settings = dict(config.backbone)
    name = settings.pop("name", "conv4")
    accepted = accepted_kwargs(BACKBONES.get_factory(name))
    channels, size, _ = dataset.image_shape
    for key, value in (("in_channels", channels), ("image_size", size)):
        if key in accepted:
            settings.setdefault(key, value)
    learner_settings = dict(config.learner)
    learner_name = learner_settings.pop("name", "protonet")
    if "ways" in accepted_kwargs(LEARNERS.get_factory(learner_name)):  # learners with a ways-sized head
        learner_settings.setdefault("ways", config.train.ways)
    return create_learner(learner_name, backbone={"name": name, **settings}, **learner_settings)


def build_optimizer(config: Config, learner: Learner):
    """Optimiser and step-wise learning-rate schedule from ``[optim]``."""
    o = config.optim
    params = [p for p in learner.parameters() if p.requires_grad]
    if o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        raise ValueError(f"unknown optimiser {o.name!r}; valid: adam, sgd")
    if o.schedule == "linear":
        steps = config.train.steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    elif o.schedule == "step":
        decays = o.step_size > 0
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=o.step_size if decays else 1, gamma=o.gamma if decays else 1.0)
    else:
        raise ValueError(f"unknown learning-rate schedule {o.schedule!r}; valid: step, linear")
    return optimizer, scheduler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
