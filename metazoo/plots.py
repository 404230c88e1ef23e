"""Plots of runs and of reproduced results (needs the ``plots`` extra: ``pip install "metazoo[plots]"``).

    metazoo plot RUN... -o curves.png         validation accuracy against steps and wall time
    metazoo plot --report DIR -o report.svg   ours (95% CI) beside the paper, per cell, by dataset

The core never imports matplotlib: only the drawing functions do, through :func:`figure`, which
builds a ``Figure`` without pyplot: no backend switch (``matplotlib.use``), no window, no figures
kept alive; ``savefig`` renders it by the file's format, headless.
The output format follows the file name (``.png``, ``.svg`` or ``.pdf``); an SVG or PDF carries no
date, so a plot kept in the repository changes only when its data does.

Wall time: each row of ``metrics.jsonl`` counts ``seconds`` from the start of its training session,
and a resumed run starts the clock again. :func:`wall_seconds` reads the rows in file order and,
wherever ``seconds`` goes down (a new session), adds the previous session's last value to every
later row, so the time axis is the total training time across sessions (without the time spent
between sessions, or the work of an interrupted session after its last checkpoint).
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .run import CONFIG, METRICS

FORMATS = (".png", ".svg", ".pdf")
INSTALL = 'plots need matplotlib: pip install "metazoo[plots]" (or pip install matplotlib)'


@dataclass(frozen=True)
class Curve:
    """One run's validation rows: steps, accumulated wall time (minutes), accuracy and its 95% CI (%)."""
    label: str
    steps: list[int]
    minutes: list[float]
    accuracy: list[float]
    ci95: list[float]


def require_matplotlib() -> None:
    """Raise an ImportError that says how to install matplotlib when it is missing (call it before
    long work whose end is a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(INSTALL) from error


def figure(*, figsize: tuple[float, float]):
    """A matplotlib ``Figure`` made without pyplot (files only: no display, no global state)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def save(fig, out: str | Path) -> Path:
    """Write ``fig`` in the format its suffix names (parent folders made), without a date in SVG/PDF."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot tell the plot format from {out}: name it *.png, *.svg or *.pdf")
    import matplotlib

    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(out.suffix.lower())
    with matplotlib.rc_context({"svg.hashsalt": "metazoo"}):  # stable SVG ids across redraws
        fig.savefig(out, dpi=120, metadata=metadata)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wall_seconds(rows: list[dict]) -> list[float]:
    """Seconds since the start of training for each row (in file order), summed across sessions:
    where ``seconds`` decreases, a resumed session restarted the clock, and the previous session's
    last value is added from there on. Rows without ``seconds`` give NaN."""
    offset, last, out = 0.0, None, []
    for row in rows:
        seconds = row.get("seconds")
        if seconds is None:
            out.append(math.nan)
            continue
        if last is not None and seconds < last:
            offset += last
        last = seconds
        out.append(offset + seconds)
    return out


def validation_curve(rows: list[dict], label: str) -> Curve:
    """The ``split == "val"`` rows of a run's metrics as a :class:`Curve` (percentages, minutes)."""
    val = [(row, t) for row, t in zip(rows, wall_seconds(rows)) if row.get("split") == "val"]
    return Curve(label, [r["step"] for r, _ in val], [t / 60 for _, t in val],
                 [100 * r["accuracy"] for r, _ in val], [100 * r.get("ci95", math.nan) for r, _ in val])


def run_label(run_dir: Path) -> str:
    """A run's directory name with its learner and dataset from ``config.toml``, when recorded."""
    path = run_dir / CONFIG
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    what = "/".join(n for n in (config.get("learner", {}).get("name"), config.get("data", {}).get("dataset")) if n)
    return f"{run_dir.name} ({what})" if what else run_dir.name


def read_curves(run_dirs: list[str | Path], labels: list[str] | None = None) -> list[Curve]:
    """Each run directory's validation curve, labelled by ``labels`` or by :func:`run_label`."""
    dirs = [Path(d) for d in run_dirs]
    if labels is not None and len(labels) != len(dirs):
        raise ValueError(f"{len(labels)} labels for {len(dirs)} runs: give one label per run")
    curves = []
    for i, run_dir in enumerate(dirs):
        if not (run_dir / METRICS).exists():
            raise FileNotFoundError(f"{run_dir / METRICS} not found: is {run_dir} a metazoo run directory?")
        curve = validation_curve(read_jsonl(run_dir / METRICS), labels[i] if labels else run_label(run_dir))
        if not curve.steps:
            raise ValueError(f"{run_dir / METRICS} has no validation rows yet (one comes every train.val_every)")
        curves.append(curve)
    return curves


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None,
              bands: bool = True) -> Path:
    """One figure, two panels: validation accuracy (%) against step and against wall time (minutes),
    a line per run; ``bands`` shades each point's 95% CI over validation episodes."""
    curves = read_curves(run_dirs, labels)
    fig = figure(figsize=(11, 4))
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    for curve in curves:
        for ax, x in ((by_step, curve.steps), (by_time, curve.minutes)):
            line, = ax.plot(x, curve.accuracy, marker=".", linewidth=1.2, label=curve.label)
            if bands:
                ax.fill_between(x, [a - c for a, c in zip(curve.accuracy, curve.ci95)],
                                [a + c for a, c in zip(curve.accuracy, curve.ci95)], color=line.get_color(), alpha=0.2)
    by_step.set(xlabel="step", ylabel="validation accuracy (%)")
    by_time.set(xlabel="wall time (minutes, summed over resumed sessions)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    return save(fig, out)


def cell_records(paths: list[str | Path]) -> list[dict]:
    """The latest record of every paper cell in these files or folders (:func:`metazoo.results.read_records`)."""
    from .results import read_records

    return list({r["cell"]: r for r in read_records(list(paths)) if r["cell"] is not None}.values())


def plot_report(record_paths_or_dirs: list[str | Path], out: str | Path) -> Path:
    """Per cell, a bar of our accuracy with its 95% CI beside a bar of the paper's value ("n/a" where no
    paper reports the cell); a panel per dataset. The y axis starts near the lowest value, not at 0,
    so that differences of a point show; cells whose training stopped early are starred."""
    records = cell_records(record_paths_or_dirs)
    if not records:
        raise ValueError(f"no result records in {', '.join(map(str, record_paths_or_dirs))}")
    order = sorted(records, key=lambda r: (r["learner"], r["ways"], r["shots"]))
    by_dataset = {d: [r for r in order if r["dataset"] == d] for d in sorted({r["dataset"] for r in records})}
    fig = figure(figsize=(max(6.0, 1.1 * len(records) + 2), 4))
    axes = fig.subplots(1, len(by_dataset), squeeze=False, width_ratios=[len(c) + 1 for c in by_dataset.values()])[0]
    for ax, (dataset, cells) in zip(axes, by_dataset.items()):
        draw_cells(ax, cells)
        ax.set_title(dataset)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    if any(r.get("stopped") for r in records):
        fig.supxlabel("* training stopped early", fontsize=8)
    return save(fig, out)


def draw_cells(ax, cells: list[dict]) -> None:
    """One dataset's panel of :func:`plot_report`: ours (with CI) and the paper's bar, per cell."""
    x = range(len(cells))
    ours, ci = [r["ours"]["mean"] for r in cells], [r["ours"]["ci95"] for r in cells]
    paper = [(r.get("paper") or {}).get("value") for r in cells]
    ax.bar([i - 0.2 for i in x], ours, 0.4, yerr=ci, capsize=3, label="ours")
    ax.bar([i + 0.2 for i in x], [math.nan if p is None else p for p in paper], 0.4, label="paper",
           color="lightgray", edgecolor="gray", hatch="//")
    for i in (i for i, p in zip(x, paper) if p is None):
        ax.text(i + 0.2, 0.02, "n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize=7)
    known = [p for p in paper if p is not None]
    low, high = min([m - c for m, c in zip(ours, ci)] + known), max([m + c for m, c in zip(ours, ci)] + known)
    ax.set_ylim(max(0.0, 5 * math.floor(low / 5) - 5), min(100.0, high) + 2)
    ax.set_xticks(list(x), [f"{r['learner']}\n{r['ways']}w{r['shots']}s" + ("*" if r.get("stopped") else "")
                            for r in cells], fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_command(paths: list[str], out: str, report: bool) -> str:
    """``metazoo plot RUN... -o OUT`` (runs' validation curves) or ``metazoo plot --report DIR... -o OUT``
    (records against the paper); returns the path written."""
    return str((plot_report if report else plot_runs)(paths, out))


def plot_race(panels: dict[str, list[Curve]], out: str | Path, bands: bool = True) -> Path:
    """Test accuracy (%) against training time (minutes): a panel per title of ``panels``, a line per
    curve (``metazoo bench --only race``: metazoo and learn2learn trained side by side, each snapshot
    tested on the same episodes); ``bands`` shades each point's 95% CI over the test episodes."""
    fig = figure(figsize=(5.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels.items()):
        for curve in curves:
            line, = ax.plot(curve.minutes, curve.accuracy, marker="o", linewidth=1.2, label=curve.label)
            if bands:
                ax.fill_between(curve.minutes, [a - c for a, c in zip(curve.accuracy, curve.ci95)],
                                [a + c for a, c in zip(curve.accuracy, curve.ci95)], color=line.get_color(), alpha=0.2)
        ax.set(title=title, xlabel="training time (minutes)", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, out)
