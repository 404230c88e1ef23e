"""The multi-task objective ``sum_i w_i L_i`` and how the weights ``w_i`` are chosen.

Each weighting is a module called once per optimisation step with the tasks' losses (T,) and
returning the scalar objective; ``weights()`` gives the current ``w_i`` for logging. Learned
weights (uncertainty) are parameters the trainer's optimiser updates with the network's.
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

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.w * losses).sum()


class UncertaintyWeights(nn.Module):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    With a learned ``s_i = log sigma_i^2`` per task, the objective is
    ``sum_i c_i exp(-s_i) L_i + s_i / 2`` with ``c_i = 1`` for classification and ``1/2`` for
    regression (the paper's equations 5 and 10). For a fixed loss ``L_i`` the optimum is
    ``s_i = log(2 c_i L_i)``: noisier (higher-loss) tasks get smaller weights ``c_i exp(-s_i)``.
    """

    def __init__(self, kinds: Sequence[str]) -> None:
        super().__init__()
        bad = [k for k in kinds if k not in ("classification", "regression")]
        if bad:
            raise ValueError(f"unknown task kind {bad[0]!r}; valid: classification, regression")
        self.register_buffer("c", torch.tensor([1.0 if k == "classification" else 0.5 for k in kinds]))
        self.log_variance = nn.Parameter(torch.zeros(len(kinds)))

    def weights(self) -> torch.Tensor:
        return (self.c * torch.exp(-self.log_variance)).detach()

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.c * torch.exp(-self.log_variance) * losses + 0.5 * self.log_variance).sum()


class DynamicWeightAverage(nn.Module):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``w_i(t) = T * softmax_i(r_i(t - 1) / temperature)`` with ``r_i(t - 1) = L_i(t - 1) / L_i(t - 2)``,
    the rate at which task i's loss has been falling (T tasks); a task whose loss falls more slowly
    gets more weight. ``L_i(t)`` is the mean loss over a period of ``period`` steps (the paper
    uses epochs); the first two periods use equal weights.
    """

    def __init__(self, tasks: int, temperature: float = 2.0, period: int = 1) -> None:
        super().__init__()
        self.tasks, self.temperature, self.period = tasks, temperature, period
        self.register_buffer("history", torch.full((2, tasks), float("nan")))  # L(t - 2), L(t - 1)
        self.register_buffer("running", torch.zeros(tasks))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def weights(self) -> torch.Tensor:
        if torch.isnan(self.history).any():
            return torch.ones(self.tasks, device=self.history.device)
        rates = self.history[1] / self.history[0]
        return self.tasks * torch.softmax(rates / self.temperature, 0)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        total = (self.weights() * losses).sum()
        with torch.no_grad():  # book-keeping for the next periods
            self.running += losses.detach()
            self.count += 1
            if int(self.count) == self.period:
                self.history.copy_(torch.stack([self.history[1], self.running / self.period]))
                self.running.zero_()
                self.count.zero_()
        return total


WEIGHTINGS = {"static": StaticWeights, "uncertainty": UncertaintyWeights, "dwa": DynamicWeightAverage}
