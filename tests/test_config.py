import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from metazoo import registry
from metazoo.config import (Config, ConfigError, apply_overrides, dump_toml, from_dict, load_config, load_values,
                            migrate)

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "resolved_configs.json"
PROTOCOL_CHANGES = json.loads((REPO / "tests" / "data" / "protocol_changes.json").read_text())
MAML = REPO / "experiments" / "omniglot" / "maml_5w1s.toml"


def runnable_configs() -> list[Path]:
    """Every config file but the bases (``base/`` folders), which are not runnable cells."""
    return [p for p in sorted((REPO / "experiments").glob("**/*.toml")) if "base" not in p.relative_to(REPO).parts]


def test_defaults_round_trip_through_toml():
    config = Config()
    assert from_dict(tomllib.loads(dump_toml(config.to_dict()))) == config


def test_unknown_keys_fail_listing_valid_ones():
    with pytest.raises(ConfigError, match=r"train\.stepz; valid in \[train\]: .*steps"):
        from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) trian; valid in the top level: .*train"):
        from_dict({"trian": {}})


def test_overrides_parse_toml_values():
    values = apply_overrides({"train": {"steps": 1}}, ["train.steps=5", "optim.lr=3e-4", "eval.checkpoint=last",
                                                       "learner.name=protonet", "data.options.image_size=28"])
    assert values == {"train": {"steps": 5}, "optim": {"lr": 3e-4}, "eval": {"checkpoint": "last"},
                      "learner": {"name": "protonet"}, "data": {"options": {"image_size": 28}}}
    with pytest.raises(ValueError, match="not key=value"):
        apply_overrides({}, ["train.steps"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", r"train\.steps = 'abc': expected an integer$"),
    ("optim.lr=1e-3x", r"optim\.lr = '1e-3x': expected a number$"),
    ("train.shots=true", r"train\.shots = True: expected an integer$"),  # a bool is not an int
    ("multitask.holdout=[0.7, 'x']", r"multitask\.holdout = \[0\.7, 'x'\]: expected a list of numbers$"),
    ("data.root=3", r"data\.root = 3: expected a string or nothing"),
    ("plugins='mymodule'", r"plugins = 'mymodule': expected a list of strings$"),
    ("eval.bn=runing", r"eval\.bn = 'runing': expected one of 'running', 'transductive'"),
    ("eval.checkpoint=bset", r"eval\.checkpoint = 'bset': expected one of 'best', 'last'$"),
    ("eval.split=tset", r"eval\.split = 'tset': expected one of 'train', 'val', 'test'$"),
    ("train.device=cdua", r"train\.device = 'cdua': expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'$"),
    ("data.dataset=omniglott", r"data\.dataset = 'omniglott': unknown dataset; valid: .*'omniglot'"),
    ("optim.name=adamw", r"optim\.name = 'adamw': unknown optimiser; valid: 'adam', 'rmsprop', 'sgd'"),
    ("optim.schedule=cosine", r"optim\.schedule = 'cosine': unknown schedule; valid: .*'linear'.*'step'"),
    ("eval.protocol=onlin", r"eval\.protocol = 'onlin': unknown protocol; valid: 'episodic', .*'online'"),
    ("multitask.tasks=alphabet", r"multitask\.tasks = 'alphabet': unknown task set; valid: '', 'alphabets'"),
    ("learner.name=mamll", r"learner\.name = 'mamll': unknown learner; valid: .*'maml'.*'multitask'"),
    ("backbone.name=conv5", r"backbone\.name = 'conv5': unknown backbone; valid: .*'conv4'"),
    ('learner.inner_lr="x"', r"learner\.inner_lr = 'x': expected a number$"),
    ("learner.first_order=1", r"learner\.first_order = 1: expected true or false$"),
    ("learner.innr_lr=0.1", r"unknown config key\(s\) learner\.innr_lr; valid in \[learner\] for learner 'maml': "
                            r".*inner_lr"),
    ("learner.backbone=1", r"unknown config key\(s\) learner\.backbone; valid in \[learner\]"),
    ("backbone.width=1.5", r"backbone\.width = 1\.5: expected an integer$"),
    ("backbone.widht=32", r"unknown config key\(s\) backbone\.widht; valid in \[backbone\] for backbone 'conv4': "
                          r".*width"),
    ("data.options.image_size=x", r"data\.options\.image_size = 'x': expected an integer$"),
    ("data.options.character_splt=x", r"unknown config key\(s\) data\.options\.character_splt; valid in "
                                      r"\[data\.options\] for dataset 'omniglot': .*character_split"),
])
def test_bad_values_fail_at_load_with_key_value_and_allowed_ones(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(MAML, [override])


def test_swapping_a_component_by_name_names_the_leftover_keys_and_how_to_replace_the_table():
    with pytest.raises(ConfigError) as caught:  # MAML's config sets Conv-4's keys
        load_config(MAML, ["backbone.name=pixels"])
    message = str(caught.value)
    assert "backbone.width" in message and "another backbone's" in message
    assert "--set 'backbone={name=\"pixels\"}'" in message
    assert load_config(MAML, ['backbone={name="pixels"}']).backbone == {"name": "pixels"}
    with pytest.raises(ConfigError) as typo:  # a misspelt key gets no such hint
        load_config(MAML, ["backbone.widht=32"])
    assert "another" not in str(typo.value)


def test_integers_are_accepted_where_numbers_are_expected():
    config = load_config(MAML, ["optim.lr=1", "learner.inner_lr=1", "multitask.holdout=[1, 0]"])
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float
    assert config.learner["inner_lr"] == 1.0 and type(config.learner["inner_lr"]) is float
    assert config.multitask.holdout == [1.0, 0.0] and all(type(x) is float for x in config.multitask.holdout)
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(MAML, [f"train.device={device}"]).train.device == device
    assert load_config(MAML, ["multitask.descriptors=[[0, 1], [1.5, 0]]"]).multitask.descriptors == [[0, 1], [1.5, 0]]


def test_legacy_eval_bn_moves_to_the_learner():
    assert migrate({"eval": {"bn": "transductive", "ways": 5}, "learner": {"name": "maml"}}) == {
        "eval": {"ways": 5}, "learner": {"name": "maml", "bn": "transductive"}}
    assert migrate({"eval": {"bn": "transductive"}, "learner": {"name": "maml", "bn": "per_step"}}) == {
        "eval": {}, "learner": {"name": "maml", "bn": "per_step"}}  # the learner's own setting wins
    assert migrate({"eval": {"bn": "running"}, "learner": {"name": "protonet"}}) == {
        "eval": {}, "learner": {"name": "protonet"}}
    old_run = {"learner": {"name": "anil"}, "eval": {"bn": "transductive", "checkpoint": "last"}}
    config = from_dict(old_run)  # e.g. an old run directory's config.toml
    assert config.learner["bn"] == "transductive" and config.eval.checkpoint == "last"
    assert old_run["eval"]["bn"] == "transductive"  # the caller's dict is left as it was


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_merges_tables_key_by_key_and_the_child_wins(tmp_path):
    _write(tmp_path / "base.toml", '[learner]\nname = "maml"\ninner_lr = 0.1\n'
                                   "[train]\nsteps = 10\nways = 20\n[multitask]\nholdout = [0.5, 0.25]\n")
    child = _write(tmp_path / "child.toml", 'extends = "base.toml"\n[learner]\ninner_steps = 2\n'
                                            "[train]\nsteps = 20\n[multitask]\nholdout = [0.8]\n")
    config = load_config(child, ["train.ways=5"])
    assert config.learner == {"name": "maml", "inner_lr": 0.1, "inner_steps": 2}
    assert (config.train.steps, config.train.ways) == (20, 5)  # the child, then the overrides, win
    assert config.multitask.holdout == [0.8]  # a list is replaced, not merged


def test_extends_chains_relative_to_each_file_and_lists_in_order(tmp_path):
    _write(tmp_path / "bases" / "root.toml", "[train]\nsteps = 1\nways = 7\nshots = 3\n")
    _write(tmp_path / "bases" / "family.toml", 'extends = "root.toml"\n[train]\nsteps = 2\n')
    _write(tmp_path / "bases" / "other.toml", "[train]\nshots = 4\n")
    cell = _write(tmp_path / "cells" / "cell.toml", 'extends = ["../bases/family.toml", "../bases/other.toml"]\n')
    assert load_values(cell) == {"train": {"steps": 2, "ways": 7, "shots": 4}}


def test_extends_cycles_and_missing_bases_fail_naming_the_files(tmp_path):
    _write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    _write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"cycle: \S*a\.toml -> \S*b\.toml -> \S*a\.toml"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(ConfigError, match=r"cycle: \S*self\.toml -> \S*self\.toml"):
        load_config(_write(tmp_path / "self.toml", 'extends = "self.toml"\n'))
    with pytest.raises(ConfigError, match=r"lost\.toml: extends \S*nowhere\.toml, which does not exist"):
        load_config(_write(tmp_path / "lost.toml", 'extends = "nowhere.toml"\n'))
    with pytest.raises(ConfigError, match=r"extends = 3: expected a file name or a list of them"):
        load_config(_write(tmp_path / "bad.toml", "extends = 3\n"))


def test_replace_drops_the_bases_keys_of_the_tables_it_names(tmp_path):
    _write(tmp_path / "base.toml", '[backbone]\nname = "conv4"\nwidth = 64\n[data]\ndataset = "omniglot"\n'
                                   '[data.options]\nrotations = "per_task"\ncharacter_split = "random"\n'
                                   "[train]\nsteps = 10\nways = 20\n")
    child = _write(tmp_path / "child.toml", 'extends = "base.toml"\nreplace = ["backbone", "data.options"]\n'
                                            '[backbone]\nname = "pixels"\n[data.options]\nimage_size = 20\n'
                                            "[train]\nsteps = 20\n")
    assert load_values(child) == {"backbone": {"name": "pixels"}, "data": {"dataset": "omniglot", "options": {
        "image_size": 20}}, "train": {"steps": 20, "ways": 20}}  # the tables named stand alone; the rest merge
    grandchild = _write(tmp_path / "grandchild.toml", 'extends = "child.toml"\n[backbone]\nflatten = true\n')
    assert load_values(grandchild)["backbone"] == {"name": "pixels", "flatten": True}  # merged onto the replacement
    for replace in ('"train.ways"', '["optim"]'):
        bad = _write(tmp_path / "bad.toml", f'extends = "base.toml"\nreplace = {replace}\n[train]\nsteps = 1\n')
        with pytest.raises(ConfigError, match=r"bad\.toml: replace = .*is not a table this file sets"):
            load_values(bad)
    bad = _write(tmp_path / "bad.toml", 'extends = "base.toml"\nreplace = 3\n')
    with pytest.raises(ConfigError, match=r"replace = 3: expected a table name or a list of them"):
        load_values(bad)


def test_the_mann_online_config_is_the_paper_input_and_the_pinned_old_one_is_conv4():
    """The cell moved to raw pixels, then to the paper's optimiser and our measured budget, then to the paper's
    1200 training characters drawn at random and its augmentation; its old Conv-4 runs (Adam 1e-3, 20000 steps, the
    Vinyals split) are what the records' amended commands pin."""
    from metazoo.reproduce import training_key

    config = load_config(REPO / "experiments" / "omniglot" / "mann_online.toml")
    assert config.backbone == {"name": "pixels"}
    assert config.data.options == {"image_size": 20, "character_split": "random"}
    optim = config.optim
    assert (optim.name, optim.lr, optim.alpha, optim.momentum) == ("rmsprop", 1e-4, 0.95, 0.9)
    t = config.train
    assert (t.steps, t.split, t.translate, t.rotate, config.eval.checkpoint) == (60000, "trainval", 2, 10, "last")
    assert training_key(config) == "dcf6fca0"  # runs/reproduce_ra21/omniglot/mann_5w1s-dcf6fca0, the cell's record
    old = load_config(REPO / "experiments" / "omniglot" / "mann_online.toml",
                      ['backbone={name="conv4",width=64}', "data.options={}", "train.val_every=500", "optim.name=adam",
                       "optim.lr=0.001", "optim.alpha=0.99", "train.steps=20000", "train.split=train",
                       "train.translate=0", "train.rotate=0", "eval.checkpoint=best"])
    assert old.backbone == {"name": "conv4", "width": 64} and old.data.options == {}
    assert training_key(old) == "03dad32e"  # runs/slot2_mann/omniglot/mann_5w1s-03dad32e, the Conv-4 record's run


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("learner", "backbone", "options"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


SNAPSHOT_VALUES = json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("path", sorted(SNAPSHOT_VALUES))
def test_every_config_resolves_to_its_snapshot(path):
    """tests/data/resolved_configs.json: every config as the code before ``extends`` resolved it;
    after the ``eval.bn`` migration, the same values, and the defaults for keys added since."""
    expected, resolved = _flatten(migrate(SNAPSHOT_VALUES[path])), _flatten(load_config(REPO / path).to_dict())
    expected.update(PROTOCOL_CHANGES["configs"].get(path, {}))  # deliberate changes since, each listed
    defaults = _flatten(Config().to_dict())
    assert {k: v for k, v in resolved.items() if k in expected} == expected
    added = [k for k in resolved if k not in expected]  # keys new since the snapshot: their defaults
    assert {k: resolved[k] for k in added} == {k: defaults[k] for k in added}


def test_every_snapshot_config_is_still_a_runnable_cell():
    assert set(SNAPSHOT_VALUES) <= {str(p.relative_to(REPO)) for p in runnable_configs()}


def test_docs_config_md_is_current():
    from metazoo.config_doc import COMMAND, render

    assert (REPO / "docs" / "config.md").read_text() == render(), f"docs/config.md is out of date: run {COMMAND}"


def test_config_and_its_docs_import_without_torch():
    code = "import sys, metazoo.config, metazoo.config_doc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plugins_register_components_before_names_are_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.LEARNERS, "_entries", dict(registry.LEARNERS._entries))  # undone after the test
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "config_test_plugin", raising=False)
    _write(tmp_path / "config_test_plugin.py", "from metazoo.registry import LEARNERS\n\n\n"
                                               '@LEARNERS.register("plugged")\n'
                                               "def plugged(backbone, scale: float = 1.0):\n    return None\n")
    values = {"plugins": ["config_test_plugin"], "learner": {"name": "plugged", "scale": 2}}
    assert from_dict(values).learner == {"name": "plugged", "scale": 2.0}
    with pytest.raises(ConfigError, match=r"learner\.scale = 'x': expected a number"):
        from_dict({**values, "learner": {"name": "plugged", "scale": "x"}})
    registry.LEARNERS.add("unbuilt", "metazoo.no_such_module:Thing", "a component being moved")
    assert from_dict({"learner": {"name": "unbuilt", "anything": 1}}).learner["anything"] == 1  # checked when built


def omniglot_like(side: int = 28):
    """12 classes of 4 images named like Omniglot's (alphabet/character/rotation): enough for every task set."""
    import torch

    from metazoo.data import FewShotDataset

    names = [f"alphabet{a}/character{c:02d}/rot{r:03d}" for a in range(3) for c in (1, 2) for r in (0, 90)]
    images = torch.randint(0, 256, (4 * len(names), 1, side, side), dtype=torch.uint8)
    return FewShotDataset(images, [4] * len(names), names, name="omniglot_like", split="train")


@pytest.mark.parametrize("path", runnable_configs(), ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_shipped_config_loads_builds_and_reloads_from_its_run_record(path, tmp_path):
    from metazoo.build import build_objective, resolve_config

    config = resolve_config(load_config(path), omniglot_like(), tmp_path)
    assert from_dict(tomllib.loads(dump_toml(config.to_dict()))) == config  # the run's config.toml reloads
    build_objective(config)
