"""Registries: plain name -> factory dicts with ``create`` and ``names``."""
from __future__ import annotations

import inspect
from typing import Any, Callable


class UnknownNameError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(dict):
    """A dict of factories; unknown names and unknown keyword arguments fail listing the valid ones."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        def add(factory: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = factory
            return factory
        return add

    def get_factory(self, name: str) -> Callable:
        if name not in self:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}")
        return self[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        factory = self.get_factory(name)
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self)


def accepted_kwargs(factory: Callable) -> dict[str, Any]:
    """Keyword arguments of ``factory`` (a class or function) with their defaults."""
    sig = inspect.signature(factory)
    return {n: (p.default if p.default is not inspect.Parameter.empty else None)
            for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}


def check_kwargs(factory: Callable, kwargs: dict, what: str) -> None:
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = accepted_kwargs(factory)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{what} has no setting {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(valid))}")
