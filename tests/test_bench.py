"""``metazoo bench`` (metazoo.bench): options, a tiny end-to-end run, learn2learn's Omniglot root.

The benchmark is not a test; these keep it runnable and its output well-formed as the code
around it changes. learn2learn is optional: what needs it skips without it.
"""
import importlib.util
import io
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch

from metazoo import bench
from metazoo.bench import l2l_loops, maml
from metazoo.bench.standard import extracted_omniglot_accepted, l2l_omniglot_root
from metazoo.data.l2l import task_from_episode


def l2l():
    return pytest.importorskip("learn2learn")


def tables(out: str) -> dict[str, list[list[str]]]:
    """The Markdown tables of a report: each section's title (``## (a) ...``) -> its rows of cells."""
    found: dict[str, list[list[str]]] = {}
    title = ""
    for line in out.splitlines():
        if line.startswith("## "):
            title = line
        elif line.startswith("| ") and not line.startswith("|---"):
            found.setdefault(title, []).append([cell.strip() for cell in line.strip("|").split("|")])
    return {t: rows[1:] for t, rows in found.items()}  # the header row left out


def ratio(cell: str) -> float:
    assert re.fullmatch(r"\d+\.\d+x", cell), cell
    return float(cell[:-1])


def test_options_choose_the_tables_and_default_to_the_full_measurement():
    args = bench.parse([])
    assert args.tables == ["sampling", "training", "maml"] and args.data_root is None
    assert args.maml_sizes == [28, 84] and args.maml_orders == ["second", "first"] and args.maml_memory
    assert (args.episodes, args.steps, args.repeats, args.warmup) == (100, 3, 5, 1)
    assert bench.parse(["--only", "maml,sampling"]).tables == ["sampling", "maml"]
    assert bench.parse(["--only", "sampling,maml", "--skip", "maml"]).tables == ["sampling"]
    assert bench.parse(["--skip", "training", "--skip", "l2l-standard"]).tables == ["sampling", "maml"]
    assert (args.learners, args.race_seconds, args.race_snapshots, args.test_episodes, args.race_data) == \
        (["maml", "protonet"], None, 6, 1000, "benchmark")
    args = bench.parse(["--only", "race,iteration", "--learners", "protonet", "--race-seconds", "20", "--race-set",
                        "train.ways=20", "--race-set", "train.seed=1", "--race-data", "interop"])
    assert args.tables == ["iteration", "race"] and args.learners == ["protonet"] and args.race_seconds == 20
    assert args.race_set == ["train.ways=20", "train.seed=1"] and args.race_data == "interop"
    args = bench.parse(["--maml-sizes", "28", "--maml-orders", "first", "--no-maml-memory", "--warmup", "0"])
    assert (args.maml_sizes, args.maml_orders, args.maml_memory, args.warmup) == ([28], ["first"], False, 0)
    for wrong in (["--only", "sampling,speed"], ["--only", ""], ["--maml-sizes", "32"], ["--repeats", "0"],
                  ["--warmup", "-1"], ["--learners", "reptile"], ["--race-seconds", "0"], ["--race-snapshots", "0"],
                  ["--test-episodes", "0"], ["--race-data", "png"]):
        with pytest.raises(SystemExit):
            bench.parse(wrong)


def test_data_root_comes_from_the_flag(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        bench.main(["--only", "training", "--data-root", str(tmp_path)])


def test_bench_runs_end_to_end_on_a_tiny_budget(data_root, capsys, monkeypatch):
    """Every table on a tiny budget; the data root from $METAZOO_DATA; --warmup 0 honoured.

    The MAML table's peak memory (a fresh process per contender, seconds each) is stood in for
    here; the next test measures it for real.
    """
    l2l()
    iterations: dict[str, int] = {}
    measured: list[tuple] = []
    original = maml.contender

    def counted(name, *args, **kwargs):
        step = original(name, *args, **kwargs)

        def counting(batch):
            iterations[name] = iterations.get(name, 0) + 1
            step(batch)
        return counting

    def peak(name, size, first_order, root, threads, lr, seed):
        measured.append((name, size, first_order, root))
        return 10.0 * len(measured)

    monkeypatch.setattr(maml, "contender", counted)
    monkeypatch.setattr(maml, "peak_memory_mib", peak)
    monkeypatch.setenv("METAZOO_DATA", str(data_root))
    tiny = ["--episodes", "2", "--repeats", "1", "--steps", "1", "--warmup", "0", "--train-episodes", "1"]
    # the learn2learn standard pipeline decodes PNGs (and extracts Omniglot on first use): not here
    assert bench.main([*tiny, "--skip", "l2l-standard", "--maml-sizes", "28", "--maml-orders", "first"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\d+ CPUs \(.+, [\w ]+, oneDNN bfloat16 (yes|no)\)", out)  # what speeds depend on
    assert "goal" not in out.lower() and not {"met", "missed"} & set(re.findall(r"\w+", out.lower()))
    found = tables(out)
    assert [t[:6] for t in found] == ["## (a)", "## (b)", "## (c)"]
    sampling, training, maml_table = found.values()

    assert [row[0] for row in sampling] == ["5-way 1-shot 15-query", "20-way 1-shot 15-query", "60-way 1-shot 5-query"]
    for row in sampling:
        assert float(row[1]) > 0 and float(row[2]) > 0 and ratio(row[3]) > 0  # metazoo, l2l, metazoo / l2l
        assert row[4:6] == ["skipped", "n/a"] and float(row[6]) > 0 and float(row[7]) > 0
    assert "standard pipeline skipped" in out and "MetaDataset construction" in out

    assert [row[0][:5] for row in training] == ["Proto", "bare:"]
    assert float(training[0][1]) > 0 and float(training[0][2]) > 0 and training[1][2] == "1.000"
    assert "after 0 warm-up blocks" in out and "ProtoNet overhead" in out

    assert len(maml_table) == 1 and maml_table[0][:2] == ["28x28", "first"]
    row = maml_table[0]
    assert all(float(ms) > 0 for ms in row[2:6]) and all(ratio(r) > 0 for r in row[6:9])
    assert row[9:] == ["10", "20", "30", "40"]  # peak MiB, one fresh process per contender
    assert measured == [(name, 28, True, data_root) for name in maml.CONTENDERS]
    assert iterations == dict.fromkeys(maml.CONTENDERS, 1)  # --steps 1 --repeats 1 --warmup 0: one each

    iterations.clear()
    assert bench.main([*tiny, "--only", "maml", "--maml-sizes", "28", "--maml-orders", "second",
                       "--no-maml-memory"]) == 0
    out = capsys.readouterr().out
    (title, rows), = tables(out).items()
    assert title.startswith("## (c)") and [row[:2] for row in rows] == [["28x28", "second"]] and len(rows[0]) == 9
    assert "peak memory not measured" in out and len(measured) == 4
    assert iterations == dict.fromkeys(maml.CONTENDERS, 1)


def test_peak_memory_is_measured_in_a_fresh_process(data_root):
    mib = maml.peak_memory_mib("metazoo 1 task/pass", 28, True, data_root, threads=1)
    assert 0 < mib < 1024


def tiny_omniglot_archives(root: Path) -> None:
    """``root/omniglot/images_{background,evaluation}.zip``, one character of two 105x105 drawings each."""
    from PIL import Image

    (root / "omniglot").mkdir(parents=True)
    for part, alphabet in (("images_background", "Latin"), ("images_evaluation", "Tengwar")):
        with zipfile.ZipFile(root / "omniglot" / f"{part}.zip", "w") as archive:
            for k in (1, 2):
                png = io.BytesIO()
                Image.new("1", (105, 105), 1).save(png, "PNG")
                archive.writestr(f"{part}/{alphabet}/character01/0101_0{k}.png", png.getvalue())


def test_l2l_omniglot_root_extracts_once_into_torchvisions_layout(tmp_path):
    from torchvision.datasets import Omniglot as TorchvisionOmniglot

    tiny_omniglot_archives(tmp_path / "data")
    root = l2l_omniglot_root(tmp_path / "data", cache=tmp_path / "cache")
    assert root == tmp_path / "cache" / "l2l-omniglot"
    for part, alphabet in (("images_background", "Latin"), ("images_evaluation", "Tengwar")):
        assert sorted(p.name for p in (root / "omniglot-py" / part / alphabet / "character01").iterdir()) == \
            ["0101_01.png", "0101_02.png"]
    assert not [p for p in (root / "omniglot-py").iterdir() if p.name.startswith(".")]  # no temporary left
    marker = root / "omniglot-py" / "images_background" / "marker"
    marker.touch()
    assert l2l_omniglot_root(tmp_path / "data", cache=tmp_path / "cache") == root and marker.exists()  # not redone

    with pytest.raises(RuntimeError, match="not found or corrupted"):  # the archives' md5 is not the official one
        TorchvisionOmniglot(str(root), background=True)
    with extracted_omniglot_accepted():
        assert len(TorchvisionOmniglot(str(root), background=True)) == 2
    with pytest.raises(RuntimeError, match="not found or corrupted"):  # the check is back
        TorchvisionOmniglot(str(root), background=False)
    with pytest.raises(KeyError), extracted_omniglot_accepted():  # and also after an error inside the block
        raise KeyError("inside")
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        TorchvisionOmniglot(str(root), background=False)

    l2l()
    from learn2learn.vision.datasets import FullOmniglot
    from torchvision import transforms

    with extracted_omniglot_accepted():
        full = FullOmniglot(str(root), transform=transforms.Compose([transforms.Resize(28), transforms.ToTensor()]))
    assert len(full) == 4 and full[0][0].shape == (1, 28, 28) and [full[i][1] for i in range(4)] == [0, 0, 1, 1]


def no_verdicts(out: str) -> None:
    assert "goal" not in out.lower() and not {"met", "missed"} & set(re.findall(r"\w+", out.lower()))


def test_learn2learn_loops_take_metazoos_settings_and_episodes(data_root, omniglot):
    """The learn2learn side's settings come from metazoo's configs; a metazoo episode becomes a learn2learn
    task that the interop turns back into the same episode; a loop iteration trains; a snapshot tests."""
    l2l()
    import dataclasses

    import torch

    from metazoo.bench.iteration import resolved
    from metazoo.bench.scaling import repo_file
    from metazoo.config import load_config
    from metazoo.data import EpisodeSampler
    from metazoo.data.l2l import episode_from_task

    config, _ = resolved("maml", [], data_root)
    s = l2l_loops.Settings.from_config(config)
    assert (s.learner, s.split, s.ways, s.shots, s.queries, s.meta_batch, s.lr, s.step_size) == \
        ("maml", "train", 5, 1, 1, 32, 1e-3, 0)
    assert (s.inner_lr, s.inner_steps, s.test_inner_steps, s.first_order) == (0.4, 1, 3, False)
    proto = l2l_loops.Settings.from_config(resolved("protonet", ["train.ways=20"], data_root)[0])
    assert (proto.learner, proto.split, proto.ways, proto.shots, proto.queries, proto.step_size, proto.gamma) == \
        ("protonet", "trainval", 20, 1, 5, 2000, 0.5)
    with pytest.raises(ValueError, match="MAML or ProtoNet"):
        l2l_loops.Settings.from_config(load_config(repo_file("experiments/omniglot/reptile_5w1s.toml")))

    assert l2l_loops.support_mask(2, 1, 2).tolist() == [True, False, False, True, False, False]
    episode = EpisodeSampler(omniglot["test"], 5, 2, 3, seed=0)[0]
    x, y = task_from_episode(episode)
    assert y.tolist() == [c for c in range(5) for _ in range(5)]
    back = episode_from_task(x, y, 5, 2, 3)
    assert torch.equal(back.support.inputs, episode.support.inputs) and torch.equal(back.query.inputs,
                                                                                    episode.query.inputs)

    small = dataclasses.replace(s, meta_batch=2)
    loop = l2l_loops.Loop(small, l2l_loops.taskset(small, "interop", data_root))
    before = [p.detach().clone() for p in loop.model.parameters()]
    loop.iteration()
    assert loop.iterations == 1 and any(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))
    test = [EpisodeSampler(omniglot["test"], 5, 1, 15, seed=1000)[i] for i in range(4)]
    scores = l2l_loops.test_accuracies(loop.model, small, test)
    assert len(scores) == 4 and all(0.0 <= a <= 1.0 for a in scores)
    # ProtoNet's test keeps each episode's own support items as the prototypes' (its sort is stable)
    from metazoo.learners.protonet import class_means, squared_distances

    net = l2l_loops.network(proto)
    scores = l2l_loops.test_accuracies(net, proto, test)
    with torch.no_grad():
        for episode, score in zip(test, scores):
            prototypes = class_means(net(episode.support.inputs), episode.support.labels, 5)
            logits = -squared_distances(net(episode.query.inputs), prototypes)
            assert score == pytest.approx(float((logits.argmax(-1) == episode.query.labels).float().mean()))


def test_iteration_table_runs_on_a_tiny_budget(data_root, capsys, monkeypatch):
    """Table (e), its MAML row, one iteration per side (learn2learn's get_tasksets decodes PNGs: seconds)."""
    l2l()
    monkeypatch.setenv("METAZOO_DATA", str(data_root))
    assert bench.main(["--only", "iteration", "--learners", "maml", "--steps", "1", "--repeats", "1",
                       "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    no_verdicts(out)
    (title, rows), = tables(out).items()
    assert title.startswith("## (e)") and len(rows) == 1
    row = rows[0]
    assert row[:2] == ["MAML", "5-way 1-shot 1-query x 32"] and len(row) == len(bench.iteration.HEADER)
    assert float(row[2]) > 0 and float(row[3]) > 0 and ratio(row[4]) > 0 and float(row[5]) > 0 and float(row[6]) > 0
    assert "experiments/omniglot/maml_5w1s.toml on both sides" in out and "1 inner step(s) of 0.4" in out
    assert "get_tasksets('omniglot'" in out and "after 0 warm-up block(s)" in out


def test_the_learn2learn_tables_train_metazoo_on_the_vinyals_characters_as_learn2learn(data_root, tmp_path):
    """Tables (e) and (f) set learn2learn on the Vinyals characters: metazoo's side of a row is pinned there too,
    though MAML's config draws MAML's own split (since 2026-12-06)."""
    from metazoo.bench import iteration, race
    from metazoo.bench.scaling import repo_file
    from metazoo.config import load_config

    assert load_config(repo_file(iteration.CONFIGS["maml"])).data.options["character_split"] == "random"
    _, train_set = iteration.resolved("maml", [], data_root)
    assert train_set.info["split"] == "vinyals" and train_set.info["characters"] == 1028
    command = race.session_command("maml", tmp_path / "run", data_root, 1.0, ["train.ways=20"], resume=False)
    assert command[command.index("data.options.character_split=vinyals") - 1] == "--set"


def test_race_runs_on_a_tiny_budget(data_root, capsys, monkeypatch, tmp_path):
    """Table (f) for ProtoNet (20-way to be quick): two snapshots a side, tested on 10 episodes, the plot,
    race.json, and the count of what learn2learn's get_tasksets trains on."""
    l2l()
    monkeypatch.setenv("METAZOO_DATA", str(data_root))
    out_dir = tmp_path / "race"
    assert bench.main(["--only", "race", "--learners", "protonet", "--race-seconds", "4", "--race-snapshots", "2",
                       "--test-episodes", "10", "--race-set", "train.ways=20", "--race-out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    no_verdicts(out)
    (title, rows), = tables(out).items()
    assert title.startswith("## (f)") and [row[:2] for row in rows] == [["ProtoNet", "1"], ["ProtoNet", "2"]]
    for k, row in enumerate(rows, 1):
        assert float(row[2]) >= 2 * k and float(row[5]) >= 2 * k  # each snapshot after its point in training time
        assert int(row[3]) >= 1 and int(row[6]) >= 1
        for cell in (row[4], row[7]):
            assert re.fullmatch(r"\d+\.\d\d \+- \d+\.\d\d", cell), cell
    assert int(rows[1][3]) >= int(rows[0][3]) and int(rows[1][6]) > int(rows[0][6])
    assert "20-way 1-shot 5-query episodes" in out and "Vinyals trainval" in out and "same 10 fixed episodes" in out
    assert re.search(r"outside its own 1100-character train split", out) and "get_tasksets('omniglot').train" in out
    record = json.loads((out_dir / "protonet" / "race.json").read_text())
    assert [len(record[side]) for side in ("metazoo", "learn2learn")] == [2, 2]
    if importlib.util.find_spec("matplotlib"):
        assert f"plot: {out_dir / 'race.png'}" in out and (out_dir / "race.png").stat().st_size > 0
    else:
        assert "no plot" in out


def test_learn2learn_tables_skip_without_learn2learn(data_root, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "learn2learn" else
                        find_spec(name, *a))
    assert bench.main(["--only", "iteration,race", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^## \((\w)\)", out, re.M) == ["e", "f"] and out.count("skipped: the peer") == 2


def test_step_probe_times_each_step_and_its_pieces(data_root, tmp_path):
    """``python -m metazoo.bench.step_probe OUT train ...``: one process trains as ``metazoo train`` does and
    writes a time per step for the step and its passes; a step includes its passes."""
    import subprocess
    import sys

    from metazoo.bench import step_probe
    from metazoo.bench.scaling import repo_file

    command = [sys.executable, "-m", "metazoo.bench.step_probe", str(tmp_path / "probe"), "train",
               str(repo_file("experiments/omniglot/protonet_5w1s.toml")), "-o", str(tmp_path / "run"), "-q",
               "--no-test", "--device", "cpu", "--data-root", str(data_root)]
    for item in ("train.steps=4", "train.ways=5", "train.val_every=0", "train.val_episodes=2", "backbone.width=8"):
        command += ["--set", item]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    times = json.loads((tmp_path / "probe" / "rank0.json").read_text())
    assert len(times["step"]) == len(times["compute"]) == len(times["all-reduce"]) == 4  # one process: no peers
    assert all(0 < c <= s for c, s in zip(times["compute"], times["step"]))
    assert (tmp_path / "run" / "last.pt").exists()
    means = step_probe.summary(tmp_path / "probe", skip=1)
    assert set(means) == {"rank0"} and means["rank0"]["step"] == pytest.approx(1000 * sum(times["step"][1:]) / 3)


def test_scaling_ratios_are_taken_within_each_round(monkeypatch, tmp_path):
    """A machine that runs twice as fast in the second round: the ratios of each round are its own."""
    from metazoo.bench import scaling

    speeds = iter([1, 1.8, 1.5, 1.8, 1.8, 2, 2, 3.6, 3.0, 3.6, 3.0, 4])  # round 1 then round 2, SETUPS' order
    probe = {"0:rank0": {"step": 10.0, "compute": 9.0, "all-reduce": 0.5}}
    monkeypatch.setattr(scaling, "measure", lambda *args: (next(speeds), 5.0, probe))
    found, breakdown = scaling.rows(tmp_path, ["maml-mb8"], 1.0, rounds=2)
    procs = ("1 x 1", "1 x 2", "2 x 1", "2 x 1", "2 x 1", "2 x 1")
    assert [row[0:4] for row in found] == [["maml", "8", scaling.LABELS[s], p] for s, p in zip(scaling.SETUPS, procs)]
    assert all(len(row) == len(scaling.HEADER) for row in found)
    assert [row[4] for row in found] == ["1.5", "2.7", "2.2", "2.7", "2.4", "3.0"]
    assert found[2][6] == "75% (75%, 75%)" and found[3][6] == "90% (90%, 90%)" and found[5][6] == "100% (100%, 100%)"
    assert found[4][6] == "82% (90%, 75%)"  # the half meta-batch pair against the whole one
    # torchrun against the half meta-batch pair, round by round: 1.5 / 1.8 and 3.0 / 3.0; 1.8 / 1.8 and 3.6 / 3.0
    assert found[2][7] == "92% (83%, 100%)" and found[3][7] == "110% (100%, 120%)"
    assert [row[7] for row in found if not row[2].startswith("torchrun")] == ["", "", "", ""]
    assert breakdown[0] == ["maml", "8", "1 process 1 x 1", "process 1", "10.0", "9.0", "0.5", "0.0"]
    assert breakdown[2][2:4] == ["torchrun (gloo)", "rank 0"]
    assert breakdown[3][2:4] == ["torchrun (gloo), ranks pinned", "rank 0"]
    assert breakdown[4][2:4] == ["2 independent processes, half meta-batch", "process 1"]


def test_scaling_runs_the_chosen_setups_beside_the_independent_ceiling(monkeypatch, tmp_path):
    from metazoo.bench import scaling

    seen = []
    monkeypatch.setattr(scaling, "measure", lambda learner, setup, *args: seen.append(setup) or (1.0, 5.0, {}))
    found, _ = scaling.rows(tmp_path, ["maml"], 1.0, rounds=1, setups=["torchrun 2 x 1 pinned"])
    assert seen == ["torchrun 2 x 1 pinned", "2 independent x 1"] and len(found) == 2
    command = scaling.train_command("maml", tmp_path / "run", tmp_path, 1.0, True, tmp_path / "probe", pinned=True)
    assert command[-2:] == ["--set", "train.pin_cores=true"] and "--nproc_per_node=2" in command
    assert "train.pin_cores=true" not in scaling.train_command("maml", tmp_path, tmp_path, 1.0, True, tmp_path)
    found, _ = scaling.rows(tmp_path, ["maml"], 1.0, rounds=1, setups=["torchrun 2 x 1"])
    assert found[0][7] == "" and len(found[0]) == len(scaling.HEADER)  # no half meta-batch pair ran


def test_scaling_half_meta_batch_pair_runs_a_ranks_share(monkeypatch, tmp_path):
    """The half meta-batch pair: two 1-thread processes, each with half the meta-batch, their rates summed at that
    size."""
    from metazoo.bench import scaling

    command = scaling.train_command("maml", tmp_path / "run", tmp_path, 1.0, False, tmp_path / "probe", half=True)
    assert command[-2:] == ["--set", "train.meta_batch_size=16"] and "torch.distributed.run" not in command
    assert "train.meta_batch_size=16" not in scaling.train_command("maml", tmp_path, tmp_path, 1.0, False, tmp_path)
    launched, sizes = [], []
    monkeypatch.setattr(scaling, "launch", lambda command, threads: launched.append((command, threads)))
    monkeypatch.setattr(scaling, "finish", lambda proc, command: None)
    monkeypatch.setattr(scaling, "throughput", lambda run, size: sizes.append(size) or 10.0)
    rate, _, _ = scaling.measure("maml", scaling.HALVES, tmp_path, 1.0, tmp_path)
    assert rate == 20.0 and sizes == [16, 16] and [threads for _, threads in launched] == [1, 1]
    assert all("train.meta_batch_size=16" in command for command, _ in launched)


def test_malloc_table_compares_the_allocators_round_by_round(monkeypatch, tmp_path):
    """(g): the tuned run's steps/s over the system run's of the same round; the system run's environment asks
    for glibc's defaults and drops any inherited tunables, the tuned run's leaves tuning to the command."""
    from metazoo.bench import malloc

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    system, tuned = malloc.environment("system"), malloc.environment("tuned")
    assert system["METAZOO_MALLOC"] == "system" and "GLIBC_TUNABLES" not in system and system["OMP_NUM_THREADS"] == "1"
    assert "METAZOO_MALLOC" not in tuned and "GLIBC_TUNABLES" not in tuned
    assert malloc.command("maml", tmp_path, tmp_path)[1:4] == ["-m", "metazoo.cli", "train"]
    rates = iter([1.0, 1.5, 2.0, 2.0])  # round 1: system, tuned; round 2: system, tuned
    monkeypatch.setattr(malloc, "measure",
                        lambda learner, name, root, work: {"rate": next(rates), "kernel": 0.25, "faults": 2000})
    found = malloc.rows(tmp_path, ["protonet"], rounds=2)
    assert [row[1] for row in found] == [malloc.ALLOCATORS["system"], malloc.ALLOCATORS["tuned"]]
    assert [row[2] for row in found] == ["1.50", "1.75"] and found[0][5] == ""
    assert found[1][5] == "1.25x (1.50x, 1.00x)" and found[1][3:5] == ["25%", "2k"]


def test_sequence_table_times_both_paths_of_a_real_config(data_root, capsys):
    """Table (h) on one configuration: the config's meta-batch of real episodes, both contenders timed."""
    assert bench.parse(["--only", "sequence"]).sequence_configs == list(bench.sequence.DEFAULT)
    with pytest.raises(SystemExit):
        bench.parse(["--sequence-configs", "snail_10w1s"])
    args = bench.parse(["--sequence-configs", "fomaml_5w5s", "--sequence-amp", "bf16"])  # first-order MAML too
    assert (args.sequence_configs, args.sequence_amp) == (["fomaml_5w5s"], "bf16")
    assert bench.main(["--only", "sequence", "--sequence-configs", "lstm_5w1s", "--sequence-repeats", "1",
                       "--warmup", "0", "--data-root", str(data_root)]) == 0
    title = "## (h) Sequence learners: the meta-batch as one batch vs one episode at a time"
    (row,) = tables(capsys.readouterr().out)[title]
    assert row[:2] == ["lstm_5w1s", "5-way 1-shot 1-query x 32"] and len(row) == len(bench.sequence.HEADER)
    assert float(row[2]) > 0 and float(row[3]) > 0
    ratio(row[4])


def test_layout_table_times_both_layouts_and_bfloat16_of_a_real_config(data_root, capsys):
    """Table (i) on real configurations: the same weights contiguous and channels_last, what "auto" picks, and
    that layout under bfloat16 autocast, or "refused" for a learner that bfloat16 is not sound for."""
    assert bench.parse(["--only", "layout"]).layout_configs == list(bench.layout.DEFAULT)
    assert bench.main(["--only", "layout", "--layout-configs", "omniglot_matching_5w1s,omniglot_fomaml_5w1s",
                       "--layout-repeats", "1", "--warmup", "0", "--data-root", str(data_root)]) == 0
    title = "## (i) Convolution layout on the CPU: channels_last vs contiguous, and bfloat16"
    found = tables(capsys.readouterr().out)[title]
    assert [row[:2] + row[5:6] for row in found] == [["omniglot_matching_5w1s", "matching", "channels_last"],
                                                     ["omniglot_fomaml_5w1s", "maml", "contiguous"]]
    for row in found:
        assert len(row) == len(bench.layout.HEADER)
        assert float(row[2]) > 0 and float(row[3]) > 0 and float(row[6]) > 0
        ratio(row[4])
        ratio(row[7])
        contiguous, channels_last, bf16 = map(float, row[8:11])  # gradient errors against float64
        assert 0 < contiguous < 1e-2 and 0 < channels_last and contiguous < bf16


def test_layout_gradient_error_is_measured_against_float64_on_the_same_weights_and_items(data_root, monkeypatch):
    """The error columns: a contender computed in float64 itself has none (so the reference is the same weights
    and items, only its arithmetic differs), and bfloat16 rounds far more than float32."""
    import torch

    path = bench.scaling.repo_file(bench.layout.CONFIGS["omniglot_matching_5w1s"])
    errors = bench.layout.gradient_errors(path, data_root)
    assert sorted(errors) == ["bf16", "channels_last", "contiguous"]
    assert errors["contiguous"] < 1e-3 < errors["bf16"]
    original = bench.layout.objective_and_batch

    def in_float64(config_path, root):
        config, objective, batch = original(config_path, root)
        return config, objective.double(), [item.to(dtype=torch.float64) for item in batch]

    monkeypatch.setattr(bench.layout, "objective_and_batch", in_float64)
    assert bench.layout.gradient_errors(path, data_root)["contiguous"] == 0


def test_layout_bfloat16_contender_runs_under_autocast_and_is_left_out_where_refused(data_root, monkeypatch):
    """The bf16 contender's step runs in bfloat16 (a convolution's output dtype, seen by a hook) in the layout
    auto chooses (channels_last for Matching: the convolutions' outputs keep it); a learner whose amp_modes
    exclude bf16 has no such contender, and its row says "refused"."""
    import torch

    path = bench.scaling.repo_file(bench.layout.CONFIGS["omniglot_matching_5w1s"])
    contenders, learner, auto = bench.layout.blocks(path, data_root, 1)
    assert (sorted(contenders), learner, auto) == (["bf16", "channels_last", "contiguous"], "matching",
                                                   "channels_last")

    def nhwc(t: torch.Tensor) -> bool:
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append((out.dtype, nhwc(out))) if isinstance(module, torch.nn.Conv2d)
        else None)
    try:
        for name, expected in (("contiguous", (torch.float32, False)), ("channels_last", (torch.float32, True)),
                               ("bf16", (torch.bfloat16, True))):
            seen.clear()
            contenders[name]()
            assert seen and set(seen) == {expected}, name
    finally:
        hook.remove()
    monkeypatch.setattr(type(bench.layout.objective_and_batch(path, data_root)[1]), "amp_modes", ("off",))
    assert sorted(bench.layout.blocks(path, data_root, 1)[0]) == ["channels_last", "contiguous"]
    (row,) = bench.layout.rows(["omniglot_matching_5w1s"], data_root, 1, 1, 0)
    assert row[5:8] == ["channels_last", "refused", ""] and row[10] == ""


def test_the_machine_line_says_whether_onednn_has_bfloat16_here(monkeypatch):
    from metazoo import objective
    from metazoo.bench.common import machine
    from metazoo.build import device_name
    for native, said in ((True, "oneDNN bfloat16 yes"), (False, "oneDNN bfloat16 no")):
        monkeypatch.setattr(objective, "native_bf16", lambda native=native: native)
        assert device_name(torch.device("cpu")).endswith(said) and f"{said});" in machine()
