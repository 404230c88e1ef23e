"""The multi-task objective ``sum_i w_i L_i`` and how the weights ``w_i`` are chosen.

Each weighting (a registered one: ``metazoo list``) is a module called once per optimisation step
with the losses of the tasks in the step's mini-batch of tasks, ``weighting(losses, tasks, shared)``
(``tasks``: their indices, default all T; ``shared``: the weight of the network's last shared
layer, which GradNorm needs), returning the scalar objective; ``weights()`` gives the current
``w_i`` of all T tasks. Learned weights (uncertainty, GradNorm) are parameters the trainer's
optimiser updates with the network's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class StaticWeights(nn.Module):
    """Fixed weights: equal (1 each) or given."""

    def __init__(self, tasks: int, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        w = torch.ones(tasks) if weights is None else torch.as_tensor(weights, dtype=torch.float)
        if w.shape != (tasks,):
            raise ValueError(f"{len(w)} weights for {tasks} tasks")
        self.register_buffer("w", w)

    def weights(self) -> torch.Tensor:
        return self.w

    def forward(self, losses: torch.Tensor, tasks: torch.Tensor | None = None, shared=None) -> torch.Tensor:
        return (_pick(self.w, tasks) * losses).sum()


class UncertaintyWeights(nn.Module):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    With a learned ``s_i = log sigma_i^2`` per task, the objective is
    ``sum_i c_i exp(-s_i) L_i + s_i / 2`` with ``c_i = 1`` for classification and ``1/2`` for
    regression (the paper's equations 5 and 10). For a fixed loss ``L_i`` the optimum is
    ``s_i = log(2 c_i L_i)``: noisier (higher-loss) tasks get smaller weights ``c_i exp(-s_i)``.
    """

    def __init__(self, kinds: Sequence[str] = ("classification",)) -> None:
        super().__init__()
        bad = [k for k in kinds if k not in ("classification", "regression")]
        if bad:
            raise ValueError(f"unknown task kind {bad[0]!r}; valid: classification, regression")
        self.register_buffer("c", torch.tensor([1.0 if k == "classification" else 0.5 for k in kinds]))
        self.log_variance = nn.Parameter(torch.zeros(len(kinds)))

    def weights(self) -> torch.Tensor:
        return (self.c * torch.exp(-self.log_variance)).detach()

    def forward(self, losses: torch.Tensor, tasks: torch.Tensor | None = None, shared=None) -> torch.Tensor:
        c, s = _pick(self.c, tasks), _pick(self.log_variance, tasks)
        return (c * torch.exp(-s) * losses + 0.5 * s).sum()


class DynamicWeightAverage(nn.Module):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``w_i(t) = T * softmax_i(r_i(t - 1) / temperature)`` with ``r_i(t - 1) = L_i(t - 1) / L_i(t - 2)``,
    the rate at which task i's loss has been falling (T tasks); a task whose loss falls more slowly
    gets more weight. ``L_i(t)`` is task i's mean loss over a period of ``period`` steps (the paper
    uses epochs; a task absent from a period keeps its last value); equal weights until every
    task has two periods of history.
    """

    def __init__(self, tasks: int, temperature: float = 2.0, period: int = 1) -> None:
        super().__init__()
        self.tasks, self.temperature, self.period = tasks, temperature, period
        self.register_buffer("history", torch.full((2, tasks), float("nan")))  # L(t - 2), L(t - 1)
        self.register_buffer("sums", torch.zeros(tasks))
        self.register_buffer("counts", torch.zeros(tasks))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def weights(self) -> torch.Tensor:
        """Equal weights until every task has two periods of history (chosen on the device: no host sync)."""
        rates = self.history[1] / self.history[0]
        weights = self.tasks * torch.softmax(rates / self.temperature, 0)
        return torch.where(torch.isnan(self.history).any(), torch.ones_like(weights), weights)

    def forward(self, losses: torch.Tensor, tasks: torch.Tensor | None = None, shared=None) -> torch.Tensor:
        total = (_pick(self.weights(), tasks) * losses).sum()
        with torch.no_grad():  # book-keeping for the next periods, on the device (no host sync)
            index = torch.arange(self.tasks, device=losses.device) if tasks is None else tasks
            self.sums.index_add_(0, index, losses.detach())
            self.counts.index_add_(0, index, torch.ones_like(losses))
            self.steps += 1
            due = self.steps == self.period  # the end of a period
            seen = (self.counts > 0) & due
            latest = torch.where(seen, self.sums / self.counts.clamp_min(1), self.history[1])
            self.history[0] = torch.where(seen, self.history[1], self.history[0])
            self.history[1] = latest
            for buffer in (self.sums, self.counts, self.steps):
                buffer.copy_(torch.where(due, torch.zeros_like(buffer), buffer))
        return total


class GradNorm(nn.Module):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018): learned weights that balance the
    tasks' gradient norms at the last shared layer ``W``.

    For the step's tasks, ``G_i = ||grad_W (w_i L_i)||`` and the target ``G_mean * r_i ** alpha``,
    with ``r_i`` task i's inverse training rate ``L_i / L_i(0)`` divided by its mean over the step's
    tasks (``L_i(0)``: the task's first loss). The network follows ``sum_i w_i L_i`` with the weights
    held constant; the weights follow the gradient of ``L_grad = sum_i |G_i - target_i|`` with the
    targets held constant, and are renormalised to sum to T before every step. ``alpha``: how
    strongly tasks that train more slowly are pulled up (the paper uses 0.12 to 3; 1.5 on NYUv2).
    """

    def __init__(self, tasks: int, alpha: float = 1.5) -> None:
        super().__init__()
        self.tasks, self.alpha = tasks, alpha
        self.w = nn.Parameter(torch.ones(tasks))
        self.register_buffer("initial", torch.full((tasks,), float("nan")))

    def weights(self) -> torch.Tensor:
        return self.w.detach()

    def forward(self, losses: torch.Tensor, tasks: torch.Tensor | None = None, shared=None) -> torch.Tensor:
        if shared is None:
            raise ValueError("GradNorm balances gradients at the last shared layer, and this network shares none "
                             "(sharing = \"independent\"): choose another weighting")
        index = torch.arange(self.tasks, device=losses.device) if tasks is None else tasks
        with torch.no_grad():
            self.w.mul_(self.tasks / self.w.sum())
            seen = self.initial[index]
            self.initial[index] = torch.where(torch.isnan(seen), losses.detach(), seen)
        w = self.w[index]
        norms = torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0].norm() for loss in losses])
        norms = w * norms  # G_i: differentiable in w only
        rates = losses.detach() / self.initial[index]
        targets = (norms.mean() * (rates / rates.mean()) ** self.alpha).detach()
        balance = (norms - targets).abs().sum()
        return (w.detach() * losses).sum() + balance - balance.detach()


def _pick(values: torch.Tensor, tasks: torch.Tensor | None) -> torch.Tensor:
    return values if tasks is None else values[tasks]
