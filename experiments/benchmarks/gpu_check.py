"""GPU check: the GPU-marked tests, then a timing table, on a machine with CUDA (meant to take under 5 minutes).

    python experiments/benchmarks/gpu_check.py [--data-root DIR] [--skip-tests] [--repeats 5] [--steps 10]
        [--learn2learn-from DIR]
    python experiments/benchmarks/gpu_check.py --learn2learn-pack DIR   # where learn2learn imports: for the above

(``--device cpu --skip-tests --repeats 1 --steps 1`` is a dry run of the timing code on a machine without one.)

Without CUDA it says so and exits 0. With CUDA it runs ``pytest -m gpu`` (tests/test_gpu.py: training steps of
ProtoNet, Matching, Relation and SNAIL and a MAML meta-iteration on the GPU give the CPU's loss and gradients; a
bfloat16 step (``train.amp``) stays close to float32; a split moved to the GPU gives the host's episodes bit for
bit, and a run gathers its training and validation episodes there; a run trains on the GPU, records it and
reloads on the CPU; a non-finite loss stops before a checkpoint), then times on the first GPU, on
Omniglot 28x28, 5-way 1-shot with 15 queries, Conv-4 with 64 channels, Adam:

- a ProtoNet training step (meta-batch 1), in float32 and under bfloat16 autocast (``train.amp = "bf16"``),
  each with the weights contiguous and channels_last (``train.memory_format``: "auto" keeps GPUs contiguous
  until these rows say whether channels_last pays there);
- a MAML meta-iteration (second order, 5 inner steps, meta-batch 4): ``metazoo bench``'s MAML contenders
  (:func:`metazoo.bench.maml.contender`, the same weights and episodes) on the GPU: metazoo batched (the
  meta-batch's tasks in one grouped pass), metazoo task by task, and learn2learn's MAML where learn2learn
  imports, or else where ``--learn2learn-from DIR`` holds its MAML modules (below; without either its row
  says so);
- episode sampling: drawn and gathered on the host and copied to the GPU, and as a run on the GPU samples
  them (``build_dataset`` moves the split's uint8 images to the GPU once; the sampler draws the indices on
  the host and gathers and converts the images on the GPU).

A GPU machine whose image lacks learn2learn (and what its package imports: gym, its compiled parts, ...) can
still time its MAML: ``--learn2learn-pack DIR``, run where learn2learn imports, copies the four pure-Python
modules ``learn2learn.algorithms.MAML`` is made of (``_version``, ``utils``, ``algorithms/base_learner``,
``algorithms/maml``, unchanged) into ``DIR/learn2learn``; carry DIR to the GPU machine (an ignored path, never
committed) and pass ``--learn2learn-from DIR`` there: those modules load on their own, without the package's
``__init__``, and the row says so under the table.

Each row is the median of ``--repeats`` blocks of ``--steps`` iterations, the GPU synchronised at the end of
each block, the contenders of a table taking turns. The exit status is pytest's (0 when the tests pass).
Its first run (an NVIDIA H200, 2026-12-04) is recorded in docs/benchmarks.md (j).
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from metazoo import create_learner  # noqa: E402
from metazoo.bench.common import interleaved_medians, machine, table  # noqa: E402
from metazoo.bench.maml import META_BATCH, QUERIES, SHOTS, SIZES, WAYS, contender  # noqa: E402
from metazoo.build import build_dataset  # noqa: E402
from metazoo.config import from_dict  # noqa: E402
from metazoo.data import EpisodeSampler, create_dataset, data_root  # noqa: E402
from metazoo.objective import autocast  # noqa: E402

BACKBONE = {"name": "conv4", **SIZES[28][1]}  # MAML's Omniglot network, for ProtoNet too
MAML_ROWS = {"metazoo": "metazoo batched", "metazoo task-by-task": "metazoo task by task", "learn2learn": "learn2learn"}
# the modules learn2learn.algorithms.MAML is made of (learn2learn 0.2.0), relative to the package's folder
LEARN2LEARN_MAML = ("_version.py", "utils/__init__.py", "algorithms/base_learner.py", "algorithms/maml.py")


def synchronised(step, steps: int, device: torch.device):
    """A block: ``step`` ``steps`` times, then wait for the GPU."""
    def block() -> None:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return block


def trainer_step(learner: nn.Module, batch: list, amp: str = "off"):
    """What the trainer does once: zero the gradients, ``meta_backward`` (under ``train.amp``), an Adam step."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(batch[0].support.inputs.device, amp):
            learner.meta_backward(batch)
        optimizer.step()
    return step


def training_rows(train, args) -> list[list[str]]:
    batch = [e.to(args.device) for e in EpisodeSampler(train, WAYS, SHOTS, QUERIES, seed=0, episodes=META_BATCH)]
    torch.manual_seed(0)
    protonet = create_learner("protonet", backbone=dict(BACKBONE)).to(args.device)
    channels_last = copy.deepcopy(protonet).to(memory_format=torch.channels_last)
    blocks = {"ProtoNet training step (meta-batch 1)": trainer_step(protonet, batch[:1]),
              "ProtoNet training step, train.amp = bf16": trainer_step(protonet, batch[:1], "bf16"),
              "ProtoNet training step, channels_last": trainer_step(channels_last, batch[:1]),
              "ProtoNet training step, channels_last, train.amp = bf16": trainer_step(channels_last, batch[:1], "bf16"),
              **maml_blocks(batch, args.device, args.learn2learn is not None)}
    rows = timed_rows(blocks, args, "iteration")
    if args.learn2learn is None:
        rows.append(["MAML meta-iteration, learn2learn", "not timed: learn2learn does not import here", "", ""])
    return rows


def learn2learn_source(pack: Path | None = None) -> str | None:
    """Where ``import learn2learn`` finds ``learn2learn.algorithms.MAML``, in words: the installed package, or
    else the MAML modules of a ``--learn2learn-pack`` in ``pack`` loaded on their own (a ``learn2learn`` package
    of those modules alone goes into ``sys.modules``); None where neither is there."""
    try:
        import learn2learn
        return f"learn2learn {learn2learn.__version__}, the installed package"
    except Exception:  # not installed, or installed without what it imports (gym, its compiled parts)
        pass
    folder = None if pack is None else Path(pack) / "learn2learn"
    if folder is None or not all((folder / name).is_file() for name in LEARN2LEARN_MAML):
        return None
    for name in [name for name in sys.modules if name.split(".")[0] == "learn2learn"]:
        del sys.modules[name]  # what the failed import left
    for name, path in (("learn2learn", folder), ("learn2learn.algorithms", folder / "algorithms")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]  # its submodules load from there; its own __init__ never runs
        sys.modules[name] = package
    top, algorithms = sys.modules["learn2learn"], sys.modules["learn2learn.algorithms"]
    top.algorithms, top.__version__ = algorithms, importlib.import_module("learn2learn._version").__version__
    algorithms.MAML = importlib.import_module("learn2learn.algorithms.maml").MAML
    return f"learn2learn {top.__version__}, its MAML modules alone from {folder}"


def pack_learn2learn(dest: Path) -> Path:
    """Copies the installed learn2learn's MAML modules (:data:`LEARN2LEARN_MAML`) into ``dest/learn2learn``."""
    import learn2learn

    source, folder = Path(learn2learn.__file__).parent, Path(dest) / "learn2learn"
    for name in LEARN2LEARN_MAML:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, folder / name)
    return folder


def maml_blocks(batch: list, device: torch.device, with_learn2learn: bool) -> dict:
    """``metazoo bench``'s MAML contenders on ``device`` (the same weights), learn2learn's if asked."""
    names = [name for name in MAML_ROWS if name != "learn2learn" or with_learn2learn]
    return {f"MAML meta-iteration, {MAML_ROWS[name]}": functools.partial(contender(name, 28, False, device=device),
                                                                         batch) for name in names}


def sampling_rows(train, args) -> list[list[str]]:
    """Episodes drawn and gathered on the host, then copied; and as a run on the device gathers them: its split
    built by ``build_dataset`` (the uint8 images moved to the device once), the draws on the host, the
    gathering and the conversion to float on the device."""
    host = EpisodeSampler(train, WAYS, SHOTS, QUERIES, seed=0)
    config = from_dict({"data": {"dataset": "omniglot", "root": str(data_root(args.data_root))},
                        "train": {"device": str(args.device)}})
    on_device = build_dataset(config, "train")
    assert on_device.images.device.type == args.device.type, "the run's images did not move to the device"
    device = EpisodeSampler(on_device, WAYS, SHOTS, QUERIES, seed=0)
    count = iter(range(10 ** 9))
    blocks = {"episode sampling on the host, copied to the device": lambda: host[next(count)].to(args.device),
              "episode sampling from images on the device (a run's path)": lambda: device[next(count)]}
    return timed_rows(blocks, args, "episode")


def timed_rows(blocks: dict, args, unit: str) -> list[list[str]]:
    blocks = {name: synchronised(step, args.steps, args.device) for name, step in blocks.items()}
    for block in blocks.values():  # warm up: cuDNN's algorithm choice, the caching allocator
        block()
    medians = interleaved_medians(blocks, args.repeats)
    return [[name, f"{1000 * s / args.steps:.2f} ms", f"{args.steps / s:.1f}", unit] for name, s in medians.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="data root holding omniglot/ (default: $METAZOO_DATA, else ~/.metazoo/data)")
    p.add_argument("--skip-tests", action="store_true", help="only the timings")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per row (median reported)")
    p.add_argument("--steps", type=int, default=10, help="iterations per timed block")
    p.add_argument("--device", type=torch.device, default=torch.device("cuda"), help="cuda (default), cuda:N, cpu")
    p.add_argument("--learn2learn-from", type=Path, metavar="DIR",
                   help="where learn2learn does not import: load its MAML modules from DIR/learn2learn")
    p.add_argument("--learn2learn-pack", type=Path, metavar="DIR",
                   help="only copy the installed learn2learn's MAML modules into DIR/learn2learn (for one without it)")
    args = p.parse_args(argv)
    if args.learn2learn_pack is not None:
        print(f"gpu_check: learn2learn's MAML modules copied to {pack_learn2learn(args.learn2learn_pack)}")
        return 0
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    status = 0
    if not args.skip_tests and args.device.type == "cuda":
        start = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py",
                                 "-p", "no:cacheprovider"], cwd=REPO).returncode
        print(f"GPU tests: exit status {status} in {time.perf_counter() - start:.0f} s\n")
    train = create_dataset("omniglot", split="train", root=data_root(args.data_root))
    args.learn2learn = learn2learn_source(args.learn2learn_from)
    rows = training_rows(train, args) + sampling_rows(train, args)
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(f"\n{name}; {machine()}\n")
    print(table(["what", "time per item", "items/s", "item"], rows))
    print(f"\nlearn2learn: {args.learn2learn or 'not found (see --learn2learn-from)'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
