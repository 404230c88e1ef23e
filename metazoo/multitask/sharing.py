"""Soft parameter sharing: task-specific networks pulled together by a penalty."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def soft_sharing_penalty(networks: Sequence[nn.Module], weight: float) -> torch.Tensor:
    """``weight * sum_{i < j} ||theta_i - theta_j||^2`` over same-shaped task networks.

    Its gradient for task i's parameters is ``2 * weight * sum_{j != i} (theta_i - theta_j)``; at
    ``weight = 0`` the networks are independent, and as it grows they approach one shared network.
    Only parameters are compared (not buffers such as BatchNorm statistics). Computed through the
    identity ``sum_{i < j} ||theta_i - theta_j||^2 = T * sum_i ||theta_i - mean||^2`` (T networks),
    linear in T rather than quadratic.
    """
    params = [list(net.parameters()) for net in networks]
    if any(len(p) != len(params[0]) or any(a.shape != b.shape for a, b in zip(p, params[0])) for p in params):
        raise ValueError("soft sharing needs networks of the same architecture")
    total = params[0][0].new_zeros(())
    for group in zip(*params):  # one parameter tensor of every network
        stacked = torch.stack(group)
        total = total + (stacked - stacked.mean(0)).pow(2).sum()
    return weight * len(params) * total
