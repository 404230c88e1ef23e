"""Conditioning a shared network on a task descriptor ``z``: each choice a module around a trunk.

Every module maps trunk features ``x`` (n, d) and descriptors ``z`` (n, k) (a one-hot task index,
or a metadata vector) to conditioned features (n, out):

- :class:`Concat`: ``W [x; z] + b``, a linear layer on the concatenation;
- :class:`Additive`: ``W x + b + U z``: the descriptor shifts the layer's output. A linear layer on
  ``[x; z]`` is exactly this with ``W_concat = [W, U]`` (:func:`additive_from_concat`);
- :class:`Multiplicative`: ``(W x + b) * (G z)``: the descriptor gates each unit;
- :class:`FiLM`: ``(W x + b) * (G z) + U z``: additive and multiplicative together (Perez et al. 2018).

The multi-head and independent-network choices change the network's structure rather than
adding a layer; :class:`~metazoo.multitask.model.MultiTaskNet` builds them.
"""
from __future__ import annotations

import torch
from torch import nn


class Concat(nn.Module):
    def __init__(self, features: int, descriptor: int, out: int) -> None:
        super().__init__()
        self.features, self.descriptor = features, descriptor
        self.linear = nn.Linear(features + descriptor, out)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, z], -1))


class Additive(nn.Module):
    def __init__(self, features: int, descriptor: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, out)
        self.shift = nn.Linear(descriptor, out, bias=False)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.shift(z)


class Multiplicative(nn.Module):
    def __init__(self, features: int, descriptor: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, out)
        self.gate = nn.Linear(descriptor, out, bias=False)
        nn.init.ones_(self.gate.weight)  # starts as no gating for one-hot descriptors

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.gate(z)


class FiLM(nn.Module):
    def __init__(self, features: int, descriptor: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, out)
        self.gate = nn.Linear(descriptor, out, bias=False)
        self.shift = nn.Linear(descriptor, out, bias=False)
        nn.init.ones_(self.gate.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.gate(z) + self.shift(z)


@torch.no_grad()
def additive_from_concat(concat: Concat) -> Additive:
    """The additive module computing the same function as ``concat``: ``W_concat = [W, U]``."""
    f = concat.features
    additive = Additive(f, concat.descriptor, concat.linear.out_features)
    additive.linear.weight.copy_(concat.linear.weight[:, :f])
    additive.linear.bias.copy_(concat.linear.bias)
    additive.shift.weight.copy_(concat.linear.weight[:, f:])
    return additive
