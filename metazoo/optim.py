"""Outer-loop optimisers and learning-rate schedules (registries ``optimisers`` and ``schedules``).

Each optimiser factory takes the parameters and the ``[optim]`` section; each schedule factory the
optimiser, the ``[optim]`` section and the run's step budget.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], optim: Any) -> torch.optim.Optimizer:
    """Adam with ``lr`` and ``weight_decay``."""
    return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)


def sgd(params: Iterable[torch.nn.Parameter], optim: Any) -> torch.optim.Optimizer:
    """SGD with ``lr``, ``momentum`` and ``weight_decay``."""
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def rmsprop(params: Iterable[torch.nn.Parameter], optim: Any) -> torch.optim.Optimizer:
    """RMSProp with ``lr``, ``alpha`` (the squared-gradient average's decay), ``momentum`` and ``weight_decay``
    (MANN's paper trains with RMSProp)."""
    return torch.optim.RMSprop(params, lr=optim.lr, alpha=optim.alpha, momentum=optim.momentum,
                               weight_decay=optim.weight_decay)


def clip_gradients(module: torch.nn.Module, optim: Any) -> None:
    """Scale ``module``'s gradients down to norm ``optim.clip_norm`` where they are longer (``clip_norm = 0``:
    untouched): all of them as one vector (``clip_scope = "all"``), or each top-level child module's, and the
    module's own parameters', as a vector of its own (``"module"``). No host synchronisation."""
    if optim.clip_norm <= 0:
        return
    groups = [list(module.parameters())] if optim.clip_scope == "all" else \
        [list(child.parameters()) for child in module.children()] + [list(module.parameters(recurse=False))]
    for params in groups:
        grads = [p for p in params if p.grad is not None]
        if grads:
            torch.nn.utils.clip_grad_norm_(grads, optim.clip_norm)


def step_schedule(optimizer: torch.optim.Optimizer, optim: Any, steps: int):
    """The learning rate times ``gamma`` every ``step_size`` steps; constant with ``step_size = 0``."""
    decays = optim.step_size > 0
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size if decays else 1,
                                           gamma=optim.gamma if decays else 1.0)


def linear_schedule(optimizer: torch.optim.Optimizer, optim: Any, steps: int):
    """The learning rate falls linearly to 0 at ``steps`` (Reptile's outer step size)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
