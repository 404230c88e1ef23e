"""The one differentiable inner loop of the optimisation-based learners (MAML, ANIL, Meta-SGD, Reptile).

Fast weights are plain tensors with a leading task dimension: ``params[name]`` has shape
``(T, *parameter.shape)`` for a meta-batch of ``T`` tasks, and inputs have shape ``(T, n, ...)``.
A :class:`TaskNet` evaluates a module with such weights. For the standard layer types
(Conv2d, BatchNorm2d, ReLU, max and average pooling, Flatten, Linear, in ``nn.Sequential`` or
a Conv-4) it runs all ``T`` tasks at once: grouped convolutions over the per-task filters, BatchNorm over
``T * C`` channels (each task's own statistics), batched matrix products in linear layers;
the maths is the same as running each task alone. Any other module is evaluated task by task
with :func:`torch.func.functional_call`, so every backbone works.

Nothing here changes a module's parameters; in training mode BatchNorm layers that keep
running statistics update them, as any forward pass in training mode does.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Flatten, nn.Linear)


def _plan(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The leaf layers of ``module`` in execution order with their name prefixes, or None when
    ``module``'s forward is not a plain chain of supported layers."""
    from ..backbones.conv4 import Conv4

    if isinstance(module, _LEAVES):
        return [(prefix, module)]
    if isinstance(module, Conv4):
        blocks = _plan(module.blocks, prefix + "blocks.")
        return None if blocks is None else blocks + [(prefix + "pool.", module.pool), (prefix, nn.Flatten())]
    if type(module) is nn.Sequential:
        plan: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            sub = _plan(child, f"{prefix}{name}.")
            if sub is None:
                return None
            plan += sub
        return plan
    return None


class TaskNet:
    """``module`` as a function of per-task weights: ``net(params, buffers, x) -> (T, n, ...)``.

    ``params`` maps every parameter name of ``module`` to a ``(T, *shape)`` tensor; ``buffers``
    maps buffer names to tensors shared by the tasks (BatchNorm running statistics).
    ``batched=False`` forces the task-by-task ``functional_call`` path (the reference).
    """

    def __init__(self, module: nn.Module, batched: bool = True) -> None:
        self.module = module
        self.plan = _plan(module) if batched else None

    def __call__(self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        if self.plan is None:
            return torch.stack([functional_call(self.module, {**{k: v[t] for k, v in params.items()}, **buffers},
                                                (x[t],)) for t in range(len(x))])
        return self._batched(params, buffers, x)

    def _batched(self, params, buffers, x: torch.Tensor) -> torch.Tensor:
        tasks, n = x.shape[:2]
        spatial = x.dim() == 5  # (T, n, C, H, W) is carried as (n, T * C, H, W) through the conv layers
        if spatial:
            x = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
        for prefix, layer in self.plan:
            if isinstance(layer, nn.Conv2d):
                w = params[prefix + "weight"]
                b = params.get(prefix + "bias")
                x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             layer.stride, layer.padding, layer.dilation, tasks * layer.groups)
            elif isinstance(layer, nn.BatchNorm2d):
                x = self._batch_norm(layer, prefix, params, buffers, x, tasks)
            elif isinstance(layer, nn.ReLU):
                x = F.relu(x)
            elif isinstance(layer, nn.MaxPool2d):
                x = F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                 ceil_mode=layer.ceil_mode)
            elif isinstance(layer, nn.AdaptiveAvgPool2d):
                x = F.adaptive_avg_pool2d(x, layer.output_size)
            elif isinstance(layer, nn.Identity):
                pass
            elif isinstance(layer, nn.Flatten):
                if spatial:
                    x = x.reshape(n, tasks, -1).transpose(0, 1)
                    spatial = False
                else:
                    x = x.flatten(2)
            else:  # nn.Linear on (T, n, features)
                w, b = params[prefix + "weight"], params.get(prefix + "bias")
                w = w.transpose(1, 2)
                x = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
        return x.reshape(n, tasks, *x.shape[1:]).transpose(0, 1) if spatial else x

    @staticmethod
    def _batch_norm(layer: nn.BatchNorm2d, prefix: str, params, buffers, x, tasks: int) -> torch.Tensor:
        weight, bias = params.get(prefix + "weight"), params.get(prefix + "bias")
        weight = None if weight is None else weight.reshape(-1)
        bias = None if bias is None else bias.reshape(-1)
        mean, var = buffers.get(prefix + "running_mean"), buffers.get(prefix + "running_var")
        if mean is None:  # no running statistics: every batch is normalised with its own
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, layer.eps)
        if not layer.training:
            return F.batch_norm(x, mean.repeat(tasks), var.repeat(tasks), weight, bias, False, 0.0, layer.eps)
        # training: each task's own statistics; the shared running statistics move once, toward
        # the mean over tasks of what each task alone would have moved them to
        task_mean, task_var = mean.repeat(tasks), var.repeat(tasks)
        out = F.batch_norm(x, task_mean, task_var, weight, bias, True, layer.momentum, layer.eps)
        with torch.no_grad():
            mean.copy_(task_mean.view(tasks, -1).mean(0))
            var.copy_(task_var.view(tasks, -1).mean(0))
        return out


def stack_params(named: Mapping[str, torch.Tensor], tasks: int) -> Params:
    """Each tensor repeated (as a view) over a leading task dimension."""
    return {name: p.expand(tasks, *p.shape) for name, p in named.items()}


def inner_loop(forward: Callable[[Params, int, torch.Tensor], torch.Tensor], params: Params, adapted: list[str],
               inputs: torch.Tensor, labels: torch.Tensor, steps: int, lr: Mapping[str, float | torch.Tensor],
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], create_graph: bool) -> Params:
    """``steps`` steps of gradient descent on the support loss of each task, from ``params``.

    ``forward(params, step, inputs)`` gives logits ``(T, n, ways)`` with the weights reached after
    ``step`` updates; ``loss`` is the per-task mean loss. The tasks' losses are summed, so each
    task's fast weights follow the gradient of its own loss. ``lr[name]`` is a number or a tensor
    broadcastable to the parameter (Meta-SGD). With ``create_graph`` the updates stay
    differentiable (second order); without it the gradients are constants, which gives the
    first-order approximation and keeps no graph of the inner steps.
    """
    tasks = len(inputs)
    for step in range(steps):
        logits = forward(params, step, inputs)
        total = loss(logits.flatten(0, 1), labels.flatten()) * tasks
        grads = torch.autograd.grad(total, [params[name] for name in adapted], create_graph=create_graph)
        params = dict(params)
        for name, grad in zip(adapted, grads):
            params[name] = params[name] - lr[name] * grad
    return params
