"""Offline problems as `file:line:col: CODE message`, collected and reported all at once.

Codes (each has an invalid-graph fixture in tests/fixtures/invalid/):

E001 YAML syntax error             E002 duplicate key (node id, field)
E003 graph file above the size limit   E004 YAML nested too deeply   E005 YAML expands (aliases) to too many nodes
E100 unknown field                 E101 wrong type or value          E102 missing required field
E110 environment variable unset without a default
E200 unknown node type             E201 unknown config field         E202 invalid config value
E203 CEL expression does not compile E204 CEL cost estimate above the limit `cel_cost`
E205 more CEL expressions in the graph than the limit `cel_expressions`
E206 CEL that cannot work on its input's JSON Schema (int and double mixed on an integer field, unknown field)
E210 input names an unknown node   E211 input names an unknown port  E212 source with inputs
E213 operator or sink without inputs                                 E214 cycle
E215 unknown connection            E216 connection of the wrong type E217 unknown schema
E218 invalid JSON Schema           E219 schema file not found or unreadable
E220 unsafe SQL identifier         E221 dead_letter is not a sink of this graph
E222 an input listed twice (`g` and `g.out` are one port)
E240 JetStream filter subject outside the declared stream
E250 http_source on a non-loopback address without auth
E260 under --workers > 1: an operator with per-process state (window) fed by a source that is not partitioned
E261 under --workers > 1: a source that does not say how workers share its input
E262 under --workers > 1: a sink that several processes cannot write at once (file_sink overwrite)
W263 under --workers > 1: a partitioned source with fewer partitions than workers (warning)
W300 an errors port that nothing consumes (warning)
W301 an output port (not errors) that nothing consumes, such as a route's `unmatched` (warning)
W302 a route that can never match: it comes after a `true` one in mode first (warning)
W320 event-time window without idle_timeout: a quiet source never closes its windows (warning)
W340 JetStream stream neither declared nor creatable   W341 sink subject that no declared stream stores
W342 JetStream sink's stream deduplicates for less than a source feeding it may redeliver (warning)
W360 postgres_sink mode insert behind a source that redelivers (warning)
W251 http_source max_decompressed_bytes below max_body_bytes (warning)
W351 redis claim_interval not below half of min_idle (warning)
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
        if self.line == 0:  # not in the file: a command-line option (--set)
            return f"{self.file}: {self.code} {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.code} {self.message}"


class GraphInvalid(StreamdagError):
    """A graph with errors: `diagnostics` holds every one, sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))
