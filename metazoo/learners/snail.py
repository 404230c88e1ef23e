"""SNAIL (Mishra et al. 2018): causal temporal convolutions and causal attention over the sequence
view of an episode (:mod:`metazoo.learners.blackbox`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blackbox import SequenceLearner


# Each block runs B prefixes, ``prefix(x (B, C, T)) -> (output, cache)``, and then one more position of n
# continuations of each, ``step(cache, x (B, n, C)) -> output (B, n, C')``, equal to the output at position
# T of prefix b followed by x[b, i].
def prefix_through(layers: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Output of ``layers`` on the prefixes x (B, C, T), and each layer's cache."""
    caches = []
    for layer in layers:
        x, cache = layer.prefix(x)
        caches.append(cache)
    return x, caches


def step_through(layers: nn.Sequential, caches: list, x: torch.Tensor) -> torch.Tensor:
    """Output of ``layers`` at the position after their prefixes (``caches``) for each of x (B, n, C)."""
    for layer, cache in zip(layers, caches):
        x = layer.step(cache, x)
    return x


class CausalConv(nn.Module):
    """1-d convolution (kernel 2, dilation d) over time whose output at t sees inputs <= t."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, filters, 2, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, filters, T)
        return self.conv(F.pad(x, (self.dilation, 0)))

    def tap(self, x: torch.Tensor) -> torch.Tensor:
        """The input (B, C) that position T reads after the prefixes x (B, C, T): x at T - d, zero before the start."""
        length = x.shape[-1]
        return x[:, :, length - self.dilation] if length >= self.dilation else x.new_zeros(x.shape[:2])

    def step(self, tap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Output (B, n, filters) at position T for inputs x (B, n, C) there, given the prefixes'
        :meth:`tap` (B, C): the kernel's earlier tap applied once per prefix, its later one to every x."""
        weight = self.conv.weight  # (filters, C, 2): [..., 0] reads position T - d, [..., 1] position T
        return F.linear(x, weight[..., 1], self.conv.bias) + F.linear(tap, weight[..., 0])[:, None]


class DenseBlock(nn.Module):
    """Gated causal convolution, its output joined to its input: (B, C, T) -> (B, C + filters, T)."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.f, self.g = CausalConv(channels, filters, dilation), CausalConv(channels, filters, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.tanh(self.f(x)) * torch.sigmoid(self.g(x))], 1)

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), self.f.tap(x)  # f and g share their dilation, so one tap serves both

    def step(self, tap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.tanh(self.f.step(tap, x)) * torch.sigmoid(self.g.step(tap, x))], -1)


class TCBlock(nn.Module):
    """Dense blocks with dilations 1, 2, 4, ... up to the sequence length: (B, C, T) -> (B, C + k * filters, T)."""

    def __init__(self, channels: int, length: int, filters: int) -> None:
        super().__init__()
        blocks = []
        for i in range(max(1, math.ceil(math.log2(length)))):
            blocks.append(DenseBlock(channels, filters, 2 ** i))
            channels += filters
        self.blocks, self.channels = nn.Sequential(*blocks), channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        return prefix_through(self.blocks, x)

    def step(self, caches: list, x: torch.Tensor) -> torch.Tensor:
        return step_through(self.blocks, caches, x)


class AttentionBlock(nn.Module):
    """Causal single-head soft attention, its read joined to its input: (B, C, T) -> (B, C + values, T)."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(channels, key_size), nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale, self.channels = math.sqrt(key_size), channels + value_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefix(x)[0]

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The output on x (B, C, T), and the keys (B, T, key_size) and values (B, T, value_size) later steps read."""
        seq = x.transpose(1, 2)  # (B, T, C)
        keys, values = self.key(seq), self.value(seq)
        scores = self.query(seq) @ keys.transpose(1, 2) / self.scale  # (B, T, T)
        length = scores.shape[-1]
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        read = scores.masked_fill(future, float("-inf")).softmax(-1) @ values
        return torch.cat([x, read.transpose(1, 2)], 1), (keys, values)

    def step(self, cache: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """x (B, n, C) at position T attends to its prefix's keys and values (B, T, ...) and to itself."""
        keys, values = cache  # (B, T, key_size), (B, T, value_size)
        query, key, value = self.query(x), self.key(x), self.value(x)  # (B, n, key_size), ..., (B, n, value_size)
        scores = torch.cat([query @ keys.transpose(1, 2), (query * key).sum(-1, keepdim=True)], -1) / self.scale
        weights = scores.softmax(-1)  # (B, n, T + 1)
        read = weights[..., :-1] @ values + weights[..., -1:] * value
        return torch.cat([x, read], -1)


class SNAIL(SequenceLearner):
    """Simple Neural AttentIve Learner (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018).

    Over the embedded support-then-query sequence, the paper's few-shot classification stack:
    attention (keys 64, values 32), TC block (128 filters), attention (256, 128), TC block (128),
    attention (512, 256), then a 1x1 convolution to ``ways`` logits. ``length`` is the longest
    sequence the TC blocks' dilations cover, ``ways * shots + 1`` in the paper (more is harmless;
    less shortens the receptive field of the convolutions, not the attention's).
    """

    def __init__(self, backbone: nn.Module, ways: int = 5, length: int = 26, order_seed: int = 0,
                 filters: int = 128, online: bool = False, bn: str = "running", embed: str = "sets") -> None:
        super().__init__(backbone, ways, order_seed, online, bn, embed)
        channels, layers = self.input_size, []
        for block in ("attention", 64, 32), ("tc",), ("attention", 256, 128), ("tc",), ("attention", 512, 256):
            layer = AttentionBlock(channels, *block[1:]) if block[0] == "attention" else TCBlock(channels, length,
                                                                                                 filters)
            layers.append(layer)
            channels = layer.channels
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Conv1d(channels, ways, 1)

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(inputs.transpose(1, 2))).transpose(1, 2)

    def prefix_state(self, context: torch.Tensor) -> list:
        """Every block's cache of ``context`` (B, T, features + ways): its dense blocks' taps, its attention's
        keys and values."""
        return prefix_through(self.blocks, context.transpose(1, 2))[1]

    def continue_from(self, state: list, steps: torch.Tensor) -> torch.Tensor:
        return F.linear(step_through(self.blocks, state, steps), self.out.weight[..., 0], self.out.bias)
