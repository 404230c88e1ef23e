"""Black-box learners: the sequence view's causality, MANN's memory maths by hand, SNAIL's blocks, the
support prefix run once per episode (equal to re-running it with every query)."""
import contextlib
import functools
import math
import time

import pytest
import torch

from metazoo import create_learner
from metazoo.episode import Episode, LabeledSet
from metazoo.learners.blackbox import SequenceLearner, all_items, presentation_index
from metazoo.learners.mann import MANN, cosine_weights, least_used, usage_update, write_weights
from metazoo.learners.snail import AttentionBlock, TCBlock

from .test_learners import BACKBONE, episode

SEQUENCE_LEARNERS = ["lstm", "mann", "snail"]


def build(name, **settings):
    torch.manual_seed(0)
    return create_learner(name, backbone=dict(BACKBONE), ways=3, **settings)


@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_a_query_sees_neither_other_queries_nor_any_query_label(name):
    learner = build(name).eval()
    ep = episode(queries=3)
    logits = learner(ep)
    changed = ep.query.inputs.clone()
    changed[1:] = torch.randn_like(changed[1:])  # every query but the first replaced
    other = Episode(ep.support, LabeledSet(changed, ep.query.labels.roll(1), ep.ways), ep.classes)
    torch.testing.assert_close(learner(other)[0], logits[0])
    assert not torch.allclose(learner(other)[1:], logits[1:])


@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_sequence_models_are_causal(name):
    learner = build(name).eval()
    inputs = torch.randn(2, 7, learner.input_size)
    later = inputs.clone()
    later[:, 4:] = torch.randn_like(later[:, 4:])
    out, out_later = learner.sequence(inputs), learner.sequence(later)
    torch.testing.assert_close(out_later[:, :4], out[:, :4])
    assert not torch.allclose(out_later[:, 4:], out[:, 4:])


@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_support_labels_are_read(name):
    learner = build(name).eval()
    ep = episode()
    relabelled = Episode(LabeledSet(ep.support.inputs, (ep.support.labels + 1) % 3, 3), ep.query, ep.classes)
    assert not torch.allclose(learner(ep), learner(relabelled))


def test_support_order_is_fixed_when_evaluating_and_the_episodes_own_when_training():
    learner = build("lstm")
    cpu = torch.device("cpu")
    fixed = torch.randperm(10, generator=torch.Generator().manual_seed(learner.order_seed))
    assert torch.equal(learner.eval().support_order(10, cpu), fixed)
    assert torch.equal(learner.train().support_order(10, cpu), fixed)  # no episode: the fixed order in both modes
    orders = [tuple(learner.support_order(10, cpu, learner.episode_generator(episode(index=i))).tolist())
              for i in (0, 1, 2, 3, 0)]
    assert orders[0] == orders[-1] and len(set(orders)) > 1  # a pure function of the episode's index


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_training_logits_do_not_depend_on_the_global_generator(name, online):
    learner = build(name, online=online).train()
    ep = episode(queries=2, index=7)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(learner.scored_logits(ep) if online else (learner(ep), ep.query.labels))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    if not online:  # the episode's order, not the fixed one of evaluation
        assert not torch.equal(runs[0][0], learner.classifier(ep.support)(ep.query.inputs))


# --- the support prefix runs once per episode ---------------------------------------------------------
TINY = {"lstm": {"hidden": 16}, "mann": {"hidden": 16, "slots": 16, "slot_size": 8, "heads": 2},
        "snail": {"filters": 8}}


def random_episode(ways, shots, queries, side=16, index=5):
    """Random images, class-major labels (the sequence maths needs no structure in the images)."""
    generator = torch.Generator().manual_seed(ways * 100 + shots)

    def items(per_class):
        return LabeledSet(torch.randn(ways * per_class, 1, side, side, generator=generator),
                          torch.arange(ways).repeat_interleave(per_class), ways)
    return Episode(items(shots), items(queries), torch.arange(ways), index)


@contextlib.contextmanager
def uncached(learner):
    """``learner`` with SequenceLearner's default prefix_state and continue_from: every query's whole
    sequence (the support prefix, then the query) run from the start, as before the prefix was cached."""
    learner.prefix_state = functools.partial(SequenceLearner.prefix_state, learner)
    learner.continue_from = functools.partial(SequenceLearner.continue_from, learner)
    try:
        yield learner
    finally:
        del learner.prefix_state, learner.continue_from


def logits_and_meta_gradients(learner, ep):
    learner.zero_grad()
    logits = learner(ep)
    learner.meta_loss([ep])[0].backward()
    return logits.detach(), [p.grad.clone() for p in learner.parameters()]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("ways,shots", [(5, 2), (20, 1)])
@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_the_cached_prefix_gives_the_logits_and_gradients_of_every_query_run_whole(name, ways, shots, training):
    torch.manual_seed(0)
    learner = create_learner(name, backbone=dict(BACKBONE), ways=ways, **TINY[name]).double().train(training)
    ep = random_episode(ways, shots, queries=2).to(dtype=torch.float64)
    logits, gradients = logits_and_meta_gradients(learner, ep)
    with uncached(learner):
        expected, expected_gradients = logits_and_meta_gradients(learner, ep)
    assert "prefix_state" not in vars(learner)  # the learner's own path again
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=1e-10)


def test_snail_20_way_5_shot_episode_timing_with_and_without_the_cached_prefix():
    """Not an assertion: prints one 20-way 5-shot, 15-query episode's time both ways (Conv-4 of width 8 on
    28x28 images, SNAIL with 16 filters, float32, no gradients)."""
    torch.manual_seed(0)
    backbone = dict(BACKBONE, image_size=28)
    learner = create_learner("snail", backbone=backbone, ways=20, length=101, filters=16).eval()
    ep = random_episode(20, 5, queries=15, side=28)
    with torch.no_grad():
        start = time.perf_counter()
        logits = learner(ep)
        cached = time.perf_counter() - start
        with uncached(learner):
            start = time.perf_counter()
            expected = learner(ep)
            whole = time.perf_counter() - start
    torch.testing.assert_close(logits, expected)
    print(f"\nSNAIL 20-way 5-shot, 300 queries: {whole:.2f} s re-running the prefix per query, "
          f"{cached:.3f} s with the prefix run once")


def test_wrong_ways_is_a_clear_error():
    learner = build("snail")
    with pytest.raises(ValueError, match="built for 3-way"):
        learner(episode(ways=4))


# --- MANN's addressing, by hand -------------------------------------------------------------------
def test_usage_update_by_hand():
    usage = torch.tensor([[1.0, 2.0, 0.0, 4.0]])
    read = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    write = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    # 0.5 * usage + read + write
    torch.testing.assert_close(usage_update(usage, read, write, 0.5), torch.tensor([[1.0, 1.5, 1.0, 2.0]]))


def test_least_used_marks_the_n_smallest_usages():
    usage = torch.tensor([[0.3, 0.1, 0.9, 0.2], [0.0, 5.0, 1.0, 2.0]])
    assert least_used(usage, 1).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    assert least_used(usage, 2).tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]


def test_write_weights_interpolate_previous_reads_and_least_used():
    previous_read = torch.tensor([[[0.2, 0.8, 0.0]]])
    previous_least = torch.tensor([[0.0, 0.0, 1.0]])
    gate = torch.tensor([[math.log(3.0)]])  # sigmoid = 0.75
    expected = torch.tensor([[[0.75 * 0.2, 0.75 * 0.8, 0.25]]])
    torch.testing.assert_close(write_weights(previous_read, previous_least, gate), expected)


def test_cosine_read_weights_by_hand():
    key = torch.tensor([[[2.0, 0.0]]])
    memory = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    similarity = torch.tensor([1.0, 0.0, 1 / math.sqrt(2)])
    expected = similarity.exp() / similarity.exp().sum()
    torch.testing.assert_close(cosine_weights(key, memory)[0, 0], expected)


def test_mann_step_erases_the_least_used_slot_then_writes_and_reads():
    torch.manual_seed(0)
    backbone = torch.nn.Flatten()
    backbone.feature_size = 5
    learner = MANN(backbone, ways=2, hidden=6, slots=4, slot_size=3, heads=1, gamma=0.9)
    state = learner.initial_state(1, torch.zeros(1))
    state["memory"] = torch.arange(12.0).view(1, 4, 3)
    state["usage"] = torch.tensor([[0.5, 0.1, 0.7, 0.9]])
    state["least_used"] = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    state["read_weights"] = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    x = torch.randn(1, 7)
    logits, new = learner.step(x, state)

    # by hand, with the controller's own output h
    with torch.no_grad():
        h, _ = learner.controller(torch.cat([x, state["reads"]], -1), (state["h"], state["c"]))
        key = learner.keys(h)[0]
        g = float(torch.sigmoid(learner.gates(h))[0, 0])
    w_write = torch.tensor([0.0, 1 - g, g, 0.0])  # g * previous read + (1 - g) * least used
    memory = torch.arange(12.0).view(4, 3)
    memory[1] = 0.0  # the least-used slot is erased before writing
    memory = memory + w_write[:, None] * key[None]
    torch.testing.assert_close(new["memory"][0], memory)
    similarity = torch.nn.functional.cosine_similarity(key[None], memory, dim=-1)
    w_read = similarity.softmax(-1)
    torch.testing.assert_close(new["read_weights"][0, 0], w_read)
    torch.testing.assert_close(new["reads"][0], w_read @ memory)
    usage = 0.9 * torch.tensor([0.5, 0.1, 0.7, 0.9]) + w_read + w_write
    torch.testing.assert_close(new["usage"][0], usage)
    assert new["least_used"][0].tolist() == (usage == usage.min()).float().tolist()
    with torch.no_grad():
        torch.testing.assert_close(logits, learner.out(torch.cat([h, (w_read @ memory)[None]], -1)))


def test_mann_erases_one_least_used_slot_even_with_several_heads():
    backbone = torch.nn.Flatten()
    backbone.feature_size = 5
    learner = MANN(backbone, ways=2, hidden=6, slots=4, slot_size=3, heads=2, gamma=0.9)
    state = learner.initial_state(1, torch.zeros(1))
    state["memory"] = torch.ones(1, 4, 3)
    state["usage"] = torch.tensor([[0.5, 0.1, 0.7, 0.2]])
    state["least_used"] = least_used(state["usage"], 2)  # slots 1 and 3 receive the least-used writes
    with torch.no_grad():
        learner.gates.weight.zero_()
        learner.gates.bias.fill_(50.0)  # sigmoid(alpha) = 1: write only where the previous reads were
        learner.keys.weight.zero_()
        learner.keys.bias.fill_(0.0)  # nothing is added, so the memory shows the erasure alone
    _, new = learner.step(torch.randn(1, 7), state)
    assert new["memory"][0].sum(1).tolist() == [3.0, 0.0, 3.0, 3.0]  # only slot 1 (usage 0.1) is zeroed


def test_mann_sequence_equals_the_step_by_step_lstm_cell_reference_with_its_gradients():
    """``sequence`` takes the inputs' part of the controller and the output layer in one product over all steps
    and joins the per-step weights once; a step-by-step reference through ``nn.LSTMCell`` and the keys, gates
    and output layers (the paper's order, as the class describes) gives the same logits and gradients."""
    torch.manual_seed(3)
    backbone = torch.nn.Flatten()
    backbone.feature_size = 6
    learner = MANN(backbone, ways=3, hidden=10, slots=5, slot_size=4, heads=2, gamma=0.9).double()
    inputs = torch.randn(3, 7, learner.input_size, dtype=torch.float64)

    def reference():
        state, logits = learner.initial_state(3, inputs), []
        for t in range(7):
            h, c = learner.controller(torch.cat([inputs[:, t], state["reads"]], -1), (state["h"], state["c"]))
            keys = learner.keys(h).view(3, 2, 4)
            write = write_weights(state["read_weights"], state["least_used"], learner.gates(h))
            memory = state["memory"] * (1 - least_used(state["usage"], 1))[..., None] + write.transpose(1, 2) @ keys
            read_weights = cosine_weights(keys, memory)
            reads = (read_weights @ memory).flatten(1)
            usage = usage_update(state["usage"], read_weights, write, 0.9)
            state = {"h": h, "c": c, "memory": memory, "reads": reads, "read_weights": read_weights,
                     "usage": usage, "least_used": least_used(usage, 2)}
            logits.append(learner.out(torch.cat([h, reads], -1)))
        return torch.stack(logits, 1)

    weights = torch.randn(3, 7, 3, dtype=torch.float64)
    expected = reference()
    grads = torch.autograd.grad((expected * weights).sum(), list(learner.parameters()))
    got = learner.sequence(inputs)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), list(learner.parameters())), grads):
        torch.testing.assert_close(a, b)
    # a step from the state after a prefix is the sequence's next output
    state = learner.prefix_state(inputs[:, :6])
    torch.testing.assert_close(learner.step(inputs[:, 6], state)[0], expected[:, 6])


def test_mann_memory_starts_empty_for_every_sequence():
    learner = build("mann").eval()
    inputs = torch.randn(1, 5, learner.input_size)
    first = learner.sequence(inputs)
    learner.sequence(torch.randn(1, 9, learner.input_size))
    torch.testing.assert_close(learner.sequence(inputs), first)


# --- SNAIL's blocks -------------------------------------------------------------------------------
def test_tc_block_dilations_cover_the_sequence():
    block = TCBlock(4, length=26, filters=8)
    assert [b.f.dilation for b in block.blocks] == [1, 2, 4, 8, 16]
    assert block.channels == 4 + 5 * 8


def test_attention_block_by_hand():
    torch.manual_seed(0)
    block = AttentionBlock(3, key_size=2, value_size=2)
    x = torch.randn(1, 3, 4)
    out = block(x)
    seq = x[0].T
    q, k, v = block.query(seq), block.key(seq), block.value(seq)
    for t in range(4):  # position t attends to positions 0..t
        weights = (q[t] @ k[:t + 1].T / math.sqrt(2)).softmax(-1)
        torch.testing.assert_close(out[0, 3:, t], weights @ v[:t + 1])
    torch.testing.assert_close(out[0, :3], x[0])


# --- MANN's protocol (online): the label of step t is an input at step t + 1 -----------------------
def test_presentation_index_by_hand():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    assert presentation_index(labels).tolist() == [1, 1, 2, 1, 2, 3]


@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_online_steps_see_only_earlier_labels(name):
    learner = build(name, online=True).eval()
    items = all_items(episode(shots=2, queries=2))
    logits, labels = learner.online_logits(items, torch.Generator().manual_seed(3))
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(3))  # step t shows item order[t]
    t = 4  # change the label of the item shown at step t
    changed = items.labels.clone()
    changed[order[t]] = (changed[order[t]] + 1) % 3
    other, other_labels = learner.online_logits(LabeledSet(items.inputs, changed, 3),
                                                torch.Generator().manual_seed(3))
    assert other_labels[t] != labels[t]
    torch.testing.assert_close(other[:t + 1], logits[:t + 1])  # steps 0..t never see label t
    assert not torch.allclose(other[t + 1:], logits[t + 1:])  # step t + 1 is given it


def test_online_meta_loss_is_the_loss_at_every_step():
    learner = build("lstm", online=True)
    ep = episode(shots=2, queries=2)
    loss, stats = learner.meta_loss([ep])
    logits, labels = learner.online_logits(all_items(ep), learner.episode_generator(ep))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    assert float(stats["accuracy"]) == float((logits.argmax(-1) == labels).float().mean())


@pytest.mark.parametrize("shots,queries", [(1, 1), (2, 2)])
@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_meta_batch_in_one_sequence_batch_equals_one_episode_at_a_time(name, online, shots, queries):
    """The batched meta-loss against Learner.meta_loss (each episode alone: episodic, its cached prefix
    continued by each query; online, its sequence at batch 1): the same loss, accuracy and gradients,
    in training mode (BatchNorm over each episode's own batches of images)."""
    learner = build(name, online=online, **TINY[name]).train()
    episodes = [episode(shots=shots, queries=queries, index=i) for i in range(3)]
    grads = []
    for meta_loss in (learner.meta_loss, functools.partial(super(SequenceLearner, learner).meta_loss)):
        learner.zero_grad()
        loss, stats = meta_loss(episodes)
        loss.backward()
        grads.append((loss.detach(), stats["accuracy"], [p.grad.clone() for p in learner.parameters()]))
    (batched, batched_acc, batched_grads), (alone, alone_acc, alone_grads) = grads
    torch.testing.assert_close(batched, alone)
    assert float(batched_acc) == float(alone_acc)
    for a, b in zip(batched_grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_embed_step_embeds_the_steps_images_as_one_batch_and_is_the_same_model_per_image(name, online):
    """learner.embed = "step": while training, one backbone call per step on every episode's support images
    then its queries, in episode order (so BatchNorm normalises over the step); with per-image features
    (BatchNorm on its running statistics) the loss and gradients are those of "sets", whose backbone calls
    are each episode's support set (in the episode's order) and its query set (online: all its items)."""
    episodes = [episode(shots=2, queries=2, index=i) for i in range(3)]
    runs = {}
    for embed in ("sets", "step"):
        torch.manual_seed(0)
        learner = build(name, online=online, embed=embed, **TINY[name]).train()
        learner.backbone.eval()  # per-image features, so the two ways of batching give the same numbers
        calls = []
        hook = learner.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0]))
        loss, stats = learner.meta_loss(episodes)
        loss.backward()
        hook.remove()
        runs[embed] = loss.detach(), stats["accuracy"], [p.grad.clone() for p in learner.parameters()], calls
    (loss, acc, grads, calls), (sets_loss, sets_acc, sets_grads, sets_calls) = runs["step"], runs["sets"]
    everything = torch.cat([x for e in episodes for x in (e.support.inputs, e.query.inputs)])
    assert len(calls) == 1 and torch.equal(calls[0], everything)
    assert len(sets_calls) == (3 if online else 6) and all(len(x) in (6, 12) for x in sets_calls)
    torch.testing.assert_close(loss, sets_loss)
    assert float(acc) == float(sets_acc)
    for a, b in zip(grads, sets_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="learner.embed = 'batch' .* valid: sets, step"):
        build(name, embed="batch", **TINY[name])


@pytest.mark.parametrize("name", SEQUENCE_LEARNERS)
def test_each_query_continues_its_own_episodes_prefix(name):
    """continue_from on a batch of prefixes: episode b's queries read prefix b, whatever the other
    prefixes hold (the batched cache against each prefix alone, and against the prefixes swapped)."""
    learner = build(name, **TINY[name]).eval()
    contexts, steps = torch.randn(3, 4, learner.input_size), torch.randn(3, 2, learner.input_size)
    with torch.no_grad():
        batched = learner.continue_from(learner.prefix_state(contexts), steps)
        for b in range(3):
            alone = learner.continue_from(learner.prefix_state(contexts[b:b + 1]), steps[b:b + 1])[0]
            torch.testing.assert_close(batched[b], alone)
            whole = learner.sequence(torch.cat([contexts[b].expand(2, -1, -1), steps[b][:, None]], 1))[:, -1]
            torch.testing.assert_close(batched[b], whole)
        swapped = learner.continue_from(learner.prefix_state(contexts.flip(0)), steps)
    assert not torch.allclose(swapped[0], batched[0])


def test_online_episodic_query_follows_the_support_with_the_last_support_label():
    learner = build("mann", online=True).eval()
    ep = episode()
    steps, label = learner.context(ep.support)
    query = learner.backbone(ep.query.inputs[:1])
    expected = learner.sequence(torch.cat([steps, torch.cat([query, label[None]], -1)])[None])[0, -1]
    order = learner.support_order(len(ep.support), torch.device("cpu"))
    assert label.argmax() == ep.support.labels[order[-1]]
    torch.testing.assert_close(learner.adapt(ep.support)(ep.query.inputs[:1])[0], expected)


def test_online_evaluation_reports_accuracy_by_presentation():
    from metazoo.data import EpisodeSampler
    from metazoo.evaluate import evaluate

    from .conftest import toy_dataset

    learner = build("lstm", online=True)
    sampler = EpisodeSampler(toy_dataset(class_sizes=(8,) * 5, side=16), 3, 2, 2, seed=0, episodes=4)
    result = evaluate(learner, sampler, protocol="online")
    assert len(result.curve) == 4 and result.protocol["protocol"] == "online"
    # every class is shown 4 times, so the overall accuracy is the mean of the curve
    assert abs(result.mean - sum(m for m, _ in result.curve) / 4) < 1e-9
    assert evaluate(learner, sampler, protocol="online").curve == result.curve  # seeded order
    with pytest.raises(ValueError, match="needs a sequence learner"):
        evaluate(create_learner("protonet", backbone=dict(BACKBONE)), sampler, protocol="online")
    with pytest.raises(ValueError, match="valid: episodic, multitask, online"):
        evaluate(learner, sampler, protocol="offline")
