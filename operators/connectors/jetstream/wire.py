"""The lean path under nats-py: raw protocol writes for acks and publishes, raw reads for our subjects.

nats-py turns every incoming message into a `Msg` object, a queue entry and a coroutine call on a
per-subscription task, which costs more than everything streamdag does with the message. For the
subscriptions the JetStream nodes own (pull inbox, PubAck inbox) a `Tap` takes the parsed frame
straight from the protocol parser to a plain function. Both sides fall back to nats-py's public API
when its internals are not there (another version), so they stay correct, only slower.

The Tap also reads the frames of its subscriptions itself (`FrameReader`): nats-py's parser matches
seven regular expressions per frame, copies each payload twice and awaits a coroutine per message,
about 1.3 µs a message, more than decoding its JSON. Before nats-py's parser sees a chunk from the
socket, the reader takes the complete `MSG`/`HMSG` frames for tapped subscriptions from the front
of its buffer in one synchronous loop (one split, one copy per frame). It stops at the first frame
it does not own (another subscription, `PING`, `INFO`, `-ERR`, a line not complete yet or one it
does not recognise) and leaves the rest to nats-py's parser, so order and every other protocol
message are nats-py's own. A tapped frame whose payload is cut by the read waits in the buffer for
the next read (nats-py's parser would take it, and all of its next read).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["BatchHandler", "FrameReader", "Handler", "Tap", "parse_headers", "write_acks", "write_lines"]

# handler(subject, reply, data, headers or None, status or None)
Handler = Callable[[str, str, bytes, "dict[str, str] | None", "str | None"], None]
# batch([(subject, reply, data, headers or None), ...]): consecutive frames with a reply and no status
BatchHandler = Callable[[list[tuple[str, str, bytes, "dict[str, str] | None"]]], None]


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


# Frames as nats-server writes them (single spaces): MSG <subject> <sid> [reply] <size>, and
# HMSG <subject> <sid> [reply] <header size> <total size>. Anything else goes to nats-py's parser.
_MSG = re.compile(rb"MSG ([^ \r\n]+) ([0-9]+) (?:([^ \r\n]+) )?([0-9]+)\r\n")
_HMSG = re.compile(rb"HMSG ([^ \r\n]+) ([0-9]+) (?:([^ \r\n]+) )?([0-9]+) ([0-9]+)\r\n")
_AWAITING_CONTROL_LINE = 1  # nats.protocol.parser's state between frames
_LARGE = 1 << 20  # a buffer this large may hold the front part of a large frame: check before copying


class FrameReader:
    """Takes the complete frames of tapped subscriptions from the front of nats-py's parser buffer
    and hands them to their handlers; see the module docstring."""

    def __init__(self, parser: Any, handlers: dict[int, Handler], batches: dict[int, BatchHandler] | None = None):
        self.parser = parser
        self.handlers = handlers
        self.batches = batches if batches is not None else {}
        self.original = parser.parse
        self.partial = False  # `take` stopped at a tapped frame not complete yet
        self.ints: dict[bytes, int] = {}  # sids and sizes seen: bytes -> int

    async def parse(self, data: bytes = b"") -> None:
        ps = self.parser
        ps.buf.extend(data)
        if ps.state == _AWAITING_CONTROL_LINE and self.handlers:
            self.take(ps.buf)
            if self.partial:  # the rest of a tapped frame is still to come: keep it for the next read
                return
        await self.original(b"")  # whatever is left: nats-py's parser, as before

    def take(self, buf: bytearray) -> int:
        """Hand over the tapped frames at the front of `buf` and delete them; their count. Sets
        `partial` when it stopped at a tapped frame whose payload is still to come (nats-py's parser
        would take it over, and every frame after it in its next reads). Consecutive frames of a
        subscription with a batch handler that carry a reply and no status go to it as one list."""
        self.partial = False
        if len(buf) > _LARGE and self._cut_at_front(buf):
            self.partial = True
            return 0
        data = bytes(buf)  # one copy: matching and slicing bytes is cheaper than a bytearray
        handlers, batches, ints = self.handlers, self.batches, self.ints
        find = data.find
        end = len(data)
        pos = n = 0
        run: list[tuple[str, str, bytes, dict[str, str] | None]] = []
        run_sid = -1
        try:
            while pos < end:
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                parts = data[pos:eol].split(b" ")
                op = parts[0]
                k = len(parts)
                if op == b"MSG" and (k == 5 or k == 4):
                    reply = parts[3] if k == 5 else b""
                    hsize = b"0"
                elif op == b"HMSG" and (k == 6 or k == 5):
                    reply = parts[3] if k == 6 else b""
                    hsize = parts[-2]
                else:
                    break
                # the same few numbers again and again (sids, sizes): looked up, not parsed (int() costs more)
                try:
                    sid, size, hdr = ints[parts[2]], ints[parts[-1]], ints[hsize]
                except KeyError:
                    if len(ints) > 4096:
                        ints.clear()
                    try:
                        sid, size, hdr = (ints.setdefault(x, int(x)) for x in (parts[2], parts[-1], hsize))
                    except ValueError:
                        break
                a = eol + 2
                hdr_end = a + hdr
                b = a + size
                if not a <= hdr_end <= b:
                    break
                if sid != run_sid and run:
                    batches[run_sid](run)
                    run = []
                handler = handlers.get(sid)
                if handler is None:
                    break
                if b + 2 > end:
                    self.partial = True
                    break
                if hdr_end == a:
                    headers = status = None
                else:
                    headers, status = parse_headers(data[a:hdr_end])
                if reply and status is None and sid in batches:
                    run.append((parts[1].decode(), reply.decode(), data[hdr_end:b], headers))
                    run_sid = sid
                else:
                    if run:  # in order: the run before this frame
                        batches[run_sid](run)
                        run = []
                    handler(parts[1].decode(), reply.decode(), data[hdr_end:b], headers, status)
                pos = b + 2
                n += 1
        finally:
            if run:
                batches[run_sid](run)
            if pos:
                del buf[:pos]
        return n

    def _cut_at_front(self, buf: bytearray) -> bool:
        """The first frame is a tapped one still incomplete (a large payload arriving over several
        reads: not copied again each time)."""
        m = _MSG.match(buf) or _HMSG.match(buf)
        if m is None or int(m.group(2)) not in self.handlers:
            return False
        return m.end() + int(m.groups()[-1]) + 2 > len(buf)


class Tap:
    """Routes frames of chosen subscriptions (by sid) to plain functions, past nats-py's machinery."""

    def __init__(self, nc: Any, fast: bool = True):
        self.nc = nc
        self.handlers: dict[int, Handler] = {}
        self.batches: dict[int, BatchHandler] = {}
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
            ps = getattr(nc, "_ps", None)
            if isinstance(getattr(ps, "buf", None), bytearray) and getattr(ps, "state", None) is not None:
                nc._ps.parse = FrameReader(ps, handlers, self.batches).parse

    async def subscribe(self, subject: str, handler: Handler, batch: BatchHandler | None = None) -> Any:
        """Subscribe `subject`; every message goes to `handler` (synchronously, in arrival order), or
        with `batch`, runs of frames that carry a reply and no status to `batch` as one list (in
        order with the frames given to `handler`)."""

        async def fallback(msg: Any) -> None:
            headers = dict(msg.headers) if msg.headers else None
            status = headers.get("Status") if headers else None
            handler(msg.subject, msg.reply, msg.data, headers, status)

        sub = await self.nc.subscribe(subject, cb=fallback)
        sid = getattr(sub, "_id", None)
        if self.fast and isinstance(sid, int):
            self.handlers[sid] = handler
            if batch is not None:
                self.batches[sid] = batch
        return sub

    def forget(self, sub: Any) -> None:
        self.handlers.pop(getattr(sub, "_id", -1), None)
        self.batches.pop(getattr(sub, "_id", -1), None)


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


async def write_acks(nc: Any, subjects: list[str], payload: str = "+ACK") -> None:
    """`write_lines` for one payload to many subjects (a batch of acks): the lines built by one
    `str.join` in C, not formatted one by one."""
    if not subjects or nc.is_closed:
        return
    send = getattr(nc, "_send_command", None)
    if send is None or not hasattr(nc, "_flush_pending"):
        await write_lines(nc, [(s, payload.encode()) for s in subjects])
        return
    tail = f" {len(payload.encode())}\r\n{payload}\r\n"
    await send(("PUB " + (tail + "PUB ").join(subjects) + tail).encode())
    await nc._flush_pending()
