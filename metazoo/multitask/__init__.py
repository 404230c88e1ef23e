"""The multi-task learning toolkit: conditioning on a task descriptor, task weighting, soft sharing,
and the multi-task objective. Its registries (task sets, weightings, conditionings, sharings) are in
:mod:`metazoo.registry`."""
from __future__ import annotations

from .conditioning import FiLM, Additive, Concat, Multiplicative, additive_from_concat
from .model import MultiTaskNet
from .objective import MultiTaskObjective
from .sharing import soft_sharing_penalty
from .tasks import (Task, TaskBatch, TaskBatchSampler, TaskSet, alphabet_tasks, attribute_tasks, class_group_tasks,
                    taskset_from_config)
from .weighting import DynamicWeightAverage, GradNorm, StaticWeights, UncertaintyWeights

__all__ = ["Additive", "Concat", "DynamicWeightAverage", "FiLM", "GradNorm", "Multiplicative", "MultiTaskNet",
           "MultiTaskObjective", "StaticWeights", "Task", "TaskBatch", "TaskBatchSampler", "TaskSet",
           "UncertaintyWeights", "additive_from_concat", "alphabet_tasks", "attribute_tasks", "class_group_tasks",
           "soft_sharing_penalty", "taskset_from_config"]
