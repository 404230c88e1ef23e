"""The one registry mechanism: every named, pluggable component of metazoo, with a one-line description.

A :class:`Registry` maps names to factories (classes or functions). An entry is either the
factory itself (``@LEARNERS.register("name")`` on a class, as user code and plugins do) or a
``"module:attribute"`` reference imported on first use, which is how the built-in entries are
declared below: listing them (``metazoo list``) imports neither torch nor the components.

User code adds entries by registering them in a module and loading that module: ``--plugin
MODULE`` on the command line, ``plugins = ["MODULE"]`` in a config (recorded in every run, so
``metazoo eval`` finds the component again), or a ``metazoo.plugins`` entry point of an
installed package (loaded when a name is not found and before listing).

This module imports nothing of torch or of the rest of metazoo.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator

ENTRY_POINT_GROUP = "metazoo.plugins"


class UnknownNameError(KeyError, ValueError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class Entry:
    target: Callable | str  # the factory, or "module:attribute"
    description: str
    preset: dict  # keyword arguments the entry fixes (e.g. a sharing's conditioning)


class Registry:
    """Named factories of one kind; unknown names and unknown keyword arguments fail listing the valid ones."""

    def __init__(self, kind: str, plural: str, description: str) -> None:
        self.kind, self.plural, self.description = kind, plural, description
        self._entries: dict[str, Entry] = {}
        REGISTRIES[plural] = self

    def add(self, name: str, target: Callable | str, description: str | None = None, **preset: Any) -> None:
        """Add ``name``; ``target`` is a factory or a ``"module:attribute"`` reference."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if description is None:
            doc = inspect.getdoc(target) if callable(target) else None
            description = doc.strip().splitlines()[0] if doc else ""
        self._entries[name] = Entry(target, description, preset)

    def register(self, name: str, description: str | None = None) -> Callable:
        """Decorator: ``@LEARNERS.register("mine")`` above a class or function (description: the
        first line of its docstring unless given)."""
        def add(factory: Callable) -> Callable:
            self.add(name, factory, description)
            return factory
        return add

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, description)`` of every entry, plugins from entry points included."""
        load_entry_point_plugins()
        return [(name, self._entries[name].description) for name in self.names()]

    def check_name(self, name: str) -> None:
        if name not in self._entries:
            load_entry_point_plugins()
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")

    def get_factory(self, name: str) -> Callable:
        self.check_name(name)
        entry = self._entries[name]
        if isinstance(entry.target, str):
            module, attribute = entry.target.split(":")
            entry.target = getattr(importlib.import_module(module), attribute)
        return entry.target

    def preset(self, name: str) -> dict:
        self.check_name(name)
        return dict(self._entries[name].preset)

    def create(self, name: str, **kwargs: Any) -> Any:
        factory = self.get_factory(name)
        kwargs = {**self._entries[name].preset, **kwargs}
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)


def accepted_kwargs(factory: Callable) -> dict[str, Any]:
    """Keyword arguments of ``factory`` (a class or function) with their defaults."""
    sig = inspect.signature(factory)
    return {n: (p.default if p.default is not inspect.Parameter.empty else None)
            for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}


def check_kwargs(factory: Callable, kwargs: dict, what: str) -> None:
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = accepted_kwargs(factory)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{what} has no setting {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(valid))}")


_loaded_entry_points = False


def load_entry_point_plugins() -> None:
    """Import every module named by an installed package's ``metazoo.plugins`` entry points (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules that register components (``--plugin``, a config's ``plugins``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module.split(".")[0] and err.name != module:
                raise
            raise ModuleNotFoundError(f"plugin module {module!r} not found (is it on PYTHONPATH, or installed?)",
                                      name=module) from None


REGISTRIES: dict[str, Registry] = {}

LEARNERS = Registry("learner", "learners", "few-shot learners: adapt(support) -> classifier")
BACKBONES = Registry("backbone", "backbones", "feature extractors")
DATASETS = Registry("dataset", "datasets", "datasets, each split a uint8 tensor cache")
OBJECTIVES = Registry("objective", "objectives", "what the trainer can optimise besides a few-shot learner")
PROTOCOLS = Registry("protocol", "protocols", "evaluation protocols (eval.protocol)")
TASKSETS = Registry("task set", "task sets", "multi-task task sets over a dataset split (multitask.tasks)")
WEIGHTINGS = Registry("weighting", "weightings", "multi-task loss weightings (learner.weighting)")
CONDITIONINGS = Registry("conditioning", "conditionings", "ways to condition a layer on a task descriptor")
SHARINGS = Registry("sharing", "sharings", "how tasks share a multi-task network (learner.sharing)")
OPTIMIZERS = Registry("optimiser", "optimisers", "outer-loop optimisers (optim.name)")
SCHEDULES = Registry("schedule", "schedules", "learning-rate schedules (optim.schedule)")

# The built-in entries: name, "module:attribute" under metazoo, one-line description.
BUILTINS: dict[Registry, list[tuple[str, str, str]]] = {
    LEARNERS: [
        ("protonet", "learners.protonet:ProtoNet", "Prototypical Networks (Snell et al. 2017): squared Euclidean "
                                                   "to class means"),
        ("matching", "learners.matching:MatchingNet", "Matching Networks (Vinyals et al. 2016): attention over "
                                                      "the support set"),
        ("relation", "learners.relation:RelationNet", "Relation Networks (Sung et al. 2018): a learned relation "
                                                      "module"),
        ("maml", "learners.gradient:MAML", "MAML (Finn et al. 2017): meta-learned initial weights; first_order "
                                           "for FOMAML"),
        ("anil", "learners.gradient:ANIL", "ANIL (Raghu et al. 2020): MAML adapting the head only"),
        ("metasgd", "learners.gradient:MetaSGD", "Meta-SGD (Li et al. 2017): MAML with a learned step size per weight"),
        ("reptile", "learners.gradient:Reptile", "Reptile (Nichol et al. 2018): first-order, moves toward adapted "
                                                 "weights"),
        ("lstm", "learners.blackbox:RecurrentLearner", "an LSTM over (embedding, label) pairs: the plain black-box "
                                                       "baseline"),
        ("mann", "learners.mann:MANN", "MANN (Santoro et al. 2016): LSTM controller, LRU-access external memory"),
        ("snail", "learners.snail:SNAIL", "SNAIL (Mishra et al. 2018): causal temporal convolutions and attention"),
        ("baseline", "learners.transfer:Baseline", "Baseline / Baseline++ (Chen et al. 2019): pretrain, fit a new "
                                                   "head"),
    ],
    OBJECTIVES: [("multitask", "multitask.objective:MultiTaskObjective",
                  "multi-task learning: sum_i w_i L_i over task mini-batches (trains on [multitask] tasks)")],
    BACKBONES: [
        ("conv4", "backbones.conv4:Conv4", "Conv-4: four 3x3 conv-BN-ReLU-pool blocks"),
        ("resnet12", "backbones.resnet12:ResNet12", "ResNet-12 (TADAM, MetaOptNet): four residual blocks, widths "
                                                    "64-160-320-640"),
        ("pixels", "backbones.pixels:Pixels", "raw pixels, flattened (no weights): MANN's input in Santoro et al. "
                                              "2016"),
    ],
    DATASETS: [
        ("omniglot", "data.omniglot:Omniglot", "Omniglot (Lake et al. 2015), Vinyals or MAML's random split"),
        ("mini_imagenet", "data.mini_imagenet:MiniImageNet", "mini-ImageNet (Ravi & Larochelle split), user's copy"),
        ("image_folder", "data.image_folder:ImageFolder", "any folder of class folders, with a seeded class split"),
        ("caltech101", "data.image_folder:Caltech101", "Caltech-101 at 84x84, the project's seeded class split"),
    ],
    PROTOCOLS: [
        ("episodic", "protocols:Episodic", "adapt on each support set, classify its queries; mean with 95% CI"),
        ("online", "protocols:Online", "MANN's protocol: accuracy by presentation of a class (sequence learners)"),
        ("multitask", "protocols:PerTask", "every task's metric on the held-out images of a multi-task run"),
    ],
    TASKSETS: [
        ("alphabets", "multitask.tasks:alphabet_tasks", "Omniglot: one task per alphabet, classify its characters"),
        ("attributes", "multitask.tasks:attribute_tasks", "Omniglot: character, alphabet, rotation and ink of one "
                                                          "image"),
        ("class_groups", "multitask.tasks:class_group_tasks", "any dataset: its classes dealt into seeded disjoint "
                                                              "groups"),
    ],
    WEIGHTINGS: [
        ("static", "multitask.weighting:StaticWeights", "fixed weights, equal unless given"),
        ("uncertainty", "multitask.weighting:UncertaintyWeights", "homoscedastic uncertainty (Kendall et al. 2018)"),
        ("dwa", "multitask.weighting:DynamicWeightAverage", "dynamic weight average (Liu et al. 2019)"),
        ("gradnorm", "multitask.weighting:GradNorm", "gradient normalisation (Chen et al. 2018)"),
    ],
    CONDITIONINGS: [
        ("concat", "multitask.conditioning:Concat", "a linear layer on [x; z]"),
        ("additive", "multitask.conditioning:Additive", "W x + b + U z: the descriptor shifts the layer"),
        ("multiplicative", "multitask.conditioning:Multiplicative", "(W x + b) * (G z): the descriptor gates each "
                                                                    "unit"),
        ("film", "multitask.conditioning:FiLM", "(W x + b) * (G z) + U z (Perez et al. 2018)"),
    ],
    SHARINGS: [
        ("multihead", "multitask.model:MultiHead", "one shared trunk, a hidden and output layer per task"),
        ("independent", "multitask.model:Independent", "a network per task, nothing shared (soft sharing can pull "
                                                       "them)"),
    ],
    OPTIMIZERS: [
        ("adam", "optim:adam", "Adam (lr, weight_decay)"),
        ("sgd", "optim:sgd", "SGD with momentum (lr, momentum, weight_decay)"),
        ("rmsprop", "optim:rmsprop", "RMSProp (lr, alpha, momentum, weight_decay)"),
    ],
    SCHEDULES: [
        ("step", "optim:step_schedule", "times gamma every step_size steps (0: constant)"),
        ("linear", "optim:linear_schedule", "down to 0 at train.steps (Reptile)"),
    ],
}
for _registry, _entries in BUILTINS.items():
    for _name, _target, _text in _entries:
        _registry.add(_name, f"metazoo.{_target}", _text)
for _name in CONDITIONINGS.names():  # a conditioned trunk per conditioning
    SHARINGS.add(_name, "metazoo.multitask.model:Conditioned", f"one trunk and hidden layer, conditioned by {_name}",
                 conditioning=_name)
