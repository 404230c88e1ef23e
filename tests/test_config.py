import tomllib
from pathlib import Path

import pytest

from metazoo.config import Config, ConfigError, apply_overrides, dump_toml, from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_round_trip_through_toml():
    config = Config()
    assert from_dict(tomllib.loads(dump_toml(config.to_dict()))) == config


def test_unknown_keys_fail_listing_valid_ones():
    with pytest.raises(ConfigError, match=r"train\.stepz; valid in \[train\]: .*steps"):
        from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) trian; valid in the top level: .*train"):
        from_dict({"trian": {}})


def test_overrides_parse_toml_values():
    values = apply_overrides({"train": {"steps": 1}}, ["train.steps=5", "optim.lr=3e-4", "eval.bn=transductive",
                                                       "learner.name=protonet", "data.options.image_size=28"])
    assert values == {"train": {"steps": 5}, "optim": {"lr": 3e-4}, "eval": {"bn": "transductive"},
                      "learner": {"name": "protonet"}, "data": {"options": {"image_size": 28}}}
    with pytest.raises(ValueError, match="not key=value"):
        apply_overrides({}, ["train.steps"])


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("**/*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path):
    from metazoo.build import build_learner
    from tests.conftest import toy_dataset

    config = load_config(path)
    build_learner(config, toy_dataset(side=28))
