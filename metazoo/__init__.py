"""metazoo: few-shot meta-learning and multi-task learning behind one interface."""
__version__ = "0.1.0"

from .backbones import create_backbone, list_backbones  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .data import (  # noqa: E402
    DatasetNotFoundError, EpisodeSampler, EpisodeSizeError, FewShotDataset, Omniglot, create_dataset, list_datasets,
)
from .episode import Episode, LabeledSet  # noqa: E402
from .evaluate import EvalResult, evaluate, meta_test  # noqa: E402
from .learners import Learner, MatchingNet, ProtoNet, RelationNet, create_learner, list_learners  # noqa: E402
from .trainer import meta_train  # noqa: E402

__all__ = [
    "Config", "DatasetNotFoundError", "Episode", "EpisodeSampler", "EpisodeSizeError", "EvalResult",
    "FewShotDataset", "LabeledSet", "Learner", "MatchingNet", "Omniglot", "ProtoNet", "RelationNet",
    "create_backbone", "create_dataset", "create_learner", "evaluate", "list_backbones", "list_datasets",
    "list_learners", "load_config", "meta_test", "meta_train",
]
