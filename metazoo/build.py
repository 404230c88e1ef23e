"""From a Config to the objects of a run: dataset splits, the objective, the optimiser, the device."""
from __future__ import annotations

import copy
import platform
from pathlib import Path

import torch

from .config import Config
from .data import FewShotDataset, create_dataset, data_root
from .distributed import local_device
from .learners import create_objective, objective_factory
from .objective import Objective
from .registry import BACKBONES, OPTIMIZERS, SCHEDULES, accepted_kwargs, load_plugins


def build_dataset(config: Config, split: str, root: str | Path | None = None) -> FewShotDataset:
    """One split of the configured dataset, its uint8 images on :func:`image_device` (moved there once, here:
    the run's training, validation and test items all come from here); ``root`` (e.g. ``--data-root``) wins
    over ``data.root``."""
    root = root if root is not None else config.data.root
    dataset = create_dataset(config.data.dataset, split=split, root=root, **config.data.options)
    return dataset.to(image_device(config, resolve_device(config.train.device)))


def image_device(config: Config, device: torch.device) -> torch.device:
    """Where a run on ``device`` keeps its datasets' uint8 images: on ``device`` itself, so that episodes are
    gathered there and only their classes and image indices cross from the host; on the CPU with
    ``train.num_workers`` > 0 (the workers draw and gather the episodes in other processes, which cannot
    index a GPU's tensors: CUDA does not survive a fork, and each worker would hold its own copy), and for
    objectives whose items index the images on the CPU (``gathers_on_device`` false, e.g. a plugin's)."""
    load_plugins(config.plugins)
    gathers = objective_factory(config.learner.get("name", "protonet")).gathers_on_device
    return device if gathers and config.train.num_workers == 0 else torch.device("cpu")


def resolve_config(config: Config, train_set: FewShotDataset, root: str | Path | None = None) -> Config:
    """A copy of ``config`` with every value a run takes from its data rather than from the config
    file filled in: the data root (absolute; ``root`` wins over ``data.root``), the backbone's input
    channels and image size (from the training split), and the objective's own (``ways``, a
    pretraining head's ``classes``, a multi-task objective's task outputs). The trainer writes it as
    the run's ``config.toml``, so the run reloads from its directory alone. Values already set stay."""
    config = copy.deepcopy(config)
    config.data.root = str(data_root(root if root is not None else config.data.root).resolve())
    load_plugins(config.plugins)
    settings = config.backbone
    accepted = accepted_kwargs(BACKBONES.get_factory(settings.setdefault("name", "conv4")))
    channels, size, _ = train_set.image_shape
    for key, value in (("in_channels", channels), ("image_size", size)):
        if key in accepted:
            settings.setdefault(key, value)
    factory = objective_factory(config.learner.setdefault("name", "protonet"))
    factory.resolve_settings(config.learner, config, train_set)
    for section, defaults in ((config.backbone, accepted), (config.learner, accepted_kwargs(factory))):
        for key, value in defaults.items():  # the components' own defaults, written down with the run
            if key != "backbone" and value is not None:
                section.setdefault(key, list(value) if isinstance(value, tuple) else value)
    return config


def build_objective(config: Config) -> Objective:
    """The learner or objective of a resolved config (:func:`resolve_config`) around its backbone; one that
    is not sound under the config's ``train.amp`` (``amp_modes``) is refused."""
    load_plugins(config.plugins)
    learner = dict(config.learner)
    name = learner.pop("name", "protonet")
    objective_factory(name).check_amp(config.train.amp, name)
    return create_objective(name, backbone=dict(config.backbone), **learner)


def memory_format(config: Config, objective: Objective, device: torch.device) -> torch.memory_format:
    """The layout of ``train.memory_format`` for ``objective`` on ``device`` (``"auto"``: channels_last on the
    CPU where the objective's ``channels_last_pays``, contiguous elsewhere)."""
    choice = config.train.memory_format
    if choice == "auto":
        choice = "channels_last" if device.type == "cpu" and objective.channels_last_pays else "contiguous"
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def place_objective(objective: Objective, config: Config, device: torch.device) -> Objective:
    """``objective`` on ``device``, its 4-d weights in the layout of ``train.memory_format`` (:func:`memory_format`):
    convolutions then keep their feature maps in that layout too."""
    return objective.to(device=device, memory_format=memory_format(config, objective, device))


def build_optimizer(config: Config, objective: Objective):
    """The ``[optim]`` optimiser over the trainable parameters, and its step-wise learning-rate schedule."""
    o = config.optim
    optimizer = OPTIMIZERS.get_factory(o.name)([p for p in objective.parameters() if p.requires_grad], o)
    return optimizer, SCHEDULES.get_factory(o.schedule)(optimizer, o, config.train.steps)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``, ``mps``, which must be
    present here (else a one-line error naming the devices there are). Under torchrun, ``cuda`` is the
    process's own GPU (``LOCAL_RANK``)."""
    device = local_device(torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                                       "cpu" if name == "auto" else name))
    there = available_devices()
    present = str(device) in there or (device.index is None and any(d.split(":")[0] == device.type for d in there))
    if device.type in ("cuda", "mps") and not present:
        mine = f" ({device} for this process)" if str(device) != name else ""
        raise ValueError(f"device {name!r}{mine} is not available here (train.device, --device); available: "
                         f"{', '.join(there)}; choose one of them, or auto")
    return device


def device_name(device: torch.device) -> str:
    """What ``device`` is, for a record or a benchmark's machine line: a GPU's name; for the CPU its model name,
    the vector instructions torch's CPU kernels use (``AVX2``, ``AVX512``) and whether oneDNN has bfloat16
    kernels there (:func:`metazoo.objective.native_bf16`), on which CPU speeds and ``train.amp = "bf16"`` depend
    (docs/benchmarks.md, table (i))."""
    from .objective import native_bf16  # looked up at the call, where a test may stand in for it

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")) + f", {platform.machine()}"
    except (OSError, StopIteration):
        pass
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return f"{name}, {capability}, oneDNN bfloat16 {'yes' if native_bf16() else 'no'}"


def available_devices() -> list[str]:
    """The devices this machine offers torch: ``cpu``, each CUDA GPU (``cuda:N``), ``mps``."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return ["cpu", *(f"cuda:{n}" for n in range(cuda)), *(["mps"] if mps else [])]
