import hashlib
import math

import pytest
import torch

from metazoo.data import EpisodeSampler, EpisodeSizeError, FewShotDataset
from metazoo.episode import Episode, LabeledSet

from .conftest import toy_dataset


def decode(episode_inputs: torch.Tensor) -> torch.Tensor:
    """Toy images carry 10 * class + item in every pixel (values were scaled by 1/255)."""
    return (episode_inputs[:, 0, 0, 0] * 255).round().long()


def test_episode_shapes_labels_and_classes():
    data = toy_dataset()
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=3, seed=5)
    ep = sampler[7]
    assert isinstance(ep, Episode) and ep.ways == 3 and ep.index == 7
    assert ep.support.inputs.shape == (6, 1, 4, 4) and ep.query.inputs.shape == (9, 1, 4, 4)
    assert ep.support.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ep.query.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # every image of label k comes from dataset class classes[k]
    for part in (ep.support, ep.query):
        codes = decode(part.inputs)
        assert torch.equal(codes // 10, ep.classes[part.labels])


def test_support_and_query_are_disjoint():
    data = toy_dataset()
    sampler = EpisodeSampler(data, ways=6, shots=2, queries=3, seed=0)
    for i in range(50):
        ep = sampler[i]
        s, q = set(decode(ep.support.inputs).tolist()), set(decode(ep.query.inputs).tolist())
        assert not s & q
        assert len(s) == 12 and len(q) == 18  # no image twice


def test_every_image_of_a_small_class_can_be_drawn_and_none_past_it():
    data = toy_dataset(class_sizes=(5, 20))
    sampler = EpisodeSampler(data, ways=2, shots=1, queries=4, seed=1)
    seen = set()
    for i in range(30):
        ep = sampler[i]
        codes = torch.cat([decode(ep.support.inputs), decode(ep.query.inputs)])
        seen |= {c for c in codes.tolist() if c < 10}
    assert seen == {0, 1, 2, 3, 4}


def test_episode_is_a_pure_function_of_seed_and_index():
    data = toy_dataset()
    a = EpisodeSampler(data, 3, 1, 2, seed=3)
    b = EpisodeSampler(data, 3, 1, 2, seed=3)
    for i in (0, 5, 99):
        assert torch.equal(a[i].support.inputs, b[i].support.inputs)
        assert torch.equal(a[i].classes, b[i].classes)
    # any order of requests gives the same episodes
    assert torch.equal(a[5].query.inputs, EpisodeSampler(data, 3, 1, 2, seed=3)[5].query.inputs)
    assert not torch.equal(a[0].support.inputs, a[1].support.inputs) or not torch.equal(a[0].classes, a[1].classes)
    other = EpisodeSampler(data, 3, 1, 2, seed=4)
    assert any(not torch.equal(a[i].classes, other[i].classes) for i in range(5))


def test_same_episodes_for_any_worker_count():
    data = toy_dataset()
    sampler = EpisodeSampler(data, 3, 1, 2, seed=9, episodes=8)

    def run(workers):
        loader = torch.utils.data.DataLoader(sampler, batch_size=None, num_workers=workers)
        return [ep.classes.tolist() + decode(ep.query.inputs).tolist() for ep in loader]

    assert run(0) == run(2)


def test_class_choice_is_uniform_enough():
    data = toy_dataset(class_sizes=(5,) * 6)
    sampler = EpisodeSampler(data, 2, 1, 1, seed=0)
    counts = torch.zeros(6)
    for i in range(600):
        counts[sampler[i].classes] += 1
    assert counts.min() > 150 and counts.max() < 250  # expected 200 each


def test_too_small_class_is_named_with_counts():
    data = toy_dataset(class_sizes=(6, 3, 7))
    with pytest.raises(EpisodeSizeError, match=r"'class1' has 3") as err:
        EpisodeSampler(data, ways=2, shots=2, queries=3)
    assert "5 images per class" in str(err.value)


def test_too_many_ways_says_how_many_classes_exist():
    with pytest.raises(EpisodeSizeError, match=r"10-way episodes need 10 classes, but toy split 'train' has 6"):
        EpisodeSampler(toy_dataset(), ways=10, shots=1, queries=1)


@pytest.mark.parametrize("ways,shots,queries", [(0, 1, 1), (2, 0, 1), (2, 1, -1)])
def test_nonsense_sizes_fail(ways, shots, queries):
    with pytest.raises(EpisodeSizeError):
        EpisodeSampler(toy_dataset(), ways, shots, queries)


def test_labeled_set_checks_and_moves():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        LabeledSet(torch.zeros(3, 1), torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(TypeError):
        LabeledSet(torch.zeros(2, 1), torch.zeros(2), 1)
    ep = EpisodeSampler(toy_dataset(), 2, 1, 1)[0].to("cpu")
    assert ep.support.ways == 2 and len(ep.query) == 2


def test_iterating_a_sampler_stops_at_its_length():
    sampler = EpisodeSampler(toy_dataset(), 3, 1, 1, seed=0, episodes=4)
    assert [e.index for e in sampler] == [0, 1, 2, 3]


def digest(episode: Episode) -> str:
    """A short hash of an episode's inputs and classes, to pin episodes bit for bit."""
    h = hashlib.sha256()
    for t in (episode.support.inputs, episode.query.inputs, episode.classes):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def test_episodes_are_those_of_the_code_before_per_task_rotations():
    # hashes taken with the sampler as it was before task rotations existed
    sampler = EpisodeSampler(toy_dataset(), 3, 2, 3, seed=5)
    assert [digest(sampler[i]) for i in (0, 7)] == ["e4cd8c5b326eb1c0", "b00e9bf85e32aba5"]


def marked(task_rotations=(0, 90, 180, 270), class_sizes=(6, 8, 5, 7, 9, 6), scope="class") -> FewShotDataset:
    """Black 5x5 images with one pixel, top left, that encodes (class, item) as 10 * class + item + 1,
    so an image's content says which image it is and its marker's corner how it was turned."""
    codes = torch.tensor([10 * c + i + 1 for c, n in enumerate(class_sizes) for i in range(n)], dtype=torch.uint8)
    images = torch.zeros(len(codes), 1, 5, 5, dtype=torch.uint8)
    images[:, 0, 0, 0] = codes
    return FewShotDataset(images, class_sizes, [f"class{c}" for c in range(len(class_sizes))], name="marked",
                          split="train", task_rotations=task_rotations, rotation_scope=scope)


# where the top-left marker lands -> quarter turns counterclockwise (one turn takes it bottom left)
CORNERS = {(0, 0): 0, (4, 0): 1, (4, 4): 2, (0, 4): 3}


def turns_and_codes(inputs: torch.Tensor) -> tuple[list[int], list[int]]:
    """The quarter turns and the codes of marked images (n, 1, 5, 5) as the sampler returns them."""
    pixels = (inputs[:, 0] * 255).round().long()  # (n, 5, 5)
    where = [tuple(p.nonzero()[0].tolist()) for p in pixels]
    return [CORNERS[w] for w in where], [int(p[w]) for p, w in zip(pixels, where)]


def test_per_task_rotation_turns_each_class_of_an_episode_as_one():
    sampler = EpisodeSampler(marked(), ways=4, shots=2, queries=3, seed=1)
    plain = EpisodeSampler(marked(task_rotations=()), ways=4, shots=2, queries=3, seed=1)
    seen = set()
    for i in range(20):
        ep, turns = sampler[i], sampler.turns(i).tolist()
        for part in (ep.support, ep.query):
            k, codes = turns_and_codes(part.inputs)
            assert k == [turns[label] for label in part.labels.tolist()]  # support and query: one turn a class
            assert [c // 10 for c in codes] == ep.classes[part.labels].tolist()
        seen |= set(turns)
        # the turns are drawn last: the classes and images are those of the episode without rotations
        assert torch.equal(ep.classes, plain[i].classes)
        assert turns_and_codes(ep.query.inputs)[1] == turns_and_codes(plain[i].query.inputs)[1]
        assert plain.turns(i) is None and set(turns_and_codes(plain[i].support.inputs)[0]) == {0}
    assert seen == {0, 1, 2, 3}


def test_per_episode_rotation_turns_every_image_of_an_episode_by_one_angle():
    sampler = EpisodeSampler(marked(scope="episode"), ways=4, shots=2, queries=3, seed=1)
    plain = EpisodeSampler(marked(task_rotations=()), ways=4, shots=2, queries=3, seed=1)
    seen = []
    for i in range(40):
        ep, turns = sampler[i], sampler.turns(i).tolist()
        assert len(turns) == 4 and len(set(turns)) == 1
        for part in (ep.support, ep.query):
            k, codes = turns_and_codes(part.inputs)
            assert set(k) == {turns[0]} and [c // 10 for c in codes] == ep.classes[part.labels].tolist()
        assert torch.equal(ep.classes, plain[i].classes)  # drawn last: the episode's classes and images unchanged
        assert turns_and_codes(ep.support.inputs)[1] == turns_and_codes(plain[i].support.inputs)[1]
        seen.append(turns[0])
    assert set(seen) == {0, 1, 2, 3}
    assert marked(scope="episode").info["protocol"] == {"rotations": "per episode"}
    assert marked((0, 180), scope="episode").info["protocol"] == {"rotations": "per episode (0, 180)"}
    with pytest.raises(ValueError, match="unknown rotation_scope 'task'; valid: class, episode"):
        marked(scope="task")


def test_per_task_rotation_is_seeded():
    a, b = EpisodeSampler(marked(), 3, 1, 2, seed=4), EpisodeSampler(marked(), 3, 1, 2, seed=4)
    for i in (0, 3, 50):
        assert torch.equal(a[i].support.inputs, b[i].support.inputs)
        assert torch.equal(a[i].query.inputs, b[i].query.inputs) and torch.equal(a.turns(i), b.turns(i))
    other = EpisodeSampler(marked(), 3, 1, 2, seed=5)
    assert any(not torch.equal(a.turns(i), other.turns(i)) for i in range(5))


def test_per_task_rotation_is_uniform_enough():
    sampler = EpisodeSampler(marked(), 5, 1, 1, seed=0)
    counts = torch.bincount(torch.cat([sampler.turns(i) for i in range(400)]), minlength=4)
    assert counts.sum() == 2000 and counts.min() > 430 and counts.max() < 570  # expected 500 each
    only = EpisodeSampler(marked(task_rotations=(0, 180)), 5, 1, 1, seed=0)
    assert set(torch.cat([only.turns(i) for i in range(20)]).tolist()) == {0, 2}


def test_task_rotations_are_checked_and_recorded():
    assert marked().info["protocol"] == {"rotations": "per task"}
    assert marked(task_rotations=(0, 180)).info["protocol"] == {"rotations": "per task (0, 180)"}
    assert "protocol" not in marked(task_rotations=()).info
    with pytest.raises(ValueError, match="distinct angles among"):
        marked(task_rotations=(0, 45))
    with pytest.raises(ValueError, match="needs square images"):
        FewShotDataset(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), [2], ["a"], "x", "train", task_rotations=(0, 90))
    FewShotDataset(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), [2], ["a"], "x", "train", task_rotations=(0, 180))


def test_move_images_shifts_each_image_and_repeats_its_edges():
    from metazoo.data.sampling import move_images

    images = torch.randint(0, 256, (6, 2, 7, 5), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [2, -1], [-3, 4], [6, 0], [-1, -4], [1, 1]])
    out = move_images(images, shifts)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    # reference: pad by replicating the edges, then cut the window that puts pixel (r, q) at (r + dy, q + dx)
    padded = torch.nn.functional.pad(images.float(), (6, 6, 6, 6), mode="replicate")
    for i, (dy, dx) in enumerate(shifts.tolist()):
        expected = padded[i, :, 6 - dy: 6 - dy + 7, 6 - dx: 6 - dx + 5]
        assert torch.equal(out[i].float(), expected), (dy, dx)
    assert torch.equal(out[0], images[0]) and torch.equal(out[1, :, 2:, :4], images[1, :, :5, 1:])


def test_translated_episodes_are_the_plain_ones_shifted_with_seeded_per_image_offsets():
    from metazoo.data.sampling import move_images

    data = marked(task_rotations=(0, 90, 180, 270), class_sizes=(9, 8, 9, 7, 9, 8))
    plain = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=2)
    moved = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=2, translate=2)

    def both(e):  # (ways, shots + queries, 1, 5, 5)
        return torch.cat([e.support.inputs.view(4, 2, 1, 5, 5), e.query.inputs.view(4, 3, 1, 5, 5)], 1)

    offsets = []
    for i in range(30):
        ep, ref, shifts = moved[i], plain[i], moved.shifts(i)
        assert plain.shifts(i) is None and shifts.shape == (4, 5, 2) and shifts.abs().max() <= 2
        # drawn last: the same classes, images and turns as without translations
        assert torch.equal(ep.classes, ref.classes) and torch.equal(moved.turns(i), plain.turns(i))
        expected = move_images((both(ref) * 255).round().to(torch.uint8).flatten(0, 1), shifts.flatten(0, 1))
        assert torch.equal((both(ep) * 255).round().to(torch.uint8).flatten(0, 1), expected)
        offsets.append(shifts.flatten(0, 1))
    offsets = torch.cat(offsets)  # 600 images: every offset from -2 to 2 drawn, down and right alike
    assert set(offsets[:, 0].tolist()) == set(offsets[:, 1].tolist()) == {-2, -1, 0, 1, 2}
    assert (offsets[:, 0] != offsets[:, 1]).any()  # per axis, not one draw for both
    again = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=2, translate=2)
    assert torch.equal(again[7].query.inputs, moved[7].query.inputs)
    with pytest.raises(ValueError, match="less than the images' side"):
        EpisodeSampler(data, ways=4, shots=2, queries=3, translate=5)


def test_move_images_turns_about_the_centre_to_the_nearest_pixel_then_shifts():
    from metazoo.data.sampling import move_images

    images = torch.randint(0, 256, (5, 2, 7, 7), dtype=torch.uint8)
    quarter = move_images(images, angles=torch.tensor([90.0, -90.0, 180.0, 0.0, 360.0]))
    # whole turns are exact: counterclockwise as torch.rot90 turns (rows, columns)
    assert torch.equal(quarter[0], torch.rot90(images[0], 1, dims=(-2, -1)))
    assert torch.equal(quarter[1], torch.rot90(images[1], -1, dims=(-2, -1)))
    assert torch.equal(quarter[2], images[2].flip(-1).flip(-2))
    assert torch.equal(quarter[3], images[3]) and torch.equal(quarter[4], images[4])
    # small angles and a shift, against a per-pixel reference: turn each output pixel's place back about the
    # centre (3, 3), take the nearest source pixel, clamped into the image; the shift applies after the turn
    angles = torch.tensor([12.0, -25.0, 7.5, 30.0, -3.0])
    shifts = torch.tensor([[0, 0], [1, -2], [0, 0], [-1, 1], [2, 2]])
    out = move_images(images, shifts, angles)
    for i in range(5):
        a = math.radians(float(angles[i]))
        for r in range(7):
            for q in range(7):
                dr, dq = r - int(shifts[i, 0]) - 3, q - int(shifts[i, 1]) - 3
                sr = min(max(round(3 + math.cos(a) * dr + math.sin(a) * dq), 0), 6)
                sq = min(max(round(3 - math.sin(a) * dr + math.cos(a) * dq), 0), 6)
                assert torch.equal(out[i, :, r, q], images[i, :, sr, sq]), (i, r, q)
    # a point off the centre goes counterclockwise: the pixel right of the centre goes up, by 90 degrees
    dot = torch.zeros(1, 1, 7, 7, dtype=torch.uint8)
    dot[0, 0, 3, 5] = 1
    assert move_images(dot, angles=torch.tensor([90.0]))[0, 0, 1, 3] == 1
    assert move_images(dot, angles=torch.tensor([10.0]))[0, 0, 3, 5] == 1  # a small turn keeps it near


def test_rotated_episodes_are_the_translated_ones_turned_with_seeded_per_image_angles():
    from metazoo.data.sampling import move_images

    data = marked(task_rotations=(0, 90, 180, 270), class_sizes=(9, 8, 9, 7, 9, 8))
    plain = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=2)
    moved = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=2, translate=1)
    turned = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=2, translate=1, rotate=20)

    def both(e):  # (ways * (shots + queries), 1, 5, 5) uint8
        x = torch.cat([e.support.inputs.view(4, 2, 1, 5, 5), e.query.inputs.view(4, 3, 1, 5, 5)], 1)
        return (x * 255).round().to(torch.uint8).flatten(0, 1)

    angles = []
    for i in range(30):
        ep, ref, a = turned[i], plain[i], turned.angles(i)
        assert moved.angles(i) is None and a.shape == (4, 5) and a.abs().max() <= 20
        # drawn last: the same classes, turns and shifts as without the angles
        assert torch.equal(ep.classes, ref.classes) and torch.equal(turned.turns(i), plain.turns(i))
        assert torch.equal(turned.shifts(i), moved.shifts(i))
        expected = move_images(both(ref), turned.shifts(i).flatten(0, 1), a.flatten())
        assert torch.equal(both(ep), expected)
        angles.append(a.flatten())
    angles = torch.cat(angles)  # 600 angles, uniform within +-20 degrees
    assert angles.min() < -18 and angles.max() > 18 and abs(float(angles.mean())) < 2
    assert len(set(angles.tolist())) == 600
    with pytest.raises(ValueError, match="from 0 to 180"):
        EpisodeSampler(data, ways=4, shots=2, queries=3, rotate=200)


def test_train_translate_reaches_the_training_episodes_and_keeps_the_run_names_of_before():
    from metazoo.config import from_dict
    from metazoo.learners.base import Learner
    from metazoo.reproduce import training_key

    config = from_dict({"train": {"translate": 3, "queries": 2}})
    assert Learner(torch.nn.Identity()).training_items(marked(), config).translate == 3
    assert Learner(torch.nn.Identity()).training_items(marked(), from_dict({"train": {"queries": 2}})).translate == 0
    # 0 is left out of the run's key, so the runs from before it existed keep their directories
    assert training_key(from_dict({"train": {"translate": 0}})) == training_key(from_dict({}))
    assert training_key(config) != training_key(from_dict({}))
    turned = from_dict({"train": {"rotate": 10, "queries": 2}})
    assert Learner(torch.nn.Identity()).training_items(marked(), turned).rotate == 10
    assert training_key(from_dict({"train": {"rotate": 0}})) == training_key(from_dict({}))
    assert training_key(turned) != training_key(from_dict({}))


def test_protocol_carries_the_datasets_protocol_keys():
    data = toy_dataset()
    assert EpisodeSampler(data, 2, 1, 1, seed=3).protocol() == {
        "dataset": "toy", "split": "train", "ways": 2, "shots": 1, "queries": 1, "seed": 3}
    data.info.update(split="random (seed 2)", protocol={"source": "/x/birds.zip", "image_size": 4})
    assert EpisodeSampler(data, 2, 1, 1, seed=3).protocol() == {
        "dataset": "toy", "split": "train", "ways": 2, "shots": 1, "queries": 1, "seed": 3,
        "class_split": "random (seed 2)", "source": "/x/birds.zip", "image_size": 4}
    assert EpisodeSampler(marked(), 2, 1, 1).protocol()["rotations"] == "per task"
    data.info["protocol"]["ways"] = 5
    with pytest.raises(ValueError, match="key\\(s\\) ways clash"):
        EpisodeSampler(data, 2, 1, 1)
