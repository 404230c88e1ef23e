"""A process that dies, for tests/test_distributed.py (no fault injection lives in the package): ProtoNet whose
process of rank ``METAZOO_TEST_DIE_RANK`` exits at once (``os._exit(1)``: no cleanup, no message, as a crashed
or killed process does) at the start of its ``METAZOO_TEST_DIE_AT``-th training step in this session. Without
those variables it is ProtoNet, so the same config resumes the run."""
import os

from metazoo.distributed import rank
from metazoo.learners.protonet import ProtoNet
from metazoo.registry import LEARNERS


@LEARNERS.register("protonet_dying_test")
class DyingProtoNet(ProtoNet):
    """ProtoNet, but for the rank set to die (a test plugin)."""

    steps_taken = 0  # this process's training steps so far (not state: a resumed session counts again)

    def meta_backward(self, episodes):
        self.steps_taken += 1
        die_at, who = os.environ.get("METAZOO_TEST_DIE_AT"), os.environ.get("METAZOO_TEST_DIE_RANK", "1")
        if die_at is not None and self.steps_taken == int(die_at) and rank() == int(who):
            os._exit(1)
        return super().meta_backward(episodes)
