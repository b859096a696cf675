"""`streamdag tap URL NODE[.PORT]`: a sample of the messages passing a node of a running graph.

The run's metrics server (`run --metrics-port`) serves `GET /api/tap?node=N&port=P&rate=R&filter=F`
as NDJSON, one line per message: `{"ts", "node", "port", "body", "meta"}`. Payloads may be
sensitive, so the endpoint answers 403 unless the run opted in (`run --tap`, or `tap: true` in the
graph; docs/operate.md).

Cost: nothing when nobody taps. The router checks `RunState.taps` once per batch (an empty dict);
a `Tap` registers itself on the (node, port) keys it watches and only those batches reach
`Tap.offer`. `offer` runs in the graph's task, so it does little: a token bucket (`rate` messages
per second, the sample), the CEL filter on messages while tokens last, and a reference to each
chosen body and meta (never mutated in place: engine.message) appended to a bounded deque. The
server task serializes them. A slow reader loses the oldest lines (`dropped`), never slows the graph.

`NODE` alone watches every output port of a source or operator (`errors` included), and what
reaches a sink (the ports feeding it).
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson

from engine.codec import safe_payload
from engine.expr import CelError, EvalError, compile_expr

__all__ = ["Tap", "TapRefused", "follow", "tap_keys", "tap_stream"]


class TapRefused(Exception):
    """A tap request the server refuses: `status` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Tap:
    """One subscriber: what passes its keys, sampled by `rate` and `filter`, queued for the server."""

    def __init__(self, rate: float = 10.0, filter_source: str | None = None, queue: int = 1000,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.filter = compile_expr(filter_source) if filter_source else None
        self.clock = clock
        self.tokens = min(rate, max(1.0, rate))  # a burst of up to one second of messages
        self.refilled = clock()
        self.lines: collections.deque[tuple[float, str, str, Any, Any]] = collections.deque(maxlen=queue)
        self.ready = asyncio.Event()
        self.seen = self.sent = self.dropped = 0

    def offer(self, node: str, port: str, msgs: list[Any]) -> None:
        now = self.clock()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        self.seen += len(msgs)
        if self.tokens < 1:
            return
        fn = self.filter
        wall = time.time()
        for m in msgs:
            if fn is not None:
                try:
                    if fn(m.body, m.meta) is not True:
                        continue
                except EvalError:
                    continue
            if len(self.lines) == self.lines.maxlen:
                self.dropped += 1
            self.lines.append((wall, node, port, m.body, m.meta))
            self.tokens -= 1
            if self.tokens < 1:
                break
        self.ready.set()

    def take(self) -> list[bytes]:
        """The queued messages as NDJSON lines."""
        out = []
        while self.lines:
            ts, node, port, body, meta = self.lines.popleft()
            meta = {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool | type(None))}
            out.append(orjson.dumps({"ts": ts, "node": node, "port": port, **_body(body), "meta": meta},
                                    option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS, default=str))
        self.sent += len(out)
        self.ready.clear()
        return out


def _body(value: Any) -> dict[str, Any]:
    safe = safe_payload(value)
    body = safe.pop("payload", None)
    return {"body": body, **safe}


def tap_keys(plan: Any, node: str, port: str | None) -> list[tuple[str, str]]:
    """The (node, port) pairs that `NODE[.PORT]` watches; `TapRefused` (404) for an unknown one."""
    rn = plan.nodes.get(node)
    if rn is None:
        raise TapRefused(404, f"no node '{node}' in graph {plan.name} (nodes: {', '.join(plan.nodes)})")
    if port:
        if port not in rn.ports:
            raise TapRefused(404, f"node '{node}' has no port '{port}' (ports: {', '.join(rn.ports)})")
        return [(node, port)]
    if rn.kind == "sink":
        return sorted({(e.source, e.port) for e in plan.edges if e.target == node})
    return [(node, p) for p in rn.ports]


async def tap_stream(view: Any, query: str, allowed: bool, write: Callable[[bytes], Any],
                     drain: Callable[[], Any], closing: asyncio.Event) -> None:
    """Serve one `/api/tap` request: validate it, then write NDJSON lines until the client goes,
    `limit` lines are sent, or the server closes. Raises `TapRefused` before writing anything."""
    if not allowed:
        raise TapRefused(403, "tap is off for this run: payloads may be sensitive. Start the run with --tap, "
                         "or set `tap: true` in the graph (docs/operate.md)")
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    try:
        rate = float(q.get("rate", "10"))
        limit = int(q["limit"]) if "limit" in q else None
        if not 0 < rate <= 100_000 or (limit is not None and limit < 1):
            raise ValueError("rate must be in (0, 100000] and limit at least 1")
        tap = Tap(rate, q.get("filter") or None)
    except (ValueError, CelError) as exc:
        raise TapRefused(400, f"bad tap request: {exc}") from None
    keys = tap_keys(view.plan, q.get("node", ""), q.get("port") or None)
    remove = view.add_tap(keys, tap)
    try:
        write(b"")  # headers are out: the stream starts
        sent = 0
        while not closing.is_set():
            if not tap.lines:
                waiter = asyncio.ensure_future(tap.ready.wait())
                stop = asyncio.ensure_future(closing.wait())
                await asyncio.wait({waiter, stop}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stop.cancel()
            lines = tap.take()
            if limit is not None:
                lines = lines[: limit - sent]
            for line in lines:
                write(line)
            sent += len(lines)
            await drain()
            if limit is not None and sent >= limit:
                break
    finally:
        remove()


def follow(url: str, target: str, rate: float, filter_source: str | None, limit: int | None,
           fmt: str, out: Any) -> int:
    """The client: print what the tap sends (NDJSON as it comes, or a readable line per message)."""
    import urllib.error
    import urllib.request

    node, _, port = target.partition(".")
    params = {"node": node, "rate": rate}
    if port:
        params["port"] = port
    if filter_source:
        params["filter"] = filter_source
    if limit:
        params["limit"] = limit
    base = url if "://" in url else "http://" + url  # `host:port` as `top` takes it (urllib: "unknown url type")
    full = f"{base.rstrip('/')}/api/tap?{urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=None) as resp:
            for raw in resp:
                if fmt == "ndjson":
                    out.write(raw.decode())
                else:
                    rec = orjson.loads(raw)
                    stamp = time.strftime("%H:%M:%S", time.localtime(rec["ts"])) + f".{int(rec['ts'] % 1 * 1000):03d}"
                    body = orjson.dumps(rec.get("body")).decode()
                    out.write(f"{stamp} {rec['node']}.{rec['port']}  {body}  {orjson.dumps(rec['meta']).decode()}\n")
                out.flush()
    except urllib.error.HTTPError as exc:
        print(f"error: {url}: {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 1 if exc.code in (400, 403, 404) else 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 2
    return 0
