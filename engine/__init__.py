"""streamdag's public surface for node types: everything a plugin (or `operators/`) may use.

    from engine import Operator, NodeConfig, CelExpr, Msg, Output, compile_expr, EvalError

Names load on first use (PEP 562), so `import engine` stays cheap and `engine.spec` /
`engine.compile` pull in no asyncio through it. Anything not listed here is internal: a test
fails when a module under `operators/` imports from an `engine.*` submodule.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # node types and their configs (engine.api)
    "Node": "engine.api", "Source": "engine.api", "Operator": "engine.api", "Sink": "engine.api",
    "NodeConfig": "engine.api", "RetryPolicy": "engine.api", "StopRetrying": "engine.api", "CelExpr": "engine.api", "CEL": "engine.api",
    "CheckContext": "engine.api", "CheckIssue": "engine.api", "cel_fields": "engine.api",
    "connection_field": "engine.api",
    # messages and acks (engine.message)
    "Msg": "engine.message", "Ack": "engine.message", "BatchAck": "engine.message", "Bodies": "engine.message",
    "CompositeAck": "engine.message", "own_ack": "engine.message", "NOOP_ACK": "engine.message",
    "finish_all": "engine.message",
    "DELIVERED": "engine.message", "FILTERED": "engine.message", "DEAD_LETTERED": "engine.message",
    # what a node sees (engine.hooks): context, outputs, optional hooks
    "Context": "engine.hooks", "Output": "engine.hooks", "SourceSender": "engine.hooks",
    "AckFactory": "engine.hooks", "SharedResources": "engine.hooks", "HasLag": "engine.hooks",
    "HasConnectionState": "engine.hooks", "HasLevels": "engine.hooks", "HasMetrics": "engine.hooks", "HasTotal": "engine.hooks",
    "PartitionEvents": "engine.partitions", "partition_of": "engine.partitions", "key_text": "engine.partitions",
    # checkpoints of operator state (engine.checkpoint): the store protocol and the record format
    "CheckpointStore": "engine.checkpoint", "CheckpointCorrupt": "engine.checkpoint",
    "CheckpointFenced": "engine.checkpoint",
    "CheckpointTooLarge": "engine.checkpoint", "seal": "engine.checkpoint", "unseal": "engine.checkpoint",
    "ERRORS": "engine.runtime.outputs", "error_envelope": "engine.runtime.outputs",
    "inner_outputs": "engine.runtime.outputs",
    # CEL (engine.expr)
    "compile_expr": "engine.expr", "Expr": "engine.expr", "EvalError": "engine.expr", "CelError": "engine.expr",
    # errors and their classes (engine.errors)
    "StreamdagError": "engine.errors", "ConfigError": "engine.errors", "ConnectorError": "engine.errors",
    "Unavailable": "engine.errors", "ConnectionLost": "engine.errors", "OutcomeUnknown": "engine.errors",
    "MessageError": "engine.errors", "PayloadTooLarge": "engine.errors", "ErrorClass": "engine.errors",
    "MESSAGE": "engine.errors", "UNAVAILABLE": "engine.errors", "UNKNOWN": "engine.errors",
    "classify": "engine.errors", "register_classifier": "engine.errors",
    # config value types (engine.spec)
    "Duration": "engine.spec.units", "PositiveDuration": "engine.spec.units", "Size": "engine.spec.units",
    "NatsConnection": "engine.spec.connections", "NatsStream": "engine.spec.connections",
    # JSON with the limits every decoder and encoder shares (engine.codec: loads, MAX_DEPTH, ...)
    "codec": "engine.codec", "encode_failure": "engine.codec",
    # node types inside node types (parallel, circuit_breaker)
    "registry": "engine.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"engine.{name}" else getattr(mod, name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from engine import codec, registry
    from engine.api import (
        CEL,
        CelExpr,
        CheckContext,
        CheckIssue,
        Node,
        NodeConfig,
        Operator,
        RetryPolicy,
        Sink,
        Source,
        cel_fields,
        connection_field,
    )
    from engine.checkpoint import (
        CheckpointCorrupt,
        CheckpointFenced,
        CheckpointStore,
        CheckpointTooLarge,
        seal,
        unseal,
    )
    from engine.codec import encode_failure
    from engine.errors import (
        MESSAGE,
        UNAVAILABLE,
        UNKNOWN,
        ConfigError,
        ConnectionLost,
        ConnectorError,
        ErrorClass,
        MessageError,
        OutcomeUnknown,
        PayloadTooLarge,
        StreamdagError,
        Unavailable,
        classify,
        register_classifier,
    )
    from engine.expr import CelError, EvalError, Expr, compile_expr
    from engine.hooks import (
        AckFactory,
        Context,
        HasConnectionState,
        HasLag,
        HasLevels,
        HasMetrics,
        HasTotal,
        Output,
        SharedResources,
        SourceSender,
    )
    from engine.message import (
        DEAD_LETTERED,
        DELIVERED,
        FILTERED,
        NOOP_ACK,
        Ack,
        BatchAck,
        Bodies,
        CompositeAck,
        Msg,
        finish_all,
        own_ack,
    )
    from engine.partitions import PartitionEvents, key_text, partition_of
    from engine.runtime.outputs import ERRORS, error_envelope, inner_outputs
    from engine.spec.connections import NatsConnection, NatsStream
    from engine.spec.units import Duration, PositiveDuration, Size
