import dataclasses
import os
from pathlib import Path

import pytest
import torch

from metazoo.data import FewShotDataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def real_data_root() -> Path:
    """../shared/data beside the repository, else $METAZOO_DATA."""
    if (SHARED_DATA / "omniglot").exists():
        return SHARED_DATA
    return Path(os.environ.get("METAZOO_DATA", SHARED_DATA))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = real_data_root()
    if not (root / "omniglot").exists():
        pytest.fail(f"real data not found at {root}: tests expect ../shared/data beside the repo or $METAZOO_DATA")
    return root


@pytest.fixture(scope="session")
def omniglot(data_root):
    """The Omniglot splits, decoded once per session (through the tensor cache)."""
    from metazoo.data import Omniglot

    return {split: Omniglot(split, root=data_root) for split in ("train", "val", "test")}


def toy_dataset(class_sizes=(6, 8, 5, 7, 9, 6), channels=1, side=4, name="toy", split="train") -> FewShotDataset:
    """Images whose pixel values encode (class, item): image value = 10 * class + item."""
    images = []
    for c, n in enumerate(class_sizes):
        for i in range(n):
            images.append(torch.full((channels, side, side), 10 * c + i, dtype=torch.uint8))
    return FewShotDataset(torch.stack(images), class_sizes, [f"class{c}" for c in range(len(class_sizes))],
                          name=name, split=split)


def overfits(learner, episode, steps: int = 100, lr: float = 1e-2) -> bool:
    """Meta-train ``learner`` on one episode with Adam; True if it then classifies every query right. Each
    step sees the episode under a new index, as a sampler's episodes come (sequence learners draw their
    training support order from it)."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    for step in range(steps):
        loss, _ = learner.meta_loss([dataclasses.replace(episode, index=step)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learner.eval()
    return bool((learner(episode).argmax(-1) == episode.query.labels).all())
