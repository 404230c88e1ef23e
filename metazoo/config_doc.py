"""docs/config.md, written from the config classes: ``python -m metazoo.config_doc > docs/config.md``.

Every key's type and default come from its dataclass field, its meaning from the field's ``doc``
(:func:`metazoo.config.setting`), each section's text from its class docstring: the page and the
code cannot drift (tests/test_config.py compares them). Registered names are not listed (they
depend on the plugins loaded): ``metazoo list`` prints them.
"""
from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from typing import Any

from . import config_types, registry
from .config import EXTENDS_DOC, LEGACY_DOC, REPLACE_DOC, Config, Names, toml_value

COMMAND = "python -m metazoo.config_doc > docs/config.md"
WIDTH = 100

INTRO = [
    "This page is generated from the config classes in `metazoo/config.py` (each key's meaning is its field's "
    "`doc`), and tests/test_config.py fails when it is out of date: edit the code, then regenerate it with",
    f"    {COMMAND}",
    "A run is configured by one TOML file (`metazoo train CONFIG`), whose tables are the sections below; "
    "`--set section.key=value` overrides any key with a TOML value (`--set optim.lr=3e-4`, "
    "`--set learner.name=maml`). Keys left out take the defaults below (for the learner and the backbone: the "
    "constructor's). Every key and value is checked when the config is loaded: an unknown key, a value of the wrong "
    "type, an unknown enum value or registered name fails at once, naming the key, the value and what is allowed. "
    "An integer is accepted where a number is expected; `true` is not an integer. The resolved config is saved in "
    "every run directory as `config.toml`.",
]


def _paragraph(text: str, indent: str = "") -> str:
    return textwrap.fill(" ".join(text.split()), WIDTH, initial_indent=indent, subsequent_indent=" " * len(indent),
                         break_long_words=False, break_on_hyphens=False)


def _default(value: Any) -> str:
    return "unset" if value is None else f"`{toml_value(value)}`"


def _kinds(names: Names) -> str:
    """What a key that picks a registered component takes, e.g. "a registered learner or objective"."""
    kinds = " or ".join(registry.REGISTRIES[r].kind for r in names.registries)
    return f"a registered {kinds}" + "".join(f" or {toml_value(extra)}" for extra in names.extra)


def _key(f: dataclasses.Field, hint: Any, default: Any) -> str:
    """One key as a list item: name, type (the registry it picks from), default, meaning."""
    kind = config_types.brief(hint) + (f": {_kinds(f.metadata['names'])}" if f.metadata.get("names") else "")
    return _paragraph(f"`{f.name}` ({kind}, default {_default(default)}): {f.metadata['doc']}", "- ")


def _section(title: str, cls: type) -> list[str]:
    hints, defaults = typing.get_type_hints(cls), cls()
    keys = [_key(f, hints[f.name], getattr(defaults, f.name)) for f in dataclasses.fields(cls)]
    return [f"## `[{title}]`", _paragraph(inspect.getdoc(cls)), "\n".join(keys)]


def _component(title: str, f: dataclasses.Field, default: dict) -> list[str]:
    text = f"{f.metadata['doc']} Default: `{toml_value(default)}`."
    return [f"## `[{title}]`", _paragraph(text)]


def render() -> str:
    """The text of docs/config.md."""
    fields, hints, defaults = {f.name: f for f in dataclasses.fields(Config)}, typing.get_type_hints(Config), Config()
    top = [_paragraph(f"`extends` (str | list[str], default unset): {EXTENDS_DOC}", "- "),
           _paragraph(f"`replace` (list[str], default unset): {REPLACE_DOC}", "- "),
           _key(fields["plugins"], hints["plugins"], defaults.plugins)]
    intro = [text if text.startswith("    ") else _paragraph(text) for text in INTRO]
    blocks = ["# Configuration reference", *intro, "## Top level", _paragraph(inspect.getdoc(Config)), "\n".join(top)]
    blocks += _component("learner", fields["learner"], defaults.learner)
    blocks += _component("backbone", fields["backbone"], defaults.backbone)
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            blocks += _section(f.name, hints[f.name])
    blocks += ["## Old configs", _paragraph(LEGACY_DOC)]
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    print(render(), end="")
