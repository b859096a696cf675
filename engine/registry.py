"""Node types by name, found through the `streamdag.nodes` entry points (never by importing them)."""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.api import Node

__all__ = ["GROUP", "RegistryError", "closest", "load", "names"]

GROUP = "streamdag.nodes"
_extra: dict[str, type[Node]] = {}


class RegistryError(Exception):
    """A registered entry point that fails to load."""


@cache
def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names(installed_only: bool = False) -> list[str]:
    """Registered type names; `installed_only` leaves out types added with `register()`."""
    return sorted(set(_entry_points()) | (set() if installed_only else set(_extra)))


def register(name: str, cls: type[Node]) -> None:
    """Add a node type at run time (tests, embedding applications)."""
    _extra[name] = cls


@cache
def _load(name: str) -> type[Node] | None:
    ep = _entry_points().get(name)
    if ep is None:
        return None
    try:
        return ep.load()  # type: ignore[attr-defined,no-any-return]
    except Exception as exc:  # a broken plugin must name itself
        raise RegistryError(f"node type {name!r} failed to load from {ep.value}: {exc}") from exc  # type: ignore[attr-defined]


def load(name: str) -> type[Node] | None:
    if name in _extra:
        return _extra[name]
    return _load(name)


def closest(word: str, options: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The option `word` was most likely meant to be, for "did you mean" hints."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return match[0] if match else None
