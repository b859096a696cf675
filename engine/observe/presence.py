"""Every worker of a graph, on every host, registered in a NATS KV bucket with a TTL heartbeat.

A run puts one record under `<graph>.<worker id>` in the bucket `streamdag_workers` (created if
missing, entries expiring `TTL` seconds after their last put) and puts it again every
`HEARTBEAT` seconds: worker id, host, pid, slot (index of count), version, start time, its
metrics address and its source totals. A clean stop deletes it; a worker killed with kill -9
disappears when its last put expires. `streamdag workers G` lists them (`list_workers`), with
the sum; the status page and `/api/stats` add them as `workers` (`Presence.peers`).

Registration is best effort: a graph without a `nats` connection (and no `--registry`) is not
registered, and a NATS that cannot be reached is a warning, never a reason to stop the graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import orjson

from engine.runtime.state import as_view

__all__ = ["BUCKET", "HEARTBEAT", "TTL", "Presence", "format_workers", "list_workers", "registry_url", "sum_totals"]

log = logging.getLogger("streamdag.observe.presence")

BUCKET = "streamdag_workers"
HEARTBEAT = 1.0  # seconds between two puts of a worker's record
TTL = 3 * HEARTBEAT  # a record not put again for this long is gone: its worker is dead or cut off
TOTALS = ("entered", "delivered", "filtered", "dead_lettered", "nacked", "in_flight")


def _key_part(text: str) -> str:
    return re.sub(r"[^-_=a-zA-Z0-9]", "_", text) or "_"


def registry_url(graph: Any, explicit: str | None = None) -> dict[str, Any] | None:
    """Connection settings of the registry: `--registry URL`, else the graph's first `nats` connection."""
    if explicit:
        return {"url": explicit}
    for conn in graph.connections.values():
        if conn.get("type") == "nats":
            return conn
    return None


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: its default logs a traceback for every failed attempt."""
    log.debug("worker registry connection: %r", exc)


async def _connect(settings: dict[str, Any]) -> Any:
    import nats

    kwargs: dict[str, Any] = {"servers": [u.strip() for u in settings["url"].split(",")],
                              "connect_timeout": settings.get("connect_timeout", 2.0),
                              "max_reconnect_attempts": -1, "reconnect_time_wait": settings.get("reconnect_wait", 1.0),
                              "allow_reconnect": True, "name": "streamdag-presence", "error_cb": _quiet}
    for key, arg in (("user", "user"), ("password", "password"), ("token", "token"), ("creds_file", "user_credentials")):
        if settings.get(key):
            kwargs[arg] = settings[key]
    return await nats.connect(**kwargs)


async def _bucket(js: Any) -> Any:
    """The registry bucket; created if missing, its TTL brought to `TTL` if it was made with another."""
    from nats.js.errors import BucketNotFoundError

    try:
        kv = await js.key_value(BUCKET)
        info = await js.stream_info(f"KV_{BUCKET}")
        if info.config.max_age != TTL:
            info.config.max_age = TTL
            info.config.duplicate_window = min(info.config.duplicate_window or TTL, TTL)  # not above max_age
            await js.update_stream(info.config)
        return kv
    except BucketNotFoundError:
        return await js.create_key_value(bucket=BUCKET, ttl=TTL, history=1,
                                         description="streamdag: the workers of every graph (heartbeats)")


def sum_totals(records: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(int(r.get("totals", {}).get(k, 0)) for r in records) for k in TOTALS}


class Presence:
    """This run's record in the registry, put every `interval` seconds; `peers` holds the graph's records."""

    def __init__(self, runner: Any, settings: dict[str, Any], metrics_url: str | None = None,
                 interval: float = HEARTBEAT):
        self.view = as_view(runner)
        self.settings = settings
        self.metrics_url = metrics_url
        self.interval = interval
        w = self.view.worker
        self.key = f"{_key_part(self.view.name)}.{_key_part(w.id)}"
        self.peers: list[dict[str, Any]] = []
        self._nc: Any = None
        self._kv: Any = None
        self._task: asyncio.Task[None] | None = None

    def record(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("streamdag")
        except PackageNotFoundError:
            ver = "unknown"
        w = self.view.worker
        trackers = self.view.trackers.values()
        return {"graph": self.view.name, "worker": w.id, "host": w.host, "pid": w.pid, "index": w.index,
                "count": w.count, "version": ver, "started": w.started, "updated": time.time(),
                "metrics": self.metrics_url, "draining": self.view.draining,
                "totals": {k: sum(getattr(t, k) for t in trackers) for k in TOTALS}}

    async def start(self) -> bool:
        """Register; False (and a warning) when the registry cannot be reached."""
        try:
            self._nc = await asyncio.wait_for(_connect(self.settings), 5)
            self._kv = await _bucket(self._nc.jetstream())
            await self._put()
        except Exception as exc:  # noqa: BLE001 - registration is best effort (module docstring)
            log.warning("worker registry at %s unavailable: %s; running unregistered", self.settings.get("url"),
                        str(exc) or type(exc).__name__)
            await self._close_client()
            return False
        self._task = asyncio.create_task(self._beat(), name="observe:presence")
        return True

    async def _put(self) -> None:
        await self._kv.put(self.key, orjson.dumps(self.record()))

    async def _beat(self) -> None:
        prefix = self.key.rsplit(".", 1)[0]
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._put()
                self.peers = await _records(self._kv, prefix)
            except Exception as exc:  # noqa: BLE001 - a NATS outage: try again next beat
                log.warning("worker heartbeat failed: %s", exc)

    async def close(self) -> None:
        """Deregister: the record goes at once rather than after the TTL."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kv.delete(self.key), 2)
        await self._close_client()

    async def _close_client(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = self._kv = None


async def _records(kv: Any, prefix: str) -> list[dict[str, Any]]:
    """The live records under `<prefix>.*`, by worker id."""
    watcher = await kv.watch(f"{prefix}.*", include_history=False, ignore_deletes=True)
    records = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of the current values
                break
            if entry.value and entry.operation is None:
                records.append(orjson.loads(entry.value))
    finally:
        await watcher.stop()
    return sorted(records, key=lambda r: (r.get("host", ""), r.get("index", 0), r.get("worker", "")))


async def list_workers(settings: dict[str, Any], graph: str) -> list[dict[str, Any]]:
    """The registered workers of `graph` (an empty list when the bucket does not exist yet)."""
    from nats.js.errors import BucketNotFoundError

    nc = await asyncio.wait_for(_connect(settings), 5)
    try:
        try:
            kv = await nc.jetstream().key_value(BUCKET)
        except BucketNotFoundError:
            return []
        return await _records(kv, _key_part(graph))
    finally:
        await nc.close()


def format_workers(graph: str, records: list[dict[str, Any]], now: float | None = None) -> str:
    """`streamdag workers G`: one line per worker, then their sum."""
    now = time.time() if now is None else now
    total = sum_totals(records)
    cols = ["worker", "slot", "pid", "version", "up", "seen", "in", "delivered", "in_flight", "metrics"]
    rows = [[r["worker"], f"{r['index']}/{r['count']}", str(r["pid"]), r["version"], f"{now - r['started']:.0f}s",
             f"{now - r['updated']:.1f}s ago", str(r["totals"]["entered"]), str(r["totals"]["delivered"]),
             str(r["totals"]["in_flight"]), r.get("metrics") or "-"] for r in records]
    rows.append(["sum", "", "", "", "", "", str(total["entered"]), str(total["delivered"]), str(total["in_flight"]), ""])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [f"graph {graph}: {len(records)} worker(s)", "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
