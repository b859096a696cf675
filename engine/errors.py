"""The exceptions streamdag raises, in one tree:

    StreamdagError
    ├── GraphInvalid            (engine.compile.diagnostics) a graph with offline errors; .diagnostics
    ├── ConfigError             a setting that is valid offline but wrong at run time (missing table...)
    ├── ConnectorError          a client library failed; connectors translate with `raise ... from exc`
    │   └── ConnectionLost      the connection dropped; the connector retries with backoff
    └── RunError                the run could not go on
        ├── NodeStartError      a node's start() failed (before any data flowed)
        └── UnhandledError      a message reached an errors port nothing consumes, or a node crashed

A bad *message* is never an exception that stops the graph: it goes to the node's `errors` port.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConnectionLost", "ConnectorError", "NodeStartError", "RunError", "StreamdagError",
           "UnhandledError"]


class StreamdagError(Exception):
    """Base of every streamdag error."""


class ConfigError(StreamdagError):
    """A setting that passed offline validation but does not fit the world (no such table...)."""


class ConnectorError(StreamdagError):
    """A client library failed; the original is chained as __cause__."""


class ConnectionLost(ConnectorError):
    """The connection to a service dropped."""


class RunError(StreamdagError):
    """The run could not go on."""


class NodeStartError(RunError):
    """A node's start() failed."""


class UnhandledError(RunError):
    """A message reached an errors port that nothing consumes, or a node crashed."""
