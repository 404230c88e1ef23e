"""What the trainer optimises: an Objective gives a loss for a batch drawn from its own sampler.

A few-shot :class:`~metazoo.learners.base.Learner` is one kind of objective (its batches are
episodes); multi-task training (:class:`~metazoo.multitask.objective.MultiTaskObjective`, batches
of task data) is another. The trainer knows only this interface: it asks the objective for its
training items, takes ``train.meta_batch_size`` consecutive items per step, and calls
``meta_backward``. Evaluation protocols (:mod:`metazoo.evaluate`) say which kind they need.

Modes are explicit: ``train()`` while meta-training, ``eval()`` while evaluating (never inferred
from whether gradients are being recorded), and the BatchNorm mode ``bn`` is one setting owned
here, applied by :meth:`Objective.evaluation` and recorded from the objective in every result.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Iterator, Sequence

import torch
from torch import nn

BN_MODES = ("running", "transductive")
LOG = logging.getLogger("metazoo")
AMP_MODES = ("off", "bf16")  # train.amp: float32 throughout, or bfloat16 autocast


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``amp = "bf16"`` (matrix products and convolutions in bfloat16,
    the weights, their gradients, losses and reductions in float32); nothing for ``"off"``. On a CPU without
    bfloat16 support in oneDNN (:func:`native_bf16`), a warning, once a process."""
    kind = torch.device(device).type
    if amp == "bf16" and kind == "cpu" and not native_bf16():
        _warn_slow_bf16()
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=amp == "bf16")


@functools.cache
def native_bf16() -> bool:
    """Whether oneDNN runs this CPU's bfloat16 convolutions and matrix products (it needs AVX-512 or AMX).
    Without it torch falls back to slower kernels: a training step measured 8x-15x slower than in float32 on
    an AVX2 CPU (docs/benchmarks.md, table (i), twenty-sixth session). True where torch does not say."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if check is None else bool(check())


@functools.cache
def _warn_slow_bf16() -> None:
    LOG.warning("train.amp = 'bf16' on a CPU without bfloat16 support in oneDNN (no AVX-512 or AMX): torch's "
                "fallback kernels are several times slower than float32's (docs/distributed.md); set train.amp = "
                "\"off\"")


class Objective(nn.Module):
    """Base class of everything the trainer optimises.

    Subclasses implement :meth:`training_items` and :meth:`meta_loss`.

    ``bn`` (a constructor setting of every objective): ``"running"`` evaluates with BatchNorm's
    running statistics, so no information flows between the examples of a batch;
    ``"transductive"`` normalises every batch with its own statistics when evaluating (MAML's
    paper), leaving the running statistics untouched. ``bn_modes`` lists the modes an objective
    accepts (the gradient learners fix theirs when built).

    ``amp_modes``: the ``train.amp`` settings an objective is sound under (:data:`AMP_MODES`; a class
    whose arithmetic bfloat16 would spoil lists only ``"off"`` and says why in its docstring); the
    trainer and evaluation run its forward and backward passes under :func:`autocast`.

    ``compile_targets``: the methods whose ``torch.compile``'d form is faster in training (measured per family:
    docs/benchmarks.md, table (h)); ``train.compile`` swaps them in (:meth:`compile_training`).

    ``channels_last_pays``: whether ``train.memory_format = "auto"`` lays its convolutions' weights out as
    channels_last on the CPU (measured per family: docs/benchmarks.md, table (i)).
    """

    bn_modes: tuple[str, ...] = BN_MODES
    amp_modes: tuple[str, ...] = AMP_MODES
    channels_last_pays = True
    compile_targets: tuple[str, ...] = ()
    loss_is_item_mean = True  # a step's loss is the mean over its items, so processes can split the items
    gathers_on_device = False  # its items are gathered where the dataset's images are, which may be a GPU

    def __init__(self, bn: str = "running") -> None:
        super().__init__()
        if bn not in self.bn_modes:
            raise ValueError(f"{type(self).__name__}: unknown BatchNorm mode bn={bn!r}; "
                             f"valid: {', '.join(self.bn_modes)}")
        self.bn = bn

    @classmethod
    def check_amp(cls, amp: str, name: str | None = None) -> None:
        """Refuse an ``amp`` setting this objective is not sound under (``amp_modes``), naming it (``name``:
        its registered name) and the setting, in one line."""
        if amp not in cls.amp_modes:
            raise ValueError(f"learner {name or cls.__name__!r} refuses train.amp = {amp!r} (bfloat16 is not sound "
                             f"for it; its docstring says why): set train.amp = \"off\"")

    @classmethod
    def check_config(cls, config: Any, name: str | None = None) -> None:
        """Refuse, in one line, what ``config`` alone shows this objective cannot run (``name``: its registered
        name), before any data are read or weights built: here, a ``train.amp`` it is not sound under
        (:meth:`check_amp`). Training (``check_start``) and the re-test of a run (``test_run``) call it."""
        cls.check_amp(config.train.amp, name)

    # --- training -------------------------------------------------------------------------------
    def compile_training(self) -> tuple[str, ...]:
        """``train.compile``: each method named in ``compile_targets`` runs compiled (``torch.compile``, one static
        shape per compilation) where it trains, in training mode with gradients on, and as it is elsewhere (the
        validation and test episodes, whose shapes differ from the step's and would each compile anew). Returns the
        names. The compiled forms are bound to this instance: compile a copy's own."""
        for name in self.compile_targets:
            eager = getattr(self, name)
            compiled = torch.compile(eager, dynamic=False)

            def either(*args, _eager=eager, _compiled=compiled, **kwargs):
                return (_compiled if self.training and torch.is_grad_enabled() else _eager)(*args, **kwargs)
            setattr(self, name, either)
        return self.compile_targets

    @classmethod
    def resolve_settings(cls, settings: dict, config: Any, train_set: Any) -> None:
        """Fill, in ``settings`` (the config's ``[learner]`` section), what this objective takes from
        the run rather than its paper (e.g. ``ways`` from ``train.ways``); called before the run's
        ``config.toml`` is written, so the run reloads to the same objective."""

    def training_items(self, train_set: Any, config: Any) -> torch.utils.data.Dataset:
        """The seeded items the trainer draws: step ``s`` (1-based) uses items
        ``(s-1)*B .. s*B-1``, B = ``train.meta_batch_size``; item ``i`` a pure function of the seed and ``i``."""
        raise NotImplementedError

    def meta_loss(self, batch: Sequence[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one step's items and detached metrics (``loss``, ``accuracy``)."""
        raise NotImplementedError

    def meta_backward(self, batch: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Accumulate the gradient of ``meta_loss(batch)`` into ``.grad``; return its metrics.

        An objective may override this to back-propagate part by part, provided the gradients
        equal those of ``meta_loss(batch)[0].backward()``."""
        loss, stats = self.meta_loss(batch)
        loss.backward()
        return stats

    # --- evaluation -----------------------------------------------------------------------------
    def as_learner(self):
        """The few-shot learner this objective's training gives (the episodic protocol's subject)."""
        raise TypeError(f"{type(self).__name__} gives no few-shot learner to evaluate on episodes")

    @contextlib.contextmanager
    def evaluation(self) -> Iterator["Objective"]:
        """Eval mode with BatchNorm as ``bn`` says, restored afterwards; gradients off."""
        was_training = self.training
        self.eval()
        flipped = []
        if self.bn == "transductive":  # batch statistics, running ones neither read nor moved
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    module.training, module.track_running_stats = True, False
                    flipped.append(module)
        try:
            with torch.no_grad():
                yield self
        finally:
            for module in flipped:
                module.training, module.track_running_stats = False, True
            self.train(was_training)
