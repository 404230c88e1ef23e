"""Backbones (feature extractors) and their registry."""
from __future__ import annotations

from torch import nn

from ..registry import Registry

BACKBONES = Registry("backbone")


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone; unknown names or settings list the valid ones."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()


from . import conv4  # noqa: E402,F401  (registers)
from .conv4 import Conv4  # noqa: E402

__all__ = ["BACKBONES", "Conv4", "create_backbone", "list_backbones"]
