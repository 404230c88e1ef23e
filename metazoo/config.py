"""Run configuration: dataclasses read from TOML, dotted ``--set`` overrides, unknown keys fail.

Learner and backbone settings are the keyword arguments of their constructors (components own
their defaults); the config only overrides them, and the registries reject unknown ones.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataConfig:
    dataset: str = "omniglot"
    root: str | None = None  # else $METAZOO_DATA, else ~/.metazoo/data
    options: dict = field(default_factory=dict)  # extra dataset settings (image_size, ...)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps (meta-iterations)
    meta_batch_size: int = 1  # episodes per step
    ways: int = 5
    shots: int = 1
    queries: int = 15
    seed: int = 0
    val_every: int = 500  # steps between validations (0: only at the end)
    val_episodes: int = 200  # fixed validation episodes, with the eval section's ways/shots/queries
    log_every: int = 50
    device: str = "auto"  # "auto": cuda when available, else cpu
    num_workers: int = 0


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    step_size: int = 0  # steps between learning-rate decays (0: constant)
    gamma: float = 0.5
    schedule: str = "step"  # step: times gamma every step_size steps | linear: down to 0 at train.steps (Reptile)


@dataclass
class EvalConfig:
    split: str = "test"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 1000
    seed: int = 1000
    bn: str = "running"  # running: BatchNorm running statistics | transductive: batch statistics
    checkpoint: str = "best"  # best | last
    protocol: str = "episodic"  # episodic | online (MANN's protocol) | multitask (held-out images of the tasks)


@dataclass
class MultitaskConfig:
    tasks: str = ""  # "": few-shot episodes | alphabets | attributes (Omniglot) | class_groups (any; docs/multitask.md)
    groups: int = 8  # class_groups: how many tasks the training classes are dealt into
    items_per_task: int = 16  # data mini-batch per task; train.meta_batch_size tasks per step
    holdout: list = field(default_factory=lambda: [0.7, 0.15])  # train and val fractions of each class's images
    eval_batch: int = 256


@dataclass
class Config:
    learner: dict = field(default_factory=lambda: {"name": "protonet"})
    backbone: dict = field(default_factory=lambda: {"name": "conv4"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Make dataclass ``cls`` from ``values``; unknown keys fail with the valid ones."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"unknown config key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                       f"valid in [{where}]: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key) if dataclasses.is_dataclass(cls) else None
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}.{key}" if where else key)
        kwargs[key] = value
    return cls(**kwargs)


class ConfigError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def from_dict(values: dict) -> Config:
    try:
        return _build(Config, values, "")
    except KeyError as e:
        raise ConfigError(str(e.args[0]).replace("[]", "the top level").replace(" .", " ")) from None


def parse_value(text: str) -> Any:
    """A TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested dict (copied)."""
    out = _deepcopy(values)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. train.steps=100)")
        key, text = item.split("=", 1)
        *path, last = key.strip().split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[last] = parse_value(text.strip())
    return out


def _deepcopy(values: dict) -> dict:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in values.items()}


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a TOML config file and apply dotted overrides."""
    with open(path, "rb") as f:
        values = tomllib.load(f)
    return from_dict(apply_overrides(values, list(overrides)))


def dump_toml(values: dict) -> str:
    """A small TOML writer for configs (nested dicts of scalars and lists; None is left out)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def section(prefix: str, table: dict) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
        if prefix and (plain or not any(isinstance(v, dict) for v in table.values())):
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {scalar(v)}" for k, v in plain.items())
        for k, v in table.items():
            if isinstance(v, dict):
                section(f"{prefix}.{k}" if prefix else k, v)

    section("", values)
    return "\n".join(lines).lstrip() + "\n"
