"""metazoo reproduce: cells grouped into trained models, skipped when done, resumed after a kill; the
model zoo's round trip; the committed zoo entries re-test to their records."""
import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metazoo.build import device_name
from metazoo.cli import zoo_lines
from metazoo.published import cells
from metazoo.config import load_config
from metazoo.reproduce import (CHECK, RECORDS, describe, plan, reproduce, run_budget, shorter_run, to_zoo,
                               training_key)
from metazoo.run import RunLock, load_checkpoint, load_run, pack_weights, unpack_weights
from metazoo.trainer import test_run as evaluate_run

REPO = Path(__file__).resolve().parents[1]
TINY = """
[learner]
name = "protonet"
[backbone]
name = "conv4"
width = {width}
[data]
dataset = "omniglot"
[train]
steps = {steps}
ways = 5
queries = 2
val_every = {val_every}
val_episodes = 3
[eval]
ways = {ways}
episodes = 4
"""


def tiny_cells(tmp_path: Path, steps: int = 4, val_every: int = 2, width: int = 8) -> list:
    """Two cells of one model (5-way and 20-way tests), as published cells name their configs."""
    found = []
    for ways in (5, 20):
        path = tmp_path / f"tiny_{ways}w1s.toml"
        path.write_text(TINY.format(steps=steps, val_every=val_every, ways=ways, width=width))
        cell = cells(["protonet/omniglot/5w1s"])[0]
        found.append(dataclasses.replace(cell, id=f"protonet/omniglot/{ways}w1s", ways=ways, config=str(path)))
    return found


def test_the_omniglot_table_is_36_cells_on_fewer_trained_models(capsys):
    from metazoo.cli import main

    assert main(["reproduce", "omniglot", "--dry-run", "-o", "runs/never"]) == 0
    out = capsys.readouterr().out
    chosen = cells(["omniglot"])  # 9 learners x 5w1s, 5w5s, 20w1s, 20w5s, and MANN's presentation curve
    assert len([c for c in chosen if c.protocol == "episodic"]) == 36
    assert len(chosen) == 37 and out.startswith("37 cells on ")
    models = int(out.split(" cells on ", 1)[1].split()[0])
    assert models < 36  # ProtoNet's 1-shot model gives 5w1s and 20w1s, ...
    for cell in chosen:
        assert f"test {cell.id} (" in out
    assert out.count("  train: metazoo train ") == models
    assert not Path("runs/never").exists()  # a dry run writes nothing


def test_a_dry_run_prints_the_training_command_with_every_override(capsys):
    from metazoo.cli import main

    assert main(["reproduce", "maml/omniglot/5w1s", "--dry-run", "-o", "runs/never", "--budget", "10",
                 "--set", "data.options.rotations=per_task"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  train: ")]
    assert line.endswith(" --no-test --set data.options.rotations=per_task --set train.max_minutes=10")
    assert not Path("runs/never").exists()


def test_cells_that_differ_only_in_the_test_share_one_model_and_finished_cells_are_skipped(tmp_path, data_root):
    chosen = tiny_cells(tmp_path)
    plans = plan(chosen, tmp_path / "out")
    assert len(plans) == 1 and [c.id for c in plans[0].cells] == ["protonet/omniglot/5w1s", "protonet/omniglot/20w1s"]
    records = reproduce(chosen, tmp_path / "out", data_root=str(data_root), progress=False)
    assert [(r["cell"], r["ways"], r["ours"]["episodes"], r["steps"]) for r in records] == [
        ("protonet/omniglot/5w1s", 5, 4, 4), ("protonet/omniglot/20w1s", 20, 4, 4)]
    assert records[1]["protocol"]["ways"] == 20 and records[0]["paper"]["value"] == 98.8
    assert records[0]["protocol"]["train"] == {"split": "train", "ways": 5, "shots": 1, "queries": 2,
                                               "meta_batch_size": 1, "steps": 4}
    assert records[0]["compile"] is False
    assert records[0]["machine"] == device_name(torch.device("cpu"))  # on which CPU the timings were taken
    for key in ("version", "commit", "command", "train_seconds", "test_seconds", "device", "amp", "date"):
        assert key in records[0]
    last = plans[0].run_dir / "last.pt"
    stamp = last.stat().st_mtime_ns
    assert reproduce(chosen, tmp_path / "out", data_root=str(data_root), progress=False) == []  # all done
    assert last.stat().st_mtime_ns == stamp
    assert len((tmp_path / "out" / RECORDS).read_text().splitlines()) == 2

    # a test setting given after the run was trained: the same model, tested as asked, a record of its own
    again = reproduce(chosen[:1], tmp_path / "out", data_root=str(data_root), progress=False,
                      overrides=["eval.seed=7"])
    assert [(r["cell"], r["protocol"]["seed"], r["protocol"]["overrides"]) for r in again] == [
        ("protonet/omniglot/5w1s", 7, ["eval.seed=7"])]
    assert again[0]["ours"] != records[0]["ours"] and last.stat().st_mtime_ns == stamp
    assert reproduce(chosen[:1], tmp_path / "out", data_root=str(data_root), progress=False,
                     overrides=["eval.seed=7"]) == []


def test_until_stops_training_at_a_wall_clock_time_and_starts_nothing_after_it(tmp_path, data_root, caplog):
    chosen = tiny_cells(tmp_path, steps=1_000_000, val_every=1_000_000)
    out = tmp_path / "out"
    assert reproduce(chosen, out, data_root=str(data_root), progress=False, until=time.time() - 1) == []
    assert not out.exists()  # past the time: nothing started

    start = time.time()
    records = reproduce(chosen, out, data_root=str(data_root), progress=False, until=start + 4)
    state = torch.load(plan(chosen, out)[0].run_dir / "last.pt", weights_only=True)
    assert [(r["stopped"], r["steps"]) for r in records] == [("budget", state["step"])] * 2  # stopped, then tested
    assert 0 < state["step"] < 1_000_000 and 3.5 < state["train_seconds"] < 8, state["train_seconds"]
    best = state["best"]  # the dry run says where the run stands
    seen = f", best validation {100 * best['accuracy']:.2f}% at step {best['step']}" if best["accuracy"] >= 0 else ""
    spent = re.escape(f" after {state['train_seconds']:.0f} s of training (") + \
        r"\d+\.\d\d s a step: about [\dh min]+ more at that pace\)"  # ... and the rest's time (by hand below)
    assert re.search(re.escape(f"{plan(chosen, out)[0].run_dir} (at step {state['step']} of 1000000") + spent
                     + re.escape(f"{seen}: resumes)"), describe(plan(chosen, out), None))
    if Path("/proc/locks").exists():  # ... or that another process trains it now
        with RunLock(plan(chosen, out)[0].run_dir):
            assert f"{seen}: training now (process {os.getpid()}))" in describe(plan(chosen, out), None)

    # a later call: the run's budget is what it trained plus the minutes left, and --budget still caps it
    p = plan(chosen, out)[0]
    left = run_budget(p, None, time.time() + 600) - state["train_seconds"] / 60
    assert 9.9 < left <= 10
    assert run_budget(p, 3.0, time.time() + 600) == 3.0 and run_budget(p, 3.0, None) == 3.0
    assert run_budget(p, None, time.time() - 5) == pytest.approx(state["train_seconds"] / 60)

    # a test setting given to the unfinished run: it resumes with its own [eval] (no config clash), trains
    # nothing within a spent budget, and is tested as asked
    with caplog.at_level(logging.INFO, logger="metazoo"):
        again = reproduce(chosen[:1], out, budget=state["train_seconds"] / 120, data_root=str(data_root),
                          progress=False, overrides=["eval.seed=7"])
    assert [(r["steps"], r["protocol"]["seed"], r["protocol"]["overrides"]) for r in again] == [
        (state["step"], 7, ["eval.seed=7"])]
    assert f"{p.run_dir.name}: at step {state['step']} of 1000000 after " in caplog.text  # where it resumed from
    assert torch.load(p.run_dir / "last.pt", weights_only=True)["step"] == state["step"]

    # the pace, by hand: 600 s for 200 steps is 3 s a step, so 999800 steps more are 2999400 s, 833 h 10 min
    torch.save({**torch.load(p.run_dir / "last.pt", weights_only=True), "step": 200, "train_seconds": 600.0},
               p.run_dir / "last.pt")
    assert "(at step 200 of 1000000 after 10 min of training (3.00 s a step: about 833 h 10 min more at that pace)" \
        in describe(plan(chosen, out), None)


def test_a_budget_spent_before_the_first_step_is_a_warning_and_a_later_call_trains_the_run(
        tmp_path, data_root, caplog):
    chosen = tiny_cells(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="metazoo"):  # e.g. an --until time reached as the run starts
        assert reproduce(chosen, out, budget=1e-9, data_root=str(data_root), zoo=tmp_path / "zoo",
                         progress=False) == []
    assert "no step trained: the budget of 1e-09 minutes was spent before the first step" in caplog.text
    assert not (tmp_path / "zoo").exists()
    assert [r["steps"] for r in reproduce(chosen, out, data_root=str(data_root), progress=False)] == [4, 4]


def test_until_takes_a_clock_time_or_a_date_and_time():
    from metazoo.cli import wall_clock

    now = datetime.datetime(2026, 12, 3, 19, 20)
    assert datetime.datetime.fromtimestamp(wall_clock("19:30", now)) == datetime.datetime(2026, 12, 3, 19, 30)
    assert datetime.datetime.fromtimestamp(wall_clock("07:00", now)) == datetime.datetime(2026, 12, 4, 7, 0)
    assert datetime.datetime.fromtimestamp(wall_clock("2026-12-05T06:15", now)) == datetime.datetime(2026, 12, 5, 6, 15)
    with pytest.raises(argparse.ArgumentTypeError, match="2026-12-03T19:00 has passed"):
        wall_clock("2026-12-03T19:00", now)
    with pytest.raises(argparse.ArgumentTypeError, match="'7pm': expected HH:MM or YYYY-MM-DDTHH:MM"):
        wall_clock("7pm", now)


def test_a_record_writes_an_until_date_as_its_clock_time_so_its_command_runs_again():
    """A date and time once past is an error for --until (a chained command that starts late trains nothing), so
    a record whose command kept it could never be run again: the record writes its clock time instead."""
    from metazoo.cli import parser
    from metazoo.reproduce import command_line

    argv = ["reproduce", "maml/omniglot/5w1s", "--until", "2020-01-06T20:48", "-o", "runs/r", "-q"]
    assert command_line(argv) == "metazoo reproduce maml/omniglot/5w1s --until 20:48 -o runs/r -q"
    assert command_line(["reproduce", "maml", "--until=2020-01-06T20:48"]) == "metazoo reproduce maml --until=20:48"
    assert command_line(["reproduce", "maml", "--until", "03:37"]) == "metazoo reproduce maml --until 03:37"
    assert command_line(["reproduce", "maml", "--budget", "5"]) == "metazoo reproduce maml --budget 5"
    with pytest.raises(SystemExit):
        parser().parse_args(argv)  # the date has passed: the command as typed cannot run again
    args = parser().parse_args(shlex.split(command_line(argv))[1:])
    assert f"{datetime.datetime.fromtimestamp(args.until):%H:%M}" == "20:48"  # its next occurrence


def test_until_says_the_date_and_time_it_means_before_training(tmp_path, capsys):
    from metazoo.cli import main, until_text, wall_clock

    now = datetime.datetime(2026, 12, 3, 19, 20)
    assert until_text(wall_clock("07:00", now), now) == "2026-12-04 07:00 local time, in 11 h 40 min"
    assert until_text(wall_clock("19:30", now), now) == "2026-12-03 19:30 local time, in 10 min"
    main(["reproduce", "protonet/omniglot/5w1s", "--until", "23:59", "--dry-run", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("--until: training stops at ") and " local time, in " in out.splitlines()[0]


def test_a_killed_reproduce_resumes_where_it_stopped(tmp_path, data_root):
    chosen = tiny_cells(tmp_path, steps=60, val_every=3)
    run_dir = plan(chosen, tmp_path / "out")[0].run_dir
    code = ("import sys; from metazoo.published import cells; from metazoo.reproduce import reproduce; "
            "from tests.test_reproduce import tiny_cells; from pathlib import Path; "
            f"reproduce(tiny_cells(Path({str(tmp_path)!r}), 60, 3), Path({str(tmp_path / 'out')!r}), "
            f"data_root={str(data_root)!r}, progress=False)")
    threads = str(torch.get_num_threads())  # the same as this process's, which trains the straight run
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": threads})
    deadline = time.time() + 120
    while not (run_dir / "last.pt").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stopped_at = torch.load(run_dir / "last.pt", weights_only=True)["step"]
    assert 3 <= stopped_at < 60, "the kill came too late to test a resume"
    records = reproduce(chosen, tmp_path / "out", data_root=str(data_root), progress=False)
    assert [r["steps"] for r in records] == [60, 60]
    assert re.search(re.escape(f"{run_dir} (finished at step 60 after ") + r"[\dh mins]+ of training, best validation ",
                     describe(plan(chosen, tmp_path / "out"), None))
    straight = reproduce(chosen, tmp_path / "straight", data_root=str(data_root), progress=False)
    assert [r["ours"] for r in straight] == [r["ours"] for r in records]  # resumed = never interrupted


def test_a_zoo_entry_holds_weights_only_and_reloads_by_name(tmp_path, data_root, monkeypatch):
    chosen = tiny_cells(tmp_path)
    out = tmp_path / "out"
    reproduce(chosen, out, data_root=str(data_root), progress=False)
    # a record of the run's checkpoint at an earlier step, as a stopped and resumed run leaves in its records:
    # other weights than the entry's, so not one of its records
    earlier = json.loads((out / RECORDS).read_text().splitlines()[0])
    earlier = {**earlier, "steps": 1, "protocol": {**earlier["protocol"], "step": 1}, "stopped": "budget"}
    (out / RECORDS).write_text(json.dumps(earlier) + "\n" + (out / RECORDS).read_text())
    entry = to_zoo(plan(chosen, out)[0], tmp_path / "experiments" / "zoo", out, str(data_root))
    assert entry == tmp_path / "experiments" / "zoo" / "omniglot" / "protonet_5w1s"
    state = torch.load(entry / "best.pt", weights_only=True)
    assert set(state) == {"learner", "step", "best"}  # no optimiser state
    assert state["step"] != 1 and [json.loads(line)["protocol"]["step"]
                                   for line in (entry / RECORDS).read_text().splitlines()] == [state["step"]] * 2
    assert (entry / "best.pt").stat().st_size < 1_000_000
    assert "root" not in (entry / "config.toml").read_text().split("[data]")[1].split("[")[0]
    assert [json.loads(line)["checkpoint"] for line in (entry / RECORDS).read_text().splitlines()] == \
        ["zoo:omniglot/protonet_5w1s"] * 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METAZOO_DATA", str(data_root))
    run = load_run("zoo:omniglot/protonet_5w1s")
    for key, value in run.objective.state_dict().items():
        assert torch.equal(value, state["learner"][key])
    check = json.loads((entry / CHECK).read_text())
    again = evaluate_run("zoo:omniglot/protonet_5w1s", overrides=check["overrides"], write=False)
    assert (f"{100 * again.mean:.2f}", f"{100 * again.ci95:.2f}") == (f"{check['mean']:.2f}", f"{check['ci95']:.2f}")
    from metazoo.cli import main

    before = sorted(p.name for p in entry.iterdir())
    main(["eval", "zoo:omniglot/protonet_5w1s", "--out", "kept", "-q", *(f"--set={o}" for o in check["overrides"])])
    kept = json.loads((tmp_path / "kept" / "result.json").read_text())
    assert (kept["mean"], kept["ci95"]) == (again.mean, again.ci95)
    assert kept["protocol"]["run"] == "zoo:omniglot/protonet_5w1s" and "run" not in again.protocol
    assert len((tmp_path / "kept" / "results.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in entry.iterdir()) == before  # the entry itself is never written
    with pytest.raises(FileNotFoundError, match="no model-zoo entry 'zoo:omniglot/nothing'; the zoo holds: .*"
                                                "zoo:omniglot/protonet_5w1s"):
        load_run("zoo:omniglot/nothing")


def test_weights_packed_to_int8_are_within_half_a_scale_a_row_and_float16_is_a_cast():
    weights = {"conv.weight": torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [2.54, 1.3, -0.013]]),
               "bn.running_var": torch.tensor([0.3, 7.0, 1e-4]), "bn.num_batches_tracked": torch.tensor(12)}
    packed = pack_weights(weights, "int8")
    q, scale = packed["conv.weight"]["int8"], packed["conv.weight"]["scale"]
    expected = torch.tensor([[127, -64, 32], [0, 0, 0], [127, 65, -1]], dtype=torch.int8)  # -0.5 / (1/127): -64
    assert q.dtype == torch.int8 and torch.equal(q, expected)
    assert torch.allclose(scale, torch.tensor([1 / 127, 1.0, 2.54 / 127]))  # a row of zeros: scale 1
    back = unpack_weights(packed)
    expected = torch.tensor([[1.0, -64 / 127, 32 / 127], [0.0, 0.0, 0.0], [2.54, 1.3, -0.02]])
    assert torch.allclose(back["conv.weight"], expected)
    assert torch.equal(back["bn.running_var"], weights["bn.running_var"])  # vectors kept in float32
    assert torch.equal(back["bn.num_batches_tracked"], weights["bn.num_batches_tracked"])
    kernel = torch.randn(16, 8, 3, 3)
    back = unpack_weights(pack_weights({"k": kernel}, "int8"))["k"]
    half_scale = kernel.reshape(16, -1).abs().amax(1) / 127 / 2
    assert ((back - kernel).reshape(16, -1).abs() <= half_scale[:, None] + 1e-7).all()
    halved = unpack_weights(pack_weights({"k": kernel}, "float16"))["k"]
    assert halved.dtype == torch.float32 and torch.equal(halved, kernel.half().float())
    with pytest.raises(ValueError, match="unknown weight storage 'int4'; valid: float32, float16, int8"):
        pack_weights(weights, "int4")


def test_a_zoo_entry_over_the_size_limit_is_stored_smaller_and_its_records_tested_on_those_weights(
        tmp_path, data_root, monkeypatch, caplog):
    chosen = tiny_cells(tmp_path, width=32)
    out = tmp_path / "out"
    reproduce(chosen, out, data_root=str(data_root), progress=False)
    p = plan(chosen, out)[0]
    tested = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    weights = load_checkpoint(p.run_dir / "best.pt")["learner"]
    sizes = {}
    for storage in ("float32", "float16", "int8"):
        path = tmp_path / f"{storage}.pt"
        torch.save({"learner": pack_weights(weights, storage), "step": 0, "best": {}, "storage": storage}, path)
        sizes[storage] = path.stat().st_size
    assert sizes["float32"] > sizes["float16"] > sizes["int8"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METAZOO_DATA", str(data_root))
    for storage, limit in (("float16", (sizes["float32"] + sizes["float16"]) // 2),
                           ("int8", (sizes["float16"] + sizes["int8"]) // 2)):
        zoo = tmp_path / storage / "experiments" / "zoo"
        entry = to_zoo(p, zoo, out, str(data_root), limit=limit)
        state = torch.load(entry / "best.pt", weights_only=True)
        assert state["storage"] == storage and (entry / "best.pt").stat().st_size <= limit
        stored = unpack_weights(state["learner"])
        assert not all(torch.equal(stored[k], v) for k, v in weights.items())  # not the weights the run tested
        run = load_run(entry)
        for key, value in run.objective.state_dict().items():
            assert torch.equal(value, stored[key]), key
        records = [json.loads(line) for line in (entry / RECORDS).read_text().splitlines()]
        assert len(records) == len(tested) == 2
        for record, first in zip(records, tested):
            again = evaluate_run(entry, overrides=record["protocol"].get("overrides", []), write=False)
            assert record["ours"] == {"mean": 100 * again.mean, "ci95": 100 * again.ci95, "episodes": 4}
            assert record["weights"] == storage and record["checkpoint"] == "zoo:omniglot/protonet_5w1s"
            assert f"float32 weights gave {first['ours']['mean']:.2f} +- {first['ours']['ci95']:.2f}" in record["note"]
        monkeypatch.chdir(tmp_path / storage)
        line = next(line for line in zoo_lines() if line.startswith("zoo:omniglot/protonet_5w1s "))
        assert f"protonet/omniglot/20w1s {records[-1]['ours']['mean']:.2f} +- " in line
        assert line.endswith(f"(4 steps, {storage} weights)")
    # the same entry made again from the same stored weights keeps its records' tests on them: only the quick
    # check runs again
    calls = []
    monkeypatch.setattr("metazoo.reproduce.test_run", lambda *a, **k: calls.append(a) or evaluate_run(*a, **k))
    assert to_zoo(p, zoo, out, str(data_root), limit=limit) == entry
    assert [json.loads(line) for line in (entry / RECORDS).read_text().splitlines()] == records
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"its weights take \d+ bytes in float32, \d+ bytes in float16, \d+ bytes in "
                                         r"int8, over the model zoo's 1000 bytes a file: no zoo entry made"):
        to_zoo(p, tmp_path / "small", out, str(data_root), limit=1000)
    assert not (tmp_path / "small").exists()
    monkeypatch.setattr("metazoo.reproduce.ZOO_BYTES", 1000)  # reproduce --zoo: a warning, no error
    with caplog.at_level(logging.WARNING, logger="metazoo"):
        assert reproduce(chosen, out, data_root=str(data_root), zoo=tmp_path / "small", progress=False) == []
    assert "over the model zoo's 1000 bytes a file: no zoo entry made" in caplog.text
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("entry", sorted(p.parent.relative_to(REPO / "experiments" / "zoo").as_posix()
                                         for p in (REPO / "experiments" / "zoo").glob("*/*/config.toml")))
def test_a_committed_zoo_entry_re_tests_to_its_record(entry, data_root):
    """Every committed zoo entry: its first test episodes give its recorded check to the printed precision,
    and its records say which cells it reproduces, on the weights it stores (its checkpoint's step, and the
    storage where it is not float32)."""
    folder = REPO / "experiments" / "zoo" / entry
    check = json.loads((folder / CHECK).read_text())
    again = evaluate_run(f"zoo:{entry}", overrides=check["overrides"], data_root=data_root, write=False)
    assert (f"{100 * again.mean:.2f}", f"{100 * again.ci95:.2f}") == (f"{check['mean']:.2f}", f"{check['ci95']:.2f}")
    records = [json.loads(line) for line in (folder / RECORDS).read_text().splitlines()]
    assert records and all(r["checkpoint"] == f"zoo:{entry}" for r in records)
    state = torch.load(folder / "best.pt", weights_only=True)
    assert all(r["protocol"]["step"] == state["step"] and r.get("weights") == state.get("storage") for r in records)
    assert (folder / "best.pt").stat().st_size < 1_000_000


def test_the_zoo_holds_the_reproduced_protonet_cells():
    entries = {p.parent.name for p in (REPO / "experiments" / "zoo" / "omniglot").glob("*/config.toml")}
    assert {"protonet_5w1s", "protonet_5w5s"} <= entries


def test_a_dataset_option_at_its_default_trains_the_run_of_the_config_that_leaves_it_out():
    """A record's command pinned to a default that its config has since changed (here the MAML configs' move
    to MAML's own character split) still names the run it came from; another value names another run."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "omniglot" / "protonet_5w1s.toml"
    plain = load_config(path)
    assert "character_split" not in plain.data.options and "image_size" not in plain.data.options
    spelt = load_config(path, ["data.options.character_split=vinyals", "data.options.image_size=28"])
    assert training_key(spelt) == training_key(plain) == "34328bdb"
    assert training_key(load_config(path, ["data.options.character_split=random"])) != training_key(plain)
    maml = Path(__file__).resolve().parents[1] / "experiments" / "omniglot" / "maml_5w1s.toml"
    assert load_config(maml).data.options["character_split"] == "random"
    assert training_key(load_config(maml, ["data.options.character_split=vinyals"])) == "43b79234"  # the cell's runs


def test_bf16_makes_another_trained_model_and_off_keeps_the_run_names_of_before():
    config = load_config(Path(__file__).resolve().parents[1] / "experiments" / "omniglot" / "protonet_5w1s.toml")
    assert training_key(config) == "34328bdb"  # the key before train.amp existed: its runs are found again
    config.train.amp = "bf16"
    assert training_key(config) != "34328bdb"
    config.train.amp = "off"
    config.train.pin_cores = True  # where it runs: the same model
    assert training_key(config) == "34328bdb"


def test_the_record_commit_is_the_checkout_when_the_command_started(monkeypatch, tmp_path):
    """A reproduce command trains for hours while the checkout may move on: its records name the commit it
    started from (the code it loaded), read before any training."""
    from metazoo import reproduce as module

    module.git_commit.cache_clear()
    seen = []
    monkeypatch.setattr(module, "plan", lambda *args: seen.append(module.git_commit.cache_info().currsize) or [])
    assert reproduce([], tmp_path) == [] and seen == [1]
    before = module.git_commit()
    monkeypatch.setattr(module.subprocess, "run", lambda *args, **kwargs: pytest.fail("read the checkout again"))
    assert module.git_commit() == before
    module.git_commit.cache_clear()


def committed_reproduce_records() -> list[dict]:
    """The committed records that `metazoo reproduce` wrote into a keyed run directory (name-<training key>)."""
    found = []
    for path in sorted((REPO / "docs" / "results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if (record.get("command") or "").startswith("metazoo reproduce ") and \
                    re.search(r"-[0-9a-f]{8}$", record.get("run") or ""):
                found.append(record)
    return found


def test_every_committed_reproduce_command_still_trains_the_run_its_record_came_from():
    """A record's command is how a reader re-runs it: when a config changes after the record (its protocol, a
    backbone), the command must be pinned (--set) to what ran, or it silently trains something else. Parsed
    by the CLI's own parser and planned as `metazoo reproduce` plans it."""
    from metazoo.cli import parser

    records = committed_reproduce_records()
    assert len(records) > 40
    for record in records:
        args = parser().parse_args(shlex.split(record["command"])[1:])
        runs = [p.name for p in plan(cells(args.selection), Path(args.output), args.set)]
        assert Path(record["run"]).name in runs, (record["cell"], record["date"], record["command"], runs)


def test_a_changed_config_is_caught_by_the_record_commands_check(monkeypatch):
    """The check above fails when a config no longer resolves to the record's run (here: every config's
    train.steps changed under the records)."""
    from metazoo import reproduce as module

    load = module.load_config
    monkeypatch.setattr(module, "load_config", lambda path, overrides=(): load(path, [*overrides, "train.steps=7"]))
    with pytest.raises(AssertionError):
        test_every_committed_reproduce_command_still_trains_the_run_its_record_came_from()


def test_more_steps_continue_a_copy_of_the_shorter_run_and_equal_a_straight_run(tmp_path, data_root):
    """--set train.steps=N after a run finished: the longer run starts from a copy of the shorter one (not its
    tests), ends with the weights of a run trained to N straight away, and leaves the shorter run as it was."""
    chosen = tiny_cells(tmp_path)[:1]
    out = tmp_path / "out"
    reproduce(chosen, out, data_root=str(data_root), progress=False)  # 4 steps
    short = plan(chosen, out)[0].run_dir
    stamp = (short / "last.pt").stat().st_mtime_ns
    longer = plan(chosen, out, ["train.steps=6"])[0]
    assert longer.run_dir != short and describe([longer], None).count(f"to train from a copy of {short} (step 4)")
    records = reproduce(chosen, out, data_root=str(data_root), progress=False, overrides=["train.steps=6"])
    assert [r["steps"] for r in records] == [6] and (short / "last.pt").stat().st_mtime_ns == stamp
    rows = (longer.run_dir / "metrics.jsonl").read_text().splitlines()
    before = (short / "metrics.jsonl").read_text().splitlines()
    assert len(rows) > len(before) and rows[:len(before)] == before  # the copied history, its times and all
    assert [json.loads(r)["step"] for r in rows if json.loads(r)["split"] == "val"] == [2, 4, 6]
    straight = tmp_path / "straight"
    reproduce(chosen, straight, data_root=str(data_root), progress=False, overrides=["train.steps=6"])
    a = torch.load(longer.run_dir / "last.pt", weights_only=False)
    b = torch.load(plan(chosen, straight, ["train.steps=6"])[0].run_dir / "last.pt", weights_only=False)
    for name, value in a["learner"].items():
        torch.testing.assert_close(value, b["learner"][name], rtol=1e-5, atol=1e-6, msg=name)
    # a schedule that depends on the budget (linear, to 0 at train.steps) is never continued so
    linear = plan(chosen, out, ["train.steps=8", "optim.schedule=linear"])[0]
    assert shorter_run(linear) is None


SMALL = ["--set", "train.steps=2", "--set", "train.val_every=1", "--set", "train.val_episodes=2", "--set",
         "eval.episodes=3", "--set", "backbone.width=8", "--set", "train.ways=5"]


def test_jobs_train_the_runs_side_by_side_each_a_process_with_its_share_of_the_cores(
        tmp_path, data_root, capsys, monkeypatch):
    from metazoo.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out, selection = tmp_path / "out", ["protonet/omniglot/5w1s", "protonet/omniglot/20w1s", "matching/omniglot/5w1s"]
    args = ["reproduce", *selection, "--jobs", "2", "-o", str(out), "--data-root", str(data_root), *SMALL]
    assert main(args) == 0  # two runs (ProtoNet's 1-shot model gives both its cells), at once
    assert f"2 runs, 2 at a time: 3 new records in {out / RECORDS}" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    assert sorted(r["cell"] for r in records) == sorted(selection)
    assert {r["threads"] for r in records} == {max(1, os.cpu_count() // 2)}  # the cores shared out
    protonet = [r for r in records if r["learner"] == "protonet"]
    assert {r["command"] for r in protonet} == {  # each record's command is its process's: it reruns the run
        "metazoo reproduce protonet/omniglot/5w1s protonet/omniglot/20w1s -o " + shlex.join(
            [str(out), "--data-root", str(data_root), *SMALL, "-q"])}
    runs = sorted(p.name for p in (out / "omniglot").iterdir())
    assert sorted(p.stem for p in (out / "logs").iterdir()) == runs and len(runs) == 2
    assert "protonet/omniglot/20w1s: " in (out / "logs" / f"{runs[1]}.log").read_text()
    stamps = [(out / "omniglot" / name / "last.pt").stat().st_mtime_ns for name in runs]
    assert main(args) == 0  # all done: nothing trained again
    assert "2 runs, 2 at a time: 0 new records" in capsys.readouterr().out
    assert [(out / "omniglot" / name / "last.pt").stat().st_mtime_ns for name in runs] == stamps
    # a process that fails is named with its log, and the call fails
    nowhere = ["reproduce", *selection[:1], "--jobs", "2", "-o", str(tmp_path / "bad"), "--data-root",
               str(tmp_path / "no-data"), *SMALL]
    assert main(nowhere) == 1
    (log,) = (tmp_path / "bad" / "logs").iterdir()
    assert f"metazoo: error: these runs failed: {log.stem} (exit 2; see {log})" in capsys.readouterr().err
    assert "Omniglot not found" in log.read_text()


def test_a_signal_to_a_jobs_call_stops_every_run_with_a_checkpoint_that_the_call_continues(
        tmp_path, data_root, capsys):
    from metazoo.cli import main

    out = tmp_path / "out"
    args = [sys.executable, "-m", "metazoo.cli", "reproduce", "protonet/omniglot/5w1s", "matching/omniglot/5w1s",
            "--jobs", "2", "-o", str(out), "--data-root", str(data_root), *SMALL, "--set", "train.steps=400",
            "--set", "train.val_every=3"]
    parent = subprocess.Popen(args, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    deadline = time.time() + 120
    while len(list(out.glob("omniglot/*/last.pt"))) < 2 and time.time() < deadline and parent.poll() is None:
        time.sleep(0.05)
    os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C: the parent's process group
    assert parent.wait(timeout=120) == 130
    assert "stopped by a signal: the running runs stopped with a checkpoint" in parent.stderr.read()
    for log in (out / "logs").iterdir():  # each run got the signal once, so it stopped at a step with a checkpoint
        assert "by a signal, with a checkpoint; continue with --resume" in log.read_text(), log.read_text()[-2000:]
    steps = [torch.load(p, weights_only=True)["step"] for p in sorted(out.glob("omniglot/*/last.pt"))]
    assert len(steps) == 2 and all(3 <= s < 400 for s in steps), steps
    assert not (out / RECORDS).exists()  # stopped, not tested
    assert main([*args[3:], "--dry-run"]) == 0  # the same command resumes both
    assert capsys.readouterr().out.count(": resumes): ") == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_jobs_call_killed_outright_still_stops_its_runs_with_a_checkpoint(tmp_path, data_root):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "metazoo.cli", "reproduce", "protonet/omniglot/5w1s", "matching/omniglot/5w1s",
            "--jobs", "2", "-o", str(out), "--data-root", str(data_root), *SMALL, "--set", "train.steps=100000",
            "--set", "train.val_every=3"]
    parent = subprocess.Popen(args, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 120
    while len(list(out.glob("omniglot/*/last.pt"))) < 2 and time.time() < deadline and parent.poll() is None:
        time.sleep(0.05)
    runs = sorted(path.parent for path in out.glob("omniglot/*/last.pt"))
    trainers = [RunLock.holder(run) for run in runs]
    assert len(runs) == 2 and None not in trainers
    parent.kill()  # SIGKILL: nothing is passed on by the call itself
    parent.wait()
    while any(RunLock.holder(run) for run in runs) and time.time() < deadline:
        time.sleep(0.05)
    left = [pid for pid in map(RunLock.holder, runs) if pid is not None]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a run trains on after its call was killed"
    for log in (out / "logs").iterdir():
        assert "by a signal, with a checkpoint; continue with --resume" in log.read_text(), log.read_text()[-2000:]
    steps = [torch.load(run / "last.pt", weights_only=True)["step"] for run in runs]
    assert all(3 <= s < 100000 for s in steps), steps


def test_jobs_pass_every_option_on_to_their_processes(tmp_path, monkeypatch, capsys):
    import datetime

    import metazoo.reproduce as module
    from metazoo.cli import main

    seen = {}
    monkeypatch.setattr(module, "run_jobs", lambda plans, out, flags, jobs, until: seen.update(
        runs=[p.name for p in plans], flags=flags, jobs=jobs, until=until) or [])
    assert main(["reproduce", "protonet/omniglot/5w1s", "matching/omniglot/5w1s", "--jobs", "3", "-o", str(tmp_path),
                 "--budget", "2.5", "--until", "23:59", "--device", "cpu", "--zoo", "Z", "--data-root", "D",
                 "--plugin", "tests.plugin_learner", "--set", "train.steps=7"]) == 0
    until = datetime.datetime.fromtimestamp(seen["until"]).isoformat(timespec="seconds")
    assert until.endswith("T23:59:00") and seen["jobs"] == 3 and len(seen["runs"]) == 2
    assert seen["flags"] == ["--budget", "2.5", "--until", until, "--device", "cpu", "--zoo", "Z", "--data-root", "D",
                             "--plugin", "tests.plugin_learner", "--set", "train.steps=7", "-q"]
    assert "2 runs, 3 at a time: 0 new records" in capsys.readouterr().out
