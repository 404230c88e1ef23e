"""The errors a run stops with, importable without torch (the CLI reports them)."""
from __future__ import annotations


class RunExistsError(FileExistsError):
    """The run directory already holds a run and ``--resume`` was not given."""


class RunLockedError(RuntimeError):
    """Another process is training in the run directory."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run at a step boundary, with a checkpoint."""


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; the run stops before the optimiser takes it in."""


class RankLostError(RuntimeError):
    """Under torchrun, a collective failed: another process of the run died, or stopped answering."""


class ZooTooLargeError(ValueError):
    """A run's weights are over the model zoo's limit in every storage: no entry is made (the run is kept)."""
