"""learn2learn interop: its tasks become metazoo Episodes, metazoo splits become its MetaDatasets.

The ``episode_from_task`` tests need no learn2learn; the others skip without it.
"""

import pytest
import torch

from metazoo.data import EpisodeSizeError
from metazoo.data.l2l import FloatImageDataset, episode_from_task, episodes_from_taskset, l2l_dataset, l2l_taskset
from metazoo.episode import Episode

from .conftest import toy_dataset


def l2l():
    return pytest.importorskip("learn2learn")


def decode(inputs: torch.Tensor) -> torch.Tensor:
    """Toy images carry 10 * class + item in every pixel (values were scaled by 1/255)."""
    return (inputs[:, 0, 0, 0] * 255).round().long()


def toy_task(order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Items coded ``10 * class + position in task``; ``order`` lists each item's class."""
    labels = torch.tensor(order)
    codes = 10 * labels + torch.arange(len(order))
    return codes.float()[:, None, None, None].expand(-1, 1, 2, 2), labels


def test_episode_from_task_is_class_major_and_keeps_task_order_within_a_class():
    # classes 7, 3, 9 interleaved; 1 shot + 2 queries each
    data, labels = toy_task([7, 3, 9, 3, 9, 7, 9, 7, 3])
    ep = episode_from_task(data, labels, ways=3, shots=1, queries=2, index=4)
    assert isinstance(ep, Episode) and ep.ways == 3 and ep.index == 4
    assert ep.classes.tolist() == [3, 7, 9]  # label k is the k-th smallest class id
    assert ep.support.labels.tolist() == [0, 1, 2]
    assert ep.query.labels.tolist() == [0, 0, 1, 1, 2, 2]
    codes = lambda part: part.inputs[:, 0, 0, 0].long().tolist()  # noqa: E731
    # support = first item of each class in task order, query = the rest, in task order
    assert codes(ep.support) == [31, 70, 92]
    assert codes(ep.query) == [33, 38, 75, 77, 94, 96]
    assert ep.support.inputs.shape == (3, 1, 2, 2) and ep.query.inputs.shape == (6, 1, 2, 2)


def test_episode_from_task_names_the_class_with_the_wrong_count():
    data, labels = toy_task([0, 0, 1, 1, 1, 2])
    with pytest.raises(EpisodeSizeError, match=r"class 1 has 3.*class 2 has 1.*KShots\(dataset, k=2\)"):
        episode_from_task(data, labels, ways=3, shots=1, queries=1)
    with pytest.raises(EpisodeSizeError, match="expected a 2-way task, but it has 3 classes"):
        episode_from_task(data, labels, ways=2, shots=1, queries=2)
    with pytest.raises(ValueError, match="labels"):
        episode_from_task(data, labels[:-1], ways=3, shots=1, queries=1)


def test_float_image_dataset_and_l2l_dataset_index_the_split():
    data = toy_dataset()
    items = FloatImageDataset(data)
    assert len(items) == len(data)
    for i in (0, 6, len(data) - 1):
        x, y = items[i]
        assert torch.equal(x, data.to_float(data.images[i: i + 1])[0]) and y == int(data.labels()[i])
    l2l()
    meta = l2l_dataset(data)
    for c in range(data.num_classes):
        lo, hi = int(data.class_offsets[c]), int(data.class_offsets[c + 1])
        assert list(meta.labels_to_indices[c]) == list(range(lo, hi))
        assert all(meta.indices_to_labels[i] == c for i in range(lo, hi))


def test_toy_taskset_episodes_hold_distinct_images_of_their_classes():
    l2l()
    data = toy_dataset()
    for remap in (False, True):
        taskset = l2l_taskset(data, ways=3, shots=2, queries=3, remap_labels=remap)
        for ep in episodes_from_taskset(taskset, ways=3, shots=2, queries=3, episodes=20):
            s, q = decode(ep.support.inputs), decode(ep.query.inputs)
            assert len(set(s.tolist()) | set(q.tolist())) == 15  # support and query disjoint, no repeats
            classes = (s // 10).view(3, 2)[:, 0]  # dataset class behind each episode label
            assert torch.equal(s // 10, classes[ep.support.labels])
            assert torch.equal(q // 10, classes[ep.query.labels])
            assert len(set(classes.tolist())) == 3
            if not remap:
                assert torch.equal(ep.classes, classes)


def test_omniglot_taskset_gives_episodes_of_real_classes(omniglot):
    l2l()
    from metazoo.learners import create_learner

    train = omniglot["train"]
    ways, shots, queries = 5, 1, 15
    taskset = l2l_taskset(train, ways, shots, queries)
    episodes = list(episodes_from_taskset(taskset, ways, shots, queries, episodes=5))
    assert [ep.index for ep in episodes] == list(range(5))
    for ep in episodes:
        assert ep.support.inputs.shape == (ways * shots, 1, 28, 28)
        assert ep.query.inputs.shape == (ways * queries, 1, 28, 28)
        assert ep.support.inputs.dtype == torch.float32
        assert ep.support.labels.tolist() == list(range(ways))
        assert ep.query.labels.tolist() == [k for k in range(ways) for _ in range(queries)]
        assert ep.classes.tolist() == sorted(set(ep.classes.tolist())) and len(ep.classes) == ways
        for k, c in enumerate(ep.classes.tolist()):
            lo, hi = int(train.class_offsets[c]), int(train.class_offsets[c + 1])
            drawings = train.to_float(train.images[lo:hi]).flatten(1)  # (20, 784) all of class c
            mine = torch.cat([ep.support.inputs[ep.support.labels == k], ep.query.inputs[ep.query.labels == k]])
            match = (mine.flatten(1)[:, None, :] == drawings[None]).all(-1)  # (shots + queries, 20)
            assert match.any(1).all(), f"an image of label {k} is not a drawing of {train.class_names[c]}"
            assert len(set(match.float().argmax(1).tolist())) == shots + queries  # distinct drawings

    learner = create_learner("protonet")
    logits = learner(episodes[0])
    assert logits.shape == (ways * queries, ways) and torch.isfinite(logits).all()


def test_omniglot_taskset_with_remapped_labels_matches_its_own_labels(omniglot):
    l2l()
    train = omniglot["train"]
    ways, shots, queries = 20, 1, 5
    taskset = l2l_taskset(train, ways, shots, queries, remap_labels=True)
    task = taskset.sample()
    ep = episode_from_task(task[0], task[1], ways, shots, queries)
    assert ep.classes.tolist() == list(range(ways))  # RemapLabels already made them 0..ways-1
    for k in range(ways):  # episode label k holds exactly the items learn2learn labelled k, in task order
        expected = task[0][task[1] == k]
        assert torch.equal(ep.support.inputs[ep.support.labels == k], expected[:shots])
        assert torch.equal(ep.query.inputs[ep.query.labels == k], expected[shots:])
