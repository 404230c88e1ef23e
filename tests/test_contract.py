"""The one contract: objectives, evaluation protocols as a registry, BatchNorm mode owned by the
learner, explicit train/eval modes, the registries and plugins, and runs as artefacts."""
import json
import os
import subprocess
import sys

import pytest
import torch

from metazoo import create_learner, load_run
from metazoo.data import EpisodeSampler
from metazoo.episode import Episode, LabeledSet
from metazoo.evaluate import evaluate
from metazoo.registry import REGISTRIES, UnknownNameError

from .conftest import toy_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONE = {"name": "conv4", "in_channels": 1, "width": 8, "image_size": 16}
CONFIG = os.path.join(REPO, "experiments", "omniglot", "protonet_5w1s.toml")
TINY = ["--set", "train.steps=2", "--set", "train.ways=5", "--set", "train.val_episodes=3",
        "--set", "eval.episodes=4", "--set", "backbone.width=8", "-q"]


def sampler(episodes=3):
    return EpisodeSampler(toy_dataset(class_sizes=(8,) * 5, side=16), 3, 2, 3, seed=0, episodes=episodes)


def with_other_queries(episode: Episode) -> Episode:
    """The same episode with every query but the first replaced by noise."""
    inputs = episode.query.inputs.clone()
    inputs[1:] = torch.randn(inputs[1:].shape, generator=torch.Generator().manual_seed(7)) * 3
    return Episode(episode.support, LabeledSet(inputs, episode.query.labels, episode.ways), episode.classes)


def trained_protonet(bn):
    torch.manual_seed(0)
    learner = create_learner("protonet", backbone=dict(BACKBONE), bn=bn)
    learner.train()
    for episode in sampler(4):  # give BatchNorm running statistics unlike any one batch's
        learner.meta_loss([episode])
    return learner


# --- BatchNorm: one setting, owned by the learner, recorded from it --------------------------------
@pytest.mark.parametrize("bn", ["running", "transductive"])
def test_the_recorded_batchnorm_mode_is_the_learners_and_says_what_ran(bn):
    learner = trained_protonet(bn)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    result = evaluate(learner, sampler())
    assert result.protocol["bn"] == bn == learner.bn
    episode = sampler()[0]
    with learner.evaluation():
        first = learner(episode)[0]
        first_with_other_queries = learner(with_other_queries(episode))[0]
    depends = not torch.allclose(first, first_with_other_queries)
    assert depends == (bn == "transductive")  # transductive: a query's logits see the other queries
    for key, value in learner.state_dict().items():  # evaluation moved no running statistics
        assert torch.equal(value, before[key]), key
    assert learner.training  # and the mode it had is back


def test_a_gradient_learner_records_its_own_batchnorm_mode_and_refuses_others():
    learner = create_learner("maml", backbone=dict(BACKBONE), ways=3, bn="transductive")
    assert evaluate(learner, sampler()).protocol["bn"] == "transductive"
    for bn in ("per_step", "query_with_support"):
        assert evaluate(create_learner("maml", backbone=dict(BACKBONE), ways=3, bn=bn), sampler()).protocol["bn"] == bn
    with pytest.raises(ValueError, match="unknown BatchNorm mode bn='running'; "
                                         "valid: transductive, query_with_support, per_step"):
        create_learner("maml", backbone=dict(BACKBONE), ways=3, bn="running")
    with pytest.raises(ValueError, match="valid: running, transductive"):
        create_learner("protonet", backbone=dict(BACKBONE), bn="runing")


# --- explicit modes --------------------------------------------------------------------------------
def test_modes_follow_train_and_eval_not_whether_gradients_are_recorded():
    maml = create_learner("maml", backbone=dict(BACKBONE), ways=3, inner_steps=1, test_inner_steps=3)
    with torch.no_grad():
        assert maml.train().steps() == 1
    with torch.enable_grad():
        assert maml.eval().steps() == 3
    snail = create_learner("snail", backbone=dict(BACKBONE), ways=3, order_seed=5)
    snail.eval()
    with torch.enable_grad():
        assert torch.equal(snail.support_order(6, torch.device("cpu")), snail.support_order(6, torch.device("cpu")))


# --- protocols as a registry -----------------------------------------------------------------------
def test_protocols_declare_what_they_need():
    protonet = create_learner("protonet", backbone=dict(BACKBONE))
    with pytest.raises(ValueError, match="the online protocol needs a sequence learner"):
        evaluate(protonet, sampler(), protocol="online")
    with pytest.raises(ValueError, match="the pertask protocol needs a multi-task objective"):
        evaluate(protonet, sampler(), protocol="multitask")
    with pytest.raises(UnknownNameError, match="unknown protocol 'offline'; valid: episodic, multitask, online"):
        evaluate(protonet, sampler(), protocol="offline")


def test_a_multitask_objective_is_not_a_learner_but_gives_one_for_episodes():
    from metazoo.learners import FineTuned, Learner
    from metazoo.multitask import MultiTaskObjective

    objective = MultiTaskObjective(create_learner("protonet", backbone=dict(BACKBONE)).backbone, outputs=[3, 4],
                                   sharing="multihead", hidden=8, epochs=2)
    assert not isinstance(objective, Learner)
    learner = objective.as_learner()
    assert isinstance(learner, FineTuned) and learner.backbone is objective.net.trunk
    result = evaluate(objective, sampler(2))
    assert result.episodes == 2 and result.protocol["bn"] == "running"


# --- registries and plugins ------------------------------------------------------------------------
def test_every_registry_entry_has_a_description_and_list_shows_them_without_torch():
    assert {"learners", "backbones", "datasets", "task sets", "weightings", "conditionings", "sharings", "protocols",
            "optimisers", "schedules", "objectives"} <= set(REGISTRIES)
    for registry in REGISTRIES.values():
        for name, description in registry.describe():
            assert description, f"{registry.kind} {name!r} has no description"
            registry.get_factory(name)  # every declared entry resolves to a factory
    for args in (["--help"], ["--version"], ["train", "--help"]):
        code = (f"import sys\ntry:\n    from metazoo.cli import main; main({args!r})\nexcept SystemExit:\n    pass\n"
                "assert 'torch' not in sys.modules, 'imported torch'")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, (args, done.stderr)
    code = ("import sys; from metazoo.cli import main; main(['list']); "
            "assert 'torch' not in sys.modules, 'list imported torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")  # not the repo
    assert done.returncode == 0, done.stderr
    for line in ("weightings:", "  gradnorm", "sharings:", "  multihead", "protocols:", "  online", "resnet12",
                 "experiments/omniglot/maml_5w1s.toml\n"):  # found beside the package, one per line
        assert line in done.stdout
    assert "base/" not in done.stdout  # base configs are not runnable cells


def test_a_learner_from_user_code_trains_and_evaluates_through_the_cli(tmp_path, data_root):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": REPO, "METAZOO_DATA": str(data_root)}
    cli = [sys.executable, "-m", "metazoo.cli"]
    done = subprocess.run([*cli, "train", CONFIG, "-o", str(run), "--plugin", "tests.plugin_learner",
                           "--set", "learner.name=nearest_mean_test", "--set", "learner.temperature=2.0", *TINY],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert 'plugins = ["tests.plugin_learner"]' in (run / "config.toml").read_text()
    done = subprocess.run([*cli, "eval", str(run), "--episodes", "3", "-q"], capture_output=True, text=True,
                          cwd=REPO, env=env)  # no --plugin: the run remembers it
    assert done.returncode == 0, done.stderr
    assert "5-way 1-shot" in done.stdout and "over 3 episodes" in done.stdout
    done = subprocess.run([*cli, "list", "--plugin", "tests.plugin_learner"], capture_output=True, text=True,
                          cwd=REPO, env=env)
    assert "nearest_mean_test  Nearest class mean under a learned temperature" in done.stdout
    done = subprocess.run([*cli, "train", CONFIG, "-o", str(tmp_path / "x"), "--plugin", "no_such_plugin_module"],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 2 and "plugin module 'no_such_plugin_module' not found" in done.stderr


# --- a run is an artefact --------------------------------------------------------------------------
def test_load_run_gives_the_trained_learner_and_its_resolved_config(tmp_path, data_root):
    from metazoo.cli import main

    run = tmp_path / "run"
    assert main(["train", CONFIG, "-o", str(run), "--data-root", str(data_root), *TINY]) == 0
    saved = (run / "config.toml").read_text()
    assert f'root = "{data_root.resolve()}"' in saved  # the data root is remembered
    assert "in_channels = 1" in saved and "image_size = 28" in saved and 'bn = "running"' in saved
    loaded = load_run(run)
    best = torch.load(run / "best.pt", weights_only=True)
    for key, value in loaded.objective.state_dict().items():
        assert torch.equal(value, best["learner"][key])
    assert loaded.config.backbone["width"] == 8 and loaded.step == best["step"]
    env = {k: v for k, v in os.environ.items() if k != "METAZOO_DATA"}  # eval needs no data root: the run has it
    done = subprocess.run([sys.executable, "-m", "metazoo.cli", "eval", str(run), "-q", "--episodes", "2"],
                          capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "result.json").read_text())["episodes"] == 2


def test_a_failed_start_leaves_no_run_directory(tmp_path, capsys):
    from metazoo.cli import main

    assert main(["train", CONFIG, "-o", str(tmp_path / "r"), "--data-root", str(tmp_path / "nowhere"), *TINY]) == 2
    assert "Looked in" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --- docs/adding_a_learner.md, "Adding a dataset", followed literally --------------------------------
def test_the_adding_a_dataset_section_works_as_written(tmp_path):
    import re
    from pathlib import Path

    import numpy as np

    from metazoo.config import from_dict
    from metazoo.registry import DATASETS
    from metazoo.trainer import meta_train

    doc = Path(REPO) / "docs" / "adding_a_learner.md"
    section = doc.read_text().split("\n## Adding a dataset\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    if "my_dataset" not in DATASETS:
        exec(compile(code, str(doc), "exec"), {})
    with pytest.raises(FileNotFoundError, match="my_dataset not found. Looked in"):
        DATASETS.create("my_dataset", split="train", root=tmp_path)
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    g = np.random.default_rng(0)
    for split, classes in (("train", 6), ("val", 4), ("test", 4)):
        np.savez(folder / f"{split}.npz", images=g.integers(0, 256, (classes * 5, 1, 16, 16), dtype=np.uint8),
                 class_sizes=np.full(classes, 5), class_names=np.array([f"{split}{c}" for c in range(classes)]))
    assert 'dataset = "my_dataset"' in section
    config = from_dict({"data": {"dataset": "my_dataset"}, "backbone": {"name": "conv4", "width": 4},
                        "train": {"steps": 2, "ways": 3, "queries": 2, "val_episodes": 2},
                        "eval": {"ways": 3, "queries": 2, "episodes": 3}})
    summary = meta_train(config, tmp_path / "run", data_root=tmp_path, progress=False)
    assert summary["test"]["protocol"]["dataset"] == "my_dataset"
    assert summary["test"]["protocol"]["class_split"] == "my_dataset's own split files"
    assert "image_size = 16" in (tmp_path / "run" / "config.toml").read_text()
