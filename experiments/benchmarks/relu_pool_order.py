"""What Conv-4's block order buys on the CPU: max-pool then ReLU (metazoo's ``conv_block`` since the twenty-ninth
session) against the papers' ReLU then max-pool, one training step's forward and backward pass each.

    METAZOO_DATA=../shared/data OMP_NUM_THREADS=1 python experiments/benchmarks/relu_pool_order.py \
        [CONFIG ...] [--steps 2] [--repeats 7] [--warmup 1]

CONFIG: an experiment config (default: the Omniglot 5w1s configs whose backbone max-pools, and ProtoNet's and
Relation's 5w5s). For each, the objective as ``metazoo train`` builds it (its first meta-batch of training items,
the layout ``train.memory_format = "auto"`` gives it on the CPU) and a copy of the same weights with each block's
ReLU moved back before its max-pool take turns (:func:`metazoo.bench.common.interleaved_medians`). Both orders
give the same loss and gradients bit for bit (checked here on each config, and in tests/test_backbones.py), so the
ratio is the whole difference. The script runs under the C allocator settings of the ``metazoo`` command.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from torch import nn

from metazoo.allocator import tune
from metazoo.bench.common import interleaved_medians, machine, objective_and_batch, repeat, table, warm_up
from metazoo.build import memory_format

REPO = Path(__file__).resolve().parents[2]
DEFAULT = [f"experiments/omniglot/{name}.toml" for name in (
    "protonet_5w1s", "protonet_5w5s", "matching_5w1s", "relation_5w1s", "relation_5w5s", "snail_5w1s",
    "baseline_5w1s")]
HEADER = ["configuration", "learner", "blocks moved", "same loss and gradients", "ReLU, pool s/step",
          "pool, ReLU s/step", "speed-up"]


def papers_order(objective: nn.Module) -> int:
    """Put every block's ReLU back before its max-pool (in place); returns how many blocks moved."""
    moved = 0
    for block in objective.modules():
        if isinstance(block, nn.Sequential) and [type(m) for m in block][2:] == [nn.MaxPool2d, nn.ReLU]:
            block[2], block[3] = block[3], block[2]
            moved += 1
    return moved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=2, help="steps in a timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per contender (the median is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed blocks per contender first")
    args = parser.parse_args(argv)
    root = Path(os.environ.get("METAZOO_DATA", REPO.parent / "shared" / "data"))
    print(f"machine: {machine()}\n")
    rows = []
    for name in args.configs:
        config, objective, batch = objective_and_batch(REPO / name, root)
        layout = memory_format(config, objective, torch.device("cpu"))
        ours = objective.to(memory_format=layout)
        theirs = copy.deepcopy(ours)
        moved = papers_order(theirs)

        def step(model: nn.Module) -> list[torch.Tensor]:
            model.zero_grad()
            loss = model.meta_loss(batch)[0]
            loss.backward()
            return [loss.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)]

        same = all(torch.equal(a, b) for a, b in zip(step(ours), step(theirs), strict=True))
        blocks = {"ours": repeat(lambda: step(ours), args.steps), "papers": repeat(lambda: step(theirs), args.steps)}
        warm_up(blocks, args.warmup)
        median = interleaved_medians(blocks, args.repeats)
        a, b = median["ours"] / args.steps, median["papers"] / args.steps
        rows.append([Path(name).stem, config.learner["name"], str(moved), "yes" if same else "NO",
                     f"{b:.3f}", f"{a:.3f}", f"{b / a:.2f}x"])
        print(table(HEADER, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(HEADER, rows))
    print(f"\nForward + backward of one training step (the config's first meta-batch, training mode, the layout "
          f"\"auto\" chooses), median of {args.repeats} blocks of {args.steps} step(s) after {args.warmup} warm-up "
          f"block(s), taking turns; torch threads: {torch.get_num_threads()}. At the end: {machine()}")


if __name__ == "__main__":
    tune()  # the C allocator settings the metazoo command trains under (metazoo.allocator)
    main()
