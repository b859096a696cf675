"""YAML text -> plain Python values plus the line:col of every key and value (pure, no I/O)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.limits import Limits

__all__ = ["Loaded", "Pos", "YamlError", "check_yaml_limits", "interpolate_env", "load_yaml"]

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
    """The text is not a graph file we will read: E001 (syntax) or a limit (E003, E004, E005)."""

    def __init__(self, message: str, line: int, col: int, code: str = "E001"):
        super().__init__(message)
        self.message, self.line, self.col, self.code = message, line, col, code


def _pos(node: yaml.Node) -> Pos:
    style = getattr(node, "style", None)
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1, style)


def check_yaml_limits(text: str, limits: Limits) -> None:
    """Raise `YamlError` (E003, E004, E005) when `text` is too big, nests too deeply or expands
    (through aliases) to too many nodes; return when it may be composed.

    Composing and walking the tree is where hostile YAML costs: PyYAML's composer recurses once per
    nesting level, and an alias is one node in the composed graph but a whole copy of its anchor's
    tree when walked (billion laughs: 1 KB that expands to 10**9 nodes). This pre-pass reads the
    event stream (libyaml's parser, which keeps its own stack and does not expand aliases) with
    constant work per event, counting the expanded size of every anchor."""
    if len(text) > limits.graph_bytes:
        raise YamlError(f"graph file is {len(text)} characters, above the limit of {limits.graph_bytes} "
                        "(limit graph_bytes)", 1, 1, "E003")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    anchors: dict[str, int] = {}
    stack: list[list[Any]] = []  # [expanded nodes so far, anchor] of each open collection
    expanded = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= limits.yaml_depth:
                    raise _limit_error(event, f"nesting deeper than {limits.yaml_depth} levels (limit yaml_depth)", "E004")
                stack.append([1, event.anchor])
                expanded += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                size, anchor = stack.pop()
                if anchor is not None:
                    anchors[anchor] = size
                if stack:
                    stack[-1][0] += size
            elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                # an alias counts the whole tree of its anchor; an unknown one is the composer's E001
                size = anchors.get(event.anchor, 1) if isinstance(event, yaml.AliasEvent) else 1
                if isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
                    anchors[event.anchor] = 1
                if stack:
                    stack[-1][0] += size
                expanded += size
            if expanded > limits.yaml_nodes:
                raise _limit_error(event, f"the document expands to more than {limits.yaml_nodes} YAML nodes "
                                   "(an alias counts its anchor's whole tree; limit yaml_nodes)", "E005")
    except yaml.MarkedYAMLError as exc:
        if "nesting depth" in str(exc.problem):  # libyaml's own limit (1000 levels), met while scanning ahead
            mark = exc.problem_mark
            raise YamlError(f"nesting deeper than {limits.yaml_depth} levels (limit yaml_depth)",
                            mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, "E004") from None
        return  # a syntax error: the composer reports it with its position
    except yaml.YAMLError:
        return


def _limit_error(event: yaml.Event, message: str, code: str) -> YamlError:
    mark = event.start_mark
    return YamlError(message, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, code)


def load_yaml(text: str, limits: Limits | None = None) -> Loaded:
    """Parse one YAML document, keeping positions; raise `YamlError` with line:col (and a code)."""
    check_yaml_limits(text, limits or Limits.from_env())
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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
