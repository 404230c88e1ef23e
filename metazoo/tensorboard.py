"""TensorBoard scalars of a run's metrics rows, to watch training live (``train.tensorboard = true``).

Needs the ``tensorboard`` extra (``pip install "metazoo[tensorboard]"``); the core never imports it.
Each row of ``metrics.jsonl`` becomes scalars ``<split>/<key>`` (``train/loss``, ``val/accuracy``,
``val/seconds``, ...) at global step ``row["step"]``, in ``<run_dir>/tensorboard/``:

    tensorboard --logdir runs/
"""
from __future__ import annotations

import numbers
from pathlib import Path

INSTALL = 'TensorBoard logging needs tensorboard: pip install "metazoo[tensorboard]" (or pip install tensorboard)'
FOLDER = "tensorboard"


class MetricsWriter:
    """Writes metrics rows as TensorBoard scalars; ``purge_step``: when resuming from step ``s``, pass
    ``s + 1`` so that events the interrupted session logged after its checkpoint are hidden (as the
    trainer drops those rows from ``metrics.jsonl``). Use as a context manager, or call :meth:`close`."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(INSTALL) from error
        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER), purge_step=purge_step)

    def write(self, row: dict) -> None:
        """Every numeric value of ``row`` but ``step`` as ``<split>/<key>`` at step ``row["step"]``."""
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"{row['split']}/{key}", value, row["step"])

    __call__ = write

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metrics_writer(run_dir: str | Path, purge_step: int | None = None) -> MetricsWriter:
    """A :class:`MetricsWriter` into ``<run_dir>/tensorboard/``; an ImportError saying how to install
    tensorboard when it is missing."""
    return MetricsWriter(run_dir, purge_step)
