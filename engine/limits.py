"""Limits on untrusted graph content: the graph file's YAML and its CEL expressions (pure, no I/O).

A graph file may come from someone the operator does not trust, so its limits are set by whoever
runs `streamdag`, never by the graph itself: each one is an environment variable (read when the
limits are taken with `Limits.from_env()`) and `streamdag validate|run|graph --limit NAME=VALUE`
sets the same variable for one command. The defaults keep `streamdag validate` of any file within
a few seconds and a few hundred MB, and are far above what any graph in `graphs/` needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

__all__ = ["ENV_PREFIX", "Limits", "set_limit"]

ENV_PREFIX = "STREAMDAG_LIMIT_"


@dataclass(frozen=True)
class Limits:
    """Every limit, with its default; `STREAMDAG_LIMIT_<NAME>` (upper case) overrides one."""

    graph_bytes: int = 4 * 1024 * 1024  # size of a graph file (E003)
    yaml_depth: int = 64  # nesting of mappings and sequences (E004)
    yaml_nodes: int = 50_000  # YAML nodes after expanding aliases (E005): billion laughs; ~50 µs each to check
    cel_cost: int = 1_000_000  # the offline estimate of one expression's cost (E204)
    cel_expressions: int = 1_000  # CEL expressions in one graph (E205): validate compiles each, ~3 ms
    cel_assumed_size: int = 100  # elements (or characters) the estimate assumes for a list, map or string it cannot size
    cel_iterations: int = 1_000_000  # comprehension iterations and elements built per evaluation, at run time
    cel_value_size: int = 1_000_000  # elements of a list or map, characters of a string, a `+` may build at run time

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> Limits:
        """The defaults, overridden by `STREAMDAG_LIMIT_*` variables; raise ValueError on a bad one."""
        env = os.environ if env is None else env
        changes: dict[str, int] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip():
                changes[f.name] = _positive(f.name, raw)
        return replace(cls(), **changes)


def _positive(name: str, raw: str) -> int:
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"limit {name}: expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"limit {name}: expected a positive integer, got {raw!r}")
    return value


def set_limit(assignment: str, env: dict[str, str] | os._Environ[str] | None = None) -> None:
    """Apply `--limit name=value` by setting its environment variable; raise ValueError if unknown or bad."""
    env = os.environ if env is None else env
    name, sep, raw = assignment.partition("=")
    names = [f.name for f in fields(Limits)]
    if not sep or name.strip() not in names:
        raise ValueError(f"--limit takes NAME=VALUE with NAME one of {', '.join(names)}; got {assignment!r}")
    env[ENV_PREFIX + name.strip().upper()] = str(_positive(name.strip(), raw))
