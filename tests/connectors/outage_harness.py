"""Outages of real services under a running graph: private servers that can be stopped and started
again with their data, and a watcher that samples a sink's stall and commits while `Runner` runs.

A service's `down()` and `up()` block (they run a server binary and wait for it), so the driver
calls them in a thread: the graph keeps running on the event loop meanwhile. `up()` returns once
the server accepts connections; from then on, the watcher measures the sink's recovery (the time
to its first committed batch)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.observe.metrics import make_registry, render_metrics
from tests.connectors.jetstream_fixtures import PrivateServer
from tests.connectors.postgres_harness import PrivatePostgres
from tests.connectors.redis_harness import PrivateRedis

__all__ = ["NatsService", "Outage", "PostgresService", "RedisService", "Service", "Watch", "outage",
           "outage_seconds", "recovered", "stalled_metric"]


def outage_seconds(default: float = 60.0) -> float:
    """`STREAMDAG_OUTAGE_SECONDS`: the long outage's length (default 60 s), to rerun it longer."""
    import os

    return float(os.environ.get("STREAMDAG_OUTAGE_SECONDS", default))


class Service(Protocol):
    name: str

    def create(self) -> None: ...
    def down(self) -> None: ...
    def up(self) -> None: ...
    def cleanup(self) -> None: ...


class RedisService:
    """A private redis-server with AOF (appendfsync always): stopped with SIGTERM, data kept."""

    name = "redis"

    def __init__(self) -> None:
        self.server = PrivateRedis()
        self.url = self.server.url

    def create(self) -> None:
        self.server.start()

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start()  # returns on the first PONG: after the AOF is loaded

    def cleanup(self) -> None:
        self.server.cleanup()


class NatsService:
    """A private nats-server with JetStream and its own store dir: stopped with SIGTERM, streams kept."""

    name = "nats"

    def __init__(self) -> None:
        self.server = PrivateServer()
        self.url = self.server.url

    def create(self) -> None:
        self.up()

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start()
        self.server.wait_ready_blocking()

    def cleanup(self) -> None:
        self.server.cleanup()


class PostgresService:
    """A private PostgreSQL cluster: crashed with `pg_ctl stop -m immediate`, recovered from WAL on start."""

    name = "postgres"

    def __init__(self) -> None:
        self.server = PrivatePostgres()
        self.dsn = self.server.dsn

    def create(self) -> None:
        self.server.create()

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start()  # pg_ctl -w: returns once the server accepts connections

    def cleanup(self) -> None:
        self.server.cleanup()


@dataclass
class Outage:
    service: str
    down_at: float  # time.monotonic()
    up_at: float = 0.0


_STALLED = re.compile(r'^streamdag_node_stalled_seconds\{([^}]*)\} (\S+)$', re.M)


def stalled_metric(runner: Any, node: str) -> tuple[str, float]:
    """(class label, value) of `streamdag_node_stalled_seconds` for `node`, from a real scrape."""
    text = render_metrics(make_registry(runner, process=False)).decode()
    for labels, value in _STALLED.findall(text):
        if f'node="{node}"' in labels:
            cls = re.search(r'class="([^"]*)"', labels)
            return (cls.group(1) if cls else ""), float(value)
    raise AssertionError(f"no streamdag_node_stalled_seconds for node {node!r} in:\n{text}")


@dataclass
class Watch:
    """Samples one sink of a running `Runner` every `every` seconds: commits, stall and its class."""

    runner: Any
    node: str
    every: float = 0.01
    samples: list[tuple[float, int, bool]] = field(default_factory=list)  # (monotonic, committed, stalled)
    classes: set[str] = field(default_factory=set)  # stall classes seen
    reasons: list[str] = field(default_factory=list)  # first reason of each stall
    outages: list[Outage] = field(default_factory=list)
    metric_during: list[tuple[str, float]] = field(default_factory=list)  # scraped just before each up()
    metric_after: list[tuple[str, float]] = field(default_factory=list)  # scraped after each recovery

    @property
    def committed(self) -> int:
        return int(self.runner.stats[self.node].committed)

    @property
    def stalled(self) -> bool:
        return self.runner.stats[self.node].stalled_since is not None

    async def run(self) -> None:
        stats = self.runner.stats[self.node]
        was = False
        while True:
            now = time.monotonic()
            stalled = stats.stalled_since is not None
            if stalled:
                self.classes.add(stats.stall_class)
                if not was:
                    self.reasons.append(stats.stall_reason)
            was = stalled
            self.samples.append((now, stats.committed, stalled))
            await asyncio.sleep(self.every)

    async def wait(self, cond: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.node}: timed out after {timeout}s waiting for {what} "
                                     f"(committed {self.committed}, stalled {self.stalled})")
            await asyncio.sleep(self.every)

    def stalled_during(self, o: Outage) -> bool:
        return any(s for t, _, s in self.samples if o.down_at <= t <= o.up_at)

    def recovery(self, o: Outage) -> float:
        """Seconds from the service's return to the sink's first commit after it."""
        before = max((c for t, c, _ in self.samples if t <= o.up_at), default=0)
        for t, c, _ in self.samples:
            if t > o.up_at and c > before:
                return t - o.up_at
        raise AssertionError(f"{self.node}: nothing committed after {o.service} came back")


async def outage(pairs: list[tuple[Service, Watch]], seconds: float) -> None:
    """Stop every service at once for `seconds`, then start them again. Each service's watch records
    the outage and the stall metric scraped just before the restart."""
    down = await asyncio.gather(*(asyncio.to_thread(_timed, s.down) for s, _ in pairs))
    outs = [Outage(s.name, t) for (s, _), t in zip(pairs, down)]
    for _, w in pairs:
        await w.wait(lambda w=w: w.stalled, seconds, "the stall to show while the service is down")
    left = min(o.down_at for o in outs) + seconds - time.monotonic()
    await asyncio.sleep(max(0.0, left - 0.05))
    for _, w in pairs:
        w.metric_during.append(stalled_metric(w.runner, w.node))
    ups = await asyncio.gather(*(asyncio.to_thread(_timed_after, s.up) for s, _ in pairs))
    for (_, w), o, t in zip(pairs, outs, ups):
        o.up_at = t
        w.outages.append(o)


async def recovered(watches: list[Watch], timeout: float) -> None:
    """Wait until each watched sink committed after the last outage and is no longer stalled; scrape
    the metric once more."""
    for w in watches:
        o = w.outages[-1]
        start = max((c for t, c, _ in w.samples if t <= o.up_at), default=0)
        await w.wait(lambda w=w, start=start: w.committed > start and not w.stalled, timeout, "recovery")
        w.metric_after.append(stalled_metric(w.runner, w.node))


def _timed(fn: Any) -> float:
    t = time.monotonic()
    fn()
    return t


def _timed_after(fn: Any) -> float:
    fn()
    return time.monotonic()
