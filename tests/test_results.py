"""The published cells (metazoo.published), result records and their report (metazoo.results), and
docs/results.md, which is rendered from the records in docs/results/."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from metazoo.config import load_config
from metazoo.published import CELLS, cells
from metazoo.results import duration, read_records, render_report, render_template, report_main, verdict

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "records_sample.jsonl"
PAPER_LEARNERS = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "matching", "relation", "snail")


def test_every_learner_has_the_papers_cells():
    omniglot = [c for c in CELLS.values() if c.dataset == "omniglot" and c.learner_id in PAPER_LEARNERS]
    assert len(omniglot) == 36
    assert len([c for c in CELLS.values() if c.dataset == "mini_imagenet"]) == 22  # 9 learners and Chen's two
    assert CELLS["anil/omniglot/5w1s"].value is None and CELLS["anil/omniglot/20w1s"].value == 96.2
    assert CELLS["fomaml/omniglot/20w5s"].learner == "maml" and dict(CELLS["fomaml/omniglot/20w5s"].settings) == {
        "first_order": True}
    assert CELLS["baselinepp/mini_imagenet/5w1s"].value == 48.24
    assert CELLS["protonet/omniglot/5w1s"].source == "Snell et al. 2017, Table 1"
    assert [CELLS[f"protonet/mini_imagenet/{k}"].train_ways for k in ("5w1s", "5w5s")] == [30, 20]
    assert dict(CELLS["mann/omniglot/online"].curve) == {1: 36.4, 2: 82.8, 3: 91.0, 4: 92.6, 5: 94.9, 10: 98.1}


# a published cell's BatchNorm (metazoo.published) -> the learner.bn settings that test that way
PAPER_BN = {"transductive": {"transductive"}, "non-transductive": {"query_with_support"}, "running": {"running"}}


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=list(CELLS))
def test_every_cell_names_a_config_that_reproduces_it(cell):
    path = REPO / cell.config_path
    assert path.exists(), f"{cell.id}: no config {path}"
    config = load_config(path)
    assert config.data.dataset == cell.dataset
    assert (config.eval.ways, config.eval.shots) == (cell.ways, cell.shots)
    assert config.eval.protocol == cell.protocol
    assert config.learner["name"] == cell.learner
    for key, value in cell.settings:
        assert config.learner.get(key) == value, f"{cell.id}: learner.{key}"
    if cell.bn is not None:  # the config tests as the paper's numbers were tested
        from metazoo.registry import LEARNERS, accepted_kwargs

        bn = config.learner.get("bn", accepted_kwargs(LEARNERS.get_factory(cell.learner)).get("bn"))
        assert bn in PAPER_BN[cell.bn], f"{cell.id}: learner.bn = {bn!r} for the paper's {cell.bn} numbers"


def test_cells_selects_datasets_learners_and_ids_in_the_published_order():
    assert [c.id for c in cells("protonet")] == [
        *(f"protonet/omniglot/{k}" for k in ("5w1s", "5w5s", "20w1s", "20w5s")),
        "protonet/mini_imagenet/5w1s", "protonet/mini_imagenet/5w5s"]
    assert [c.id for c in cells(["snail/omniglot/5w1s", "maml/omniglot/5w1s", "maml/omniglot/5w1s"])] == [
        "maml/omniglot/5w1s", "snail/omniglot/5w1s"]
    assert {c.dataset for c in cells("mini_imagenet")} == {"mini_imagenet"}
    assert len(cells("omniglot maml")) == 37 + 2 and len(cells()) == len(CELLS)
    with pytest.raises(ValueError, match=r"unknown cell selection 'protonets'; valid: all, a dataset \(omniglot, "
                                         r"mini_imagenet\), a learner \(maml, fomaml"):
        cells("protonets")


def test_published_and_results_import_without_torch():
    code = "import sys, metazoo.published, metazoo.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_verdict_arithmetic():
    def record(mean, ci95, paper):
        return {"ours": {"mean": mean, "ci95": ci95}, "paper": None if paper is None else {"value": paper}}

    assert verdict(record(98.61, 0.19, 98.8)) == ("98.8", "-0.19", "met")  # ours + CI reaches it exactly
    assert verdict(record(98.19, 0.19, 98.8)) == ("98.8", "-0.61", "gap 0.42")
    assert verdict(record(98.632, 0.1636, 98.8)) == ("98.8", "-0.17", "gap < 0.01")  # short, though it rounds to 0.00
    assert verdict(record(98.63, 0.165, 98.8)) == ("98.8", "-0.17", "gap 0.01")
    assert verdict(record(68.5, 0.7, 68.2)) == ("68.2", "+0.30", "met")
    assert verdict(record(35.05, 0.87, None)) == ("", "", "no paper number")


def not_run(dataset: str, done: set) -> str:
    return "Not run yet: " + ", ".join(c.id for c in cells(dataset) if c.id not in done) + "."


EXPECTED = (
    "# Results\n"
    "\n"
    "Ours: mean test accuracy and its 95% confidence interval in percent, over the fixed test episodes;"
    " verdict `met` when ours + CI reaches the paper's number, else `gap X` = paper - (ours + CI)"
    " (`gap < 0.01` where that rounds to 0.00); wall"
    " time: training and test. A cell shows its latest record (by date, then file order); the notes list"
    " the earlier ones.\n"
    "\n"
    "## Omniglot\n"
    "\n"
    "| cell | ours | episodes | paper | ours - paper | verdict | steps | wall time | command |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
    "| maml/omniglot/5w1s [1] | 96.13 +- 0.26 | 1000 | 98.7 | -2.57 | gap 2.31 | 4000 of 60000 (budget"
    " stop) | 40 min | `metazoo reproduce maml/omniglot/5w1s --budget 40` |\n"
    "| anil/omniglot/5w1s | 97.02 +- 0.31 | 1000 |  |  | no paper number | 20000 | 13 s (test) |"
    " `metazoo eval runs/anil_5w1s \\| tee anil.log` |\n"
    "| protonet/omniglot/5w1s [2] | 98.61 +- 0.19 | 1000 | 98.8 | -0.19 | met | 20000 | 1 h 00 min |"
    " `metazoo reproduce omniglot` |\n"
    "| mann/omniglot/online | 30.33 +- 0.28 | 1000 |  |  | no paper number | 1000 | 19 min | `metazoo"
    " train experiments/omniglot/mann_online.toml -o runs/mann_online -q` |\n"
    "\n"
    "Papers: Finn et al. 2017, Table 1; Snell et al. 2017, Table 1.\n"
    "\n"
    "- [1] Checkpoint gone.\n"
    "- [2] Earlier: 97.50 +- 0.30 (2026-11-30, 2000 of 20000 steps, budget stop).\n"
    "\n"
    "| presentation | 1st | 2nd | 3rd | 4th | 5th | 6th | 7th | 8th | 9th | 10th |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
    "| mann/omniglot/online | 45.1 +- 1.1 | 31.5 +- 0.9 | 28.8 +- 0.8 |  |  |  |  |  |  |  |\n"
    "| paper (Santoro et al. 2016, Table 1) | 36.4 | 82.8 | 91.0 | 92.6 | 94.9 |  |  |  |  | 98.1 |\n"
    "\n"
    "{omniglot_not_run}\n"
    "\n"
    "## mini-ImageNet\n"
    "\n"
    "| cell | ours | episodes | paper | ours - paper | verdict | steps | wall time | command |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
    "| protonet/mini_imagenet/5w5s | 68.50 +- 0.70 | 600 | 68.2 | +0.30 | met | 20000 | 25 h 02 min |"
    " `metazoo reproduce mini_imagenet` |\n"
    "\n"
    "Papers: Snell et al. 2017, Table 2.\n"
    "\n"
    "{mini_imagenet_not_run}\n"
    "\n"
    "## Caltech-101\n"
    "\n"
    "| cell | ours | episodes | paper | ours - paper | verdict | steps | wall time | command |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
    "| baseline_caltech (learner.lr=0.001, val split) [1] | 52.96 +- 2.20 | 100 |  |  | no paper number"
    " | 1000 | 80 s (test) | `metazoo eval runs/baseline_caltech --split val --episodes 100 --set"
    " learner.lr=0.001 -q` |\n"
    "\n"
    "- [1] The head learning rate sweep. Checkpoint gone.\n"
)


def test_report_of_the_sample_records():
    """The latest record of a cell wins (by date: the older one comes later in the file); met / gap
    arithmetic; no paper number; a budget stop; a gone checkpoint; a note; a curve; a pipe escaped."""
    done = {"maml/omniglot/5w1s", "anil/omniglot/5w1s", "protonet/omniglot/5w1s", "mann/omniglot/online"}
    expected = EXPECTED.replace("{omniglot_not_run}", not_run("omniglot", done)).replace(
        "{mini_imagenet_not_run}", not_run("mini_imagenet", {"protonet/mini_imagenet/5w5s"}))
    assert render_report(read_records(SAMPLE)) == expected
    assert report_main([SAMPLE]) == expected


def test_every_record_a_row_with_all():
    text = render_report(read_records(SAMPLE), every=True)
    assert "| protonet/omniglot/5w1s [2] | 97.50 +- 0.30 | 1000 | 98.8 | -1.30 | gap 1.00 | 2000 of 20000 (budget " \
           "stop) | 1 h 00 min |" in text
    assert "- [2] a first try | with a pipe.\n" in text  # its own note, no earlier records
    assert text.index("97.50 +- 0.30") < text.index("98.61 +- 0.19")  # oldest first


def test_template_markers_select_cells_filters_and_every_record(tmp_path):
    records = read_records(SAMPLE)
    page = ("Top.\n\n<!-- report: protonet all -->\n\nMiddle.\n\n<!-- report: dataset=caltech101 -->\n\n"
            "<!-- report: cell=null learner=protonet learner=baseline -->\nEnd.\n")
    text = render_template(page, records)
    assert text.startswith("Top.\n\n| cell |") and text.endswith("Checkpoint gone.\nEnd.\n")
    assert text.count("98.61 +- 0.19") == 1 and text.count("97.50 +- 0.30") == 1
    assert text.count("52.96 +- 2.20") == 2 and "Not run yet: protonet/omniglot/5w5s" in text
    with pytest.raises(ValueError, match="marker <!-- report: dataset=cub --> selects no records"):
        render_template("<!-- report: dataset=cub -->", records)
    with pytest.raises(ValueError, match="unknown cell selection 'protonets'"):
        render_template("<!-- report: protonets -->", records)


def test_a_grid_lays_out_the_papers_cells_with_each_latest_record():
    """The papers' layout: a row per learner, a column per setting, per dataset; the latest record of a cell
    (protonet 5w1s: 98.61 + 0.19 reaches 98.8 exactly), the cells without one, MANN's presentations."""
    text = render_template("<!-- report: protonet mann grid -->", read_records(SAMPLE))
    assert text.split("\n\n") == [
        "| Omniglot | 5w1s | 5w5s | 20w1s | 20w5s | online |\n|---|---|---|---|---|---|\n"
        "| protonet | 98.61 +- 0.19 / 98.8: met (20000 steps) | not run / 99.7 | not run / 96.0 | not run / 98.9 |  |\n"
        "| mann |  |  |  |  | 30.33 +- 0.28 (1000 of 60000 steps); 2nd 31.5 / 82.8, 3rd 28.8 / 91.0 |",
        "| mini-ImageNet | 5w1s | 5w5s |\n|---|---|---|\n"
        "| protonet | not run / 49.42 | 68.50 +- 0.70 / 68.2: met (20000 steps) |",
        "3 of 7 cells run; 2 of the 6 with a paper number at it (ours + CI reaches the paper's mean); 1 trained for "
        "fewer steps than their config's budget. Each cell: ours +- CI / paper: verdict (its steps, of the config's "
        "where fewer), from its latest record."]
    short = [dict(r, curve=r["curve"][:1]) if r.get("curve") else r for r in read_records(SAMPLE)]
    assert "| mann | 30.33 +- 0.28 (1000 of 60000 steps); 1st 45.1 / 36.4 |" in render_template(
        "<!-- report: mann grid -->", short)
    # a run short of its config's train.steps says how far it got, and the count says how many are
    maml = render_template("<!-- report: maml/omniglot/5w1s grid -->", read_records(SAMPLE))
    assert "| maml | 96.13 +- 0.26 / 98.7: gap 2.31 (4000 of 60000 steps) |" in maml
    assert "1 of 1 cells run; 0 of the 1 with a paper number at it (ours + CI reaches the paper's mean); 1 trained " \
           "for fewer steps than their config's budget." in maml
    with pytest.raises(ValueError, match="a grid lays out published cells: name them"):
        render_template("<!-- report: dataset=caltech101 grid -->", read_records(SAMPLE))


def test_records_are_read_from_folders_and_checked(tmp_path):
    (tmp_path / "a.jsonl").write_text(SAMPLE.read_text())
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps({"cell": None, "learner": "protonet"}) + "\n")
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not a result record, it lacks dataset, ways, shots, ours"):
        read_records(tmp_path)
    (tmp_path / "records.jsonl").write_text(SAMPLE.read_text())  # a folder's records.jsonl, when it has one
    assert len(read_records(tmp_path)) == 7
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no records.jsonl or"):
        read_records(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_records(tmp_path / "missing.jsonl")


def test_docs_results_md_is_rendered_from_the_records():
    command = "metazoo report docs/results --template docs/results/template.md --out docs/results.md"
    template = REPO / "docs" / "results" / "template.md"
    assert command in template.read_text()
    rendered = report_main([REPO / "docs" / "results"], template=template)
    assert (REPO / "docs" / "results.md").read_text() == rendered, f"docs/results.md is out of date: run {command}"


def test_the_module_command_renders_the_page(tmp_path):
    out = tmp_path / "results.md"
    subprocess.run([sys.executable, "-m", "metazoo.results", "docs/results", "--template", "docs/results/template.md",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    assert out.read_text() == (REPO / "docs" / "results.md").read_text()


def test_reproduced_records_name_their_zoo_entry():
    records = [r for r in read_records(REPO / "docs" / "results") if r["checkpoint"] != "gone"]
    assert {r["cell"] for r in records} >= {"protonet/omniglot/5w1s", "protonet/omniglot/20w1s",
                                            "protonet/omniglot/5w5s", "protonet/omniglot/20w5s"}
    for r in records:
        assert r["checkpoint"].startswith("zoo:") and (REPO / "experiments" / "zoo" / r["checkpoint"][4:]).is_dir()
        assert r["command"].startswith("metazoo reproduce ") and r["stopped"] in (None, "budget")


def test_migrated_records_are_complete_and_cite_the_published_numbers():
    everything = read_records(REPO / "docs" / "results")
    records = [r for r in everything if "Migrated from the hand-typed docs/results.md" in r["note"]]
    assert len(records) == 42
    # a record without weights is a migrated one, or says in its note why its weights were not kept
    assert all(r in records or "weights were not kept" in r["note"] for r in everything if r["checkpoint"] == "gone")
    for r in records:
        assert r["checkpoint"] == "gone"
        assert r["command"].startswith("metazoo ") and r["date"] and r["protocol"]["episodes"] == r["ours"]["episodes"]
        if r["cell"] in CELLS:
            cell = CELLS[r["cell"]]
            assert (r["learner"], r["dataset"], r["ways"], r["shots"]) == (cell.learner, cell.dataset, cell.ways,
                                                                           cell.shots)
            assert r["paper"] == (None if cell.value is None else {"value": cell.value, "source": cell.source})


@pytest.mark.parametrize("seconds, text", [(89, "89 s"), (90, "2 min"), (3569, "59 min"), (3570, "1 h 00 min"),
                                           (14350, "3 h 59 min"), (14392.7, "4 h 00 min")])
def test_a_wall_time_rounds_once_and_never_reads_60_minutes(seconds, text):
    assert duration(seconds) == text
