"""Backbones (feature extractors); their registry is :data:`metazoo.registry.BACKBONES`."""
from __future__ import annotations

from torch import nn

from ..registry import BACKBONES


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone; unknown names or settings list the valid ones."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()


from .conv4 import Conv4  # noqa: E402
from .functional import Functional  # noqa: E402
from .pixels import Pixels  # noqa: E402
from .resnet12 import ResNet12  # noqa: E402

__all__ = ["BACKBONES", "Conv4", "Functional", "Pixels", "ResNet12", "create_backbone", "list_backbones"]
