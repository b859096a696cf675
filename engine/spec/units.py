"""Durations and sizes in config: a number, or a string such as `250ms`, `30s`, `1h30m`, `7d`, `1MB`.

One parser for every node type, so `ttl: 1h`, `ack_wait: 30s` and `size: 5m` mean the same
everywhere, and the JSON Schema of the graph format accepts both forms.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

__all__ = ["Duration", "PositiveDuration", "Size", "parse_duration", "parse_size"]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d|w)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:us|ms|s|m|h|d|w))+$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a string like `500ms`, `30s`, `5m`, `1h30m`, `7d`, `2w`.

    Anything else is returned unchanged, so pydantic reports its own type error."""
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if not _DURATION.match(text):
            raise ValueError(f"invalid duration {value!r}: not a duration (use seconds or e.g. '250ms', '30s', '5m', '1h30m', '7d')")
        return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    return value


def parse_size(value: Any) -> Any:
    """Bytes from a number or a string like `512KB`, `1MB`, `1MiB`, `2GB` (K = 1024, as NATS does)."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"invalid size {value!r}: not a size (use a number of bytes or e.g. 512KB, 1MB, 2GB)")
        unit = (m.group(2) or "B").upper()[0]
        return int(float(m.group(1)) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit])
    return value


_DURATION_TEXT = {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(us|ms|s|m|h|d|w)?\s*)+$",
                  "examples": ["250ms", "30s", "5m", "1h30m", "7d"]}
Duration = Annotated[
    float, BeforeValidator(parse_duration), Field(ge=0),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "description": "seconds"}, _DURATION_TEXT]}),
]
PositiveDuration = Annotated[
    float, BeforeValidator(parse_duration), Field(gt=0),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0, "description": "seconds"}, _DURATION_TEXT]}),
]
Size = Annotated[
    int, BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "description": "bytes (-1: no limit, where a setting allows it)"},
                              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt]i?[Bb]?|[Bb])?\s*$",
                               "examples": ["512KB", "1MB", "2GB"]}]}),
]
