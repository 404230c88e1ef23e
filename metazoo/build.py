"""From a Config to the objects of a run: dataset splits, the learner, the optimiser."""
from __future__ import annotations

from pathlib import Path

import torch

from .backbones import BACKBONES
from .config import Config
from .data import EpisodeSampler, FewShotDataset, create_dataset
from .learners import LEARNERS, create_learner
from .learners.base import Learner
from .multitask.tasks import (TaskBatchSampler, TaskEvalSampler, TaskSet, alphabet_tasks, attribute_tasks,
                              class_group_tasks)
from .registry import accepted_kwargs


def build_dataset(config: Config, split: str, root: str | Path | None = None) -> FewShotDataset:
    """One split of the configured dataset; ``root`` (e.g. ``--data-root``) wins over ``data.root``."""
    root = root if root is not None else config.data.root
    return create_dataset(config.data.dataset, split=split, root=root, **config.data.options)


TASKSETS = {"alphabets": alphabet_tasks, "attributes": attribute_tasks, "class_groups": class_group_tasks}


def build_taskset(config: Config, train_set: FewShotDataset) -> TaskSet:
    """The ``[multitask] tasks`` task set over the training split's images."""
    m = config.multitask
    if m.tasks not in TASKSETS:
        raise ValueError(f"unknown task set {m.tasks!r}; valid: {', '.join(TASKSETS)}")
    options = {"groups": m.groups} if "groups" in accepted_kwargs(TASKSETS[m.tasks]) else {}
    return TASKSETS[m.tasks](train_set, fractions=tuple(m.holdout), seed=config.train.seed, **options)


def resolve_learner_settings(config: Config, train_set: FewShotDataset) -> None:
    """Fill, in ``config.learner``, the settings a learner takes from the run rather than the paper:
    ``ways`` (from ``train.ways``) for learners with a ways-sized head, ``classes`` (the training
    split's class count) for pretraining heads, ``outputs`` and ``losses`` (from the task set) for
    multi-task learners. The trainer calls this before writing the run's ``config.toml``, so
    evaluating the run later builds the same learner."""
    accepted = accepted_kwargs(LEARNERS.get_factory(config.learner.get("name", "protonet")))
    if "ways" in accepted:
        config.learner.setdefault("ways", config.train.ways)
    if "classes" in accepted:
        config.learner.setdefault("classes", train_set.num_classes)
    if "outputs" in accepted and config.multitask.tasks:
        tasks = build_taskset(config, train_set).tasks
        config.learner.setdefault("outputs", [t.outputs for t in tasks])
        config.learner.setdefault("losses", [t.loss for t in tasks])


def build_training_sampler(config: Config, train_set: FewShotDataset, learner: Learner):
    """What the trainer draws ``train.meta_batch_size`` items of per step: episodes, or (with
    ``[multitask] tasks``) one task's data batch per item, a step's items being distinct tasks."""
    t, m = config.train, config.multitask
    wanted = "tasks" if m.tasks else "episodes"
    if learner.trains_on != wanted:
        raise ValueError(f"learner {config.learner.get('name')!r} trains on {learner.trains_on}, but the config "
                         + ("sets [multitask] tasks" if m.tasks else "has no [multitask] tasks"))
    if m.tasks:
        return TaskBatchSampler(build_taskset(config, train_set).holdout("train"), t.meta_batch_size,
                                m.items_per_task, seed=t.seed, steps=t.steps)
    return EpisodeSampler(train_set, t.ways, t.shots, t.queries, seed=t.seed, episodes=t.steps * t.meta_batch_size)


def build_evaluation_sampler(config: Config, which: str, data_root: str | Path | None = None,
                             train_set: FewShotDataset | None = None):
    """The fixed evaluation items for validation (``which = "val"``) or the test (``"test"``), by
    ``eval.protocol``: episodes of the val split or of ``eval.split`` (episodic, online), or the
    held-out images of the training tasks (multitask)."""
    e, t = config.eval, config.train
    if e.protocol == "multitask":
        if not config.multitask.tasks:
            raise ValueError("eval.protocol = \"multitask\" needs [multitask] tasks")
        train_set = train_set if train_set is not None else build_dataset(config, "train", data_root)
        return TaskEvalSampler(build_taskset(config, train_set).holdout(which), config.multitask.eval_batch)
    if which == "val":
        return EpisodeSampler(build_dataset(config, "val", data_root), e.ways, e.shots, e.queries, seed=e.seed + 1,
                              episodes=t.val_episodes)
    return EpisodeSampler(build_dataset(config, e.split, data_root), e.ways, e.shots, e.queries, seed=e.seed,
                          episodes=e.episodes)


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
