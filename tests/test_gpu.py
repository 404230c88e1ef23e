"""Devices: a missing one is a one-line error; a dataset's images move to the device once and episodes are gathered
there, the same bit for bit; on CUDA (``-m gpu``, skipped without it) a training step (ProtoNet, Matching,
Relation, SNAIL) and a MAML meta-iteration give the CPU's loss and gradients, a bfloat16 step stays close to
float32, and a run keeps its images on the GPU, trains, records its device and reloads on the CPU.
experiments/benchmarks/gpu_check.py runs these on a GPU machine."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metazoo import create_learner
from metazoo.build import image_device
from metazoo.cli import main
from metazoo.config import from_dict
from metazoo.data import EpisodeSampler, FewShotDataset
from metazoo.errors import NonFiniteLossError
from metazoo.multitask.objective import MultiTaskObjective
from metazoo.multitask.tasks import class_group_tasks
from metazoo.objective import autocast
from metazoo.trainer import meta_train, prepare
from metazoo.trainer import test_run as reevaluate

from .test_contract import CONFIG

REPO = Path(__file__).resolve().parents[1]
BACKBONE = {"name": "conv4", "in_channels": 1, "width": 16, "image_size": 28}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cuda:99", "mps"])
def test_a_missing_device_is_one_line_naming_the_devices_there_are(tmp_path, capsys, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    assert main(["train", CONFIG, "-o", str(tmp_path / "run"), "--device", device, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metazoo: error: device '{device}' is not available here") and "available: cpu" in err
    assert "\n" not in err and not (tmp_path / "run").exists()


def noisy() -> FewShotDataset:
    """Random colour images in classes of unequal sizes, normalised and turned per task: every step of a sampler."""
    sizes = (6, 8, 5, 7, 9, 6)
    images = torch.randint(0, 256, (sum(sizes), 3, 5, 5), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    return FewShotDataset(images, sizes, [f"c{c}" for c in range(6)], "noise", "train", mean=(0.5, 0.4, 0.3),
                          std=(0.2, 0.25, 0.3), task_rotations=(0, 90, 180, 270))


def digest(episode) -> str:
    h = hashlib.sha256()
    for t in (episode.support.inputs, episode.support.labels, episode.query.inputs, episode.query.labels,
              episode.classes):
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.gpu])])
def test_a_dataset_moved_to_a_device_gives_the_episodes_of_the_host_bit_for_bit(device):
    data = noisy()
    moved = data.to(device)
    assert moved.images.device.type == moved.mean.device.type == device and data.images.device.type == "cpu"
    assert moved.to(device) is moved and moved.class_offsets.device.type == "cpu"  # once; the draws' book stays
    sampler = EpisodeSampler(moved, 4, 2, 3, seed=11)
    episodes = [sampler[i] for i in (0, 7, 123)]
    for episode in episodes:
        assert {t.device.type for t in (episode.support.inputs, episode.support.labels, episode.query.inputs,
                                        episode.query.labels, episode.classes)} == {device}
    # the digests of these episodes as the sampler drew them on the host before images could move
    assert [digest(e) for e in episodes] == ["25b19e725707140b", "d37ba87e30efd8ce", "79372b1875f487d8"]


def test_a_run_keeps_its_images_on_its_device_unless_workers_or_its_objective_index_them_on_the_host(
        data_root, monkeypatch):
    gpu = torch.device("cuda")  # (a name only: nothing is allocated)
    assert image_device(tiny(data_root, device="cpu"), gpu) == gpu
    assert image_device(tiny(data_root, device="cpu", num_workers=2), gpu) == torch.device("cpu")
    multitask = from_dict({"learner": {"name": "multitask"}, "multitask": {"tasks": "alphabets"}})
    assert image_device(multitask, gpu) == gpu  # its task batches are gathered there too
    monkeypatch.setattr(MultiTaskObjective, "gathers_on_device", False)  # as an objective that indexes on the host
    assert image_device(multitask, gpu) == torch.device("cpu")
    assert image_device(tiny(data_root, device="cpu"), torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.gpu])])
def test_multitask_batches_are_gathered_where_the_images_are_the_same_as_on_the_host(device):
    data = noisy()
    host, moved = class_group_tasks(data, groups=2), class_group_tasks(data.to(device), groups=2)
    positions = torch.tensor([0, 3, 2, 5])
    for task in (0, 1):
        mine, theirs = moved.batch(task, positions), host.batch(task, positions)
        assert mine.inputs.device.type == device and mine.targets.device.type == "cpu"
        assert torch.equal(mine.inputs.cpu(), theirs.inputs) and torch.equal(mine.targets, theirs.targets)


@cuda
@pytest.mark.gpu
def test_a_run_on_cuda_gathers_its_training_and_validation_episodes_there(tmp_path, data_root, omniglot):
    run = prepare(tiny(data_root), tmp_path / "run", None)
    for items in (run.items, run.val_items):
        assert items.dataset.images.device.type == "cuda"
    episode, host = run.items[5], EpisodeSampler(omniglot["train"], 5, 1, 2, seed=0)[5]
    assert episode.support.inputs.device.type == episode.query.labels.device.type == "cuda"
    assert torch.equal(episode.query.inputs.cpu(), host.query.inputs) and torch.equal(episode.classes.cpu(),
                                                                                      host.classes)


@pytest.fixture
def full_float32():
    """No TF32 in CUDA convolutions and matmuls (on by default for convolutions), so CPU and GPU agree."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def one_step(device: str, name: str, episodes: list, **settings) -> tuple[float, dict]:
    """The loss and gradients of one meta-batch on ``device``, from the same initial weights."""
    torch.manual_seed(0)
    learner = create_learner(name, backbone=dict(BACKBONE), **settings).to(device)
    learner.train()
    stats = learner.meta_backward([e.to(device) for e in episodes])
    return float(stats["loss"]), {n: p.grad.cpu() for n, p in learner.named_parameters() if p.grad is not None}


def biases_before_batchnorm(name: str, **settings) -> dict:
    """``{bias: weight}`` for each convolution followed by BatchNorm in training: the bias's gradient is zero in
    exact arithmetic (the BatchNorm subtracts the batch mean), so what a device computes for it is rounding noise."""
    learner, out = create_learner(name, backbone=dict(BACKBONE), **settings), {}
    for prefix, module in learner.named_modules():
        children = list(module.named_children())
        for (conv_name, conv), (_, norm) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and conv.bias is not None and isinstance(norm, torch.nn.BatchNorm2d):
                path = f"{prefix}.{conv_name}" if prefix else conv_name
                out[f"{path}.bias"] = f"{path}.weight"
    return out


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name,settings", [("protonet", {}), ("maml", {"ways": 5}),
                                           ("maml", {"ways": 5, "batch_tasks": False}), ("matching", {}),
                                           ("relation", {}), ("snail", {"ways": 5, "order_seed": 0})],
                         ids=["protonet", "maml-batched", "maml-task-by-task", "matching", "relation", "snail"])
def test_a_training_step_on_cuda_gives_the_cpu_loss_and_gradients(omniglot, full_float32, name, settings):
    episodes = list(EpisodeSampler(omniglot["train"], 5, 1, 5, seed=0, episodes=4))
    cpu_loss, cpu_grads = one_step("cpu", name, episodes, **settings)
    gpu_loss, gpu_grads = one_step("cuda", name, episodes, **settings)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert gpu_grads.keys() == cpu_grads.keys()
    noise, wrong = biases_before_batchnorm(name, **settings), []
    for key, grad in cpu_grads.items():
        if key in noise:  # both near zero next to their convolution's weight gradient
            scale = 1e-3 * min(cpu_grads[noise[key]].abs().max(), gpu_grads[noise[key]].abs().max()) + 1e-7
            if max(grad.abs().max(), gpu_grads[key].abs().max()) > scale:
                wrong.append(f"{key}: |cpu| {grad.abs().max():.3g}, |gpu| {gpu_grads[key].abs().max():.3g} "
                             f"against {scale:.3g}")
        elif not torch.allclose(gpu_grads[key], grad, rtol=1e-3, atol=1e-5):
            wrong.append(f"{key}: largest difference {(gpu_grads[key] - grad).abs().max():.3g} "
                         f"(largest cpu value {grad.abs().max():.3g})")
    assert not wrong, "\n".join(wrong)


@cuda
@pytest.mark.gpu
def test_a_bf16_training_step_on_cuda_stays_close_to_float32(omniglot):
    episodes = list(EpisodeSampler(omniglot["train"], 5, 1, 5, seed=0, episodes=4))
    full, _ = one_step("cuda", "protonet", episodes)
    with autocast("cuda", "bf16"):
        half, grads = one_step("cuda", "protonet", episodes)
    assert half != full and half == pytest.approx(full, rel=0.02)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())


def tiny(data_root, **train) -> object:
    return from_dict({"data": {"dataset": "omniglot", "root": str(data_root)},
                      "backbone": {"name": "conv4", "width": 8},
                      "train": {"steps": 4, "ways": 5, "queries": 2, "val_every": 2, "val_episodes": 3, "log_every": 2,
                                "device": "cuda", **train},
                      "eval": {"episodes": 4}})


def test_the_deferred_loss_check_of_a_gpu_stops_at_the_next_check(tmp_path, data_root, monkeypatch):
    """What a GPU run does (no host sync per step), tried on the CPU: the first non-finite step is named."""
    from metazoo import trainer

    def deferred(*args, **kwargs):
        run = prepare(*args, **kwargs)
        run.check_every_step = False
        return run
    prepare = trainer.prepare
    monkeypatch.setattr(trainer, "prepare", deferred)
    config = tiny(data_root, device="cpu", steps=6, log_every=3, val_every=3)
    config.optim.lr = float("inf")  # finite at step 1, not from step 2 on
    with pytest.raises(NonFiniteLossError, match="step 2: the training loss is nan; the run stopped at step 3, "
                                                 "where it was checked"):
        meta_train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


@cuda
@pytest.mark.gpu
def test_a_run_trains_on_cuda_records_it_and_reloads_on_the_cpu(tmp_path, data_root):
    summary = meta_train(tiny(data_root), tmp_path / "run", progress=False)
    assert summary["test"]["device"].startswith("cuda") and summary["steps"] == 4
    again = reevaluate(tmp_path / "run", overrides=["train.device=cpu"], write=False)
    assert again.device == "cpu" and "overrides" not in again.protocol  # where it ran is no test-time setting
    assert again.mean == pytest.approx(summary["test"]["mean"], abs=0.05)


@cuda
@pytest.mark.gpu
def test_a_non_finite_loss_on_cuda_stops_at_the_next_check_before_a_checkpoint(tmp_path, data_root):
    config = tiny(data_root, steps=6)
    config.optim.lr = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"step \d: the training loss is"):
        meta_train(config, tmp_path / "run", progress=False)
    for name in ("best.pt", "last.pt"):
        if (tmp_path / "run" / name).exists():
            state = torch.load(tmp_path / "run" / name, weights_only=True)
            assert all(torch.isfinite(v).all() for v in state["learner"].values() if v.is_floating_point()), name


@cuda
@pytest.mark.gpu
def test_a_multitask_run_on_cuda_gathers_its_task_batches_there_and_trains(tmp_path, data_root):
    config = from_dict({
        "learner": {"name": "multitask", "sharing": "multihead", "hidden": 16},
        "backbone": {"name": "conv4", "width": 8}, "data": {"dataset": "omniglot", "root": str(data_root)},
        "multitask": {"tasks": "alphabets", "items_per_task": 8},
        "train": {"steps": 2, "meta_batch_size": 3, "val_every": 2, "log_every": 1, "device": "cuda"},
        "eval": {"protocol": "multitask"}})
    run = prepare(config, tmp_path / "prepared", None)
    assert run.items.taskset.dataset.images.device.type == "cuda"
    assert run.items[0].inputs.device.type == "cuda"
    summary = meta_train(config, tmp_path / "run", progress=False)
    assert summary["test"]["device"].startswith("cuda") and 0 <= summary["test"]["mean"] <= 1


def test_the_gpu_cells_script_says_what_it_takes_and_refuses_a_machine_without_cuda(tmp_path):
    script = str(REPO / "experiments" / "omniglot" / "gpu_cells.sh")
    usage = subprocess.run(["bash", script], capture_output=True, text=True)
    assert usage.returncode == 2 and "gpu_cells.sh OUT BUDGET_MINUTES CELL..." in usage.stdout
    if torch.cuda.is_available():
        return
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", script, str(tmp_path / "out"), "1", "protonet/omniglot/5w1s"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and out.stderr.strip() == "gpu_cells: no CUDA device here"


def test_the_gpu_check_dry_run_times_every_row_on_the_cpu(data_root, capsys):
    """The script's timing code on the CPU (``--device cpu --skip-tests``): every row, the MAML ones from
    ``metazoo bench``'s contenders, learn2learn's among them where it imports."""
    gpu_check = _gpu_check()
    assert gpu_check.main(["--device", "cpu", "--skip-tests", "--repeats", "1", "--steps", "1",
                           "--data-root", str(data_root)]) == 0
    rows = [line.split(" | ")[0].lstrip("| ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    protonet = "ProtoNet training step"
    assert rows[1:] == [f"{protonet} (meta-batch 1)", f"{protonet}, train.amp = bf16", f"{protonet}, channels_last",
                        f"{protonet}, channels_last, train.amp = bf16", "MAML meta-iteration, metazoo batched",
                        "MAML meta-iteration, metazoo task by task", "MAML meta-iteration, learn2learn",
                        "episode sampling on the host, copied to the device",
                        "episode sampling from images on the device (a run's path)"]


LEARN2LEARN_MAML_STEP = """
import sys
import torch
import torch.nn.functional as F
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
maml = learn2learn.algorithms.MAML(net, lr=0.5)
clone = maml.clone()
clone.adapt(F.cross_entropy(clone(x), y))
F.cross_entropy(clone(x), y).backward()
grads = [p.grad for p in maml.parameters()]
"""


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "experiments" / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_loads_learn2learns_maml_modules_alone_where_the_package_does_not_import(tmp_path):
    """A GPU machine's image without learn2learn: ``--learn2learn-pack`` copies the MAML modules, and in a process
    where ``import learn2learn`` fails, ``--learn2learn-from`` loads them without the package's ``__init__``; a
    second-order meta-gradient through them is the installed package's, bit for bit."""
    learn2learn = pytest.importorskip("learn2learn")
    gpu_check = _gpu_check()
    assert gpu_check.main(["--learn2learn-pack", str(tmp_path / "pack")]) == 0
    folder = tmp_path / "pack" / "learn2learn"
    assert sorted(str(f.relative_to(folder)) for f in folder.rglob("*.py")) == sorted(gpu_check.LEARN2LEARN_MAML)
    path = REPO / "experiments" / "benchmarks" / "gpu_check.py"
    script = f"""
import importlib.util, sys
class Missing:  # this process has no learn2learn package, as the GPU machine's image
    def find_spec(self, name, path=None, target=None):
        if name == "learn2learn":
            raise ImportError("no learn2learn here")
sys.meta_path.insert(0, Missing())
spec = importlib.util.spec_from_file_location("gpu_check", {str(path)!r})
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)
assert gpu_check.learn2learn_source() is None  # without the pack: nothing
print(gpu_check.learn2learn_source({str(tmp_path / "pack")!r}))
import learn2learn
print(sys.modules["learn2learn.algorithms.maml"].__file__)
{LEARN2LEARN_MAML_STEP}
torch.save(grads, {str(tmp_path / "grads.pt")!r})
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    source, where = out.stdout.splitlines()[-2:]
    assert source == f"learn2learn {learn2learn.__version__}, its MAML modules alone from {folder}"
    assert Path(where) == folder / "algorithms" / "maml.py"
    expected = {"learn2learn": learn2learn}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(LEARN2LEARN_MAML_STEP, expected)
    finally:
        torch.set_num_threads(threads)
    got = torch.load(tmp_path / "grads.pt")
    assert len(got) == len(expected["grads"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(got, expected["grads"]))
