"""The graph file as pydantic models: the generic shape (node configs are checked in a second pass)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.api import RetryPolicy

__all__ = ["NODE_ID_PATTERN", "Defaults", "GraphSpec", "NodeSpec"]

NODE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class Defaults(BaseModel):
    """Settings every node gets unless it sets its own."""

    model_config = ConfigDict(extra="forbid")
    capacity: int = Field(2048, ge=1, description="Messages an edge (a node's input) holds before its writers wait.")
    capacity_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes an edge holds before its writers wait.")
    batch_size: int = Field(1000, ge=1, description="Largest micro-batch a node takes from its input.")
    max_in_flight: int = Field(
        50_000, ge=1, description="Unacknowledged messages a source may have in the graph before it waits."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy for failing batches.")
    dead_letter: str | None = Field(
        None, description="A sink that receives from every `errors` port not wired explicitly."
    )
    stop_timeout: float = Field(
        30.0, ge=0, description="Seconds a drain (SIGTERM) waits for a node that is retrying because a "
        "service is unavailable; then its messages go back to their sources unacknowledged (redelivered "
        "later, or counted as nacked), never to the dead letter.")
    stall_alert_after: float = Field(
        30.0, ge=0, description="Seconds a node may stay stalled on an unavailable service before an "
        "error-level `stall_alert` log line (the stall itself is logged at once and shown in metrics).")
    on_error: Literal["dead_letter", "redeliver"] = Field(
        "dead_letter",
        description="What a message failing in an operator or sink does: go to the errors port at once "
        "(`dead_letter`), or, when its source can redeliver it (jetstream_source, redis_stream_source), go back "
        "to the source to be delivered again after the retry delay; the source dead-letters it after "
        "`max_deliver` deliveries (`redeliver`).",
    )


class NodeSpec(BaseModel):
    """One node: its type, where its input comes from, and the type's own config."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="Node type (see `streamdag schema`).", examples=["map"])
    inputs: list[str] = Field(default_factory=list, description="Upstream nodes as `node` or `node.port`.")
    config: dict[str, Any] = Field(default_factory=dict, description="The node type's settings.")
    description: str | None = None
    retry: RetryPolicy | None = Field(None, description="Overrides `defaults.retry` for this node.")
    capacity: int | None = Field(None, ge=1, description="Overrides `defaults.capacity` for this node's input.")
    batch_size: int | None = Field(None, ge=1, description="Overrides `defaults.batch_size`.")


class GraphSpec(BaseModel):
    """A pipeline: connections, schemas, defaults and nodes."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = Field(description="Graph format version.")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Pipeline name (metrics, consumer names).")
    description: str | None = None
    # each entry is a `engine.spec.connections.Connection`, validated one by one (`validate_connection`,
    # engine.compile.validate) so that only the types a graph uses are built; the JSON Schema says so
    # (engine.compile.schema)
    connections: dict[str, Any] = Field(default_factory=dict)
    schemas: dict[str, str | dict[str, Any]] = Field(
        default_factory=dict, description="Name → JSON Schema file (relative to the graph file) or inline schema."
    )
    defaults: Defaults = Field(default_factory=Defaults)
    tap: bool = Field(
        False, description="Let `streamdag tap` read message payloads through the metrics server "
        "(`run --metrics-port`); off by default, as payloads may be sensitive. `run --tap` opts in too.")
    nodes: dict[str, NodeSpec] = Field(min_length=1)
