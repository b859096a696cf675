"""The fenced plugin surface: what `engine` exports, and that operators import nothing else."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[1]

EXPORTED = {
    # node types and configs
    "Node", "Source", "Operator", "Sink", "NodeConfig", "RetryPolicy", "StopRetrying", "CelExpr", "CEL", "CheckContext",
    "CheckIssue", "cel_fields", "connection_field",
    # messages and acks
    "Msg", "Ack", "BatchAck", "Bodies", "CompositeAck", "own_ack", "finish_all", "NOOP_ACK", "DELIVERED", "FILTERED", "DEAD_LETTERED",
    # what a node sees
    "Context", "Output", "SourceSender", "AckFactory", "SharedResources", "HasLag", "HasConnectionState",
    "HasLevels", "HasMetrics", "HasTotal", "PartitionEvents", "partition_of", "key_text", "CheckpointStore", "CheckpointCorrupt", "CheckpointFenced",
    "CheckpointTooLarge", "seal", "unseal", "ERRORS", "error_envelope", "inner_outputs",
    # CEL
    "compile_expr", "Expr", "EvalError", "CelError",
    # errors
    "StreamdagError", "ConfigError", "ConnectorError", "Unavailable", "ConnectionLost", "OutcomeUnknown",
    "MessageError", "PayloadTooLarge", "ErrorClass", "MESSAGE", "UNAVAILABLE", "UNKNOWN", "classify",
    "register_classifier",
    # config value types
    "Duration", "PositiveDuration", "Size", "NatsConnection", "NatsStream",
    "registry", "codec", "encode_failure",
}


def test_engine_exports_exactly_the_plugin_api() -> None:
    assert set(engine.__all__) == EXPORTED
    for name in engine.__all__:
        value = getattr(engine, name)
        assert value is not None, name
        if isinstance(value, (type, types.FunctionType)):
            assert value.__module__.startswith("engine"), (name, value.__module__)  # ours, not a library's


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        engine.Runner  # type: ignore[attr-defined]  # noqa: B018 - internal: not part of the surface
    except AttributeError as exc:
        assert "Runner" in str(exc)
    else:
        raise AssertionError("engine.Runner must not be exported")


def test_operators_import_only_the_public_api() -> None:
    offenders = []
    for path in sorted((ROOT / "operators").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine."):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}"
                              for a in node.names if a.name.startswith("engine.")]
    assert not offenders, "operators must import from `engine` only:\n" + "\n".join(offenders)


def test_context_says_how_full_a_ports_channel_is() -> None:
    """`Context.channel_load(port)` (route mode least_loaded): (held, capacity); (0, 0) outside a run."""
    from engine.runtime.context import NodeContext, Resources

    assert "channel_load" in dir(engine.Context)
    assert NodeContext("n", {}, {}, Resources()).channel_load("out") == (0, 0)
    ctx = NodeContext("n", {}, {}, Resources(), load=lambda node, port: (7, 10) if (node, port) == ("n", "a") else (0, 0))
    assert ctx.channel_load("a") == (7, 10)


def test_context_gives_the_nodes_retry_policy(write_graph) -> None:
    """`Context.retry`: the node's own `retry`, else `defaults.retry`, as the runtime applies it; None outside a run."""
    from engine.compile.validate import load_graph
    from engine.runtime.context import NodeContext, Resources
    from engine.runtime.scheduler import Runner

    assert "retry" in dir(engine.Context)
    assert NodeContext("n", {}, {}, Resources()).retry is None
    path = write_graph("""
        version: 1
        name: r
        defaults: {retry: {max_attempts: 4}}
        nodes:
          g: {type: generate, config: {count: 1}}
          a: {type: drop, inputs: [g]}
          b: {type: drop, inputs: [g], retry: {max_attempts: 2}}
    """)
    nodes = Runner(load_graph(str(path)))._s.nodes
    assert nodes["a"].ctx.retry.max_attempts == 4 and nodes["b"].ctx.retry.max_attempts == 2
