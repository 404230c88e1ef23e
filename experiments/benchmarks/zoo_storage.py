"""What storing a model-zoo entry's weights smaller costs in accuracy: each committed entry's weights packed as
``metazoo reproduce --zoo`` packs weights over the zoo's 1 MB (:func:`metazoo.run.pack_weights`), its records
tested again on them, beside the figures its records hold.

    METAZOO_DATA=../shared/data python experiments/benchmarks/zoo_storage.py [ENTRY ...] [--storage int8]
        [--last]

ENTRY: ``omniglot/protonet_5w1s`` and the like (default: every committed entry); ``--storage``: ``float16`` or
``int8`` (default int8); ``--last``: each entry's last record only. A table row per record: the file's bytes
in float32 and in the storage, the record's mean +- CI and the stored weights' over the same test episodes.
The entries themselves are never written (the packed copies live in a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from metazoo.reproduce import CHECK, RECORDS
from metazoo.run import BEST, pack_weights
from metazoo.trainer import test_run

ZOO = Path(__file__).resolve().parents[1] / "zoo"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="*", help="zoo entries, e.g. omniglot/protonet_5w1s (default: all)")
    parser.add_argument("--storage", default="int8", choices=("float16", "int8"))
    parser.add_argument("--last", action="store_true", help="each entry's last record only")
    args = parser.parse_args(argv)
    entries = args.entries or sorted(p.parent.relative_to(ZOO).as_posix() for p in ZOO.glob("*/*/config.toml"))
    print(f"| entry | test settings | bytes float32 | bytes {args.storage} | record | {args.storage} | difference |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in entries:
            source = ZOO / name
            copy = Path(tmp) / name
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns(CHECK))
            state = torch.load(source / BEST, weights_only=True)
            torch.save({**state, "learner": pack_weights(state["learner"], args.storage), "storage": args.storage},
                       copy / BEST)
            records = [json.loads(line) for line in (source / RECORDS).read_text().splitlines()]
            for record in records[-1:] if args.last else records:
                overrides = record["protocol"].get("overrides", [])
                result = test_run(copy, "best", None, False, overrides, write=False)
                ours = record["ours"]
                print(f"| {name} | {' '.join(overrides) or '(its config)'} | {(source / BEST).stat().st_size} | "
                      f"{(copy / BEST).stat().st_size} | {ours['mean']:.2f} +- {ours['ci95']:.2f} | "
                      f"{100 * result.mean:.2f} +- {100 * result.ci95:.2f} | "
                      f"{100 * result.mean - ours['mean']:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
