"""Named connection settings (`connections:` in a graph). `${VAR:-default}` is applied before these."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Connection",
    "HttpConnection",
    "NatsConnection",
    "NatsStream",
    "PostgresConnection",
    "RedisConnection",
    "parse_duration",
    "parse_size",
    "validate_connection",
]

from engine.spec.units import Duration, Size, parse_duration, parse_size


class _Base(BaseModel):
    # built on first use (`validate_connection`): a graph pays only for the connection types it names
    model_config = ConfigDict(extra="forbid", defer_build=True)


_STREAM_NAME = re.compile(r"^[^.*>\s/\\]+$")


class NatsStream(_Base):
    """A JetStream stream to create if missing (declared under a nats connection's `streams`)."""

    subjects: list[str] = Field(min_length=1, description="Subjects it stores.", examples=[["orders.>"]])
    retention: Literal["limits", "interest", "workqueue"] = Field("limits", description="Retention policy.")
    max_age: Duration = Field(0, description="Oldest message kept (e.g. 7d); 0 = unlimited.", examples=["7d"])
    max_msg_size: Size = Field(-1, ge=-1, description="Largest message accepted (e.g. 1MB); -1 = server max.")
    max_msgs: int = Field(-1, ge=-1, description="Messages kept; -1 = unlimited.", examples=[1_000_000])
    max_bytes: Size = Field(-1, ge=-1, description="Bytes kept (e.g. 10GB); -1 = unlimited.")
    storage: Literal["file", "memory"] = Field("file", description="Where messages are stored.")
    replicas: int = Field(1, ge=1, le=5, description="Copies kept in a cluster.")
    duplicate_window: Duration = Field(120, description="How long `Nats-Msg-Id` deduplicates (e.g. 2m).")
    discard: Literal["old", "new"] = Field("old", description="What a full stream discards.")

    @model_validator(mode="after")
    def _check(self) -> NatsStream:
        for s in self.subjects:
            if not s or " " in s or ".." in s or s.startswith(".") or s.endswith("."):
                raise ValueError(f"invalid subject {s!r}")
        if self.max_age and self.duplicate_window > self.max_age:
            raise ValueError("duplicate_window must not exceed max_age")
        return self


class NatsConnection(_Base):
    """A NATS server (JetStream enabled)."""

    @model_validator(mode="after")
    def _check_streams(self) -> NatsConnection:
        owners: dict[str, str] = {}
        for name, stream in self.streams.items():
            if not _STREAM_NAME.match(name):
                raise ValueError(f"invalid stream name {name!r} (no '.', '*', '>', spaces or slashes)")
            for subject in stream.subjects:
                if subject in owners:
                    raise ValueError(f"subject {subject!r} is in streams {owners[subject]!r} and {name!r}")
                owners[subject] = name
        return self

    type: Literal["nats"]
    url: str = Field("nats://127.0.0.1:4222", description="Server URL; several may be comma-separated.")
    name: str | None = Field(None, description="Client name shown by the server.")
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = Field(None, description="NATS credentials file (JWT + nkey).")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds for one connection attempt.")
    reconnect_wait: float = Field(1.0, gt=0, description="Seconds between reconnect attempts (unlimited).")
    start_timeout: float = Field(
        10.0, gt=0, description="Seconds `run` keeps trying to reach a server at start before it stops with an "
        "error naming the connection and URL; once connected, a lost connection is retried without limit.")
    streams: dict[str, NatsStream] = Field(
        default_factory=dict,
        description="JetStream streams the graph needs, by name: `streamdag run` creates the missing ones "
        "and stops with an error when an existing one's config differs.",
        examples=[{"ORDERS": {"subjects": ["orders.>"], "max_age": "7d", "max_msg_size": "1MB"}}],
    )


class RedisConnection(_Base):
    """A Redis server."""

    type: Literal["redis"]
    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL (database in the path).",
                     examples=["redis://127.0.0.1:6379/0"])
    socket_timeout: float | None = Field(None, gt=0, description="Seconds a command may take; none by default "
                                         "(blocking stream reads bound themselves with `block`).")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds for one connection attempt.")
    client_name: str | None = Field(None, description="CLIENT SETNAME of every connection (shown by CLIENT LIST).")
    max_connections: int | None = Field(None, ge=1, description="Pool size limit; unlimited if unset.")


class PostgresConnection(_Base):
    """A PostgreSQL database."""

    type: Literal["postgres"]
    dsn: str = Field("postgresql://root@127.0.0.1:5432/test", description="libpq-style DSN.")
    min_size: int = Field(1, ge=0, description="Connections the pool keeps open.")
    max_size: int = Field(4, ge=1, description="Most connections the pool opens (one pool per connection name).")
    application_name: str = Field("streamdag", description="Shown in pg_stat_activity; lets you find the run's sessions.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds for one connection attempt.")
    command_timeout: float | None = Field(None, gt=0, description="Seconds one statement may take; unset = no limit.")


class HttpConnection(_Base):
    """An HTTP endpoint (for HTTP clients; the ingest gateway is a source with its own listen address)."""

    type: Literal["http"]
    url: str


Connection = Annotated[
    NatsConnection | RedisConnection | PostgresConnection | HttpConnection, Field(discriminator="type")
]


_BY_TYPE: dict[str, type[_Base]] = {
    "nats": NatsConnection, "redis": RedisConnection, "postgres": PostgresConnection, "http": HttpConnection,
}


def validate_connection(raw: Any) -> tuple[_Base | None, list[Any]]:
    """One entry of `connections` as the `Connection` union validates it: the model, or None and
    pydantic's errors, located as the union locates them (`("nats", "url")`). Only the model of the
    entry's type is built; an entry without a known type goes through the whole union (its error
    names every type)."""
    from pydantic import TypeAdapter, ValidationError

    kind = raw.get("type") if type(raw) is dict else None
    model = _BY_TYPE.get(kind) if type(kind) is str else None
    try:
        if model is None:
            return TypeAdapter(Connection).validate_python(raw), []
        return model.model_validate(raw), []
    except ValidationError as exc:
        errors = exc.errors()
    if model is not None:  # the union puts the tag first
        for err in errors:
            err["loc"] = (str(kind), *err["loc"])
    return None, errors
