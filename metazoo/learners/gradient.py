"""Optimisation-based learners: MAML, first-order MAML, ANIL, Meta-SGD and Reptile.

All of them are a network (backbone + linear head with ``ways`` outputs) whose weights are
adapted to each task by :func:`~metazoo.learners.inner.inner_loop`; they differ in which
weights the inner loop moves, with which step sizes, and in the outer objective.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.sampling import episode_seed, from_host
from ..episode import Episode, LabeledSet
from .base import Learner
from .inner import Params, TaskNet, inner_loop, mini_batches, stack_params


QUERY_PASS_IMAGES = 4096  # bn = "query_with_support": images in one pass (queries x (support + 1)) at most
BATCH_SEED = 0x1B  # the inner loop's mini-batches of episode i are drawn from episode_seed(BATCH_SEED, i)


class FastWeightClassifier:
    """A learner's network bound to task-adapted weights (one task) and the support set it adapted on."""

    def __init__(self, learner: "GradientLearner", params: Params, step: int, support: torch.Tensor) -> None:
        self.learner, self.params, self.step, self.support = learner, params, step, support

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.learner.query_logits(self.params, self.step, self.support[None], inputs[None])[0]


class GradientLearner(Learner):
    """A network adapted to each task by gradient descent on its support set.

    Its BatchNorm mode is fixed when it is built (``bn_modes``: transductive, query_with_support or
    per_step).

    Args:
        backbone: feature extractor with ``feature_size``.
        ways: classes per episode (outputs of the linear head).
        inner_steps: inner-loop steps while meta-training.
        inner_lr: inner-loop step size (Meta-SGD: the initial value of its learned step sizes).
        test_inner_steps: inner steps in eval mode (``None``: ``inner_steps``).
        first_order: drop the second-order terms (gradients of the inner steps are constants).
        bn: BatchNorm statistics. ``"transductive"`` (MAML's paper): every forward pass, train
            or test, normalises with the statistics of its own batch (the support set while
            adapting, the query set when classifying); no running statistics are kept.
            ``"query_with_support"`` (Reptile's non-transductive test): batch statistics as in
            ``"transductive"``, but each query is classified in a batch of its task's support set
            and itself alone, so no query sees another's statistics (its logits are the last row).
            ``"per_step"``: batch statistics while meta-training, plus running statistics kept
            separately for each inner step (Antoniou et al. 2019) and used in eval mode, so a
            query is classified on its own.
        batch_tasks: evaluate the tasks of a meta-batch together (grouped convolutions) when the
            network allows it; the result equals task-by-task evaluation.
        tasks_per_pass: while meta-training, adapt and back-propagate this many tasks of a
            meta-batch at a time (0: all of them). Fewer tasks per pass hold fewer graphs (peak
            memory of about one task's graph at 1, like learn2learn's loop); the gradients are the same.
        inner_batch: items in each inner step's mini-batch while meta-training (0, the default, or
            at least the task's item count: every step fits all of them). The batches are slices of
            random passes over the items (:func:`~metazoo.learners.inner.mini_batches`), drawn from
            a generator seeded by the episode's index, so a resumed run draws the same ones.
        test_inner_batch: the same in eval mode, of the support set (0, the default: all of it).
    """

    bn_modes = ("transductive", "query_with_support", "per_step")
    channels_last_pays = False  # the task-batched grouped convolutions ran no faster in it (benchmarks.md, (i))

    def __init__(self, backbone: nn.Module, ways: int = 5, inner_steps: int = 1, inner_lr: float = 0.4,
                 test_inner_steps: int | None = None, first_order: bool = False, bn: str = "transductive",
                 batch_tasks: bool = True, tasks_per_pass: int = 0, inner_batch: int = 0,
                 test_inner_batch: int = 0) -> None:
        super().__init__(backbone, bn)
        self.tasks_per_pass = tasks_per_pass
        if inner_steps < 0 or (test_inner_steps is not None and test_inner_steps < 0):
            raise ValueError("inner_steps and test_inner_steps must be >= 0")
        if inner_batch < 0 or test_inner_batch < 0:
            raise ValueError("inner_batch and test_inner_batch must be >= 0 (0: every inner step on all the items)")
        self.inner_batch, self.test_inner_batch = inner_batch, test_inner_batch
        self.ways, self.inner_steps, self.inner_lr = ways, inner_steps, inner_lr
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.first_order, self.bn = first_order, bn
        self.head = nn.Linear(backbone.feature_size, ways)
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if self.batch_statistics:
                    module.track_running_stats = False
                    module.running_mean = module.running_var = module.num_batches_tracked = None
                else:  # one row of running statistics per number of inner updates made so far
                    module.running_mean = torch.zeros(inner_steps + 1, module.num_features)
                    module.running_var = torch.ones(inner_steps + 1, module.num_features)
        self._body, self._head = TaskNet(backbone, batch_tasks), TaskNet(self.head, batch_tasks)
        self.build()

    @property
    def batch_statistics(self) -> bool:
        """Whether BatchNorm always normalises with the statistics of the batch it is given."""
        return self.bn in ("transductive", "query_with_support")

    def build(self) -> None:
        """Subclasses add their own meta-parameters here (Meta-SGD: step sizes)."""

    # --- what the inner loop adapts, and how fast -------------------------------------------------
    def adapted_names(self) -> list[str]:
        """Parameters the inner loop moves (all of the network's by default)."""
        return [n for n, _ in self.named_parameters() if n.startswith(("backbone.", "head."))]

    def inner_lrs(self) -> dict[str, float | torch.Tensor]:
        return {name: self.inner_lr for name in self.adapted_names()}

    def steps(self) -> int:
        """Inner steps now: ``inner_steps`` in training mode, ``test_inner_steps`` in eval mode."""
        return self.inner_steps if self.training else self.test_inner_steps

    def inner_items(self, support: int, query: int) -> int:
        """How many of a task's items the inner loop fits now, given its support and query counts."""
        return support

    def inner_batches(self, indices: Sequence[int], items: int, device: torch.device) -> torch.Tensor | None:
        """Each task's inner mini-batches (T, steps, b) of its ``items`` items, the tasks being episodes
        ``indices``: ``inner_batch`` items a step in training mode, ``test_inner_batch`` in eval mode;
        ``None`` where every step fits all the items."""
        size = self.inner_batch if self.training else self.test_inner_batch
        if size == 0 or size >= items:
            return None
        drawn = [mini_batches(items, size, self.steps(), torch.Generator().manual_seed(episode_seed(BATCH_SEED, i)))
                 for i in indices]
        return from_host(torch.stack(drawn), device)

    # --- the network as a function of (per-task) weights -------------------------------------------
    def _stats(self, step: int) -> dict[str, torch.Tensor]:
        if self.batch_statistics:
            return {}
        row = min(step, self.inner_steps)
        return {name: buffer[row] for name, buffer in self.backbone.named_buffers()
                if name.endswith(("running_mean", "running_var"))}

    def features(self, params: Params, step: int, inputs: torch.Tensor) -> torch.Tensor:
        body = {name[9:]: p for name, p in params.items() if name.startswith("backbone.")}
        return self._body(body, self._stats(step), inputs)

    def classify(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        return self._head({"weight": params["head.weight"], "bias": params["head.bias"]}, {}, features)

    def logits(self, params: Params, step: int, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (T, n, ways) of inputs (T, n, ...) under per-task weights ``params``."""
        return self.classify(params, self.features(params, step, inputs))

    def query_logits(self, params: Params, step: int, support: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Logits (T, q, ways) of query sets ``queries`` (T, q, ...) under per-task weights ``params``: the
        queries of a task as one batch, or (``bn = "query_with_support"``) each query in a batch of its task's
        support set ``support`` (T, n, ...) and itself, run as T x q tasks of n + 1 images."""
        if self.bn != "query_with_support":
            return self.logits(params, step, queries)
        tasks, count, size = queries.shape[0], queries.shape[1], support.shape[1]
        per_pass = max(1, QUERY_PASS_IMAGES // (tasks * (size + 1)))  # queries of each task in one pass
        parts = []
        for start in range(0, count, per_pass):
            part = queries[:, start:start + per_pass]
            k = part.shape[1]
            batches = torch.cat([support[:, None].expand(tasks, k, *support.shape[1:]), part[:, :, None]], 2)
            repeated = {name: p.repeat_interleave(k, 0) for name, p in params.items()}
            parts.append(self.logits(repeated, step, batches.flatten(0, 1))[:, -1].unflatten(0, (tasks, k)))
        return torch.cat(parts, 1)

    def fast_weights(self, inputs: torch.Tensor, labels: torch.Tensor, create_graph: bool,
                     steps: int | None = None, batches: torch.Tensor | None = None) -> Params:
        """Per-task weights adapted on support sets ``inputs`` (T, n, ...) with ``labels`` (T, n)
        by ``steps`` inner steps (default: :meth:`steps`), on mini-batches ``batches`` (T, steps, b) of
        the items (:meth:`inner_batches`), or each on all of them."""
        steps = self.steps() if steps is None else steps
        tasks, adapted = len(inputs), self.adapted_names()
        params = stack_params({n: p for n, p in self.named_parameters() if n.startswith(("backbone.", "head."))},
                              tasks)
        if any(name.startswith("backbone.") for name in adapted):
            forward, data = self.logits, inputs
        else:  # the body is fixed in the inner loop: embed the support set once
            data = self.features(params, 0, inputs)

            def forward(p, step, features):
                return self.classify(p, features)
        return inner_loop(forward, params, adapted, data, labels, steps, self.inner_lrs(), self.loss, create_graph,
                          batches)

    # --- the Learner contract ---------------------------------------------------------------------
    def _check(self, support: LabeledSet) -> None:
        if support.ways != self.ways:
            raise ValueError(f"{type(self).__name__} was built for {self.ways}-way episodes (learner.ways); "
                             f"this episode is {support.ways}-way")

    def forward(self, episode: Episode) -> torch.Tensor:
        return self.adapt(episode.support, episode.index)(episode.query.inputs)

    def adapt(self, support: LabeledSet, index: int = -1) -> FastWeightClassifier:
        """Weights adapted to ``support``; ``index`` (the episode's) seeds the inner mini-batches
        (``inner_batch``; sets adapted without one, of index -1, share one draw)."""
        self._check(support)
        training, steps = self.training, self.steps()
        batches = self.inner_batches([index], len(support), support.inputs.device)
        with torch.enable_grad():  # the inner loop needs gradients even when evaluating
            params = self.fast_weights(support.inputs[None], support.labels[None],
                                       create_graph=training and not self.first_order, steps=steps, batches=batches)
        if not training:  # eval mode: fast weights are constants
            params = {name: p.detach() for name, p in params.items()}
        return FastWeightClassifier(self, params, steps, support.inputs)

    def meta_loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean query loss after adaptation; the tasks of a meta-batch are adapted together."""
        losses, correct, total = [], 0, 0
        for group in _same_shape_groups(episodes):
            for episode in group:
                self._check(episode.support)
            support_x = torch.stack([e.support.inputs for e in group])
            support_y = torch.stack([e.support.labels for e in group])
            query_x = torch.stack([e.query.inputs for e in group])
            query_y = torch.stack([e.query.labels for e in group])
            items = self.inner_items(support_x.shape[1], query_x.shape[1])
            batches = self.inner_batches([e.index for e in group], items, support_x.device)
            loss, logits = self.group_loss(support_x, support_y, query_x, query_y, batches)
            losses.append(loss * len(group))
            correct = correct + (logits.argmax(-1) == query_y).sum()
            total += query_y.numel()
        loss = torch.stack(losses).sum() / len(episodes)
        return loss, {"loss": loss.detach(), "accuracy": correct.detach().float() / max(total, 1)}

    def meta_backward(self, episodes: Sequence[Episode]) -> dict[str, torch.Tensor]:
        size = self.tasks_per_pass or len(episodes)
        loss, accuracy = 0.0, 0.0
        for start in range(0, len(episodes), size):
            part = episodes[start:start + size]
            part_loss, stats = self.meta_loss(part)
            (part_loss * (len(part) / len(episodes))).backward()
            loss = loss + stats["loss"] * len(part) / len(episodes)
            accuracy = accuracy + stats["accuracy"] * len(part) / len(episodes)
        return {"loss": loss, "accuracy": accuracy}

    def group_loss(self, support_x, support_y, query_x, query_y, batches=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query loss of a group of same-shape tasks, and their query logits (T, n, ways); ``batches``:
        the inner loop's mini-batches (:meth:`inner_batches`)."""
        params = self.fast_weights(support_x, support_y,
                                   create_graph=self.training and not self.first_order, batches=batches)
        logits = self.query_logits(params, self.steps(), support_x, query_x)
        return self.loss(logits.flatten(0, 1), query_y.flatten()), logits


def _same_shape_groups(episodes: Sequence[Episode]) -> list[list[Episode]]:
    groups: dict[tuple, list[Episode]] = {}
    for e in episodes:
        groups.setdefault((e.support.inputs.shape, e.query.inputs.shape), []).append(e)
    return list(groups.values())


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

    Meta-learns the initial weights of the whole network so that ``inner_steps`` steps of
    gradient descent on a support set fit the task; the meta-gradient flows through the inner
    steps (second order), or not with ``first_order=True`` (FOMAML).
    """

    @property
    def compile_targets(self) -> tuple[str, ...]:
        """``train.compile``: first order, a group of tasks' adaptation and query loss (``group_loss``) compiles,
        1.07-1.41x faster a step on the CPU (Omniglot 5-way 1- and 5-shot, float32 and bfloat16: docs/benchmarks.md
        (h)); second order cannot (a compiled graph has no double backward)."""
        return ("group_loss",) if self.first_order else ()


class ANIL(GradientLearner):
    """Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

    MAML whose inner loop adapts only the linear head; the body is meta-learned by the outer
    loop only. The support set is embedded once per task.
    """

    def adapted_names(self) -> list[str]:
        return ["head.weight", "head.bias"]


class MetaSGD(GradientLearner):
    """Meta-SGD (Li, Zhou, Chen & Li, 2017).

    MAML with a learned step size for every weight of the network (same shape as the weight),
    meta-trained with the initial weights; ``inner_lr`` is their initial value.
    """

    def build(self) -> None:
        self.lrs = nn.ParameterDict({_key(n): nn.Parameter(torch.full_like(p, self.inner_lr))
                                     for n, p in self.named_parameters()})

    def inner_lrs(self) -> dict[str, torch.Tensor]:
        return {name: self.lrs[_key(name)] for name in self.adapted_names()}


def _key(name: str) -> str:
    return name.replace(".", "__")


class Reptile(GradientLearner):
    """Reptile (Nichol, Achiam & Schulman, 2018).

    While meta-training, the inner loop is plain first-order SGD on all of a training episode's
    labelled data (support and query: the paper trains on more shots than it tests with, e.g. 10
    per class for Omniglot 1-shot), each step on a mini-batch of ``inner_batch`` of them (the
    paper's: 5 steps, one pass of 5 batches of 10 over 5-way Omniglot's 50; ``0``: each step on all),
    and the outer update moves the initial weights toward the mean of the adapted ones,
    ``theta += eps * mean(phi_i - theta)``. It fits the one trainer through its loss: ``meta_loss``
    has the gradient of ``0.5 * mean_i ||theta - phi_i||^2`` with ``phi_i`` held constant, which is
    ``theta - mean(phi_i)``, so an SGD outer optimiser with learning rate ``eps`` (and no momentum)
    makes exactly Reptile's update; its value is the adapted weights' loss on the query set (which
    they were fitted on). At test time Reptile adapts on the support set only, like every learner
    (``test_inner_batch`` items a step); the paper's main numbers classify each query with the
    support set and itself in the batch (``bn = "query_with_support"``).
    """

    def __init__(self, backbone: nn.Module, ways: int = 5, inner_steps: int = 5, inner_lr: float = 0.1,
                 test_inner_steps: int | None = None, bn: str = "transductive", batch_tasks: bool = True,
                 tasks_per_pass: int = 0, inner_batch: int = 0, test_inner_batch: int = 0) -> None:
        super().__init__(backbone, ways, inner_steps, inner_lr, test_inner_steps, True, bn, batch_tasks,
                         tasks_per_pass, inner_batch, test_inner_batch)

    def inner_items(self, support: int, query: int) -> int:
        return support + query if self.training else support

    def group_loss(self, support_x, support_y, query_x, query_y, batches=None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return super().group_loss(support_x, support_y, query_x, query_y, batches)
        inputs, labels = torch.cat([support_x, query_x], 1), torch.cat([support_y, query_y], 1)
        params = {n: p.detach() for n, p in self.fast_weights(inputs, labels, create_graph=False,
                                                              batches=batches).items()}
        named = dict(self.named_parameters())
        surrogate = sum(0.5 * (named[n] - params[n]).pow(2).sum() for n in self.adapted_names()) / len(inputs)
        with torch.no_grad():  # a training metric on items the weights were fitted on: the queries as one batch
            logits = self.logits(params, self.steps(), query_x)
            query_loss = self.loss(logits.flatten(0, 1), query_y.flatten())
        return surrogate - surrogate.detach() + query_loss, logits
