"""A network for T tasks: a trunk, how tasks share it, and an output layer per task."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from .conditioning import CONDITIONING

SHARING = (*CONDITIONING, "multihead", "independent")


class MultiTaskNet(nn.Module):
    """``net(x, task) -> outputs (n, outputs[task])`` for tasks with their own output sizes.

    ``sharing`` picks the architecture (``trunk`` has ``feature_size``; ``hidden`` units follow it):

    - ``"concat"``, ``"additive"``, ``"multiplicative"``, ``"film"``: one trunk and one hidden layer
      shared by all tasks, the hidden layer conditioned on the task's descriptor ``z``
      (:mod:`~metazoo.multitask.conditioning`), then the task's output layer;
    - ``"multihead"``: one shared trunk, then a hidden layer and output layer per task;
    - ``"independent"``: a copy of the trunk and hidden layer per task, nothing shared (the
      no-sharing reference; :func:`~metazoo.multitask.sharing.soft_sharing_penalty` over
      ``towers`` pulls them together). Each tower starts from its own random weights, or with
      ``common_init`` all from the same ones (so a soft-sharing penalty starts at zero).

    ``descriptors`` (T, k) holds each task's ``z`` (default: one-hot task indices).
    """

    def __init__(self, trunk: nn.Module, outputs: Sequence[int], sharing: str = "film", hidden: int = 256,
                 descriptors: torch.Tensor | None = None, common_init: bool = False) -> None:
        super().__init__()
        if sharing not in SHARING:
            raise ValueError(f"unknown sharing {sharing!r}; valid: {', '.join(SHARING)}")
        tasks = len(outputs)
        z = torch.eye(tasks) if descriptors is None else torch.as_tensor(descriptors, dtype=torch.float)
        if len(z) != tasks:
            raise ValueError(f"{len(z)} descriptors for {tasks} tasks")
        self.register_buffer("descriptors", z)
        self.sharing, self.outputs = sharing, list(outputs)
        features = trunk.feature_size
        if sharing in CONDITIONING:
            self.trunk = trunk
            self.conditioning = CONDITIONING[sharing](features, z.shape[1], hidden)
        elif sharing == "multihead":
            self.trunk = trunk
            self.hidden = nn.ModuleList(nn.Linear(features, hidden) for _ in range(tasks))
        else:
            self.towers = nn.ModuleList(nn.Sequential(copy.deepcopy(trunk), nn.Linear(features, hidden))
                                        for _ in range(1 if common_init else tasks))
            self.towers.extend(copy.deepcopy(self.towers[0]) for _ in range(tasks - len(self.towers)))
            for tower in self.towers[1:] if not common_init else ():  # own random weights each
                for module in tower.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in outputs)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if self.sharing in CONDITIONING:
            z = self.descriptors[task].expand(len(x), -1)
            h = self.conditioning(self.trunk(x), z)
        elif self.sharing == "multihead":
            h = self.hidden[task](self.trunk(x))
        else:
            h = self.towers[task](x)
        return self.heads[task](torch.relu(h))
