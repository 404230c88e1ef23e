"""``metazoo data check``: what each split of a dataset holds, or every problem that stops it loading."""
from __future__ import annotations

from pathlib import Path

from .base import FewShotDataset
from .storage import DataError

SPLITS = ("train", "val", "test")


def check_dataset(name: str, root: Path, **options) -> tuple[str, str]:
    """Load the train, val and test splits of dataset ``name``; returns (status, report).

    status is ``"ok"``, ``"missing"`` (not found: the report says where it was looked for) or ``"bad"``
    (unreadable data, every bad file named; or a split that cannot be made, e.g. data unlike the
    dataset's or an empty split). An image folder's report also gives its source, its size and its
    class split.
    """
    from . import create_dataset

    datasets, lines = [], []
    for split in SPLITS:
        try:
            datasets.append(create_dataset(name, split=split, root=root, **options))
        except FileNotFoundError as err:
            return "missing", f"{name}: not found\n  " + _indent(str(err))
        except DataError as err:  # every bad file, named
            return "bad", f"{name}: unreadable data\n  " + _indent(err.report())
        except ValueError as err:  # data unlike the dataset's, or a split it cannot make
            lines.append(f"{name:>14} {split:>5}: {err}")
            continue
        lines.append(_describe(datasets[-1]))
    record = datasets[0].info.get("class_split") if datasets else None
    if record is not None:
        fractions = " / ".join(f"{f:g}" for f in record["fractions"])
        images = f", {sum(len(d) for d in datasets)} images" if len(datasets) == len(SPLITS) else ""
        lines[:0] = [f"{name} source: {datasets[0].info['source']}",
                     f"{name}: {sum(len(record[s]) for s in SPLITS)} classes{images}; class split: seed "
                     f"{record['seed']}, fractions {fractions} (train / val / test)"]
    return "ok" if len(datasets) == len(SPLITS) else "bad", "\n".join(lines)


def _describe(d: FewShotDataset) -> str:
    sizes = d.class_sizes
    counts = f"{int(sizes.min())}-{int(sizes.max())}" if len(sizes) else "0"
    return (f"{d.name:>14} {d.split:>5}: {d.num_classes:5d} classes, {len(d):6d} images of {d.image_shape}, "
            f"{counts} per class")


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")
