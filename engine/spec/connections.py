"""Named connection settings (`connections:` in a graph). `${VAR:-default}` is applied before these."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Connection", "HttpConnection", "NatsConnection", "PostgresConnection", "RedisConnection"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NatsConnection(_Base):
    """A NATS server (JetStream enabled)."""

    type: Literal["nats"]
    url: str = Field("nats://127.0.0.1:4222", description="Server URL; several may be comma-separated.")
    name: str | None = Field(None, description="Client name shown by the server.")
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = Field(None, description="NATS credentials file (JWT + nkey).")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds for one connection attempt.")


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
    min_size: int = Field(1, ge=0)
    max_size: int = Field(4, ge=1)


class HttpConnection(_Base):
    """An HTTP endpoint (for HTTP clients; the ingest gateway is a source with its own listen address)."""

    type: Literal["http"]
    url: str


Connection = Annotated[
    NatsConnection | RedisConnection | PostgresConnection | HttpConnection, Field(discriminator="type")
]
