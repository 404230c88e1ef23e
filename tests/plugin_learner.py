"""A learner defined outside the package, as a user would: registered on import, used through
``metazoo train --plugin tests.plugin_learner`` and found again by ``metazoo eval`` (tests/test_contract.py)."""
import torch

from metazoo.learners import Learner
from metazoo.learners.protonet import class_means
from metazoo.registry import LEARNERS


@LEARNERS.register("nearest_mean_test")
class NearestMean(Learner):
    """Nearest class mean under a learned temperature (a test plugin)."""

    def __init__(self, backbone, temperature: float = 1.0, bn: str = "running") -> None:
        super().__init__(backbone, bn)
        self.log_temperature = torch.nn.Parameter(torch.tensor(float(temperature)).log())

    def adapt(self, support):
        prototypes = class_means(self.backbone(support.inputs), support.labels, support.ways)
        return lambda inputs: -torch.cdist(self.backbone(inputs), prototypes) * self.log_temperature.exp()
