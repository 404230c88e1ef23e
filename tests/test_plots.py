import builtins
import importlib.util
import json
import math
from pathlib import Path

import pytest

from metazoo import plots
from metazoo.plots import plot_command, plot_report, plot_runs, read_curves, cell_records, wall_seconds

REPO = Path(__file__).resolve().parents[1]
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason='needs the plots extra: pip install "metazoo[plots]"')


def hide_modules(monkeypatch, *names: str) -> None:
    """Make ``import`` of ``names`` (and their submodules) fail, as if they were not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if any(name == n or name.startswith(n + ".") for n in names):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def fake_run(path: Path, sessions: list[list[tuple[int, float]]], learner: str = "protonet") -> Path:
    """A run directory whose metrics hold, per training session, a train and a val row at each
    (step, seconds since the session started)."""
    path.mkdir()
    (path / "config.toml").write_text(f'[learner]\nname = "{learner}"\n\n[data]\ndataset = "omniglot"\n')
    rows = []
    for session in sessions:
        for step, seconds in session:
            rows.append({"step": step, "split": "train", "loss": 1.0, "accuracy": 0.5, "lr": 1e-3,
                         "seconds": seconds - 1})
            rows.append({"step": step, "split": "val", "loss": 0.5, "accuracy": step / 1000, "ci95": 0.01,
                         "seconds": seconds})
    write_jsonl(path / "metrics.jsonl", rows)
    return path


@pytest.fixture
def runs(tmp_path):
    plain = fake_run(tmp_path / "plain", [[(100, 60.0), (200, 120.0), (300, 180.0)]])
    resumed = fake_run(tmp_path / "resumed", [[(100, 30.0), (200, 90.0)], [(300, 20.0), (400, 80.0)],
                                              [(500, 10.0)]], learner="maml")
    return [plain, resumed]


def record(learner, dataset, ways, shots, mean, paper, stopped=None) -> dict:
    return {"cell": f"{learner}/{dataset}/{ways}w{shots}s", "learner": learner, "dataset": dataset, "ways": ways,
            "shots": shots, "ours": {"mean": mean, "ci95": 0.3, "episodes": 1000},
            "paper": None if paper is None else {"value": paper, "source": "a paper"}, "protocol": {},
            "steps": 100, "stopped": stopped, "train_seconds": 10.0, "test_seconds": 1.0}


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "report"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [record("protonet", "omniglot", 5, 1, 97.0, 98.8),
                                     record("maml", "omniglot", 5, 1, 90.0, 98.7)])
    write_jsonl(folder / "b.jsonl", [record("protonet", "mini_imagenet", 5, 5, 66.0, 68.2, stopped="time"),
                                     record("maml", "mini_imagenet", 5, 1, 45.0, None),
                                     record("maml", "omniglot", 5, 1, 96.0, 98.7)])  # the later record wins
    return folder


def test_wall_time_adds_up_across_resumed_sessions():
    rows = [{"seconds": s} for s in (10, 20, 30, 5, 15, 4, 8)] + [{"step": 1}]  # three sessions, then no clock
    *seconds, missing = wall_seconds(rows)
    assert seconds == [10, 20, 30, 35, 45, 49, 53] and math.isnan(missing)


def test_validation_curves_from_run_directories(runs):
    plain, resumed = read_curves(runs)
    assert plain.label == "plain (protonet/omniglot)" and plain.steps == [100, 200, 300]
    assert plain.minutes == [1.0, 2.0, 3.0] and plain.accuracy == [10.0, 20.0, 30.0] and plain.ci95 == [1.0] * 3
    assert resumed.steps == [100, 200, 300, 400, 500]
    assert [round(60 * m, 6) for m in resumed.minutes] == [30, 90, 110, 170, 180]
    assert [c.label for c in read_curves(runs, labels=["a", "b"])] == ["a", "b"]
    with pytest.raises(ValueError, match="one label per run"):
        read_curves(runs, labels=["a"])


@needs_matplotlib
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plots_write_files(runs, records, tmp_path, suffix):
    for written in (plot_runs(runs, tmp_path / f"out/runs{suffix}"), plot_report([records], tmp_path / f"rep{suffix}")):
        assert written.suffix == suffix and written.stat().st_size > 1000
        content = written.read_bytes()
        assert content.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in content
    assert plot_command([str(r) for r in runs], str(tmp_path / f"cli{suffix}"), report=False).endswith(suffix)


@needs_matplotlib
def test_svg_is_the_same_when_redrawn(runs, tmp_path):
    first, second = plot_runs(runs, tmp_path / "a.svg"), plot_runs(runs, tmp_path / "b.svg")
    assert first.read_text() == second.read_text()


def test_records_from_folders_and_files(records, tmp_path):
    cells = {r["cell"]: r for r in cell_records([records])}
    assert len(cells) == 4 and cells["maml/omniglot/5w1s"]["ours"]["mean"] == 96.0
    write_jsonl(records / "records.jsonl", [record("protonet", "omniglot", 5, 1, 97.0, 98.8)])
    assert len(cell_records([records])) == 1  # records.jsonl, when there, is the folder's records
    assert len(cell_records([records / "a.jsonl"])) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metazoo reproduce"):
        cell_records([tmp_path / "empty"])


@needs_matplotlib
def test_errors_say_how_to_fix(runs, tmp_path):
    with pytest.raises(ValueError, match=r"\*\.png, \*\.svg or \*\.pdf"):
        plot_runs(runs, tmp_path / "runs.jpeg")
    with pytest.raises(FileNotFoundError, match="run directory"):
        plot_runs([tmp_path], tmp_path / "runs.png")


def test_missing_matplotlib_says_how_to_install(runs, tmp_path, monkeypatch):
    hide_modules(monkeypatch, "matplotlib")
    with pytest.raises(ImportError, match=r'pip install "metazoo\[plots\]"'):
        plot_runs(runs, tmp_path / "runs.png")
    with pytest.raises(ImportError, match=r'pip install "metazoo\[plots\]"'):
        plots.require_matplotlib()


@needs_matplotlib
def test_multitask_study_plot_uses_the_shared_figure(tmp_path):
    spec = importlib.util.spec_from_file_location("study", REPO / "experiments" / "multitask" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    tasks = {"independent": 0.9, "multi-head": 0.8}
    results = {name: {"tasks": {t: {"accuracy": acc + i / 100} for i, t in enumerate(("Latin", "Greek"))}}
               for name, acc in tasks.items()}
    assert study.plot(results, str(tmp_path / "study.svg")).stat().st_size > 1000


def test_tensorboard_writer_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metazoo.tensorboard import metrics_writer

    with metrics_writer(tmp_path) as write:
        write({"step": 10, "split": "train", "loss": 1.5, "accuracy": 0.25, "lr": 1e-3, "seconds": 2.0})
        write({"step": 10, "split": "val", "loss": 1.0, "accuracy": 0.5, "ci95": 0.01, "seconds": 3.0})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"train/loss", "train/lr", "val/accuracy", "val/ci95", "val/seconds"} <= set(events.Tags()["scalars"])
    (scalar,) = events.Scalars("val/accuracy")
    assert scalar.step == 10 and scalar.value == 0.5


def test_tensorboard_missing_says_how_to_install(tmp_path, monkeypatch):
    from metazoo.tensorboard import metrics_writer

    hide_modules(monkeypatch, "torch.utils.tensorboard", "tensorboard")
    with pytest.raises(ImportError, match=r'pip install "metazoo\[tensorboard\]"'):
        metrics_writer(tmp_path)
