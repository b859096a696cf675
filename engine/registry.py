"""Node types by name, found through the `streamdag.nodes` entry points (never by importing them).

A type's module is imported only when a graph uses the type (`load`). The entry points are read
once per process, in one scan of the installed distributions for both of our groups (node types
and CLI commands). The scan reads the `entry_points.txt` of each `*.dist-info` / `*.egg-info`
directory on `sys.path` itself, as `importlib.metadata.entry_points()` does (first distribution of
a name on the path wins; later entry points of one name override earlier ones): ~1.5 ms against
~3 ms for `importlib.metadata`'s scan, and no import of it of our own. The same scan tells whether
any pydantic plugin is installed (PYDANTIC), so that the command line can spare pydantic's own
lookup, which imports `importlib.metadata` (engine.pydantic_plugins). A path entry that is not a
plain directory (a zip) falls back to `importlib.metadata`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.api import Node

__all__ = ["COMMANDS", "GROUP", "PYDANTIC", "EntryPoint", "RegistryError", "closest", "commands", "declared", "load",
           "names", "register"]

GROUP = "streamdag.nodes"
COMMANDS = "streamdag.commands"  # CLI subcommands contributed by plugins (engine.cli)
PYDANTIC = "pydantic"  # pydantic's plugins: read by the same scan (engine.pydantic_plugins)
_extra: dict[str, type[Node]] = {}


class RegistryError(Exception):
    """A registered entry point that fails to load."""


@dataclass(frozen=True)
class EntryPoint:
    """One entry point: `name = module[:attr.attr]` in `group` (what `importlib.metadata` gives)."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        import importlib

        module, _, attrs = self.value.partition("[")[0].strip().partition(":")
        found: Any = importlib.import_module(module.strip())
        for attr in filter(None, attrs.strip().split(".")):
            found = getattr(found, attr)
        return found


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return _scan()[group]


@cache
def _scan() -> dict[str, dict[str, EntryPoint]]:
    found: dict[str, dict[str, EntryPoint]] = {GROUP: {}, COMMANDS: {}, PYDANTIC: {}}
    for ep in _installed_entry_points():
        if ep.group in found:
            found[ep.group][ep.name] = ep
    return found


_DIST = re.compile(r"(?P<name>[^-]+?)(-.*)?\.(dist|egg)-info", re.IGNORECASE)


def _installed_entry_points() -> list[EntryPoint]:
    """Every entry point of the distributions on `sys.path`, in `importlib.metadata`'s order."""
    if any(entry and not os.path.isdir(entry) and os.path.exists(entry) for entry in sys.path):
        from importlib.metadata import entry_points  # a zip on the path: the library reads those

        return [EntryPoint(ep.name, ep.value, ep.group) for group in (GROUP, COMMANDS, PYDANTIC)
                for ep in entry_points(group=group)]
    seen: set[str] = set()
    eps: list[EntryPoint] = []
    for entry in sys.path:
        try:
            children = os.listdir(entry or ".")
        except OSError:
            continue
        for child in children:
            m = _DIST.fullmatch(child)
            if m is None:
                continue
            name = re.sub(r"[-_.]+", "_", m["name"]).lower()  # importlib.metadata's normalised name
            if name in seen:
                continue
            seen.add(name)
            eps.extend(_read(os.path.join(entry or ".", child, "entry_points.txt")))
    return eps


def _read(path: str) -> list[EntryPoint]:
    """The entry points of one `entry_points.txt` (an INI file: `[group]`, then `name = value`)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    eps = []
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif group is not None and "=" in line:
            name, _, value = line.partition("=")
            eps.append(EntryPoint(name.strip(), value.strip(), group))
    return eps


def declared(group: str) -> bool:
    """Whether an installed distribution declares an entry point in `group` (one of ours, or
    PYDANTIC)."""
    return bool(_scan()[group])


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
