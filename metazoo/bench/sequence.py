"""Table (h): a sequence learner's meta-batch run as one batch against one episode at a time (and first-order
MAML's, its tasks adapted as one batch or one at a time: ``fomaml_*``, named with ``--sequence-configs``).

For each configuration of the Omniglot table's black-box cells (``experiments/omniglot/{snail,mann,lstm}_*``,
as ``metazoo train`` resolves them), one training step's forward and backward pass over a meta-batch of real
training episodes, two ways, in alternating blocks: the sequence learners' own ``meta_loss`` (the episodes'
support prefixes as one batch, each query continuing from its episode's, or online one batch of sequences)
and the shared ``Learner.meta_loss`` (each episode alone, the mean of their losses). Both compute the same
loss and gradients (tests/test_blackbox.py); the ratio is what batching buys.

A third contender where the learner declares ``compile_targets`` (MANN): the batched step of a copy of the same
weights under ``train.compile`` (:meth:`~metazoo.objective.Objective.compile_training`), taking the same turns;
its first step, which compiles, is timed on its own (*compiling s*). The same maths to float rounding
(tests/test_compile.py); the ratio over the batched step is what ``train.compile`` buys.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Callable, Sequence

from ..objective import autocast
from .common import interleaved_medians, objective_and_batch, repeat, seconds, table, warm_up
from .scaling import repo_file

CONFIGS = {f"{name}_{cell}": f"experiments/omniglot/{name}_{cell}.toml"
           for name in ("snail", "mann", "lstm") for cell in ("5w1s", "5w5s", "20w1s", "20w5s")}
CONFIGS["mann_online"] = "experiments/omniglot/mann_online.toml"
CONFIGS.update({f"fomaml_{cell}": f"experiments/omniglot/fomaml_{cell}.toml" for cell in ("5w1s", "5w5s")})
DEFAULT = ("snail_5w1s", "snail_5w5s", "snail_20w1s", "snail_20w5s", "mann_5w1s", "mann_20w5s", "mann_online")
HEADER = ["configuration", "meta-batch", "batched s/step", "one at a time s/step", "speed-up", "compiled s/step",
          "compile speed-up", "compiling s"]


def blocks(config_path: Path, root: Path, steps: int, seed: int = 0,
           amp: str = "off") -> tuple[dict[str, Callable[[], None]], str, float | None]:
    """The contenders (``steps`` forward + backward passes each) of one configuration, its meta-batch as text,
    and the seconds of the compiled contender's first step (None where the learner declares nothing to compile)."""
    from ..learners.base import Learner

    _, learner, episodes = objective_and_batch(config_path, root, seed)

    def step(model, meta_loss: Callable) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad()
            with autocast("cpu", amp):
                loss = meta_loss(episodes)[0]
            loss.backward()
        return run

    contenders = {"batched": step(learner, learner.meta_loss),
                  "alone": step(learner, lambda e: Learner.meta_loss(learner, e))}
    compiling = None
    if learner.compile_targets:
        compiled = copy.deepcopy(learner)
        compiled.compile_training()
        contenders["compiled"] = step(compiled, compiled.meta_loss)
        compiling = seconds(contenders["compiled"])
    ep = episodes[0]
    size = f"{ep.ways}-way {len(ep.support) // ep.ways}-shot {len(ep.query) // ep.ways}-query x {len(episodes)}"
    return {name: repeat(block, steps) for name, block in contenders.items()}, size, compiling


def rows(names: Sequence[str], root: Path, steps: int, repeats: int, warmup: int,
         amp: str = "off") -> list[list[str]]:
    out = []
    for name in names:
        contenders, size, compiling = blocks(repo_file(CONFIGS[name]), root, steps, amp=amp)
        warm_up(contenders, warmup)
        median = interleaved_medians(contenders, repeats)
        batched, alone = median["batched"] / steps, median["alone"] / steps
        compiled = ["", "", ""]  # the learner declares nothing to compile
        if compiling is not None:
            fast = median["compiled"] / steps
            compiled = [f"{fast:.2f}", f"{batched / fast:.2f}x", f"{compiling:.0f}"]
        out.append([name, size, f"{batched:.2f}", f"{alone:.2f}", f"{alone / batched:.2f}x", *compiled])
    return out


def report(root: Path, args: argparse.Namespace) -> str:
    """Table (h) with its protocol line."""
    names = args.sequence_configs
    body = table(HEADER, rows(names, root, args.sequence_steps, args.sequence_repeats, args.warmup,
                              args.sequence_amp))
    arithmetic = ", under bfloat16 autocast" if args.sequence_amp == "bf16" else ""
    return (f"## (h) Sequence learners: the meta-batch as one batch vs one episode at a time\n\n{body}\n\n"
            f"Forward + backward of one training step on real Omniglot training episodes (the config's meta-batch, "
            f"training mode{arithmetic}), median of {args.sequence_repeats} blocks of {args.sequence_steps} step(s) "
            f"after "
            f"{args.warmup} warm-up block(s), the contenders taking turns; compiled: the batched step under "
            f"train.compile (where the learner declares what to compile), its speed-up over the batched step, and "
            f"the seconds of its first step, which compiles.\n")
