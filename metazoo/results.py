"""Result records and the Markdown report beside the published numbers (torch-free).

A *record* is one test result of one trained model: a JSON object on one line of a JSON Lines file.
``metazoo reproduce`` appends one per tested cell to ``OUT/records.jsonl``; ``docs/results/*.jsonl``
hold the project's own. The schema (accuracies in percent)::

    {"cell": "protonet/omniglot/5w1s" | null,   # a published cell (metazoo.published), another id, or none
     "learner": "protonet", "dataset": "omniglot", "ways": 5, "shots": 1,
     "ours": {"mean": 98.19, "ci95": 0.19, "episodes": 1000},
     "paper": {"value": 98.8, "source": "Snell et al. 2017, Table 1"} | null,
     "protocol": {"dataset", "split", "ways", "shots", "queries", "episodes", "seed", "class_split", "bn",
                  "protocol", "checkpoint", "step", "train_split", "overrides", ...: the result's protocol,
                  "train": {"split", "ways", "shots", "queries", "meta_batch_size", "steps",
                            "translate", "rotate" (where not 0)}},
     "curve": [[mean, ci95], ...],       # online protocol only: by presentation, fractions as in result.json
     "steps": 4000, "planned_steps": 20000, "stopped": null | "budget",
     "train_seconds": 3660.0 | null, "test_seconds": 13.0, "device": "cpu",
     "machine": "AMD EPYC, x86_64, AVX2, oneDNN bfloat16 no" (the device's model, metazoo.build.device_name;
                absent before 2026-12-06), "amp": "off",
     "compile": false (train.compile; absent before 2026-12-06), "threads": 1,
     "version": "0.1.0", "commit": "abc1234", "command": "metazoo reproduce protonet/omniglot/5w1s --budget 40",
     "run": "runs/reproduce/omniglot/protonet_5w1s-ab12cd34",
     "checkpoint": "kept" | "gone" | "zoo:omniglot/protonet_5w1s",
     "weights": "float16" | "int8" (a zoo entry's record only, where its weights are stored so: ours tested on them),
     "date": "2026-12-02", "note": "free text"}

:func:`render_report` writes a table per dataset: the published cells in the published order, each
with its latest record (by date, then file order; the earlier ones in a note), ours minus the paper
and a verdict (``met`` when ours + CI reaches the paper's number, else the gap that is left), then
the other records; MANN's curve beside the paper's. :func:`render_template` fills a page's
``<!-- report: SELECTION -->`` markers (with the word ``grid``: :func:`render_grid`, the papers'
layout); ``python -m metazoo.results`` (and ``metazoo report``) run
:func:`report_main`.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import re
from pathlib import Path

from .published import CELLS, DATASETS, ORDER, cells

REQUIRED = ("learner", "dataset", "ways", "shots", "ours")
NAMES = {"omniglot": "Omniglot", "mini_imagenet": "mini-ImageNet", "caltech101": "Caltech-101"}
MARKER = re.compile(r"^<!-- report: (.*?) -->$", re.MULTILINE)  # a line of its own
HEADER = "| cell | ours | episodes | paper | ours - paper | verdict | steps | wall time | command |"
LEGEND = ("Ours: mean test accuracy and its 95% confidence interval in percent, over the fixed test episodes; "
          "verdict `met` when ours + CI reaches the paper's number, else `gap X` = paper - (ours + CI) "
          "(`gap < 0.01` where that rounds to 0.00); wall time: "
          "training and test. A cell shows its latest record (by date, then file order); the notes list the "
          "earlier ones.")


def read_records(paths: str | Path | list) -> list[dict]:
    """Records from files or folders (a folder: its ``records.jsonl``, else every ``*.jsonl`` in it, by
    name), in file order."""
    files = []
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if path.is_dir():
            found = [path / "records.jsonl"] if (path / "records.jsonl").exists() else sorted(path.glob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"no records.jsonl or *.jsonl in {path}: `metazoo reproduce` writes them")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} not found: give records files (JSON Lines) or folders holding them")
    records = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                records.append(_checked(json.loads(line), f"{f}:{n}"))
    return records


def _checked(record: dict, where: str) -> dict:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: not a result record, it lacks {', '.join(missing)} (schema: metazoo.results)")
    return record


def latest_first(records: list[dict]) -> list[dict]:
    """The records by date, newest first; among one date the last in file order first."""
    order = {id(r): i for i, r in enumerate(records)}
    return sorted(records, key=lambda r: (r.get("date") or "", order[id(r)]), reverse=True)


def rows(records: list[dict], every: bool = False) -> list[tuple[dict, list[dict]]]:
    """(record, earlier records of its cell) per row: published cells first in their order, then the
    rest in file order; a cell's latest record only, unless ``every``."""
    position = {id(r): i for i, r in enumerate(records)}
    groups: dict = {}
    for r in records:
        groups.setdefault(r.get("cell") or id(r), []).append(r)
    first = {key: min(position[id(r)] for r in rs) for key, rs in groups.items()}
    out = []
    for key in sorted(groups, key=lambda k: (ORDER.get(k, len(ORDER)), first[k])):
        newest = latest_first(groups[key])
        out += [(r, []) for r in reversed(newest)] if every else [(newest[0], newest[1:])]
    return out


def verdict(record: dict) -> tuple[str, str, str]:
    """The paper's number, ours minus it, and the verdict: ``met`` when ours + CI reaches it, else ``gap X``."""
    paper = (record.get("paper") or {}).get("value")
    if paper is None:
        return "", "", "no paper number"
    ours = record["ours"]
    reach = round(ours["mean"] + ours["ci95"] - paper, 6)
    if reach >= 0:
        return str(paper), f"{ours['mean'] - paper:+.2f}", "met"
    return str(paper), f"{ours['mean'] - paper:+.2f}", f"gap {-reach:.2f}" if -reach >= 0.005 else "gap < 0.01"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)  # rounded once, so that 3 h 59.9 min reads 4 h 00 min, not 3 h 60 min
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def wall_time(record: dict) -> str:
    train, test = record.get("train_seconds"), record.get("test_seconds")
    if train is None:
        return "" if test is None else f"{duration(test)} (test)"
    return duration(train + (test or 0))


def label(record: dict) -> str:
    """A row's name: its cell, else its run's folder name; with the test's overrides and a split other than test."""
    name = record.get("cell") or Path(record.get("run") or "").name or (
        f"{record['learner']}/{record['dataset']}/{record['ways']}w{record['shots']}s")
    protocol = record.get("protocol") or {}
    split = protocol.get("split", "test")
    extra = [*protocol.get("overrides", []), *([f"{split} split"] if split != "test" else [])]
    return name + (f" ({', '.join(extra)})" if extra else "")


def steps_text(record: dict, stop: bool = True) -> str:
    """``4000``, ``4000 of 20000`` when planned otherwise, and `` (budget stop)`` when stopped by the budget."""
    steps, planned = record.get("steps"), record.get("planned_steps")
    text = ("?" if steps is None else str(steps)) + (f" of {planned}" if planned not in (None, steps) else "")
    return text + (" (budget stop)" if stop and record.get("stopped") == "budget" else "")


def note(record: dict, earlier: list[dict]) -> str:
    parts = [record["note"]] if record.get("note") else []
    if record.get("checkpoint") == "gone":
        parts.append("Checkpoint gone")
    if earlier:
        parts.append("Earlier: " + "; ".join(f"{r['ours']['mean']:.2f} +- {r['ours']['ci95']:.2f} ("
                                             + ", ".join(_when(r)) + ")" for r in earlier))
    return ". ".join(p.rstrip(".") for p in parts) + ("." if parts else "")


def _when(record: dict) -> list[str]:
    return [record.get("date") or "undated", steps_text(record, stop=False) + " steps",
            *(["budget stop"] if record.get("stopped") == "budget" else [])]


def cell_text(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(records: list[dict], every: bool = False, expected: list = ()) -> str:
    """A table of ``records`` (see :func:`rows`), the papers cited, numbered notes, MANN's curves, and
    the ``expected`` cells that have no record."""
    lines, notes, sources = [HEADER, "|---" * 9 + "|"], {}, []
    for record, earlier in rows(records, every):
        text = note(record, earlier)
        mark = f" [{notes.setdefault(text, len(notes) + 1)}]" if text else ""
        paper, difference, judged = verdict(record)
        ours = record["ours"]
        command = f"`{record['command']}`" if record.get("command") else ""
        lines.append("| " + " | ".join(cell_text(c) for c in (
            label(record) + mark, f"{ours['mean']:.2f} +- {ours['ci95']:.2f}", str(ours["episodes"]), paper,
            difference, judged, steps_text(record), wall_time(record), command)) + " |")
        source = (record.get("paper") or {}).get("source")
        if source and source not in sources:
            sources.append(source)
    lines = ["\n".join(lines)] if len(lines) > 2 else []
    if sources:
        lines.append("Papers: " + "; ".join(sources) + ".")
    if notes:
        lines.append("\n".join(f"- [{n}] {text}" for text, n in notes.items()))
    curves = [r for r, _ in rows(records, every) if r.get("curve")]
    if curves:
        lines.append(render_curves(curves))
    recorded = {r.get("cell") for r in records}
    missing = [c.id for c in expected if c.id not in recorded]
    if missing:
        lines.append("Not run yet: " + ", ".join(missing) + ".")
    return "\n\n".join(lines)


def render_grid(records: list[dict], named: list) -> str:
    """The ``named`` published cells laid out as the papers lay them out: per dataset a row per learner and a
    column per setting (``5w1s``, ..., ``online``), each its latest record's ``ours +- CI / paper: verdict``
    (``not run`` without a record); then how many cells are run and how many are at the paper."""
    latest = {r["cell"]: r for r, _ in rows([r for r in records if r.get("cell")])}
    tables = []
    for dataset in dict.fromkeys(c.dataset for c in named):
        here = {(c.learner_id, c.id.split("/")[2]): c for c in named if c.dataset == dataset}
        settings = list(dict.fromkeys(setting for _, setting in here))
        lines = [f"| {NAMES.get(dataset, dataset)} | " + " | ".join(settings) + " |",
                 "|---" * (len(settings) + 1) + "|"]
        for learner in dict.fromkeys(learner for learner, _ in here):
            row = [grid_text(here.get((learner, setting)), latest) for setting in settings]
            lines.append(f"| {learner} | " + " | ".join(row) + " |")
        tables.append("\n".join(lines))
    run = [c for c in named if c.id in latest]
    met = [c for c in run if verdict(latest[c.id])[2] == "met"]
    judged = [c for c in named if c.value is not None]
    short = [c for c in run if (latest[c.id].get("steps") or 0) < cell_budget(c, latest[c.id])]
    return "\n\n".join(tables) + (
        f"\n\n{len(run)} of {len(named)} cells run; {len(met)} of the {len(judged)} with a paper number at it "
        f"(ours + CI reaches the paper's mean); {len(short)} trained for fewer steps than their config's budget. "
        "Each cell: ours +- CI / paper: verdict (its steps, of the config's where fewer), from its latest record.")


def grid_text(cell, latest: dict) -> str:
    if cell is None:
        return ""
    record = latest.get(cell.id)
    if record is None:
        return "not run" + (f" / {cell.value}" if cell.value is not None else "")
    paper, _, judged = verdict(record)
    ours = record["ours"]
    text = f"{ours['mean']:.2f} +- {ours['ci95']:.2f}" + (f" / {paper}: {judged}" if paper else "")
    if record.get("steps") is not None:  # how far the run got: most first runs stopped far short
        budget = cell_budget(cell, record)
        text += f" ({record['steps']}" + (f" of {budget}" if budget > record["steps"] else "") + " steps)"
    curve = record.get("curve") or []  # MANN: our 2nd and last presentations beside the paper's
    ends = [(n, value) for n, value in cell.curve if n in (2, len(curve)) and n <= len(curve)]
    if ends:
        text += "; " + ", ".join(f"{ordinal(n)} {100 * curve[n - 1][0]:.1f} / {value}" for n, value in ends)
    return text


def cell_budget(cell, record: dict) -> int:
    """A published cell's step budget: its config's ``train.steps`` (where the experiments/ folder is here),
    else what the record's run planned."""
    steps = config_steps(cell.config)
    return steps if steps is not None else record.get("planned_steps") or record["steps"]


@functools.lru_cache(maxsize=None)
def config_steps(config: str) -> int | None:
    from .config import experiments_roots, load_config

    roots = experiments_roots()
    return load_config(roots[0] / config).train.steps if roots and (roots[0] / config).is_file() else None


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def render_curves(records: list[dict]) -> str:
    """Accuracy by presentation of a class (online protocol), ours (+- CI) beside the paper's."""
    papers = {r["cell"]: dict(CELLS[r["cell"]].curve) for r in records if r.get("cell") in CELLS}
    length = max([len(r["curve"]) for r in records] + [max(p, default=0) for p in papers.values()])
    lines = ["| presentation | " + " | ".join(ordinal(n) for n in range(1, length + 1)) + " |",
             "|---" * (length + 1) + "|"]
    for r, _ in rows(records, every=True):
        values = [f"{100 * m:.1f} +- {100 * c:.1f}" for m, c in r["curve"]]
        lines.append(f"| {label(r)} | " + " | ".join(values + [""] * (length - len(values))) + " |")
        if r.get("cell") in papers:
            paper = papers.pop(r["cell"])
            lines.append(f"| paper ({CELLS[r['cell']].source}) | "
                         + " | ".join(str(paper[n]) if n in paper else "" for n in range(1, length + 1)) + " |")
    return "\n".join(lines)


def select(records: list[dict], selection: str) -> tuple[list[dict], bool, list]:
    """The records a selection names, whether it asks for every record, and the published cells it
    names. Words: ``all`` (every record a row, not only a cell's latest); cells as
    :func:`metazoo.published.cells` takes them (``omniglot``, ``protonet``, ids); ``key=pattern``
    (dotted keys such as ``protocol.class_split``, shell-style patterns, ``null`` for none; the same
    key twice: either value)."""
    words = selection.split()
    every = "all" in words
    words = [w for w in words if w != "all"]
    filters: dict[str, list[str]] = {}
    for key, _, pattern in (w.partition("=") for w in words if "=" in w):
        filters.setdefault(key, []).append(pattern)
    named = cells([w for w in words if "=" not in w]) if any("=" not in w for w in words) else []
    ids = {c.id for c in named}
    chosen = [r for r in records if (not named or r.get("cell") in ids)
              and all(any(fnmatch.fnmatchcase(_value(r, key), p) for p in ps) for key, ps in filters.items())]
    return chosen, every, named


def _value(record: dict, key: str) -> str:
    value = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) else json.dumps(value)


def render_report(records: list[dict], every: bool = False) -> str:
    """A section per dataset (the published ones first): its published cells, then its other records."""
    datasets = [d for d in dict.fromkeys([*DATASETS, *(r["dataset"] for r in records)])
                if any(r["dataset"] == d for r in records)]
    parts = ["# Results", LEGEND]
    for dataset in datasets:
        mine = [r for r in records if r["dataset"] == dataset]
        paper = [r for r in mine if r.get("cell") in CELLS]
        other = [r for r in mine if r.get("cell") not in CELLS]
        parts += [f"## {NAMES.get(dataset, dataset)}"]
        if dataset in DATASETS:
            parts.append(render_table(paper, every, cells(dataset)))
            parts += [f"### {NAMES.get(dataset, dataset)}: other results"] if other else []
        parts += [render_table(other, every)] if other else []
    return "\n\n".join(parts) + "\n"


def render_template(template: str, records: list[dict]) -> str:
    """The page ``template`` with each ``<!-- report: SELECTION -->`` line replaced by the table of the
    records it selects (:func:`select`), and ``<!-- report: legend -->`` by how to read them."""
    def table(match: re.Match) -> str:
        if match.group(1).strip() == "legend":
            return LEGEND
        words = match.group(1).split()
        try:
            chosen, every, named = select(records, " ".join(w for w in words if w != "grid"))
        except ValueError as err:
            raise ValueError(f"marker {match.group(0)}: {err}") from None
        if not chosen and not named:
            raise ValueError(f"marker {match.group(0)} selects no records")
        if "grid" in words:
            if not named:
                raise ValueError(f"marker {match.group(0)}: a grid lays out published cells: name them")
            return render_grid(chosen, named)
        return render_table(chosen, every, named)
    return MARKER.sub(table, template)


def report_main(paths, out: str | Path | None = None, template: str | Path | None = None,
                every: bool = False) -> str:
    """``metazoo report PATH... [--template PAGE] [--out FILE] [--all]``: the records of ``paths`` as
    Markdown (into ``template``'s markers when given); written to ``out`` when given; returns it."""
    records = read_records(paths)
    text = render_template(Path(template).read_text(), records) if template else render_report(records, every)
    if out is not None:
        Path(out).write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metazoo.results", description=report_main.__doc__)
    parser.add_argument("paths", nargs="+", help="records files, or folders holding records.jsonl or *.jsonl")
    parser.add_argument("--template", help="a Markdown page with <!-- report: SELECTION --> markers to fill")
    parser.add_argument("--out", help="write here instead of printing")
    parser.add_argument("--all", action="store_true", help="every record a row, not only each cell's latest")
    args = parser.parse_args(argv)
    text = report_main(args.paths, args.out, args.template, args.all)
    print(text if args.out is None else f"wrote {args.out}")


if __name__ == "__main__":
    main()
