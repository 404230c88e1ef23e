"""The multi-task learning toolkit: conditioning on a task descriptor, task weighting, soft sharing."""
from __future__ import annotations

from .conditioning import CONDITIONING, FiLM, Additive, Concat, Multiplicative, additive_from_concat
from .model import SHARING, MultiTaskNet
from .sharing import soft_sharing_penalty
from .tasks import Task, TaskBatch, TaskBatchSampler, TaskSet, alphabet_tasks, attribute_tasks
from .weighting import WEIGHTINGS, DynamicWeightAverage, StaticWeights, UncertaintyWeights

__all__ = ["CONDITIONING", "SHARING", "WEIGHTINGS", "Additive", "Concat", "DynamicWeightAverage", "FiLM",
           "Multiplicative", "MultiTaskNet", "StaticWeights", "Task", "TaskBatch", "TaskBatchSampler", "TaskSet",
           "UncertaintyWeights", "additive_from_concat", "alphabet_tasks", "attribute_tasks", "soft_sharing_penalty"]
