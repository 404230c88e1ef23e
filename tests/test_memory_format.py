"""``train.memory_format``: the convolutions' weights (and so their feature maps) as channels_last or contiguous;
the same training either way to float rounding, chosen per family by ``"auto"``, free to change on resume."""
import copy

import pytest
import torch

from metazoo import create_learner
from metazoo.build import memory_format
from metazoo.config import from_dict
from metazoo.trainer import meta_train

from .test_learners import BACKBONE, episode
from .test_resume import FAMILIES

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
CONV = "backbone.blocks.1.0.weight"  # (width, width, 3, 3): its layout shows (the first block's has one channel)


def config(data_root, family: str, layout: str, steps: int = 2) -> dict:
    values = {"data": {"dataset": "omniglot", "root": str(data_root)}, "backbone": {"name": "conv4", "width": 8},
              "train": {"steps": steps, "ways": 5, "shots": 1, "queries": 1, "val_every": 2, "val_episodes": 2,
                        "log_every": 1, "device": "cpu", "memory_format": layout},
              "eval": {"queries": 2, "episodes": 2}}
    for section, settings in FAMILIES[family].items():
        values[section] = {**values.get(section, {}), **settings}
    return values


def test_auto_is_channels_last_on_the_cpu_for_the_families_it_speeds_up():
    settings = from_dict({})
    protonet, maml = create_learner("protonet"), create_learner("maml")
    assert memory_format(settings, protonet, CPU) == torch.channels_last
    assert memory_format(settings, maml, CPU) == torch.contiguous_format  # inner-loop learners: no gain measured
    assert memory_format(settings, protonet, CUDA) == torch.contiguous_format  # not measured on GPUs
    for layout, expected in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        chosen = from_dict({"train": {"memory_format": layout}})
        assert memory_format(chosen, maml, CPU) == memory_format(chosen, protonet, CUDA) == expected
    with pytest.raises(ValueError, match="train.memory_format = 'nhwc'"):
        from_dict({"train": {"memory_format": "nhwc"}})


@pytest.mark.parametrize("name,settings", [("protonet", {}), ("matching", {}), ("relation", {}), ("maml", {"ways": 3}),
                                           ("lstm", {"ways": 3}), ("snail", {"ways": 3, "filters": 8}),
                                           ("mann", {"ways": 3, "online": True, "hidden": 16, "slots": 8})])
def test_both_layouts_give_the_same_loss_and_gradients(name, settings):
    """In float64, so that what differs is the layout and not float32's rounding (which a few training steps
    amplify: the two layouts' kernels sum differently, torch's CPU batch norm on channels_last far more coarsely;
    bench (i) measures it)."""
    torch.manual_seed(0)
    contiguous = create_learner(name, backbone=dict(BACKBONE), **settings).double().train()
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    assert channels_last.state_dict()[CONV].is_contiguous(memory_format=torch.channels_last)
    assert not contiguous.state_dict()[CONV].is_contiguous(memory_format=torch.channels_last)
    episodes = [episode(index=i).to(dtype=torch.float64) for i in range(2)]
    losses, gradients = [], []
    for learner in (contiguous, channels_last):
        loss = learner.meta_loss(episodes)[0]
        loss.backward()
        losses.append(loss.detach())
        gradients.append([p.grad for p in learner.parameters()])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*gradients, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_the_trainer_lays_the_weights_out_as_set(tmp_path, data_root, layout):
    meta_train(from_dict(config(data_root, "protonet", layout)), tmp_path / "run", progress=False, test=False)
    weight = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["learner"][CONV]
    assert weight.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_a_run_resumes_in_the_other_layout(tmp_path, data_root):
    run = tmp_path / "run"
    meta_train(from_dict(config(data_root, "protonet", "contiguous", steps=2)), run, progress=False, test=False)
    meta_train(from_dict(config(data_root, "protonet", "channels_last", steps=4)), run, resume=True, progress=False,
               test=False)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["learner"][CONV].is_contiguous(memory_format=torch.channels_last)
