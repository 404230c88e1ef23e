"""Config values against type annotations: the checks of :mod:`metazoo.config`, in words for its
errors and in brief for docs/config.md.

A value read from TOML matches ``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal[...]``,
unions, list-likes (``list[T]``, ``tuple[T, ...]``, ``Sequence[T]``) and ``dict``. An integer is
accepted where a float is expected (and becomes one); ``true`` is not an integer. A type no config
can write (a module, a tensor) lets any value through: the component checks it when built.
"""
from __future__ import annotations

import collections.abc
import inspect
import json
import types
import typing
from typing import Any, Callable, Literal

SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
           type(None): "nothing (leave the key out)"}
PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
SEQUENCES = (list, tuple, collections.abc.Sequence)
MAPPINGS = (dict, collections.abc.Mapping)


class Mismatch(ValueError):
    """A value that does not match a type annotation."""


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_sequence(hint: Any) -> bool:
    return hint in SEQUENCES or typing.get_origin(hint) in SEQUENCES


def _is_mapping(hint: Any) -> bool:
    return hint in MAPPINGS or typing.get_origin(hint) in MAPPINGS


def item_type(hint: Any) -> Any:
    """The element type of a list-like ``hint`` (``Any`` when it does not say one)."""
    args = typing.get_args(hint)
    if not args or (typing.get_origin(hint) is tuple and (len(args) != 2 or args[1] is not Ellipsis)):
        return Any
    return args[0]


def convert(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` has it (an integer where a float is expected becomes a float; a list
    stays a list); :class:`Mismatch` if it does not match."""
    if typing.get_origin(hint) is Literal:
        if any(type(value) is type(allowed) and value == allowed for allowed in typing.get_args(hint)):
            return value
        raise Mismatch(value)
    if _is_union(hint):
        for arm in typing.get_args(hint):
            try:
                return convert(value, arm)
            except Mismatch:
                pass
        raise Mismatch(value)
    if _is_sequence(hint):
        if not isinstance(value, (list, tuple)):
            raise Mismatch(value)
        return [convert(item, item_type(hint)) for item in value]
    if _is_mapping(hint):
        if not isinstance(value, dict):
            raise Mismatch(value)
        return value
    if hint is float and type(value) is int:
        return float(value)
    if hint in SCALARS and type(value) is not hint:
        raise Mismatch(value)
    return value


def describe(hint: Any) -> str:
    """``hint`` in words, for errors: ``list[float]`` is "a list of numbers"."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if _is_union(hint):
        return " or ".join(describe(arm) for arm in typing.get_args(hint))
    if _is_sequence(hint):
        return f"a list of {PLURALS[item_type(hint)]}" if item_type(hint) in PLURALS else "a list"
    if _is_mapping(hint):
        return "a table"
    return SCALARS.get(hint, getattr(hint, "__name__", str(hint)))


def brief(hint: Any) -> str:
    """``hint`` as docs/config.md writes it: ``int``, ``str | None``, ``"best" | "last"``, ``list[float]``."""
    if typing.get_origin(hint) is Literal:
        return " | ".join(json.dumps(allowed) for allowed in typing.get_args(hint))
    if _is_union(hint):
        return " | ".join(brief(arm) for arm in typing.get_args(hint))
    if _is_sequence(hint):
        return f"list[{brief(item_type(hint))}]" if item_type(hint) is not Any else "list"
    if _is_mapping(hint):
        return "table"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def annotations(factory: Callable) -> dict[str, Any]:
    """The resolved annotations of ``factory``'s arguments (of ``__init__`` for a class). A name its
    module imports only for type checkers resolves to ``Any``: any value passes there."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    missing: dict[str, Any] = {}
    while True:
        try:
            return typing.get_type_hints(target, localns=missing)
        except NameError as err:
            if err.name is None or err.name in missing:
                return {}
            missing[err.name] = Any
        except (AttributeError, TypeError):  # an annotation Python cannot evaluate here
            return {}
