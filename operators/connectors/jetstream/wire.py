"""The lean path under nats-py: raw protocol writes for acks and publishes, raw reads for our subjects.

nats-py turns every incoming message into a `Msg` object, a queue entry and a coroutine call on a
per-subscription task, which costs more than everything streamdag does with the message. For the
subscriptions the JetStream nodes own (pull inbox, PubAck inbox) a `Tap` takes the parsed frame
straight from the protocol parser to a plain function. Both sides fall back to nats-py's public API
when its internals are not there (another version), so they stay correct, only slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Handler", "Tap", "parse_headers", "write_lines"]

# handler(subject, reply, data, headers or None, status or None)
Handler = Callable[[str, str, bytes, "dict[str, str] | None", "str | None"], None]


def parse_headers(raw: bytes) -> tuple[dict[str, str], str | None]:
    """(headers, status) of a `NATS/1.0 [status]` header block."""
    text = raw.decode("utf-8", "replace")
    first, _, rest = text.partition("\r\n")
    status = first[9:12] if len(first) >= 12 else None
    headers: dict[str, str] = {}
    for line in rest.split("\r\n"):
        if line:
            k, _, v = line.partition(":")
            headers[k.strip()] = v.strip()
    if status and len(first) > 13:
        headers.setdefault("Description", first[13:].strip())
    return headers, status


class Tap:
    """Routes frames of chosen subscriptions (by sid) to plain functions, past nats-py's machinery."""

    def __init__(self, nc: Any, fast: bool = True):
        self.nc = nc
        self.handlers: dict[int, Handler] = {}
        self.fast = fast and callable(getattr(nc, "_process_msg", None))
        if self.fast:
            original = nc._process_msg
            handlers = self.handlers

            async def process_msg(
                sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
            ) -> None:
                handler = handlers.get(sid)
                if handler is None:
                    await original(sid, subject, reply, data, headers)
                    return
                if headers:
                    hdrs, status = parse_headers(headers)
                    handler(subject.decode(), reply.decode(), data, hdrs, status)
                else:
                    handler(subject.decode(), reply.decode(), data, None, None)

            nc._process_msg = process_msg

    async def subscribe(self, subject: str, handler: Handler) -> Any:
        """Subscribe `subject`; every message goes to `handler` (synchronously, in arrival order)."""

        async def fallback(msg: Any) -> None:
            headers = dict(msg.headers) if msg.headers else None
            status = headers.get("Status") if headers else None
            handler(msg.subject, msg.reply, msg.data, headers, status)

        sub = await self.nc.subscribe(subject, cb=fallback)
        sid = getattr(sub, "_id", None)
        if self.fast and isinstance(sid, int):
            self.handlers[sid] = handler
        return sub

    def forget(self, sub: Any) -> None:
        self.handlers.pop(getattr(sub, "_id", -1), None)


async def write_lines(nc: Any, lines: list[tuple[str, bytes]]) -> None:
    """Publish each `(subject, payload)` with no reply in one write. Uses nats-py's outgoing buffer when
    it has one (while reconnecting it is kept and sent after the reconnect, like any publish)."""
    if not lines:
        return
    if nc.is_closed:
        return
    send = getattr(nc, "_send_command", None)
    if send is None or not hasattr(nc, "_flush_pending"):  # another nats-py: the public, slower path
        for subject, payload in lines:
            await nc.publish(subject, payload)
        return
    await send(b"".join(b"PUB %s %d\r\n%s\r\n" % (s.encode(), len(p), p) for s, p in lines))
    await nc._flush_pending()
