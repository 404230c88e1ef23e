"""The published numbers metazoo reproduces, as data: one :class:`Cell` per number of a paper's table.

A cell is a learner on a dataset at N ways and K shots, with the paper's test accuracy (percent;
``None`` where the paper gives none, e.g. ANIL's Omniglot 5-way), where it was published, the
protocol facts that decide whether a number is comparable (BatchNorm mode, training classes,
training ways and queries, test episodes) and the config of ``experiments/`` that reproduces it.
Cell ids are ``"<learner>/<dataset>/<ways>w<shots>s"`` (``protonet/omniglot/5w1s``); ``<learner>``
is the variant (``fomaml``, ``baselinepp``), ``Cell.learner`` the registered learner (``maml``,
``baseline``) and ``Cell.settings`` the learner settings that make the variant (``first_order``).
MANN reports accuracy by presentation of a class, not a K-shot cell: ``mann/omniglot/online``
holds that curve. :func:`cells` picks cells for ``metazoo reproduce``. Torch-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

DATASETS = ("omniglot", "mini_imagenet")
KEYS = {"omniglot": ("5w1s", "5w5s", "20w1s", "20w5s"), "mini_imagenet": ("5w1s", "5w5s")}


@dataclass(frozen=True)
class Cell:
    """One published number and how it was made. ``train_ways`` / ``train_queries``: the training
    episodes' classes and query items per class (``None``: not stated); ``curve``: MANN's
    ``(presentation, accuracy)`` pairs."""

    id: str
    learner: str
    dataset: str
    ways: int
    shots: int
    value: float | None
    paper: str
    table: str | None
    backbone: str
    config: str  # relative to experiments/
    settings: tuple = ()
    protocol: str = "episodic"
    bn: str | None = None
    train_classes: str | None = None
    train_ways: int | None = None
    train_queries: int | None = None
    test_episodes: int | None = None
    notes: str = ""
    curve: tuple = ()

    @property
    def learner_id(self) -> str:
        """The id's learner part: the variant (``fomaml``), not the registered name (``maml``)."""
        return self.id.split("/")[0]

    @property
    def source(self) -> str:
        """The citation: ``"Snell et al. 2017, Table 1"``."""
        return f"{self.paper}, {self.table}" if self.table else self.paper

    @property
    def config_path(self) -> str:
        """The config, relative to a checkout's root."""
        return f"experiments/{self.config}"

    def to_dict(self) -> dict:
        return {**asdict(self), "source": self.source}


def _family(variant: str, dataset: str, values: str, paper: str, table: str | None, backbone: str,
            learner: str | None = None, settings: tuple = (), train_ways=None, train_queries=None,
            **protocol) -> list[Cell]:
    """A paper's cells on a dataset: ``values`` in the order of ``KEYS[dataset]``, ``-`` for none;
    ``train_ways`` / ``train_queries``: a number, ``"ways"`` / ``"shots"`` (as the cell's) or a
    dict by cell key."""
    out = []
    for key, text in zip(KEYS[dataset], values.split(), strict=True):
        ways, shots = (int(n) for n in key[:-1].split("w"))
        per_cell = {"ways": ways, "shots": shots}
        tw, tq = (v.get(key) if isinstance(v, dict) else per_cell.get(v, v) for v in (train_ways, train_queries))
        out.append(Cell(f"{variant}/{dataset}/{key}", learner or variant, dataset, ways, shots,
                        None if text == "-" else float(text), paper, table, backbone,
                        f"{dataset}/{variant}_{key}.toml", settings, train_ways=tw, train_queries=tq, **protocol))
    return out


TRAINVAL = "trainval (1200 characters x 4 rotations)"
MINI_TRAIN = "train (64 classes)"
MAML_OMNIGLOT = dict(
    backbone="Conv-4, 64 filters, strided convolutions instead of max-pooling", bn="transductive",
    train_classes="MAML's own random character split (1200 training characters in the paper, 1100 in its code)",
    train_ways="ways", train_queries="shots",
    notes="5-way: 1 inner step of 0.4 (3 at test), meta-batch 32; 20-way: 5 steps of 0.1, meta-batch 16; "
          "60k meta-iterations")
MAML_MINI = dict(
    backbone="Conv-4, 32 filters, max-pooling", bn="transductive", train_classes=MINI_TRAIN,
    train_ways="ways", train_queries=15,
    notes="5 inner steps of 0.01 (10 at test), meta-batch 4 (1-shot) or 2 (5-shot), 60k meta-iterations")
CHEN = dict(paper="Chen et al. 2019", table="Table 3", backbone="Conv-4, 64 filters", learner="baseline",
            train_classes=MINI_TRAIN, test_episodes=600,
            notes="pretrained as a classifier of all 64 training classes (with data augmentation), then a new "
                  "head fitted to each support set: 100 epochs of SGD, lr 0.01, batches of 4")

CELLS: dict[str, Cell] = {c.id: c for c in [
    *_family("maml", "omniglot", "98.7 99.9 95.8 98.9", "Finn et al. 2017", "Table 1",
             settings=(("first_order", False),), **MAML_OMNIGLOT),
    *_family("maml", "mini_imagenet", "48.70 63.11", "Finn et al. 2017", "Table 1",
             settings=(("first_order", False),), **MAML_MINI),
    *_family("fomaml", "omniglot", "98.3 99.2 89.4 97.9", "Nichol et al. 2018", "Table 2", learner="maml",
             settings=(("first_order", True),),
             **{**MAML_OMNIGLOT, "notes": "first-order MAML with transduction, as the Reptile paper reports it; "
                                          "MAML's protocol: " + MAML_OMNIGLOT["notes"]}),
    *_family("fomaml", "mini_imagenet", "48.07 63.15", "Finn et al. 2017", "Table 1", learner="maml",
             settings=(("first_order", True),), **MAML_MINI),
    *_family("anil", "omniglot", "- - 96.2 98.0", "Raghu et al. 2020", "Table 2",
             **{**MAML_OMNIGLOT, "notes": "MAML adapting the head only, with MAML's protocol; 20-way cells only"}),
    *_family("anil", "mini_imagenet", "46.7 61.5", "Raghu et al. 2020", "Table 2",
             **{**MAML_MINI, "notes": "MAML adapting the head only, with MAML's protocol"}),
    *_family("metasgd", "omniglot", "99.53 99.93 95.93 98.97", "Li et al. 2017", None,
             backbone="Conv-4 as MAML's", train_ways="ways",
             notes="one inner step with a learned step size per weight (initialised in [0.005, 0.1])"),
    *_family("metasgd", "mini_imagenet", "50.47 64.03", "Li et al. 2017", None,
             backbone="Conv-4 as MAML's", train_ways="ways", train_classes=MINI_TRAIN,
             notes="one inner step with a learned step size per weight (initialised in [0.005, 0.1])"),
    *_family("reptile", "omniglot", "95.39 98.90 88.14 96.65", "Nichol et al. 2018", "Table 2",
             backbone="Conv-4 as MAML's", bn="non-transductive", train_ways="ways",
             train_queries={"5w1s": 9, "5w5s": 5, "20w1s": 9, "20w5s": 5},
             notes="the paper's non-transductive numbers (its transductive ones are higher); 10 labelled images "
                   "per class while training, 5 inner iterations (50 at test), meta-batch 5, 100k iterations"),
    *_family("reptile", "mini_imagenet", "47.07 62.74", "Nichol et al. 2018", "Table 1",
             backbone="Conv-4 as MAML's (32 filters)", bn="non-transductive", train_classes=MINI_TRAIN,
             train_ways="ways", train_queries={"5w1s": 14, "5w5s": 10},
             notes="the paper's non-transductive numbers; 15 labelled images per class while training, 8 inner "
                   "iterations (50 at test), meta-batch 5, 100k iterations"),
    *_family("protonet", "omniglot", "98.8 99.7 96.0 98.9", "Snell et al. 2017", "Table 1",
             backbone="Conv-4, 64 filters", bn="running", train_classes=TRAINVAL, train_ways=60, train_queries=5,
             test_episodes=1000, notes="Adam 1e-3 halved every 2000 episodes, until validation stops improving"),
    *_family("protonet", "mini_imagenet", "49.42 68.20", "Snell et al. 2017", "Table 2",
             backbone="Conv-4, 64 filters (1600-d features)", bn="running", train_classes=MINI_TRAIN,
             train_ways={"5w1s": 30, "5w5s": 20}, train_queries=15, test_episodes=600,
             notes="Adam 1e-3 halved every 2000 episodes, until validation stops improving"),
    *_family("matching", "omniglot", "98.1 98.9 93.8 98.5", "Vinyals et al. 2016", "Table 1",
             backbone="Conv-4, 64 filters", train_classes=TRAINVAL, train_ways="ways",
             notes="cosine attention, no fine-tuning, no full context embeddings"),
    *_family("matching", "mini_imagenet", "43.56 55.31", "Ravi & Larochelle 2017", "Table 1",
             backbone="Conv-4", train_classes=MINI_TRAIN, train_ways="ways",
             notes="Ravi & Larochelle's Matching Networks with full context embeddings, on their split"),
    *_family("relation", "omniglot", "99.6 99.8 97.6 99.1", "Sung et al. 2018", "Table 1",
             backbone="Conv-4 embedding (64 filters, last two blocks unpooled) and a relation module",
             train_classes=TRAINVAL, train_ways="ways",
             train_queries={"5w1s": 19, "5w5s": 15, "20w1s": 10, "20w5s": 5},
             test_episodes=1000, notes="Adam 1e-3 halved every 100k episodes; MSE of the relation scores"),
    *_family("relation", "mini_imagenet", "50.44 65.32", "Sung et al. 2018", "Table 2",
             backbone="Conv-4 embedding (64 filters, last two blocks unpooled) and a relation module",
             train_classes=MINI_TRAIN, train_ways="ways", train_queries={"5w1s": 15, "5w5s": 10},
             test_episodes=600, notes="MSE of the relation scores"),
    *_family("snail", "omniglot", "99.07 99.78 97.64 99.36", "Mishra et al. 2018", "Table 1",
             backbone="Conv-4 embedding, 64 filters", train_classes=TRAINVAL, train_ways="ways",
             notes="temporal convolutions and causal attention over the labelled support items, then the query"),
    *_family("snail", "mini_imagenet", "55.71 68.88", "Mishra et al. 2018", "Table 2",
             backbone="SNAIL's ResNet embedding (not Conv-4)", train_classes=MINI_TRAIN, train_ways="ways",
             notes="temporal convolutions and causal attention over the labelled support items, then the query"),
    Cell("mann/omniglot/online", "mann", "omniglot", 5, 1, None, "Santoro et al. 2016", "Table 1",
         "raw 20x20 pixels, no convolutional embedding", "omniglot/mann_online.toml", protocol="online",
         train_classes="1200 characters, with rotation and translation augmentation", train_ways=5,
         notes="5 classes x 10 presentations, the label of step t given at t + 1; accuracy by presentation; "
               "100k episodes in batches of 16, RMSProp 1e-4",
         curve=((1, 36.4), (2, 82.8), (3, 91.0), (4, 92.6), (5, 94.9), (10, 98.1))),
    *_family("baseline", "mini_imagenet", "42.11 62.53", settings=(("cosine", False),), **CHEN),
    *_family("baselinepp", "mini_imagenet", "48.24 66.43", settings=(("cosine", True),), **CHEN),
]}
LEARNERS = tuple(dict.fromkeys(c.learner_id for c in CELLS.values()))
ORDER = {cell_id: i for i, cell_id in enumerate(sorted(
    CELLS, key=lambda i: (DATASETS.index(CELLS[i].dataset), LEARNERS.index(CELLS[i].learner_id))))}


def cells(selection: str | list[str] | tuple[str, ...] = "all") -> list[Cell]:
    """The cells named by ``selection`` (a word or a list of them: ``all``, a dataset ``omniglot``, a
    learner ``protonet``, or cell ids), in the published order, each once."""
    words = selection.split() if isinstance(selection, str) else [w for s in selection for w in s.split()]
    chosen = set()
    for word in words or ["all"]:
        found = [i for i, c in CELLS.items() if word in ("all", i, c.dataset, c.learner_id)]
        if not found:
            raise ValueError(f"unknown cell selection {word!r}; valid: all, a dataset ({', '.join(DATASETS)}), a "
                             f"learner ({', '.join(LEARNERS)}) or a cell id ({', '.join(CELLS)})")
        chosen.update(found)
    return [CELLS[i] for i in sorted(chosen, key=ORDER.__getitem__)]
