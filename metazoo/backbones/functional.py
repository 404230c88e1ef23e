"""A backbone's forward pass, written once, run two ways: as an ordinary module or for T tasks at once.

A :class:`Functional` module writes its forward pass as ``functional_forward(inputs, ops)``,
applying each of its layers through ``ops``: ``ops(layer, x)`` runs a layer (a submodule) and
``ops.flatten(x)`` turns feature maps into flat features. Between ops, tensors may be added,
multiplied elementwise or put through per-channel functions (``F.relu``, ``F.max_pool2d``);
never reshape, index channels or flatten them directly: the tensors' layout belongs to ``ops``.

- :data:`PLAIN` runs each layer as a module call: ``forward(inputs)`` is
  ``functional_forward(inputs, PLAIN)``, the ordinary forward pass with the module's own weights.
- :class:`TaskBatched` runs the same code for ``T`` tasks with per-task weights (MAML's inner
  loop, :class:`~metazoo.learners.inner.TaskNet`): feature maps of shape ``(T, n, C, H, W)``
  travel as ``(n, T * C, H, W)``, so a convolution is one grouped convolution over the tasks'
  filters, BatchNorm normalises ``T * C`` channels (each task's own statistics), a linear layer
  is a batched matrix product on ``(T, n, features)``, and per-channel maths is unchanged. The
  result equals running each task alone.

``ops(layer, x)`` knows ``nn.Sequential``, :class:`Functional` modules, and the standard layers
in :data:`LAYERS` (exact types: a subclass with its own forward must be :class:`Functional`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import nn

CHANNELWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Identity,
               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class Functional(nn.Module):
    """A module whose forward pass is ``functional_forward(inputs, ops)`` (see the module docstring).

    Its weights live in its layers (submodules), never in parameters of its own, so that ``ops``
    can give each task its own.
    """

    def functional_forward(self, inputs: torch.Tensor, ops: Ops) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.functional_forward(inputs, PLAIN)


class Plain:
    """The ordinary forward pass: every layer called as the module it is."""

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer(x)

    @staticmethod
    def flatten(x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) -> (n, C * H * W)."""
        return x.flatten(1)


PLAIN = Plain()


def unbatchable(module: nn.Module) -> nn.Module | None:
    """The first part of ``module`` that :class:`TaskBatched` cannot run (a layer of another type, or a
    :class:`Functional` holding weights of its own), or None when it can run all of it."""
    if type(module) in LAYERS:
        return None
    if type(module) is nn.Sequential or (isinstance(module, Functional) and not list(module.parameters(False))):
        return next((part for part in map(unbatchable, module.children()) if part is not None), None)
    return module


class TaskBatched:
    """Layers run under per-task weights for ``tasks`` tasks at once.

    ``prefixes`` gives each submodule's name prefix in the root module (``"blocks.0.0."``);
    ``params`` maps the root's parameter names to ``(T, *shape)`` tensors; ``buffers`` maps buffer
    names to tensors shared by the tasks (BatchNorm running statistics; absent: batch statistics).
    """

    def __init__(self, prefixes: Mapping[nn.Module, str], params: Mapping[str, torch.Tensor],
                 buffers: Mapping[str, torch.Tensor], tasks: int) -> None:
        self.prefixes, self.params, self.buffers, self.tasks = prefixes, params, buffers, tasks

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, Functional):
            return layer.functional_forward(x, self)
        if type(layer) is nn.Sequential:
            for child in layer:
                x = self(child, x)
            return x
        if type(layer) not in LAYERS:
            raise TypeError(f"{type(layer).__name__} has no task-batched form: make the module that uses it a "
                            "metazoo.backbones.functional.Functional (docs/adding_a_learner.md, 'Adding a backbone')")
        return LAYERS[type(layer)](self, layer, x)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (T, n, C, H, W) -> (n, T * C, H, W); (T, n, features) stay as they are."""
        return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:]) if x.dim() == 5 else x

    def leave(self, x: torch.Tensor) -> torch.Tensor:
        """Back to a leading task dimension: (n, T * C, H, W) -> (T, n, C, H, W)."""
        return x.reshape(len(x), self.tasks, -1, *x.shape[2:]).transpose(0, 1) if x.dim() == 4 else x

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """(n, T * C, H, W) -> (T, n, C * H * W); flat features (T, n, d) stay as they are."""
        return x.reshape(len(x), self.tasks, -1).transpose(0, 1) if x.dim() == 4 else x.flatten(2)

    def _weights(self, layer: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        prefix = self.prefixes[layer]
        return self.params.get(prefix + "weight"), self.params.get(prefix + "bias")

    def conv2d(self, layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weights(layer)
        return F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                        layer.stride, layer.padding, layer.dilation, self.tasks * layer.groups)

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """(T, n, in) -> (T, n, out)."""
        weight, bias = self._weights(layer)
        weight = weight.transpose(1, 2)
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)

    def batch_norm(self, layer: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weights(layer)
        weight = None if weight is None else weight.reshape(-1)
        bias = None if bias is None else bias.reshape(-1)
        prefix = self.prefixes[layer]
        mean, var = self.buffers.get(prefix + "running_mean"), self.buffers.get(prefix + "running_var")
        if mean is None:  # no running statistics: every batch is normalised with its own
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, layer.eps)
        task_mean, task_var = mean.repeat(self.tasks), var.repeat(self.tasks)
        if not layer.training:
            return F.batch_norm(x, task_mean, task_var, weight, bias, False, 0.0, layer.eps)
        # training: each task's own statistics; the shared running statistics move once, toward
        # the mean over tasks of what each task alone would have moved them to
        out = F.batch_norm(x, task_mean, task_var, weight, bias, True, layer.momentum, layer.eps)
        with torch.no_grad():
            mean.copy_(task_mean.view(self.tasks, -1).mean(0))
            var.copy_(task_var.view(self.tasks, -1).mean(0))
        return out


Ops = Union[Plain, TaskBatched]


def _channelwise(ops: TaskBatched, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)  # acts on each channel (or element) alone, so the same on (n, T * C, H, W)


LAYERS: dict[type, Callable[[TaskBatched, nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.Conv2d: TaskBatched.conv2d, nn.BatchNorm2d: TaskBatched.batch_norm, nn.Linear: TaskBatched.linear,
    nn.Flatten: lambda ops, layer, x: ops.flatten(x), **{kind: _channelwise for kind in CHANNELWISE},
}
