"""YAML text -> plain Python values plus the line:col of every key and value (pure, no I/O)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Loaded", "Pos", "YamlError", "interpolate_env", "load_yaml"]

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    col: int  # 1-based
    style: str | None = None  # scalar style of a value: None (plain), "'" or '"', "|" or ">"


@dataclass
class Loaded:
    data: Any
    keys: dict[Path, Pos] = field(default_factory=dict)  # where each mapping key stands
    values: dict[Path, Pos] = field(default_factory=dict)  # where each value starts
    duplicates: list[tuple[Path, Pos]] = field(default_factory=list)

    def pos(self, path: Path, prefer_value: bool = False) -> Pos:
        """Position of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            first, second = (self.values, self.keys) if prefer_value else (self.keys, self.values)
            if p in first:
                return first[p]
            if p in second:
                return second[p]
            if not p:
                return Pos(1, 1)
            p = p[:-1]


class YamlError(Exception):
    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def _pos(node: yaml.Node) -> Pos:
    style = getattr(node, "style", None)
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1, style)


def load_yaml(text: str) -> Loaded:
    """Parse one YAML document, keeping positions; raise `YamlError` with line:col."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlError(f"{exc.problem or 'invalid YAML'}" + (f" ({exc.context})" if exc.context else ""), line, col) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), 1, 1) from None
    loaded = Loaded(None)
    if root is None:
        loaded.data = None
        return loaded
    constructor = yaml.SafeLoader("")
    try:
        loaded.data = _build(root, (), loaded, constructor)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise YamlError(str(exc.problem), mark.line + 1 if mark else 1, mark.column + 1 if mark else 1) from None
    return loaded


def _build(node: yaml.Node, path: Path, loaded: Loaded, constructor: yaml.SafeLoader) -> Any:
    loaded.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                key = str(key)
            kpath = (*path, key)
            if key in out:
                loaded.duplicates.append((kpath, _pos(key_node)))
            loaded.keys[kpath] = _pos(key_node)
            out[key] = _build(value_node, kpath, loaded, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), loaded, constructor) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate_env(value: Any, env: dict[str, str] | os._Environ[str] | None = None,
                    path: Path = (), missing: list[tuple[Path, str]] | None = None) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string; unset ones without a default are
    left as they are and reported in `missing` as (path, name)."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        if "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = env.get(name)
            if got is None or (got == "" and ":-" in m.group(0)):
                if default is not None:
                    return default
                if missing is not None:
                    missing.append((path, name))
                return m.group(0)
            return got

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate_env(v, env, (*path, k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, env, (*path, i), missing) for i, v in enumerate(value)]
    return value
