"""`alert`: each message (or each batch) POSTed to a webhook, its body built by a CEL template.

Wire it to what should page someone: an `errors` port (dead letters), or an `http_source` that
receives Alertmanager's webhook for the rules `streamdag alerts G` generates (integrity mismatch,
consistency below threshold), filtered and reworded for Slack, PagerDuty or a chat room.

Retries are the node's `retry` policy, applied by the runtime (one retry loop, docs/errors.md): a
refused or lost connection, a timeout, 408, 429 and 5xx are `Unavailable` (retried until the
webhook is back, the stall in metrics, nothing lost); 400, 413 and 422 are the message's fault (it
goes to `errors`); any other status (401, 403, 404: a setting) is retried up to `retry.max_attempts`.
A retried batch does not repeat what was already accepted: the sink remembers, for the batch being
retried, which messages the webhook took, so an alert is sent once per attempt that succeeds. When
the last attempt `retry.max_attempts` allows meets such a status, the sink returns the messages not
yet sent as failures of their own (they go to `errors`) and the batch is done: an alert the webhook
already accepted is never dead-lettered (the runtime would send the whole batch to `errors`).
The HTTP client is a small HTTP/1.1 one on asyncio streams (one connection per request,
`Connection: close`), so the sink needs no client library.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, field_validator

from engine import (
    CelExpr,
    ConnectionLost,
    ConnectorError,
    EvalError,
    Msg,
    NodeConfig,
    PositiveDuration,
    Sink,
    Unavailable,
    compile_expr,
    encode_failure,
)

__all__ = ["Alert", "AlertConfig", "WebhookError"]

_MESSAGE_FAULT = frozenset({400, 413, 422})
_UNAVAILABLE = frozenset({408, 425, 429})
_MAX_RESPONSE = 64 * 1024  # bytes of a response read (status line, headers, the start of the body)


class WebhookError(ConnectorError):
    """The webhook answered with a status that is neither success, busy nor the message's fault."""


class AlertConfig(NodeConfig):
    """POST each message (or each batch, `group: true`) to a webhook, the body from a CEL template."""

    url: str = Field(description="The webhook, http:// or https://; `${VAR}` keeps a secret out of the file.",
                     examples=["${ALERT_WEBHOOK}", "https://hooks.slack.com/services/T000/B000/XXXX"])
    body: CelExpr | None = Field(
        None, description="CEL template of the request body: a map or list is sent as JSON, a string as "
        "text/plain. The message body as JSON if unset.",
        examples=['{"text": "dead letter at " + msg.node + ": " + msg.error}'])
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.",
                                    examples=[{"Authorization": "Bearer ${ALERT_TOKEN}"}])
    method: Literal["POST", "PUT"] = Field("POST", description="HTTP method.")
    group: bool = Field(False, description="One request per batch, its body the JSON list of every "
                        "message's rendered body, instead of one request per message.")
    timeout: PositiveDuration = Field(10.0, description="Seconds for one request (connect, send, answer).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {v!r}")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, value in v.items():
            if not k or any(c in k for c in " :\r\n") or any(c in value for c in "\r\n"):
                raise ValueError(f"header {k!r}: a name without spaces or colons, values on one line")
        return v


class Alert(Sink):
    """One HTTP request per message (or per batch), in order; see the module docstring for retries."""

    Config: ClassVar[type[NodeConfig]] = AlertConfig
    example = """\
version: 1
name: alert_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config: {count: 100, template: '{"id": msg.i, "amount": msg.i % 7}'}
  checked:
    type: map
    inputs: [orders]
    config: {expr: '{"id": msg.id, "share": 100 / msg.amount}'}   # amount 0: a CEL error, a dead letter
  out: {type: file_sink, inputs: [checked], config: {path: out/orders.ndjson}}
  page:
    type: alert
    inputs: [checked.errors]
    config:
      url: "${ALERT_WEBHOOK:-http://127.0.0.1:9000/hook}"
      body: '{"text": "dead letter at " + msg.node + ": " + msg.error}'
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    config: AlertConfig

    def __init__(self, node_id: str, config: AlertConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self._body = compile_expr(config.body) if config.body else None
        parts = urlsplit(config.url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self._retrying: list[Msg] | None = None  # the batch a failed attempt left part done
        self._accepted: set[int] = set()  # ids of its messages the webhook accepted
        self._failed: list[tuple[Msg, str]] = []  # and those that failed alone
        self._attempts = 0  # attempts at it, this one included (the runtime counts the same)
        self.sent = 0  # requests accepted

    def metrics(self) -> dict[str, int]:
        return {"webhook_requests": self.sent}

    def render(self, msg: Msg) -> Any:
        """The body value of one message (raises ValueError with the reason)."""
        if self._body is None:
            return msg.body
        try:
            return self._body(msg.body, msg.meta)
        except EvalError as exc:
            raise ValueError(f"body: {exc}") from None

    def _encode(self, value: Any) -> tuple[bytes, str]:
        if isinstance(value, str):
            return value.encode(), "text/plain; charset=utf-8"
        if isinstance(value, bytes):
            return value, "application/octet-stream"
        try:
            return orjson.dumps(value), "application/json"
        except TypeError as exc:
            raise ValueError(f"body does not encode as JSON: {encode_failure(exc)}") from None

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        if batch is not self._retrying:
            self._retrying, self._accepted, self._failed, self._attempts = batch, set(), [], 0
        self._attempts += 1
        try:
            if self.config.group:
                await self._write_group(batch)
            else:
                await self._write_each(batch)
        except WebhookError as exc:
            retry = self.ctx.retry
            if retry is None or not retry.exhausted(self._attempts):
                raise  # the runtime retries the batch; what was accepted is not sent again
            done = self._accepted | {id(m) for m, _ in self._failed}
            self._failed.extend((m, str(exc)) for m in batch if id(m) not in done)
        failed = self._failed
        self._retrying, self._accepted, self._failed, self._attempts = None, set(), [], 0
        return failed

    async def _write_each(self, batch: list[Msg]) -> None:
        for msg in batch:
            if id(msg) in self._accepted:
                continue
            try:
                payload = self._encode(self.render(msg))
            except ValueError as exc:
                self._failed.append((msg, str(exc)))
                self._accepted.add(id(msg))
                continue
            reason = await self._request(*payload)
            if reason:
                self._failed.append((msg, reason))
            self._accepted.add(id(msg))

    async def _write_group(self, batch: list[Msg]) -> None:
        self._failed = []  # all or nothing: an attempt starts afresh (a retry must not count a failure twice)
        values, ok = [], []
        for msg in batch:
            try:
                values.append(self.render(msg))
                ok.append(msg)
            except ValueError as exc:
                self._failed.append((msg, str(exc)))
        if not ok:
            return
        try:
            payload = self._encode(values)
        except ValueError as exc:
            self._failed.extend((m, str(exc)) for m in ok)
            return
        reason = await self._request(*payload)
        if reason:
            self._failed.extend((m, reason) for m in ok)

    async def _request(self, body: bytes, content_type: str) -> str:
        """Send one request; '' when accepted, the reason when the message is at fault; raise otherwise."""
        import asyncio

        headers = {"Host": self._host_header, "User-Agent": "streamdag-alert", "Content-Type": content_type,
                   **self.config.headers, "Content-Length": str(len(body)), "Connection": "close"}
        head = f"{self.config.method} {self._target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        where = f"alert {self.id}: {self._host}:{self._port}"
        try:
            async with asyncio.timeout(self.config.timeout):
                reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._tls or None)
                try:
                    writer.write(head.encode("latin-1") + body)
                    await writer.drain()
                    answer = await reader.read(_MAX_RESPONSE)
                finally:
                    writer.close()
        except TimeoutError as exc:
            raise Unavailable(f"{where}: no answer within {self.config.timeout:g}s") from exc
        except OSError as exc:
            raise ConnectionLost(f"{where}: {exc}") from exc
        status, text = _status(answer)
        if 200 <= status < 300:
            self.sent += 1
            return ""
        reason = f"webhook answered {status}: {text[:200]}".rstrip(": ")
        if status in _MESSAGE_FAULT:
            return reason
        if status in _UNAVAILABLE or status >= 500 or status == 0:
            raise Unavailable(f"{where}: {reason}")
        raise WebhookError(f"{where}: {reason}")


def _status(answer: bytes) -> tuple[int, str]:
    """(status, the start of the body) of a raw HTTP/1.x response; status 0 if it is not one."""
    head, _, body = answer.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
        return 0, answer[:100].decode("utf-8", "replace")
    return int(line[1]), body.decode("utf-8", "replace").strip()
