"""MANN (Santoro et al. 2016): a sequence learner with an LRU-access external memory (the sequence
view of an episode: :mod:`metazoo.learners.blackbox`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blackbox import SequenceLearner


# MANN's memory maths (each (batch, ...) tensor; tested against hand computations)
def cosine_weights(keys: torch.Tensor, memory: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Content addressing: softmax over slots of cosine(key, slot). keys (B, H, W), memory (B, N, W) -> (B, H, N)."""
    similarity = F.normalize(keys, dim=-1, eps=eps) @ F.normalize(memory, dim=-1, eps=eps).transpose(1, 2)
    return similarity.softmax(-1)


def usage_update(usage: torch.Tensor, read: torch.Tensor, write: torch.Tensor, gamma: float) -> torch.Tensor:
    """w^u_t = gamma * w^u_{t-1} + sum over heads of (w^r_t + w^w_t). usage (B, N), read and write (B, H, N)."""
    return gamma * usage + read.sum(1) + write.sum(1)


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu: 1 at the ``n`` slots of smallest usage, 0 elsewhere (ties broken by position). (B, N) -> (B, N)."""
    slots = usage.topk(n, dim=-1, largest=False).indices
    return torch.zeros_like(usage).scatter_(-1, slots, 1.0)


def write_weights(previous_read: torch.Tensor, previous_least_used: torch.Tensor,
                  gate: torch.Tensor) -> torch.Tensor:
    """w^w_t = sigmoid(alpha) * w^r_{t-1} + (1 - sigmoid(alpha)) * w^lu_{t-1}.

    previous_read (B, H, N), previous_least_used (B, N), gate alpha (B, H) -> (B, H, N)."""
    g = torch.sigmoid(gate)[..., None]
    return g * previous_read + (1 - g) * previous_least_used[:, None]


class MANN(SequenceLearner):
    """Memory-Augmented Neural Network (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016).

    An LSTM controller reads ``[x_t, label_t, r_{t-1}]``; each of ``heads`` heads emits a key
    ``k_t`` and a write gate ``alpha_t``. Memory ``M`` has ``slots`` rows of ``slot_size``, zero at the
    start of every sequence (episode). Per step, as in the paper:

    - the least-used slot of ``w^u_{t-1}`` is erased, then ``M_t = M_{t-1} + w^w_t^T k_t`` with
      ``w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}`` (least-recently-used access);
    - reads ``w^r_t = softmax(cosine(k_t, M_t))``, ``r_t = w^r_t M_t``;
    - usage ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t``; ``w^lu_t`` marks the ``heads`` least-used slots;
    - logits from ``[h_t, r_t]``.

    No bfloat16 autocast (``train.amp = "off"`` only): the memory is written into and the usage summed
    at every step of a sequence, so bfloat16's 8-bit mantissa loses small writes to a slot and its
    rounding compounds with the sequence length, and the least-used slots are chosen by comparing
    usages that bfloat16 rounds into ties.
    """

    amp_modes = ("off",)

    @property
    def compile_targets(self) -> tuple[str, ...]:
        """``train.compile``: in the online protocol the step is the recurrence over whole sequences, 1.56x faster
        compiled on the CPU; the episodic step is mostly its embedding's, 0.95x (docs/benchmarks.md (h))."""
        return ("sequence",) if self.online else ()

    def __init__(self, backbone: nn.Module, ways: int = 5, hidden: int = 200, slots: int = 128,
                 slot_size: int = 40, heads: int = 4, gamma: float = 0.95, order_seed: int = 0,
                 online: bool = False, bn: str = "running", embed: str = "sets") -> None:
        super().__init__(backbone, ways, order_seed, online, bn, embed)
        self.hidden, self.slots, self.slot_size, self.heads, self.gamma = hidden, slots, slot_size, heads, gamma
        self.controller = nn.LSTMCell(self.input_size + heads * slot_size, hidden)
        self.keys = nn.Linear(hidden, heads * slot_size)
        self.gates = nn.Linear(hidden, heads)
        self.out = nn.Linear(hidden + heads * slot_size, ways)

    def initial_state(self, batch: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = like.new_zeros
        least = least_used(zeros(batch, self.slots), self.heads)
        return {"h": zeros(batch, self.hidden), "c": zeros(batch, self.hidden),
                "memory": zeros(batch, self.slots, self.slot_size), "reads": zeros(batch, self.heads * self.slot_size),
                "read_weights": zeros(batch, self.heads, self.slots), "usage": zeros(batch, self.slots),
                "least_used": least}

    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        """The controller's gate pre-activations (..., 4 hidden) from ``x`` (..., features + ways), both biases
        included: the part of the LSTM that does not depend on the state, so a sequence's steps take it in one
        matrix product."""
        c = self.controller
        return F.linear(x, c.weight_ih[:, :self.input_size], c.bias_ih + c.bias_hh)

    def step_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weights each step multiplies by, joined once per sequence so that a step makes one matrix product
        for each: the controller's on ``[r_{t-1}, h_{t-1}]`` (reads + hidden, 4 hidden), and the keys' and write
        gates' on ``h_t`` (hidden, heads * (slot_size + 1)) with their bias."""
        c = self.controller
        recurrent = torch.cat([c.weight_ih[:, self.input_size:], c.weight_hh], 1).t()
        heads = torch.cat([self.keys.weight, self.gates.weight]).t()
        return recurrent, heads, torch.cat([self.keys.bias, self.gates.bias])

    def advance(self, gates: torch.Tensor, state: dict[str, torch.Tensor],
                weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One time step from the input's gates (B, 4 hidden; :meth:`input_gates`) and :meth:`step_weights`: the
        controller's LSTM step (``nn.LSTMCell``'s, gates in its order i, f, g, o), then the memory's, as the
        class describes."""
        batch, (recurrent, heads, heads_bias) = len(gates), weights
        gates = torch.addmm(gates, torch.cat([state["reads"], state["h"]], -1), recurrent)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * state["c"] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        keys, alpha = torch.addmm(heads_bias, h, heads).split([self.heads * self.slot_size, self.heads], 1)
        keys = keys.reshape(batch, self.heads, self.slot_size)
        write = write_weights(state["read_weights"], state["least_used"], alpha)
        erase = least_used(state["usage"], 1)  # the paper zeroes the one least-used slot of w^u_{t-1}
        memory = state["memory"] * (1 - erase)[..., None]
        memory = memory + write.transpose(1, 2) @ keys
        read_weights = cosine_weights(keys, memory)
        reads = (read_weights @ memory).flatten(1)
        usage = usage_update(state["usage"], read_weights, write, self.gamma)
        return {"h": h, "c": c, "memory": memory, "reads": reads, "read_weights": read_weights, "usage": usage,
                "least_used": least_used(usage, self.heads)}

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One time step: x (B, features + ways) -> logits (B, ways), next state."""
        state = self.advance(self.input_gates(x), state, self.step_weights())
        return self.out(torch.cat([state["h"], state["reads"]], -1)), state

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, ways) of ``inputs`` (B, T, features + ways): the inputs' gates and the output layer
        each in one matrix product over all the steps, the recurrence step by step."""
        state, weights = self.initial_state(len(inputs), inputs), self.step_weights()
        outputs = []
        for gates in self.input_gates(inputs).unbind(1):  # (unbind: one backward for all the steps' slices)
            state = self.advance(gates, state, weights)
            outputs.append(torch.cat([state["h"], state["reads"]], -1))
        return self.out(torch.stack(outputs, 1))

    def prefix_state(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state (controller, memory, reads, usage; batch B) after each of ``context`` (B, T, features + ways)."""
        state, weights = self.initial_state(len(context), context), self.step_weights()
        for gates in self.input_gates(context).unbind(1):
            state = self.advance(gates, state, weights)
        return state

    def continue_from(self, state: dict[str, torch.Tensor], steps: torch.Tensor) -> torch.Tensor:
        batch, n = steps.shape[:2]
        state = {k: v.repeat_interleave(n, 0) for k, v in state.items()}  # episode b's state for each of its steps
        return self.step(steps.reshape(batch * n, -1), state)[0].view(batch, n, -1)
