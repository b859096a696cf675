"""Raw NATS protocol writes for acks: one buffer and one flush per batch, not one coroutine per message."""

from __future__ import annotations

from typing import Any

__all__ = ["write_lines"]


async def write_lines(nc: Any, lines: list[tuple[str, bytes]]) -> None:
    """Publish each `(subject, payload)` with no reply. Uses nats-py's outgoing buffer when it has one
    (while reconnecting the buffer is kept and sent after the reconnect, like any publish)."""
    if not lines:
        return
    send = getattr(nc, "_send_command", None)
    if send is None or not hasattr(nc, "_flush_pending"):  # another nats-py: the public, slower path
        for subject, payload in lines:
            await nc.publish(subject, payload)
        return
    if nc.is_closed:
        return
    buf = b"".join(b"PUB %s %d\r\n%s\r\n" % (s.encode(), len(p), p) for s, p in lines)
    await send(buf)
    await nc._flush_pending()
