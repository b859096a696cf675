"""Config of the `http_source` node (importable offline: no server, no client library)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import CelExpr, CheckContext, CheckIssue, NodeConfig, PositiveDuration, Size

__all__ = ["HttpAuthConfig", "HttpBucketConfig", "HttpRateLimitConfig", "HttpSourceConfig", "check_config", "is_loopback"]


class _Sub(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpAuthConfig(_Sub):
    """Who may post: bearer tokens or API keys, read from the environment and/or a file."""

    scheme: Literal["bearer", "api_key"] = Field(
        "bearer", description="`bearer`: `Authorization: Bearer <token>`; `api_key`: the key in `header`.")
    header: str = Field("X-API-Key", description="Header that carries the key when `scheme` is `api_key`.")
    env: str | None = Field(
        None, description="Environment variable holding credentials, comma-separated, each `token` or `name:token`.",
        examples=["INGEST_TOKENS"])
    file: str | None = Field(
        None, description="File with one credential a line (`token` or `name:token`; `#` starts a comment).",
        examples=["secrets/ingest_tokens.txt"])

    @model_validator(mode="after")
    def _one_source(self) -> HttpAuthConfig:
        if not self.env and not self.file:
            raise ValueError("auth needs `env` or `file` (or both) to read credentials from")
        return self


class HttpBucketConfig(_Sub):
    """A token bucket: `rate` requests per second on average, bursts of up to `burst`."""

    rate: float = Field(gt=0, description="Requests per second refilled.", examples=[10000])
    burst: int | None = Field(None, ge=1, description="Bucket size; `rate` (at least 1) if unset.")

    def capacity(self) -> float:
        return float(self.burst) if self.burst is not None else max(1.0, self.rate)


class HttpRateLimitConfig(_Sub):
    """Request rate limits; a request over either gets 429 with `Retry-After`."""

    global_: HttpBucketConfig | None = Field(None, alias="global", description="Limit over all clients.")
    per_credential: HttpBucketConfig | None = Field(
        None, description="Limit per credential (per client address when auth is off).")


class HttpSourceConfig(NodeConfig):
    """HTTP ingest gateway: `POST /api/v1/data/ingest` with JSON, JSON arrays or NDJSON."""

    host: str = Field("127.0.0.1", description="Address to listen on. Non-loopback needs `auth`.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one (tests).")
    path: str = Field("/api/v1/data/ingest", pattern=r"^/", description="Path of the ingest endpoint.")
    max_batch: int = Field(1000, ge=1, description="Most items in one request (array or NDJSON lines).")
    max_body_bytes: Size = Field(4 << 20, ge=1, description="Largest request body on the wire (413 beyond).")
    max_decompressed_bytes: Size = Field(
        16 << 20, ge=1, description="Largest body after gzip/zstd decoding; decoding stops there (413).")
    ack: Literal["committed", "received"] = Field(
        "committed",
        description="`committed`: reply 202 once every item's ack resolved downstream (durable). "
                    "`received`: reply 202 on admission, before the graph has committed (weaker).")
    ack_timeout: PositiveDuration = Field(30.0, gt=0, description="Seconds to wait for acks before replying 504.")
    max_in_flight: int = Field(
        20000, ge=1, description="Most admitted items not yet settled; beyond it requests get 503.")
    max_buffered_bytes: Size = Field(
        64 << 20, ge=1, description="Request body bytes held in memory over all connections (503 beyond).")
    max_connections: int = Field(1024, ge=1, description="Open connections beyond this are refused with 503.")
    idle_timeout: PositiveDuration = Field(
        30.0, gt=0, description="Seconds before closing an idle connection, or one still sending its request.")
    retry_after: int = Field(1, ge=1, description="`Retry-After` seconds sent with 503.")
    idempotency_expr: CelExpr | None = Field(
        None, description="CEL over each item giving its message id (instead of the Idempotency-Key header).",
        examples=["msg.order_id"])
    idempotency_cache: int = Field(
        10000, ge=0, description="Idempotency-Key replies remembered for replay (per process; 0 turns it off).")
    idempotency_ttl: PositiveDuration = Field(300.0, gt=0, description="Seconds a remembered reply is replayed.")
    schema_: str | dict[str, Any] | None = Field(
        None, alias="schema",
        description="JSON Schema every item must satisfy (a name from `schemas:` or inline); "
                    "a request with any invalid item gets 422 and none of its items enter the graph "
                    "(see `on_invalid_item`).")
    on_invalid_item: Literal["reject_request", "accept_valid"] = Field(
        "reject_request",
        description="What an invalid item (failing `schema` or `idempotency_expr`, or an NDJSON line that is "
                    "not JSON) does. `reject_request`: the whole request is refused (422 or 400), none of its "
                    "items enter the graph. `accept_valid`: the valid items are accepted exactly as usual and "
                    "the 202 lists the others under `refused` with their reasons; a request with no valid item "
                    "gets 422.")
    auth: HttpAuthConfig | None = Field(None, description="Credentials; required when `host` is not loopback.")
    rate_limit: HttpRateLimitConfig | None = Field(None, description="Token buckets, global and per credential.")
    readiness_timeout: PositiveDuration = Field(0.5, gt=0, description="Seconds to reach each connection in /readyz.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; a name we cannot judge offline is not loopback."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_config(config: HttpSourceConfig, ctx: CheckContext) -> Iterable[CheckIssue]:
    """Offline checks: E250 an open listener needs auth; W251 a decoded cap below the wire cap.
    (An unknown `schema` name is the validator's E217, an invalid inline one E218.)"""
    if not is_loopback(config.host) and config.auth is None:
        yield CheckIssue(("host",), "E250",
                         f"http_source listens on non-loopback address {config.host!r} without `auth`; "
                         "add `auth` or bind to 127.0.0.1")
    if config.max_decompressed_bytes < config.max_body_bytes:
        yield CheckIssue(("max_decompressed_bytes",), "W251",
                         "max_decompressed_bytes is below max_body_bytes: uncompressed bodies are capped by it",
                         severity="warning")
