"""The exceptions streamdag raises, in one tree:

    StreamdagError
    ├── GraphInvalid            (engine.compile.diagnostics) a graph with offline errors; .diagnostics
    ├── ConfigError             a setting that is valid offline but wrong at run time (missing table...)
    ├── ConnectorError          a client library failed; connectors translate with `raise ... from exc`
    │   └── Unavailable         a service is down, unreachable or busy: never the message's fault
    │       ├── ConnectionLost  the connection dropped; the connector retries with backoff
    │       └── OutcomeUnknown  a write may or may not have happened: retried with the same idempotency key
    ├── MessageError            the message itself is at fault (decode, encode, too deep, a value rejected)
    │   └── PayloadTooLarge     beyond the decoder's or encoder's size or depth limits
    └── RunError                the run could not go on
        ├── NodeStartError      a node's start() failed (before any data flowed)
        └── UnhandledError      a message reached an errors port nothing consumes, or a node crashed

A bad *message* is never an exception that stops the graph: it goes to the node's `errors` port.

`classify(exc)` sorts any exception into one of three classes (docs/errors.md has the table):

- `message`: the message's fault (`MessageError`): it goes to the `errors` port, not retried.
- `unavailable`: a service's fault (`Unavailable`, `OSError`, `TimeoutError`, and what each connector
  registers with `register_classifier`, such as Redis LOADING or PostgreSQL 08*): the node retries
  with backoff until the service is back, for as long as the graph runs; nothing is dead-lettered.
- `unknown`: anything else. Treated as `unavailable` (retried, never dead-lettered) unless the node's
  `retry.max_attempts` bounds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = ["MESSAGE", "UNAVAILABLE", "UNKNOWN", "ConfigError", "ConnectionLost", "ConnectorError", "ErrorClass",
           "MessageError", "NodeStartError", "OutcomeUnknown", "PayloadTooLarge", "RunError", "StreamdagError",
           "Unavailable", "UnhandledError", "classify", "register_classifier"]

ErrorClass = Literal["message", "unavailable", "unknown"]
MESSAGE: ErrorClass = "message"
UNAVAILABLE: ErrorClass = "unavailable"
UNKNOWN: ErrorClass = "unknown"


class StreamdagError(Exception):
    """Base of every streamdag error."""


class ConfigError(StreamdagError):
    """A setting that passed offline validation but does not fit the world (no such table...)."""


class ConnectorError(StreamdagError):
    """A client library failed; the original is chained as __cause__."""


class Unavailable(ConnectorError):
    """A service is down, unreachable, overloaded or read-only for now: retry, never dead-letter."""


class ConnectionLost(Unavailable):
    """The connection to a service dropped."""


class OutcomeUnknown(Unavailable):
    """A write was sent but its outcome never came back (a lost PubAck, a commit without reply).
    The batch is retried with the same idempotency keys, so a write that did happen is not doubled."""


class MessageError(StreamdagError):
    """The message itself is at fault: it goes to the `errors` port with this reason."""


class PayloadTooLarge(MessageError):
    """A payload beyond the size or nesting depth that the decoders and encoders support."""


class RunError(StreamdagError):
    """The run could not go on."""


class NodeStartError(RunError):
    """A node's start() failed."""


class UnhandledError(RunError):
    """A message reached an errors port that nothing consumes, or a node crashed."""


_classifiers: list[Callable[[BaseException], ErrorClass | None]] = []


def register_classifier(fn: Callable[[BaseException], ErrorClass | None]) -> None:
    """Teach `classify` a client library's exceptions (connectors call this when imported). `fn`
    returns a class, or None when it does not know the exception."""
    if fn not in _classifiers:
        _classifiers.append(fn)


def classify(exc: BaseException) -> ErrorClass:
    """Whose fault `exc` is: the message's, a service's, or unknown (see the module docstring)."""
    if isinstance(exc, MessageError):
        return MESSAGE
    if isinstance(exc, Unavailable):
        return UNAVAILABLE
    for fn in _classifiers:
        found = fn(exc)
        if found is not None:
            return found
    if isinstance(exc, (OSError, TimeoutError, EOFError)):  # ConnectionError is an OSError
        return UNAVAILABLE
    cause = exc.__cause__
    if cause is not None and cause is not exc:  # a library error chained by a translation
        return classify(cause)
    return UNKNOWN
