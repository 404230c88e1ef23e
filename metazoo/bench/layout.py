"""Table (i): the convolutions' memory layout, channels_last against contiguous, and bfloat16 autocast, on the CPU.

For each configuration (``experiments/...``, as ``metazoo train`` resolves it), one training step's forward and
backward pass over the config's first meta-batch, with the objective's weights contiguous (NCHW) and, in a
copy of the same weights, channels_last (NHWC, so that the convolutions keep their feature maps that way),
taking turns. The same maths either way (tests/test_memory_format.py, in float64); the ratio is what the
layout buys, and it is what ``train.memory_format = "auto"`` follows (``Objective.channels_last_pays``). In
float32 the layouts round differently (torch's CPU batch norm is coarser on channels_last): the last columns
are each contender's gradient error against float64 (:func:`gradient_errors`).

A third contender takes the same turns: the layout ``"auto"`` chooses, under ``train.amp = "bf16"``
(:func:`metazoo.objective.autocast`, the trainer's, around the forward pass), where the learner accepts it
(``Objective.amp_modes``); its ratio is over the same layout in float32. bfloat16 changes the arithmetic (not
the same maths: docs/distributed.md), so this is what a run that chooses it would gain, not a default.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Callable, Sequence

from .common import interleaved_medians, objective_and_batch, repeat, table, warm_up
from .scaling import repo_file

CONFIGS = {name.replace("/", "_").removesuffix(".toml"): f"experiments/{name}" for name in (
    "omniglot/protonet_5w1s.toml", "omniglot/matching_5w1s.toml", "omniglot/relation_5w1s.toml",
    "omniglot/snail_5w1s.toml", "omniglot/mann_5w1s.toml", "omniglot/baseline_5w1s.toml",
    "omniglot/maml_5w1s.toml", "omniglot/fomaml_5w1s.toml", "omniglot/reptile_5w1s.toml",
    "omniglot/anil_5w1s.toml", "omniglot/metasgd_5w1s.toml", "caltech101/protonet_5w1s.toml")}
# only when named: 84x84 (seconds a step) and the other Relation cells (the pair count grows with ways x queries)
EXTRA = {name.replace("/", "_").removesuffix(".toml"): f"experiments/{name}" for name in (
    "omniglot/relation_5w5s.toml", "omniglot/relation_20w1s.toml", "omniglot/relation_20w5s.toml")}
DEFAULT = tuple(name for name in CONFIGS if not name.startswith("caltech101"))
CONFIGS.update(EXTRA)
HEADER = ["configuration", "learner", "contiguous s/step", "channels_last s/step", "speed-up", "auto chooses",
          "auto, bf16 s/step", "bf16 speed-up", "gradient error: contiguous", "channels_last", "auto, bf16"]


def blocks(config_path: Path, root: Path, steps: int) -> tuple[dict[str, Callable[[], None]], str, str]:
    """The contenders (``steps`` forward + backward passes each: ``contiguous``, ``channels_last`` and, where the
    learner accepts bfloat16, ``bf16`` in the layout ``"auto"`` gives it), the learner's name, and that layout."""
    import torch

    from ..build import memory_format
    from ..objective import autocast

    config, contiguous, batch = objective_and_batch(config_path, root)
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)

    def step(objective, amp: str = "off") -> Callable[[], None]:
        def run() -> None:
            objective.zero_grad()
            with autocast("cpu", amp):
                loss = objective.meta_loss(batch)[0]
            loss.backward()
        return repeat(run, steps)

    auto = memory_format(config, contiguous, torch.device("cpu")) == torch.channels_last
    contenders = {"contiguous": step(contiguous), "channels_last": step(channels_last)}
    if "bf16" in contiguous.amp_modes:
        contenders["bf16"] = step(copy.deepcopy(channels_last if auto else contiguous), "bf16")
    return contenders, config.learner["name"], "channels_last" if auto else "contiguous"


def gradient_errors(config_path: Path, root: Path) -> dict[str, float]:
    """How far each contender's gradients are from float64's: ``|g - g64| / |g64|`` over all the objective's
    gradients as one vector, one training step on the config's first meta-batch from the same seeded weights
    (the float64 step contiguous, on the same items in float64)."""
    import torch

    from ..build import memory_format
    from ..objective import autocast

    config, contiguous, batch = objective_and_batch(config_path, root)
    auto = memory_format(config, contiguous, torch.device("cpu"))
    runs = {"contiguous": (contiguous, "off"),
            "channels_last": (copy.deepcopy(contiguous).to(memory_format=torch.channels_last), "off")}
    if "bf16" in contiguous.amp_modes:
        runs["bf16"] = (copy.deepcopy(contiguous).to(memory_format=auto), "bf16")

    def gradient(objective, amp: str, items: list) -> torch.Tensor:
        objective.zero_grad()
        with autocast("cpu", amp):
            loss = objective.meta_loss(items)[0]
        loss.backward()
        return torch.cat([p.grad.double().flatten() for p in objective.parameters() if p.grad is not None])

    exact = gradient(copy.deepcopy(contiguous).double(), "off", [item.to(dtype=torch.float64) for item in batch])
    return {name: float((gradient(*run, batch) - exact).norm() / exact.norm()) for name, run in runs.items()}


def rows(names: Sequence[str], root: Path, steps: int, repeats: int, warmup: int) -> list[list[str]]:
    out = []
    for name in names:
        errors = gradient_errors(repo_file(CONFIGS[name]), root)
        contenders, learner, auto = blocks(repo_file(CONFIGS[name]), root, steps)
        warm_up(contenders, warmup)
        median = interleaved_medians(contenders, repeats)
        plain, last = median["contiguous"] / steps, median["channels_last"] / steps
        bf16 = ["refused", ""]  # the learner is not sound under bfloat16 (its amp_modes)
        if "bf16" in median:
            half = median["bf16"] / steps
            bf16 = [f"{half:.3f}", f"{median[auto] / steps / half:.2f}x"]
        out.append([name, learner, f"{plain:.3f}", f"{last:.3f}", f"{plain / last:.2f}x", auto, *bf16,
                    *(f"{errors[k]:.1e}" if k in errors else "" for k in ("contiguous", "channels_last", "bf16"))])
    return out


def report(root: Path, args: argparse.Namespace) -> str:
    """Table (i) with its protocol line."""
    body = table(HEADER, rows(args.layout_configs, root, args.layout_steps, args.layout_repeats, args.warmup))
    return (f"## (i) Convolution layout on the CPU: channels_last vs contiguous, and bfloat16\n\n{body}\n\n"
            f"Forward + backward of one training step (the config's first meta-batch, training mode), median of "
            f"{args.layout_repeats} blocks of {args.layout_steps} step(s) after {args.warmup} warm-up block(s), "
            f"the contenders taking turns; bf16: the layout auto chooses under bfloat16 autocast "
            f"(train.amp = \"bf16\"), its speed-up over that layout in float32; gradient error: each contender's "
            f"gradients against float64's (contiguous), |g - g64| / |g64| over all of them, one step from the same "
            f"weights.\n")
