"""The multi-task learning toolkit: conditioning on a task descriptor, task weighting, soft sharing."""
from __future__ import annotations

from .conditioning import CONDITIONING, FiLM, Additive, Concat, Multiplicative, additive_from_concat
from .sharing import soft_sharing_penalty
from .weighting import WEIGHTINGS, DynamicWeightAverage, StaticWeights, UncertaintyWeights

__all__ = ["CONDITIONING", "WEIGHTINGS", "Additive", "Concat", "DynamicWeightAverage", "FiLM", "Multiplicative",
           "StaticWeights", "UncertaintyWeights", "additive_from_concat", "soft_sharing_penalty"]
