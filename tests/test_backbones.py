"""Backbones against references: Conv-4 and ResNet-12 against straightforward torch code on the same
weights (float64), and MAML's task-batched inner loop against task-by-task evaluation on them."""
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metazoo
from metazoo.backbones import Conv4, ResNet12, create_backbone, list_backbones
from metazoo.backbones.conv4 import conv_block
from metazoo.backbones.functional import Functional
from metazoo.learners.inner import TaskNet
from metazoo.registry import BACKBONES

WAYS, TINY = 3, (4, 8, 8, 8)


def randomise_batch_norm(module: nn.Module, generator: torch.Generator) -> None:
    """BatchNorm weights, biases and running statistics away from their initial 1, 0, 0, 1."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                for tensor, low in ((bn.weight, 0.5), (bn.bias, -0.5), (bn.running_mean, -0.5), (bn.running_var, 0.5)):
                    tensor.copy_(low + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))


# --- Conv-4: the same forward pass and the same state_dict names as before --------------------------------
def conv4_reference(state: dict, x: torch.Tensor, depth: int, pooling: bool, downsampled: int, global_pool: bool,
                    training: bool, leaky_slope: float = 0.0) -> torch.Tensor:
    """Conv-4 written out with torch functions, reading weights by their (checkpoint) names."""
    for i in range(depth):
        down = i < downsampled
        stride = 2 if down and not pooling else 1
        x = F.conv2d(x, state[f"blocks.{i}.0.weight"], state[f"blocks.{i}.0.bias"], stride=stride, padding=1)
        x = F.batch_norm(x, state[f"blocks.{i}.1.running_mean"], state[f"blocks.{i}.1.running_var"],
                         state[f"blocks.{i}.1.weight"], state[f"blocks.{i}.1.bias"], training, 0.1, 1e-5)
        x = torch.where(x > 0, x, leaky_slope * x)  # ReLU at slope 0
        x = F.max_pool2d(x, 2) if down and pooling else x
    return (x.mean((2, 3)) if global_pool else x).flatten(1)


@pytest.mark.parametrize("pooling,downsample_blocks,global_pool,leaky_slope", [
    (True, None, False, 0.0), (False, None, True, 0.0), (True, 2, False, 0.0), (True, None, False, 0.1)])
@pytest.mark.parametrize("training", [True, False])
def test_conv4_forward_equals_torch_functions_on_its_named_weights(pooling, downsample_blocks, global_pool,
                                                                   leaky_slope, training):
    torch.manual_seed(0)
    net = Conv4(in_channels=3, width=8, pooling=pooling, image_size=28, downsample_blocks=downsample_blocks,
                global_pool=global_pool, leaky_slope=leaky_slope).double()
    randomise_batch_norm(net, torch.Generator().manual_seed(1))
    state = {name: t.clone() for name, t in net.state_dict().items()}
    x = torch.randn(5, 3, 28, 28, dtype=torch.float64)
    out = net.train(training)(x)
    expected = conv4_reference(state, x, 4, pooling, 4 if downsample_blocks is None else 2, global_pool, training,
                               leaky_slope)
    assert out.shape == (5, net.feature_size) and net.feature_size == int(torch.tensor(net.feature_shape).prod())
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for name, t in net.state_dict().items():  # the running statistics moved as the reference moved them
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(t, state[name], rtol=1e-12, atol=1e-12)


def test_conv4_keeps_its_checkpoint_names():
    names = list(Conv4(depth=2).state_dict())
    block = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in block]
    assert list(Conv4(depth=2, leaky_slope=0.1).state_dict()) == names  # the activation has no weights
    with pytest.raises(ValueError, match=r"leaky_slope=-0.1 must be 0 \(ReLU\) or positive"):
        Conv4(leaky_slope=-0.1)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_conv_block_pools_before_relu_with_the_same_features_and_gradients_bit_for_bit(memory_format):
    """The block runs max-pool then ReLU (a quarter of the ReLU's work); the paper's order, ReLU then max-pool,
    written with torch functions on the same weights, gives equal features and gradients in float32, with
    windows all negative (some channels' BatchNorm bias far below zero) and ties (values on a coarse grid)."""
    torch.manual_seed(0)
    block = conv_block(3, 8, pooling=True).to(memory_format=memory_format)
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU]
    with torch.no_grad():
        block[1].bias.copy_(torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.0, 0.2, 1.0, 3.0]))
        block[0].weight.copy_(torch.randint(-2, 3, block[0].weight.shape).float())  # ties in the conv's output
    x = torch.randint(-2, 3, (6, 3, 10, 10)).float().contiguous(memory_format=memory_format)
    grad = torch.randn(6, 8, 5, 5)

    def run(forward):
        net = {n: p.detach().clone().requires_grad_() for n, p in block.named_parameters()}
        out = forward(net)
        out.backward(grad)
        return out.detach(), [net[n].grad for n in sorted(net)]

    def paper_order(net):
        y = F.conv2d(x, net["0.weight"], net["0.bias"], padding=1)
        y = F.batch_norm(y, None, None, net["1.weight"], net["1.bias"], True)
        return F.max_pool2d(F.relu(y), 2)

    ours, theirs = run(lambda net: torch.func.functional_call(block, net, (x,))), run(paper_order)
    assert (theirs[0] == 0).float().mean() > 0.2 and ours[0].unique().numel() < ours[0].numel() / 4  # both cases
    assert torch.equal(ours[0], theirs[0])
    for a, b in zip(ours[1], theirs[1]):
        assert torch.equal(a, b)
    assert [type(m) for m in conv_block(3, 8, pooling=True, leaky_slope=0.1)][2:] == [nn.LeakyReLU, nn.MaxPool2d]


@pytest.mark.parametrize("bn", ["transductive", "per_step"])
def test_maml_batched_equals_task_by_task_on_leaky_conv4(bn):
    backbone = {"name": "conv4", "in_channels": 3, "width": 8, "image_size": 32, "leaky_slope": 0.1}
    assert_batched_equals_task_by_task(backbone, bn)


# --- ResNet-12 ----------------------------------------------------------------------------------------------
class ReferenceBlock(nn.Module):
    """A ResNet-12 block as MetaOptNet writes it (its names, plain forward; no DropBlock)."""

    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        return F.max_pool2d(F.leaky_relu(out + self.downsample(x), 0.1), 2)


REFERENCE_NAMES = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4", "conv3": "body.6",
                   "bn3": "body.7", "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}


def reference_resnet12(net: ResNet12, in_channels: int = 3, widths=TINY) -> nn.Sequential:
    """Four reference blocks holding ``net``'s weights and statistics (every one of them: strict loading)."""
    channels = [in_channels, *widths]
    blocks = nn.Sequential(*[ReferenceBlock(a, b) for a, b in zip(channels, channels[1:])]).double()
    state = net.blocks.state_dict()
    renamed = {}
    for name in blocks.state_dict():
        index, rest = name.split(".", 1)
        layer, field = rest.rsplit(".", 1)
        renamed[name] = state[f"{index}.{REFERENCE_NAMES[layer]}.{field}"].clone()
    blocks.load_state_dict(renamed)
    return blocks


@pytest.mark.parametrize("side,global_pool,shape", [(32, True, (8, 1, 1)), (32, False, (8, 2, 2)),
                                                    (28, False, (8, 1, 1)), (84, False, (8, 5, 5))])
def test_resnet12_feature_size_and_shapes(side, global_pool, shape):
    net = create_backbone("resnet12", in_channels=3, widths=TINY, image_size=side, global_pool=global_pool)
    assert "resnet12" in list_backbones()
    assert net.feature_shape == shape and net.feature_size == shape[0] * shape[1] * shape[2]
    assert net(torch.randn(2, 3, side, side)).shape == (2, net.feature_size)
    assert ResNet12().feature_size == 640 and ResNet12(global_pool=False).feature_shape == (640, 5, 5)


@pytest.mark.parametrize("global_pool", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_resnet12_forward_equals_a_straightforward_reference(global_pool, training):
    torch.manual_seed(0)
    net = ResNet12(in_channels=3, widths=TINY, image_size=32, global_pool=global_pool).double()
    randomise_batch_norm(net, torch.Generator().manual_seed(1))
    reference = reference_resnet12(net).train(training)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    out = net.train(training)(x)
    maps = reference(x)
    torch.testing.assert_close(out, (maps.mean((2, 3)) if global_pool else maps).flatten(1), rtol=1e-12, atol=1e-12)
    moved = reference_resnet12(net).state_dict()  # the running statistics moved as the reference's did
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(moved[name], t)


# --- MAML's batched inner loop equals task-by-task evaluation ---------------------------------------------
def tasks(count=3, shots=2, queries=2, channels=3, side=32):
    """Support and query sets of ``count`` tasks: inputs (T, n, c, side, side), labels (T, n), float64."""
    g = torch.Generator().manual_seed(2)
    labels = lambda k: torch.arange(WAYS).repeat_interleave(k).expand(count, -1)  # noqa: E731
    inputs = lambda k: torch.randn(count, WAYS * k, channels, side, side, generator=g, dtype=torch.float64)  # noqa
    return inputs(shots), labels(shots), inputs(queries), labels(queries)


def maml(backbone: dict, bn: str, batch_tasks: bool, steps: int = 2):
    """MAML on ``backbone``; BatchNorm momentum 1, so that after one meta-training step the running
    statistics are batch statistics and eval mode gives logits of a sensible size."""
    torch.manual_seed(0)
    learner = metazoo.create_learner("maml", backbone=backbone, ways=WAYS, inner_steps=steps, inner_lr=0.03, bn=bn,
                                     batch_tasks=batch_tasks).double()
    for module in learner.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    return learner


def meta_step(learner, support_x, support_y, query_x, query_y, steps: int = 2):
    """Fast weights, query logits and meta-gradients of one meta-training step on tasks (T, n, ...)."""
    params = learner.fast_weights(support_x, support_y, create_graph=True, steps=steps)
    logits = learner.logits(params, steps, query_x)
    F.cross_entropy(logits.flatten(0, 1), query_y.flatten()).backward()
    return params, logits, {name: p.grad for name, p in learner.named_parameters()}


def running_stats(learner) -> dict[str, torch.Tensor]:
    return {name: b for name, b in learner.state_dict().items() if "running" in name}


def eval_logits(learner, support_x, support_y, query_x, query_y, steps: int = 2):
    learner.eval()
    params = learner.fast_weights(support_x, support_y, create_graph=False, steps=steps)
    with torch.no_grad():
        return learner.logits(params, steps, query_x)


def assert_batched_equals_task_by_task(backbone: dict, bn: str, channels: int = 3, side: int = 32, steps: int = 2):
    """MAML with batch_tasks True and False on the same weights and tasks: the same fast weights, query
    logits and meta-gradients; running statistics moved by the mean of what each task alone moves them
    by; and in eval mode, from the same state, the same query logits."""
    data = tasks(channels=channels, side=side)
    batched, alone = maml(backbone, bn, True, steps), maml(backbone, bn, False, steps)
    assert (batched._body.path, alone._body.path) == ("batched", "task by task")
    for what, a, b in zip(("fast weights", "query logits", "meta-gradients"), meta_step(batched, *data, steps),
                          meta_step(alone, *data, steps)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=what)
    stats = running_stats(batched)
    assert (len(stats) > 0) == (bn == "per_step")
    each = []
    for t in range(len(data[0])):  # each task alone, from the same initial statistics
        learner = maml(backbone, bn, False, steps)
        meta_step(learner, *[x[t:t + 1] for x in data], steps)
        each.append(running_stats(learner))
    torch.testing.assert_close(stats, {name: torch.stack([s[name] for s in each]).mean(0) for name in stats})
    alone.load_state_dict(batched.state_dict())
    torch.testing.assert_close(eval_logits(batched, *data, steps), eval_logits(alone, *data, steps),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bn", ["transductive", "per_step"])
@pytest.mark.parametrize("global_pool", [True, False])
def test_maml_batched_equals_task_by_task_on_resnet12(bn, global_pool):
    backbone = {"name": "resnet12", "in_channels": 3, "widths": TINY, "image_size": 32, "global_pool": global_pool}
    assert_batched_equals_task_by_task(backbone, bn)


class PlainNet(nn.Module):
    """No functional form."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x).tanh()


class Scaled(Functional):
    """A weight of its own, which the batched path could not give each task."""

    def __init__(self):
        super().__init__()
        self.linear, self.scale = nn.Linear(4, 2), nn.Parameter(torch.ones(2))

    def functional_forward(self, inputs, ops):
        return ops(self.linear, inputs) * self.scale


class Normed(Functional):
    """A layer without a task-batched form."""

    def __init__(self):
        super().__init__()
        self.linear, self.norm = nn.Linear(4, 2), nn.LayerNorm(2)

    def functional_forward(self, inputs, ops):
        return ops(self.norm, ops(self.linear, inputs))


@pytest.mark.parametrize("kind,blocker", [(PlainNet, "PlainNet"), (Scaled, "Scaled"), (Normed, "LayerNorm")])
def test_task_net_runs_what_it_cannot_batch_task_by_task_and_says_so(kind, blocker):
    module = kind().double()
    with pytest.warns(UserWarning, match=f"runs {kind.__name__}'s tasks one by one.*its {blocker} has no task-batched"):
        net = TaskNet(module)
    assert net.plan is None and net.path == "task by task"
    params = {n: p + torch.randn(3, *p.shape, dtype=p.dtype) for n, p in module.named_parameters()}
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    expected = []
    for t in range(3):  # each task's weights loaded into the module
        module.load_state_dict({n: p[t] for n, p in params.items()})
        expected.append(module(x[t]).detach())
    torch.testing.assert_close(net(params, {}, x), torch.stack(expected))


def test_task_net_batches_the_backbones_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in (Conv4(width=4), ResNet12(widths=TINY), nn.Sequential(nn.Flatten(), nn.Linear(4, 2))):
            assert TaskNet(module).path == "batched"


# --- docs/adding_a_learner.md, "Adding a backbone", followed literally ---------------------------------
@pytest.fixture(scope="session")
def documented_backbone() -> str:
    """The section's code run as written (its imports made absolute), registered as "test_doc_backbone"."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "adding_a_learner.md"
    section = doc.read_text().split("\n## Adding a backbone\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("from .", "from metazoo.backbones.")
    namespace: dict = {}
    exec(compile(code, str(doc), "exec"), namespace)
    assert 'BACKBONES.add("my_backbone", "metazoo.backbones.my_backbone:MyBackbone"' in section
    if "test_doc_backbone" not in BACKBONES:
        BACKBONES.add("test_doc_backbone", namespace["MyBackbone"])  # the declaration, with the class itself
    return "test_doc_backbone"


@pytest.mark.parametrize("bn", ["transductive", "per_step"])
def test_the_documented_backbone_runs_batched_in_maml(documented_backbone, bn):
    backbone = {"name": documented_backbone, "in_channels": 1, "width": 4, "image_size": 16}
    net = create_backbone(**backbone)
    assert isinstance(net, Functional) and net(torch.randn(2, 1, 16, 16)).shape == (2, net.feature_size)
    assert_batched_equals_task_by_task(backbone, bn, channels=1, side=16)


def test_pixels_backbone_is_the_flattened_image_and_checks_its_size():
    backbone = create_backbone("pixels", in_channels=1, image_size=20)
    images = torch.rand(4, 1, 20, 20)
    assert torch.equal(backbone(images), images.reshape(4, 400))
    assert backbone.feature_size == 400 and backbone.feature_shape == (1, 20, 20)
    assert not list(backbone.parameters())
    with pytest.raises(ValueError, match=r"built for \(1, 20, 20\).*got \(1, 28, 28\)"):
        backbone(torch.rand(4, 1, 28, 28))
