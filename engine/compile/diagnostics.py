"""Offline problems as `file:line:col: CODE message`, collected and reported all at once.

Codes (each has an invalid-graph fixture in tests/fixtures/invalid/):

E001 YAML syntax error             E002 duplicate key (node id, field)
E100 unknown field                 E101 wrong type or value          E102 missing required field
E110 environment variable unset without a default
E200 unknown node type             E201 unknown config field         E202 invalid config value
E203 CEL expression does not compile
E210 input names an unknown node   E211 input names an unknown port  E212 source with inputs
E213 operator or sink without inputs                                 E214 cycle
E215 unknown connection            E216 connection of the wrong type E217 unknown schema
E218 invalid JSON Schema           E219 schema file not found or unreadable
E220 unsafe SQL identifier         E221 dead_letter is not a sink of this graph
E230+ connector-specific checks (see each connector's docs)
W300 an errors port that nothing consumes (warning)
W301 an output port (not errors) that nothing consumes, such as a route's `unmatched` (warning)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.errors import StreamdagError

__all__ = ["Diagnostic", "GraphInvalid"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    line: int
    col: int
    code: str
    message: str
    file: str = ""
    severity: Literal["error", "warning"] = "error"

    def format(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.code} {self.message}"


class GraphInvalid(StreamdagError):
    """A graph with errors: `diagnostics` holds every one, sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))
