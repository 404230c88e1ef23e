import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metazoo.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "omniglot", "protonet_5w1s.toml")
TINY = ["--set", "train.steps=2", "--set", "train.ways=5", "--set", "train.val_episodes=3",
        "--set", "eval.episodes=5", "--set", "backbone.width=8", "-q"]


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "protonet" in out and "conv4" in out and "omniglot" in out


def test_list_shows_the_model_zoo_apart_from_the_configs_with_each_entrys_records(capsys):
    """Each entry with every cell its weights were tested on (ProtoNet's 1-shot model serves 5-way and 20-way),
    read from the entry's own records; its config.toml is not offered among the runnable configs."""
    assert main(["list"]) == 0
    configs, _, zoo = capsys.readouterr().out.partition("model zoo (")
    assert "experiments/zoo" not in configs and "experiments/omniglot/protonet_5w1s.toml" in configs
    lines = {line.split()[0]: line for line in zoo.splitlines()[1:]}
    entries = sorted(Path(REPO, "experiments", "zoo").glob("*/*/config.toml"))
    assert zoo.startswith(f"{len(entries)};") and len(lines) == len(entries)
    records = [json.loads(x) for x in Path(entries[0].parent, "records.jsonl").read_text().splitlines()]
    r = records[-1]
    name = f"zoo:{entries[0].parent.parent.name}/{entries[0].parent.name}"
    assert f"{r['cell']} {r['ours']['mean']:.2f} +- {r['ours']['ci95']:.2f} / {r['paper']['value']}: " in lines[name]
    line = lines["zoo:omniglot/protonet_5w1s"]
    assert "protonet/omniglot/5w1s " in line and "; protonet/omniglot/20w1s " in line


def test_train_then_eval_with_another_protocol(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    assert main(["train", CONFIG, "-o", str(run), "--data-root", str(data_root), *TINY]) == 0
    out = capsys.readouterr().out
    assert "test: omniglot test 5-way 1-shot: " in out and "(95% CI) over 5 episodes" in out
    assert main(["eval", str(run), "--ways", "3", "--shots", "2", "--episodes", "4", "--data-root",
                 str(data_root), "-q"]) == 0
    out = capsys.readouterr().out
    assert "omniglot test 3-way 2-shot: " in out and "(95% CI) over 4 episodes" in out
    assert f"wrote {run / 'result.json'}" in out
    result = json.loads((run / "result.json").read_text())
    assert result["protocol"]["ways"] == 3 and result["episodes"] == 4
    assert len((run / "results.jsonl").read_text().splitlines()) == 2
    # a protocol for another kind of learner is refused before the data are read (none there)
    assert main(["eval", str(run), "--protocol", "online", "--data-root", str(tmp_path / "no-data"), "-q"]) == 2
    assert capsys.readouterr().err.strip() == ("metazoo: error: the online protocol needs a sequence learner (lstm, "
                                               "mann, snail); ProtoNet is not one")


def test_eval_overrides_test_time_settings_and_records_them(tmp_path, data_root, capsys, monkeypatch):
    import metazoo.learners.transfer as transfer

    run = tmp_path / "run"
    config = os.path.join(REPO, "experiments", "omniglot", "baseline_5w1s.toml")
    assert main(["train", config, "-o", str(run), "--data-root", str(data_root), *TINY,
                 "--set", "learner.epochs=2"]) == 0
    seen = []
    fit_head = transfer.fit_head
    monkeypatch.setattr(transfer, "fit_head", lambda *a, **k: seen.append(a[6]) or fit_head(*a, **k))
    assert main(["eval", str(run), "--episodes", "2", "--set", "learner.lr=0.125", "--data-root",
                 str(data_root), "-q"]) == 0
    assert seen == [0.125, 0.125]  # positional lr of each episode's head
    assert json.loads((run / "result.json").read_text())["protocol"]["overrides"] == ["eval.episodes=2",
                                                                                      "learner.lr=0.125"]
    assert "\nlr = 0.01\n" in (run / "config.toml").read_text()  # the run itself is unchanged


@pytest.mark.parametrize("learner", ["maml", "snail"])
def test_other_ways_than_a_fixed_head_are_refused_before_the_data_are_read(tmp_path, data_root, capsys, learner):
    run, nothing = tmp_path / "run", str(tmp_path / "no-data")  # refused before the data root is read
    args = ["train", CONFIG, "-o", str(run), "--set", f"learner.name={learner}", "--device", "cpu", *TINY]
    refusal = f"metazoo: error: learner '{learner}' classifies into learner.ways = {{}} classes, so its episodes " \
        "must be"
    assert main([*args, "--set", "eval.ways=3", "--data-root", nothing]) == 2  # would fail at the first validation
    assert capsys.readouterr().err.strip() == refusal.format(5) + \
        " 5-way, and eval.ways = 3: set eval.ways = 5, or use a 3-way model"
    assert main([*args, "--set", "learner.ways=4", "--data-root", nothing]) == 2
    assert capsys.readouterr().err.strip() == refusal.format(4) + \
        " 4-way, and train.ways = 5: set train.ways = 4, or use a 5-way model"
    assert not run.exists()
    assert main([*args, "--data-root", str(data_root)]) == 0
    assert main(["eval", str(run), "--ways", "3", "--data-root", nothing, "-q"]) == 2  # a re-test, before its data
    assert capsys.readouterr().err.strip() == refusal.format(5) + \
        " 5-way, and eval.ways = 3: set eval.ways = 5, or use a 3-way model"
    assert len((run / "results.jsonl").read_text().splitlines()) == 1  # the training's test alone


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    assert main(["train", CONFIG, "-o", str(tmp_path / "r"), "--set", "train.stepz=3"]) == 2
    assert "train.stepz; valid in [train]" in capsys.readouterr().err


def test_unknown_learner_is_a_clear_error(tmp_path, data_root, capsys):
    assert main(["train", CONFIG, "-o", str(tmp_path / "r"), "--data-root", str(data_root),
                 "--set", "learner.name=maml2"]) == 2
    assert "learner.name = 'maml2': unknown learner; valid: 'anil'" in capsys.readouterr().err


def test_data_check_reports_counts(data_root, capsys):
    assert main(["data", "check", "omniglot", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "4112 classes" in out and "688 classes" in out and "1692 classes" in out


def test_missing_data_is_reported_not_raised(tmp_path, capsys):
    assert main(["data", "check", "omniglot", "--data-root", str(tmp_path)]) == 1
    assert "Looked in" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--version"], ["list"]])
def test_console_entry_point_runs(args):
    done = subprocess.run([sys.executable, "-m", "metazoo.cli", *args], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_bench_passes_its_own_options_through(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    assert "--l2l-standard-episodes" in capsys.readouterr().out
