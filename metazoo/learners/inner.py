"""The one differentiable inner loop of the optimisation-based learners (MAML, ANIL, Meta-SGD, Reptile).

Fast weights are plain tensors with a leading task dimension: ``params[name]`` has shape
``(T, *parameter.shape)`` for a meta-batch of ``T`` tasks, and inputs have shape ``(T, n, ...)``.
A :class:`TaskNet` evaluates a module with such weights. A module that declares its functional
form (a :class:`~metazoo.backbones.functional.Functional`, an ``nn.Sequential`` of them, or a
standard layer) runs all ``T`` tasks at once through
:class:`~metazoo.backbones.functional.TaskBatched`, the same code as its own forward pass; the
maths is the same as running each task alone. Any other module is evaluated task by task with
:func:`torch.func.functional_call` (slower, same results), with a warning saying so.

Nothing here changes a module's parameters; in training mode BatchNorm layers that keep
running statistics update them, as any forward pass in training mode does.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..backbones.functional import TaskBatched, unbatchable

Params = dict[str, torch.Tensor]


class TaskNet:
    """``module`` as a function of per-task weights: ``net(params, buffers, x) -> (T, n, ...)``.

    ``params`` maps every parameter name of ``module`` to a ``(T, *shape)`` tensor; ``buffers``
    maps buffer names to tensors shared by the tasks (BatchNorm running statistics).
    ``batched=False`` forces the task-by-task ``functional_call`` path (the reference).
    ``plan`` is the name prefix of every submodule when the tasks run together, else ``None``;
    ``path`` says which path runs (``"batched"`` or ``"task by task"``).
    """

    def __init__(self, module: nn.Module, batched: bool = True) -> None:
        self.module = module
        blocker = unbatchable(module) if batched else None
        self.plan = ({m: f"{name}." if name else "" for name, m in module.named_modules()}
                     if batched and blocker is None else None)
        self.path = "task by task" if self.plan is None else "batched"
        if blocker is not None:
            warnings.warn(f"the inner loop runs {type(module).__name__}'s tasks one by one (functional_call: same "
                          f"results, slower): its {type(blocker).__name__} has no task-batched form; make it a "
                          "metazoo.backbones.functional.Functional of standard layers (docs/adding_a_learner.md, "
                          "'Adding a backbone')", stacklevel=2)

    def __call__(self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        if self.plan is None:
            return torch.stack([functional_call(self.module, {**{k: v[t] for k, v in params.items()}, **buffers},
                                                (x[t],)) for t in range(len(x))])
        ops = TaskBatched(self.plan, params, buffers, len(x))
        return ops.leave(ops(self.module, ops.enter(x)))


def stack_params(named: Mapping[str, torch.Tensor], tasks: int) -> Params:
    """Each tensor repeated (as a view) over a leading task dimension."""
    return {name: p.expand(tasks, *p.shape) for name, p in named.items()}


def mini_batches(items: int, size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Item indices (steps, size) of ``steps`` mini-batches of ``size`` of ``items`` items: consecutive
    slices of random passes over the items, each pass a fresh permutation drawn from ``generator``
    (a batch may span two passes), as Reptile's code draws its inner loop's batches."""
    passes = -(-steps * size // items)
    order = torch.cat([torch.randperm(items, generator=generator) for _ in range(passes)])
    return order[:steps * size].view(steps, size)


def inner_loop(forward: Callable[[Params, int, torch.Tensor], torch.Tensor], params: Params, adapted: list[str],
               inputs: torch.Tensor, labels: torch.Tensor, steps: int, lr: Mapping[str, float | torch.Tensor],
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], create_graph: bool,
               batches: torch.Tensor | None = None) -> Params:
    """``steps`` steps of gradient descent on the support loss of each task, from ``params``.

    ``forward(params, step, inputs)`` gives logits ``(T, n, ways)`` with the weights reached after
    ``step`` updates; ``loss`` is the per-task mean loss. The tasks' losses are summed, so each
    task's fast weights follow the gradient of its own loss. ``lr[name]`` is a number or a tensor
    broadcastable to the parameter (Meta-SGD). With ``create_graph`` the updates stay
    differentiable (second order); without it the gradients are constants, which gives the
    first-order approximation and keeps no graph of the inner steps. ``batches`` (T, steps, b), if
    given, makes each step a mini-batch step: step ``s`` of task ``t`` fits items ``batches[t, s]`` of
    its ``inputs`` (:func:`mini_batches`); without it every step fits all of them.
    """
    tasks = len(inputs)
    rows = None if batches is None else torch.arange(tasks, device=batches.device)[:, None]
    for step in range(steps):
        x, y = (inputs, labels) if rows is None else (inputs[rows, batches[:, step]], labels[rows, batches[:, step]])
        logits = forward(params, step, x)
        total = loss(logits.flatten(0, 1), y.flatten()) * tasks
        grads = torch.autograd.grad(total, [params[name] for name in adapted], create_graph=create_graph)
        params = dict(params)
        for name, grad in zip(adapted, grads):
            params[name] = params[name] - lr[name] * grad
    return params
