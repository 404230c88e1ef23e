"""A network for T tasks: a trunk, how tasks share it (a registered sharing), an output layer per task."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..registry import CONDITIONINGS, SHARINGS


class Conditioned:
    """One trunk and one hidden layer shared by all tasks, the hidden layer conditioned on the task's
    descriptor ``z`` by a registered conditioning (:mod:`~metazoo.multitask.conditioning`)."""

    def __init__(self, conditioning: str) -> None:
        self.conditioning = conditioning

    def build(self, net: "MultiTaskNet", trunk: nn.Module, hidden: int, common_init: bool) -> None:
        net.trunk = trunk
        net.conditioning = CONDITIONINGS.create(self.conditioning, features=trunk.feature_size,
                                                descriptor=net.descriptors.shape[1], out=hidden)

    def hidden(self, net: "MultiTaskNet", x: torch.Tensor, task: int) -> torch.Tensor:
        return net.conditioning(net.trunk(x), net.descriptors[task].expand(len(x), -1))

    def shared(self, net: "MultiTaskNet") -> nn.Module:
        return net.conditioning


class MultiHead:
    """One shared trunk, then a hidden layer per task."""

    def build(self, net: "MultiTaskNet", trunk: nn.Module, hidden: int, common_init: bool) -> None:
        net.trunk = trunk
        net.hidden = nn.ModuleList(nn.Linear(trunk.feature_size, hidden) for _ in net.outputs)

    def hidden(self, net: "MultiTaskNet", x: torch.Tensor, task: int) -> torch.Tensor:
        return net.hidden[task](net.trunk(x))

    def shared(self, net: "MultiTaskNet") -> nn.Module:
        return net.trunk


class Independent:
    """A copy of the trunk and hidden layer per task, nothing shared: each tower from its own random
    weights, or with ``common_init`` all from the same ones (so a soft-sharing penalty starts at 0)."""

    def build(self, net: "MultiTaskNet", trunk: nn.Module, hidden: int, common_init: bool) -> None:
        tasks = len(net.outputs)
        net.towers = nn.ModuleList(nn.Sequential(copy.deepcopy(trunk), nn.Linear(trunk.feature_size, hidden))
                                   for _ in range(1 if common_init else tasks))
        net.towers.extend(copy.deepcopy(net.towers[0]) for _ in range(tasks - len(net.towers)))
        for tower in net.towers[1:] if not common_init else ():  # own random weights each
            for module in tower.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def hidden(self, net: "MultiTaskNet", x: torch.Tensor, task: int) -> torch.Tensor:
        return net.towers[task](x)

    def shared(self, net: "MultiTaskNet") -> None:
        return None


class MultiTaskNet(nn.Module):
    """``net(x, task) -> outputs (n, outputs[task])`` for tasks with their own output sizes.

    ``sharing`` names a registered arrangement of the trunk (``metazoo list``; ``hidden`` units
    follow the trunk): ``"concat"``, ``"additive"``, ``"multiplicative"``, ``"film"`` (one trunk and
    hidden layer conditioned on ``z``), ``"multihead"``, or ``"independent"`` (the no-sharing
    reference; :func:`~metazoo.multitask.sharing.soft_sharing_penalty` over ``towers`` pulls them
    together). ``descriptors`` (T, k) holds each task's ``z`` (default: one-hot task indices); it is
    a buffer, so it follows the network's device and dtype and is saved with its weights.
    """

    def __init__(self, trunk: nn.Module, outputs: Sequence[int], sharing: str = "film", hidden: int = 256,
                 descriptors: torch.Tensor | None = None, common_init: bool = False) -> None:
        super().__init__()
        tasks = len(outputs)
        dtype = torch.get_default_dtype()
        z = torch.eye(tasks, dtype=dtype) if descriptors is None else torch.as_tensor(descriptors).to(dtype)
        if z.dim() != 2 or len(z) != tasks:
            raise ValueError(f"descriptors of shape {tuple(z.shape)} for {tasks} tasks: need ({tasks}, k)")
        self.register_buffer("descriptors", z)
        self.sharing, self.outputs = sharing, list(outputs)
        self.arrangement = SHARINGS.create(sharing)
        self.arrangement.build(self, trunk, hidden, common_init)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in outputs)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](torch.relu(self.arrangement.hidden(self, x, task)))

    def last_shared_weight(self) -> torch.Tensor | None:
        """The weight of the last layer every task shares (GradNorm's W), or None with nothing shared."""
        shared = self.arrangement.shared(self)
        weights = [] if shared is None else [p for p in shared.parameters() if p.dim() >= 2]
        return weights[-1] if weights else None
