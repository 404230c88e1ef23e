"""Run configuration: typed dataclasses read from TOML, ``extends``, dotted ``--set`` overrides.

Everything is checked when a config is loaded: unknown keys, values of the wrong type, enum values
and registered names (``data.dataset``, ``learner.name``, ...) fail naming the key, the value and
what is allowed. Learner, backbone and dataset settings are the keyword arguments of their
constructors (components own their defaults): the config only overrides them, and they are checked
against the constructor's signature and annotations. The meaning of every key lives here, in the
fields' ``doc``; ``python -m metazoo.config_doc > docs/config.md`` writes the reference page.

This module imports neither torch nor the components, except to check a component's settings.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import config_types, registry


class ConfigError(KeyError, ValueError):
    """A config that cannot be loaded: the message names the key, the value and what is allowed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Names:
    """The values of a key that picks a registered component: names in any of ``registries``
    (plural names, :data:`metazoo.registry.REGISTRIES`), or one of ``extra``."""
    registries: tuple[str, ...]
    extra: tuple[str, ...] = ()

    def valid(self) -> list[str]:
        return [*self.extra, *sorted({n for r in self.registries for n in registry.REGISTRIES[r].names()})]


def setting(default: Any, doc: str, names: Names | None = None, form: tuple[str, str] | None = None,
            least: float | None = None) -> Any:
    """A config key: its default, its meaning (docs/config.md is generated from ``doc``), and, for a
    key that picks a registered component, the registries it picks from (``names``); ``form``: a
    regular expression the value must match and its description in words; ``least``: the smallest
    value allowed."""
    metadata = {"doc": doc, "names": names, "form": form, "least": least}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


LEARNER_NAMES, BACKBONE_NAMES = Names(("learners", "objectives")), Names(("backbones",))
DATASET_NAMES = Names(("datasets",))
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"

EXTENDS_DOC = """\
A file name (or a list of them) at the top of a config file, relative to that file: the config
starts from those files' values (in order; each may extend others, a cycle is an error) and its own
values go on top. Tables merge key by key; any other value, lists included, is replaced. Shared
protocol settings live in `base/` folders (e.g. `experiments/omniglot/base/maml.toml`), which are
not runnable cells. A run's saved `config.toml` is resolved: it has no `extends`."""

REPLACE_DOC = """\
Names of tables (dotted for a nested one, e.g. `"data.options"`) that this file sets and whose values
replace its bases' tables instead of merging into them, so that keys of the bases' table do not carry
over: `replace = ["backbone"]` with `[backbone] name = "pixels"` drops the base's Conv-4 `width` (as
`--set 'backbone={name="pixels"}'` does on the command line). Like `extends`, it is not in a run's
resolved `config.toml`."""


@dataclass
class DataConfig:
    """The dataset; its splits are made by `create_dataset(dataset, split=..., root=..., **options)`
    (docs/data.md)."""
    dataset: str = setting("omniglot", "Which dataset (`metazoo list` lists them).", DATASET_NAMES)
    root: str | None = setting(None, "The data root; `--data-root` wins over it, and unset, it is `$METAZOO_DATA`, "
                                     "else `~/.metazoo/data` (docs/data.md). A run records the root it used.")
    options: dict = setting({}, "Keyword arguments of the dataset's constructor (e.g. `image_size`, Omniglot's "
                                "`character_split`), checked against it when the config is loaded.")


# the [train] settings that move training images (0: off); results and records carry the ones set
TRAIN_AUGMENTATIONS = ("translate", "rotate")


@dataclass
class TrainConfig:
    """Meta-training: the training episodes (or task batches), the budget, validation and where it runs."""
    steps: int = setting(1000, "Optimiser steps (meta-iterations): the training budget.", least=1)
    split: Literal["train", "trainval"] = setting(
        "train", "The split meta-trained on: `train`, or `trainval` (train and val classes together, as most "
                 "Omniglot papers train after choosing settings on val: use a fixed step budget and "
                 "`eval.checkpoint = \"last\"`, since validation then sees training classes). Recorded in every "
                 "result as `train_split`.")
    max_minutes: float = setting(0.0, "Wall-clock budget of the training, in minutes over all its sessions (0: none): "
                                      "the run stops cleanly at the first step past it, validating and writing "
                                      "both checkpoints, and records how far it got; `--resume` with a larger "
                                      "budget continues it.", least=0)
    meta_batch_size: int = setting(1, "Episodes per step (with `[multitask] tasks`: tasks per step).", least=1)
    ways: int = setting(5, "Classes per training episode.", least=1)
    shots: int = setting(1, "Support examples per class in a training episode.", least=1)
    queries: int = setting(15, "Query examples per class in a training episode.", least=0)
    translate: int = setting(0, "Training episodes only: move each image by up to this many pixels down or up and "
                                "right or left (drawn per image and episode, the edge pixels repeated), the "
                                "translation augmentation of Santoro et al. 2016 (MANN); 0: none. Validation and "
                                "test episodes are never moved. Recorded in every result as `train_translate`.",
                                least=0)
    rotate: float = setting(0.0, "Training episodes only: turn each image about its centre by an angle drawn "
                                 "uniformly within this many degrees either way (per image and episode; each pixel "
                                 "the nearest one it comes from, the edge pixels repeated), before its `translate`: "
                                 "the rotation augmentation of Santoro et al. 2016 (MANN); 0: none, at most 180. "
                                 "Validation and test episodes are never turned. Recorded in every result as "
                                 "`train_rotate`.", least=0)
    seed: int = setting(0, "Seeds the weights' initialisation and the training episodes (or task batches), so a run "
                           "is repeatable; the validation and test episodes have their own seed (`eval.seed`).")
    val_every: int = setting(500, "Steps between validations, each writing the `last` checkpoint and, when "
                                  "validation accuracy improves, the `best` one (0: only at the end).", least=0)
    val_episodes: int = setting(200, "Fixed validation episodes of the `val` split, with the `[eval]` ways, shots "
                                     "and queries and seed `eval.seed + 1`.", least=1)
    log_every: int = setting(50, "Steps between training rows (loss, accuracy, learning rate) in `metrics.jsonl` "
                                 "and on the progress bar.", least=1)
    device: str = setting("auto", '`"auto"`: CUDA when available, else CPU; or `"cpu"`, `"cuda"`, `"cuda:N"` '
                                  '(GPU N), `"mps"`.', form=(r"auto|cpu|mps|cuda(:\d+)?", DEVICES))
    amp: Literal["off", "bf16"] = setting(
        "off", '`"bf16"`: bfloat16 autocast (convolutions and matrix products in bfloat16; weights, gradients and '
               'losses in float32) of the training step and of evaluation, on any device; `"off"`: float32 '
               "throughout. Recorded in every result as `amp`. The sequence learners with a carried state (`lstm`, "
               "`mann`) refuse it (docs/distributed.md). On a CPU it pays only where oneDNN has bfloat16 kernels "
               "(AVX-512 or AMX; elsewhere 8x-15x slower, with a warning).")
    memory_format: Literal["auto", "channels_last", "contiguous"] = setting(
        "auto", 'The layout of the weights (and so of the feature maps) of convolutions: `"channels_last"` (NHWC) or '
                '`"contiguous"` (NCHW); `"auto"`: channels_last on the CPU for the learners it speeds up there (all '
                "but the inner-loop learners; docs/benchmarks.md, table (i)), contiguous elsewhere. The same maths "
                "either way, to float rounding: not part of a run's identity, and a run may resume with another.")
    compile: bool = setting(False, "Compile (`torch.compile`) the parts of the training step that its learner "
                                   "declares faster compiled (MANN in its own protocol: the recurrence, 1.56x a "
                                   "step on the CPU; first-order MAML: its tasks' adaptation and loss, 1.07-1.41x; "
                                   "docs/benchmarks.md (h)), for the training steps only: the "
                                   "first step compiles (4-5 minutes for MANN's 50 unrolled steps on a CPU core, "
                                   "less from inductor's disk cache), validation and tests stay eager. Learners "
                                   "that declare nothing train as without it. The same maths to float rounding: "
                                   "not part of a run's identity, and a run may resume with another.")
    num_workers: int = setting(0, "DataLoader worker processes that prepare the training episodes (0: in the "
                                  "training process, gathering them on the training device from images kept "
                                  "there; with workers the images stay on the CPU). The episodes are the same for "
                                  "any number.", least=0)
    pin_cores: bool = setting(False, "Under torchrun: bind each process to its own block of `OMP_NUM_THREADS` CPU "
                                     "cores (local rank r: the r-th block of the cores the process may use), so "
                                     "the ranks neither share nor swap cores; an error where the machine has too "
                                     "few. No effect with one process (docs/distributed.md).")
    tensorboard: bool = setting(False, "Also write the metrics rows as TensorBoard scalars into the run directory "
                                       "(needs the `tensorboard` extra: `pip install metazoo[tensorboard]`).")


@dataclass
class OptimConfig:
    """The outer-loop optimiser and its learning-rate schedule (one step per meta-iteration)."""
    name: str = setting("adam", "The outer-loop optimiser (`adam`, `sgd`, ...).", Names(("optimisers",)))
    lr: float = setting(1e-3, "Learning rate (the meta learning rate).", least=0)
    weight_decay: float = setting(0.0, "L2 weight decay.")
    momentum: float = setting(0.9, "SGD's and RMSProp's momentum (`sgd`, `rmsprop`).")
    alpha: float = setting(0.99, "RMSProp's decay of its running average of squared gradients (`rmsprop` only).",
                           least=0)
    schedule: str = setting("step", "The learning-rate schedule: `step` (times `gamma` every `step_size` steps) or "
                                    "`linear` (down to 0 at `train.steps`, Reptile's).", Names(("schedules",)))
    step_size: int = setting(0, "`step` schedule: steps between learning-rate decays (0: a constant rate).", least=0)
    gamma: float = setting(0.5, "`step` schedule: the factor applied to the learning rate every `step_size` steps.")
    clip_norm: float = setting(0.0, "Before each step, scale the gradient down to this L2 norm where it is longer (0: "
                                    "no clipping).", least=0)
    clip_scope: Literal["all", "module"] = setting(
        "all", "What `clip_norm` bounds: the norm of `all` the gradients as one vector, or that of each top-level "
               "`module` of the learner (its backbone, its head, ...) on its own, as Relation Networks' code clips "
               "its embedding and relation modules.")


@dataclass
class EvalConfig:
    """The test (and the shape of validation): fixed seeded episodes (docs/protocol.md). The BatchNorm
    mode is the learner's `bn` setting."""
    split: Literal["train", "val", "test"] = setting("test", "The split the test episodes are drawn from.")
    ways: int = setting(5, "Classes per test (and validation) episode.", least=1)
    shots: int = setting(1, "Support examples per class in a test episode.", least=1)
    queries: int = setting(15, "Query examples per class in a test episode.", least=0)
    episodes: int = setting(1000, "Fixed test episodes.", least=1)
    seed: int = setting(1000, "Seed of the test episodes (validation uses `seed + 1`).")
    checkpoint: Literal["best", "last"] = setting("best", "Weights tested at the end of training: `best` validation "
                                                          "accuracy, or the `last` step.")
    protocol: str = setting("episodic", "The evaluation protocol: `episodic`, `online` (MANN's, for the sequence "
                                        "learners) or `multitask` (held-out images of the training tasks).",
                            Names(("protocols",)))


@dataclass
class MultitaskConfig:
    """Multi-task learning: train on mini-batches of tasks instead of episodes (docs/multitask.md)."""
    tasks: str = setting("", 'The task set: `""` (none: few-shot episodes), or a registered one (`alphabets`, '
                             "`attributes`: Omniglot; `class_groups`: any dataset).", Names(("task sets",), ("",)))
    groups: int = setting(8, "`class_groups`: how many tasks the training classes are dealt into.", least=1)
    items_per_task: int = setting(16, "Images per task in a step's data mini-batch (`train.meta_batch_size` tasks "
                                      "per step).", least=1)
    holdout: list[float] = setting([0.7, 0.15], "Train and val fractions of each class's images (the rest: test).")
    eval_batch: int = setting(256, "Images per forward pass when evaluating the held-out images.", least=1)
    descriptors: str | list = setting("onehot", 'The task descriptors `z_i` of conditioned sharings: `"onehot"`, '
                                                "a list of per-task lists of numbers, or the path of a .csv or "
                                                ".json file holding them (relative to the current directory).")


@dataclass
class Config:
    """A run's configuration. Tables are sections; a key is `section.key` on the command line."""
    plugins: list[str] = setting([], "Modules imported before the config is checked: user code that registers "
                                     "components (`@LEARNERS.register(...)`), recorded with the run.")
    learner: dict = setting({"name": "protonet"}, "`name`: the learner (`metazoo list`) or another "
                                                  "objective (`multitask`); the other keys are the keyword "
                                                  "arguments of its constructor, whose defaults apply to the rest "
                                                  "(docs/learners.md), checked for unknown keys and types at load. "
                                                  "Every learner takes `bn`, its BatchNorm mode (`\"running\"`, "
                                                  "`\"transductive\"`, `\"query_with_support\"`, ...; "
                                                  "docs/protocol.md).",
                            LEARNER_NAMES)
    backbone: dict = setting({"name": "conv4"}, "`name`: the backbone (`metazoo list`: `conv4`, `resnet12`, "
                                                "`pixels`, and plugins'); the other keys are the keyword "
                                                "arguments of its constructor (e.g. Conv-4's `width`, "
                                                "`pooling`), checked like the learner's. To swap the backbone "
                                                "of a config that sets another's keys, replace the whole table: "
                                                "`--set 'backbone={name=\"pixels\"}'` (a dotted "
                                                "`--set backbone.name=...` keeps the base's other keys).",
                             BACKBONE_NAMES)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LEGACY_BN = ("running", "transductive")
LEGACY_DOC = """\
Configs written before a key moved (old config files, old runs' `config.toml`) load with the key
moved to where it lives now. `eval.bn`, the BatchNorm mode, is one learner setting now:
`"transductive"` becomes `learner.bn = "transductive"` unless the learner section sets `bn`;
`"running"` is dropped (the learner's own `bn` applies)."""


def migrate(values: dict) -> dict:
    """``values`` (a config's tables) with legacy keys moved to where they live now, as
    ``LEGACY_DOC`` says (a copy)."""
    values = copy.deepcopy(values)
    section = values.get("eval")
    if isinstance(section, dict) and "bn" in section:
        bn = section.pop("bn")
        if bn not in LEGACY_BN:
            raise ConfigError(f"eval.bn = {bn!r}: expected one of {', '.join(map(repr, LEGACY_BN))} "
                              "(the BatchNorm mode is learner.bn now)")
        if bn == "transductive" and isinstance(values.setdefault("learner", {}), dict):
            values["learner"].setdefault("bn", bn)
    return values


def from_dict(values: dict) -> Config:
    """A checked :class:`Config` from nested dicts (a config file's tables); legacy keys are
    migrated (:func:`migrate`) and ``plugins`` imported before any registered name is checked."""
    values = migrate(values)
    registry.load_plugins(_check("plugins", values.get("plugins", []), list[str]))
    config = _build(Config, values, "")
    defaults = Config()
    config.learner = _component("learner", config.learner, LEARNER_NAMES, defaults.learner["name"])
    config.backbone = _component("backbone", config.backbone, BACKBONE_NAMES, defaults.backbone["name"])
    config.data.options = _settings("data.options", config.data.options, DATASET_NAMES, config.data.dataset,
                                    reserved=("split", "root"))
    return config


def _build(cls: type, values: Any, where: str) -> Any:
    """Dataclass ``cls`` from ``values`` (the table ``where``): unknown keys fail with the valid
    ones, and every value is checked against its field's type, names and form."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} = {values!r}: expected a table ([{where}])")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(_key(where, k) for k in unknown)}; valid in "
                          f"{f'[{where}]' if where else 'the top level'}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key, meta = _key(where, name), fields[name].metadata
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, key)
            continue
        kwargs[name] = value = _check(key, value, hints[name])
        if meta.get("names") and isinstance(value, str):
            _check_name(key, value, meta["names"])
        if meta.get("form") and not re.fullmatch(meta["form"][0], value):
            raise ConfigError(f"{key} = {value!r}: expected {meta['form'][1]}")
        if meta.get("least") is not None and value < meta["least"]:
            raise ConfigError(f"{key} = {value!r}: expected at least {meta['least']}")
    return cls(**kwargs)


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _component(where: str, section: dict, names: Names, default: str) -> dict:
    """A ``[learner]`` or ``[backbone]`` section: ``name`` (``default`` unless given) picks the
    component, and the other keys are checked as its settings (:func:`_settings`)."""
    name = _check(f"{where}.name", section.get("name", default), str)
    _check_name(f"{where}.name", name, names)
    settings = {k: v for k, v in section.items() if k != "name"}
    return {"name": name, **_settings(where, settings, names, name, reserved=("backbone",))}


def _settings(where: str, settings: dict, names: Names, name: str, reserved: tuple[str, ...]) -> dict:
    """``settings`` (the table ``where``) checked against the constructor of the component ``name``:
    unknown keys (and the ``reserved`` arguments, which the builder passes) fail with the valid
    ones, and each value must match its keyword argument's annotation. A component that cannot be
    imported is left to fail when it is built."""
    found = next(registry.REGISTRIES[r] for r in names.registries if name in registry.REGISTRIES[r])
    try:
        factory = found.get_factory(name)
    except (ImportError, AttributeError):  # left to fail, with its own error, when it is built
        return settings
    valid = set(registry.accepted_kwargs(factory)) - set(reserved)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    unknown = sorted(set(settings) & set(reserved) if takes_any else set(settings) - valid)
    if unknown:
        swap = ""
        if _settings_of_another(found, name, unknown):
            swap = (f" (they are another {found.kind}'s: to swap a config's {where} for another, replace the whole "
                    f"table, e.g. --set '{where}={{name=\"{name}\"}}')")
        raise ConfigError(f"unknown config key(s) {', '.join(_key(where, k) for k in unknown)}; valid in [{where}] "
                          f"for {found.kind} {name!r}: {', '.join(sorted(valid))}{swap}")
    hints = config_types.annotations(factory)
    return {k: _check(_key(where, k), v, hints[k]) if k in hints else v for k, v in settings.items()}


def _settings_of_another(found, name: str, keys: list[str]) -> bool:
    """Whether ``keys`` are all settings of a registered component other than ``name`` in ``found``
    (left over from the component a base config chose, rather than misspelt)."""
    for other in found.names():
        if other == name:
            continue
        try:
            if set(keys) <= set(registry.accepted_kwargs(found.get_factory(other))):
                return True
        except (ImportError, AttributeError):
            continue
    return False


def _check_name(key: str, value: str, names: Names) -> None:
    """``value`` must be a name in one of ``names.registries`` (or one of ``names.extra``)."""
    def known() -> bool:
        return value in names.extra or any(value in registry.REGISTRIES[r] for r in names.registries)

    if not known():
        registry.load_entry_point_plugins()
    if not known():
        kind = registry.REGISTRIES[names.registries[0]].kind
        raise ConfigError(f"{key} = {value!r}: unknown {kind}; valid: {', '.join(map(repr, names.valid()))}")


def _check(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` has it (:func:`~metazoo.config_types.convert`); a mismatch fails
    naming the key, the value and the expected type."""
    try:
        return config_types.convert(value, hint)
    except config_types.Mismatch:
        raise ConfigError(f"{key} = {value!r}: expected {config_types.describe(hint)}") from None


def parse_value(text: str) -> Any:
    """A TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested dict (copied)."""
    out = copy.deepcopy(values)
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


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base`` (a copy): tables merge key by key, any other value is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        both_tables = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both_tables else copy.deepcopy(value)
    return out


def load_values(path: str | Path) -> dict:
    """The values of a TOML config file with its ``extends`` resolved: its bases' values (in order),
    then its own on top (``EXTENDS_DOC``)."""
    return _load_values(Path(path), ())


def _load_values(path: Path, chain: tuple[Path, ...]) -> dict:
    path = Path(os.path.normpath(path))
    seen = [p.resolve() for p in chain]
    if path.resolve() in seen:
        cycle = [*chain[seen.index(path.resolve()):], path]
        raise ConfigError(f"config files extend each other in a cycle: {' -> '.join(map(str, cycle))}")
    if chain and not path.exists():
        raise ConfigError(f"{chain[-1]}: extends {path}, which does not exist")
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    bases = values.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: extends = {bases!r}: expected a file name or a list of them")
    replaced = values.pop("replace", [])
    replaced = [replaced] if isinstance(replaced, str) else replaced
    if not isinstance(replaced, list) or not all(isinstance(name, str) for name in replaced):
        raise ConfigError(f"{path}: replace = {replaced!r}: expected a table name or a list of them")
    merged: dict = {}
    for base in bases:
        merged = merge(merged, _load_values(path.parent / base, (*chain, path)))
    for name in replaced:
        *parents, last = name.split(".")
        own, inherited = values, merged
        for part in parents:
            own, inherited = own.get(part, {}), inherited.get(part, {})
        if not isinstance(own.get(last), dict):
            raise ConfigError(f"{path}: replace = {replaced!r}: {name!r} is not a table this file sets "
                              f"(replace names tables of the file's own, e.g. replace = [\"backbone\"])")
        if isinstance(inherited, dict):
            inherited.pop(last, None)  # the file's own table then stands alone
    return merge(merged, values)


def experiments_roots() -> list[Path]:
    """The ``experiments/`` folders (configs, bases, the model zoo): the working directory's, then the one
    beside the package in a source checkout; only those that exist."""
    found: dict[Path, Path] = {}
    for root in (Path("experiments"), Path(__file__).resolve().parents[1] / "experiments"):
        if root.is_dir():
            found.setdefault(root.resolve(), root)
    return list(found.values())


ZOO_PREFIX = "zoo:"


def zoo_roots() -> list[Path]:
    """Where model-zoo entries are looked for: ./experiments/zoo, then the one beside the package."""
    return [root / "zoo" for root in experiments_roots() if (root / "zoo").is_dir()]


def zoo_entries() -> dict[str, Path]:
    """Every model-zoo entry (a folder with a ``config.toml``) by name, ``zoo:<dataset>/<name>``; the first
    root's where two hold the same name."""
    found: dict[str, Path] = {}
    for root in zoo_roots():
        for path in sorted(root.glob("*/*/config.toml")):
            found.setdefault(f"{ZOO_PREFIX}{path.parent.relative_to(root).as_posix()}", path.parent)
    return dict(sorted(found.items()))


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a TOML config file (its ``extends`` resolved), apply dotted overrides, check it all."""
    return from_dict(apply_overrides(load_values(path), list(overrides)))


def toml_value(value: Any) -> str:
    """``value`` (a scalar, list or dict) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(values: dict) -> str:
    """A small TOML writer for configs (nested dicts of scalars and lists; None is left out)."""
    lines: list[str] = []

    def section(prefix: str, table: dict) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
        if prefix and (plain or not any(isinstance(v, dict) for v in table.values())):
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in plain.items())
        for k, v in table.items():
            if isinstance(v, dict):
                section(f"{prefix}.{k}" if prefix else k, v)

    section("", values)
    return "\n".join(lines).lstrip() + "\n"
