"""Node types by name, found through the `streamdag.nodes` entry points (never by importing them).

A type's module is imported only when a graph uses the type (`load`). The entry points are read
once per process, in one scan of the installed distributions for both of our groups (node types
and CLI commands): a scan parses every distribution's entry points whatever the group asked for.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from engine.api import Node

__all__ = ["COMMANDS", "GROUP", "RegistryError", "closest", "commands", "load", "names", "register"]

GROUP = "streamdag.nodes"
COMMANDS = "streamdag.commands"  # CLI subcommands contributed by plugins (engine.cli)
_extra: dict[str, type[Node]] = {}


class RegistryError(Exception):
    """A registered entry point that fails to load."""


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return _scan()[group]


@cache
def _scan() -> dict[str, dict[str, EntryPoint]]:
    from importlib.metadata import entry_points

    found = entry_points()
    return {group: {ep.name: ep for ep in found.select(group=group)} for group in (GROUP, COMMANDS)}


def names(installed_only: bool = False) -> list[str]:
    """Registered type names; `installed_only` leaves out types added with `register()`."""
    return sorted(set(_entry_points(GROUP)) | (set() if installed_only else set(_extra)))


def commands() -> list[EntryPoint]:
    """CLI subcommands of plugins, by name: each names a module with `add_arguments` and `main`."""
    return sorted(_entry_points(COMMANDS).values(), key=lambda ep: ep.name)


def register(name: str, cls: type[Node]) -> None:
    """Add a node type at run time (tests, embedding applications)."""
    _extra[name] = cls


@cache
def _load(name: str) -> type[Node] | None:
    ep = _entry_points(GROUP).get(name)
    if ep is None:
        return None
    try:
        return ep.load()  # type: ignore[no-any-return]
    except Exception as exc:  # a broken plugin must name itself
        raise RegistryError(f"node type {name!r} failed to load from {ep.value}: {exc}") from exc


def load(name: str) -> type[Node] | None:
    if name in _extra:
        return _extra[name]
    return _load(name)


def field_names(model: Any) -> list[str]:
    """The names a YAML file uses for a pydantic model's fields: each field's alias when it has one
    (`schema`, `global`), never the Python name behind it (`schema_`, `global_`)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def closest(word: str, options: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The option `word` was most likely meant to be, for "did you mean" hints."""
    import difflib  # only when something is wrong

    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return match[0] if match else None
