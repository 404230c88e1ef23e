"""learn2learn's side of tables (e) and (f): its example loops for MAML and ProtoNet on Omniglot.

Written in the style of learn2learn's ``examples/vision/maml_omniglot.py`` (``MAML`` ``clone``,
``adapt`` on the adaptation half of each task, the evaluation half's loss back-propagated task by
task, the gradients averaged over the meta-batch, Adam) and ``protonet_miniimagenet.py`` (labels
sorted, prototypes the mean support embedding, logits the negative pairwise squared distances,
cross-entropy, Adam with a step schedule), with metazoo's settings (:class:`Settings`, read from an
experiment config) instead of the examples' own, so both sides train the same thing. Networks are
learn2learn's: ``OmniglotCNN`` (MAML's Omniglot network, the same layers as metazoo's
``conv4`` with ``pooling = false, global_pool = true``) and ``CNN4Backbone`` with max-pooling
(the layers of metazoo's default ``conv4``). The examples' meta-validation (MAML's every iteration,
ProtoNet's every 100 episodes) is left out: it is not training (both sides are tested afterwards, on
the same episodes).

``python -m metazoo.bench.l2l_loops`` is the learn2learn contender of the race (table (f),
:mod:`metazoo.bench.race`): it trains for ``--seconds`` of training time on one thread and saves
the network at ``--snapshots`` evenly spaced training times.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.l2l import task_from_episode
from ..episode import Episode

DATA = ("benchmark", "interop")  # --data: learn2learn's Omniglot benchmark pipeline, or metazoo's split via the interop


@dataclasses.dataclass(frozen=True)
class Settings:
    """What both sides of a row share, taken from a resolved metazoo config (:meth:`from_config`)."""

    learner: str  # "maml" or "protonet"
    split: str  # the training split (train or trainval characters of the Vinyals split)
    ways: int
    shots: int
    queries: int
    meta_batch: int
    lr: float  # Adam's
    step_size: int  # learning rate times gamma every step_size iterations (0: constant)
    gamma: float
    seed: int
    inner_lr: float = 0.0  # MAML only
    inner_steps: int = 0
    test_inner_steps: int = 0
    first_order: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "Settings":
        t, o, learner = config.train, config.optim, dict(config.learner)
        name = learner["name"]
        if name not in ("maml", "protonet") or o.name != "adam" or o.schedule != "step":
            raise ValueError(f"the learn2learn loops train MAML or ProtoNet with Adam and a step schedule, not "
                             f"{name} with {o.name}/{o.schedule}")
        inner = {} if name == "protonet" else {
            "inner_lr": float(learner["inner_lr"]), "inner_steps": int(learner["inner_steps"]),
            "test_inner_steps": int(learner.get("test_inner_steps") or learner["inner_steps"]),
            "first_order": bool(learner["first_order"])}
        return cls(name, t.split, t.ways, t.shots, t.queries, t.meta_batch_size, o.lr, o.step_size, o.gamma,
                   t.seed, **inner)

    def describe(self) -> str:
        text = (f"{self.ways}-way {self.shots}-shot {self.queries}-query episodes, meta-batch {self.meta_batch}, "
                f"Adam {self.lr:g}" + (f" times {self.gamma:g} every {self.step_size} iterations"
                                       if self.step_size else ""))
        if self.learner == "maml":
            text += (f", {self.inner_steps} inner step(s) of {self.inner_lr:g} ({self.test_inner_steps} at test), "
                     f"{'first' if self.first_order else 'second'} order")
        return text


def support_mask(ways: int, shots: int, queries: int) -> torch.Tensor:
    """(ways * (shots + queries),) True for the adaptation items of a task sorted by label: the first
    ``shots`` of each class's block (the examples' ``adaptation_indices`` / ``support_indices``)."""
    return (torch.arange(shots + queries) < shots).repeat(ways)


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (predictions.argmax(dim=1).view(targets.shape) == targets).float().mean()


def maml_fast_adapt(batch, learner, steps: int, ways: int, shots: int, queries: int):
    """The MAML example's ``fast_adapt``: adapt ``learner`` (a clone) on the adaptation items, then the
    evaluation items' loss and accuracy."""
    data, labels = batch
    adaptation = support_mask(ways, shots, queries)
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner(data[adaptation]), labels[adaptation]))
    predictions = learner(data[~adaptation])
    return F.cross_entropy(predictions, labels[~adaptation]), accuracy(predictions, labels[~adaptation])


def pairwise_distances_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The ProtoNet example's logits: minus the squared distances of each row of ``a`` to each of ``b``."""
    n, m = a.shape[0], b.shape[0]
    return -((a.unsqueeze(1).expand(n, m, -1) - b.unsqueeze(0).expand(n, m, -1)) ** 2).sum(dim=2)


def protonet_fast_adapt(model: nn.Module, batch, ways: int, shots: int, queries: int):
    """The ProtoNet example's ``fast_adapt``: sort by label, embed, prototypes, distance logits, loss. The
    sort is stable, so a task whose classes already list their support items first keeps them first."""
    data, labels = batch
    order = torch.sort(labels, stable=True).indices
    data, labels = data[order], labels[order]
    embeddings = model(data)
    adaptation = support_mask(ways, shots, queries)
    support = embeddings[adaptation].reshape(ways, shots, -1).mean(dim=1)
    logits = pairwise_distances_logits(embeddings[~adaptation], support)
    return F.cross_entropy(logits, labels[~adaptation].long()), accuracy(logits, labels[~adaptation])


def network(settings: Settings) -> nn.Module:
    """learn2learn's network for the learner: OmniglotCNN (MAML) or a max-pooling CNN4Backbone (ProtoNet)."""
    import learn2learn as l2l

    if settings.learner == "maml":
        return l2l.vision.models.OmniglotCNN(settings.ways)
    return nn.Sequential(l2l.vision.models.CNN4Backbone(hidden_size=64, channels=1, max_pool=True), nn.Flatten())


class Loop:
    """One learner's training loop as learn2learn's example runs it, over ``taskset`` (``sample()`` gives
    a task ``(X, y)`` of ``ways`` classes with ``shots + queries`` items each, labels 0..ways-1)."""

    def __init__(self, settings: Settings, taskset: Any) -> None:
        import learn2learn as l2l

        self.settings, self.taskset = settings, taskset
        self.model = network(settings)
        self.maml = l2l.algorithms.MAML(self.model, lr=settings.inner_lr, first_order=settings.first_order) \
            if settings.learner == "maml" else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), settings.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, settings.step_size, settings.gamma) \
            if settings.step_size else None
        self.iterations = 0

    def task_loss(self, batch) -> torch.Tensor:
        s = self.settings
        if self.maml is not None:
            return maml_fast_adapt(batch, self.maml.clone(), s.inner_steps, s.ways, s.shots, s.queries)[0]
        return protonet_fast_adapt(self.model, batch, s.ways, s.shots, s.queries)[0]

    def iteration(self) -> None:
        """One meta-iteration: each task of the meta-batch sampled, its loss back-propagated; the summed
        gradients averaged over the meta-batch; an Adam step (and a schedule step)."""
        self.model.train()
        self.optimizer.zero_grad()
        for _ in range(self.settings.meta_batch):
            self.task_loss(self.taskset.sample()).backward()
        for p in self.model.parameters():
            p.grad.data.mul_(1.0 / self.settings.meta_batch)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.iterations += 1


def test_accuracies(model: nn.Module, settings: Settings, episodes: Sequence[Episode]) -> list[float]:
    """Accuracy of a trained network on each episode, by the example's own procedure: MAML clones and
    adapts ``test_inner_steps`` times on the support items (BatchNorm on batch statistics, as the
    example tests); ProtoNet embeds in eval mode (running statistics, as the example tests)."""
    import learn2learn as l2l

    scores = []
    maml = l2l.algorithms.MAML(model, lr=settings.inner_lr, first_order=True) if settings.learner == "maml" else None
    model.train(maml is not None)
    for episode in episodes:
        shots, queries = len(episode.support) // episode.ways, len(episode.query) // episode.ways
        batch = task_from_episode(episode)
        if maml is not None:
            acc = maml_fast_adapt(batch, maml.clone(), settings.test_inner_steps, episode.ways, shots, queries)[1]
        else:
            with torch.no_grad():
                acc = protonet_fast_adapt(model, batch, episode.ways, shots, queries)[1]
        scores.append(float(acc))
    return scores


def taskset(settings: Settings, data: str, root: str | Path) -> Any:
    """The training taskset of the race: ``benchmark``, learn2learn's Omniglot benchmark pipeline (PNG
    files decoded per item) on the Vinyals characters of ``settings.split``; ``interop``, learn2learn's
    NWays/KShots taskset over metazoo's decoded split (:func:`metazoo.data.l2l.l2l_taskset`)."""
    from ..data import create_dataset
    from ..data.l2l import l2l_taskset
    from ..data.omniglot import load_characters, vinyals_characters
    from .standard import l2l_omniglot_root, l2l_split_taskset

    samples = settings.shots + settings.queries
    if data == "interop":
        split = create_dataset("omniglot", split=settings.split, root=root)
        return l2l_taskset(split, settings.ways, settings.shots, settings.queries, remap_labels=True)
    names, _ = load_characters(Path(root))
    return l2l_split_taskset(l2l_omniglot_root(root), vinyals_characters(settings.split, names), settings.ways,
                             samples)


def race(loop: Loop, seconds: float, snapshots: int, out: Path) -> list[dict]:
    """Train until ``seconds`` of training time; after the first iteration past each ``k * seconds /
    snapshots``, save ``out/l2l-k.pt`` (network weights, iterations, training seconds)."""
    points = [seconds * k / snapshots for k in range(1, snapshots + 1)]
    saved, start = [], time.perf_counter()
    while points:
        loop.iteration()
        elapsed = time.perf_counter() - start
        if elapsed >= points[0]:
            points.pop(0)
            entry = {"snapshot": len(saved) + 1, "steps": loop.iterations, "train_seconds": elapsed}
            torch.save({**entry, "model": loop.model.state_dict()}, out / f"l2l-{entry['snapshot']}.pt")
            saved.append(entry)
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metazoo.bench.l2l_loops", description=__doc__.split("\n")[0])
    p.add_argument("--settings", required=True, help="a Settings as JSON (metazoo.bench.race writes it)")
    p.add_argument("--data", choices=DATA, default="benchmark")
    p.add_argument("--data-root", required=True)
    p.add_argument("--seconds", type=float, required=True, help="training time budget")
    p.add_argument("--snapshots", type=int, default=6)
    p.add_argument("--out", required=True, help="folder for l2l-K.pt and l2l.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = Settings(**json.loads(args.settings))
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    loop = Loop(settings, taskset(settings, args.data, args.data_root))
    setup = time.perf_counter() - start
    out = Path(args.out)
    saved = race(loop, args.seconds, args.snapshots, out)
    (out / "l2l.json").write_text(json.dumps({"setup_seconds": setup, "snapshots": saved, "data": args.data}))
    return 0


if __name__ == "__main__":
    from ..allocator import tune

    tune()  # as the metazoo command does (docs/benchmarks.md (g))
    raise SystemExit(main())
