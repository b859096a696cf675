"""The soak: two `streamdag run` processes under a steady HTTP load, a malformed spell and a restart.

    python -m benchmarks.soak --duration 600 --rate 5000      # the 10-minute soak of issue 25
    python -m benchmarks.soak --duration 3600 --rate 5000     # the hour the plan asks for

Graph 1 (`http_source` → `validate` → `map` → `jetstream_sink`) takes NDJSON requests of `--items`
items (one Idempotency-Key each) at `--rate` items/s; graph 2 (`jetstream_source` → `map` →
`postgres_sink` upsert) moves them into a table. For `--bad-for` seconds from `--bad-at`, a share
`--bad-share` of the items is malformed (half fail the schema, half are not JSON). At `--restart-at`
graph 2 gets SIGTERM and is started again at once. Each graph serves `/metrics`.

Every `--interval` seconds one line: client requests and items, HTTP reply latency (client side),
end-to-end latency per graph (the sinks' histograms over that interval: graph 2's runs from the HTTP
request's arrival, carried in the `Streamdag-Timestamp` header), RSS and CPU of each graph process
(whole process, from /proc), the JetStream consumer's pending and ack-pending counts and the load
average. It ends with the accounting: items accepted (202, less the `refused` ones), stream
messages, table rows, lost (accepted, not in the table), unexpected (in the table, never accepted)
and duplicated (extra writes of a row: a trigger counts every upsert that hit an existing row; two
copies in one batch are merged by the sink's upsert, so `stream_minus_accepted` is printed too),
rows whose message reached graph 2 more than once (handed back at its SIGTERM; their latency shows
in the restart's interval: ~`ack_wait` there would mean a stranded message), plus the stop, restart
and backlog-recovery times. The exit status is 0 only with nothing lost, unexpected or duplicated. `--json PATH` also writes every line as JSON.
Not part of the test suite; needs NATS (JetStream) and PostgreSQL (`benchmarks/machine.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.machine import NATS_URL, PG_DSN, load_average

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "required": ["id", "customer", "amount"],
          "properties": {"id": {"type": "integer"}, "customer": {"type": "string"}, "amount": {"type": "number"}}}
_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Names:
    """Unique stream, subject, consumer and table of one soak."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def stream(self) -> str:
        return f"SOAK_{self.tag.upper()}"

    @property
    def subject(self) -> str:
        return f"soak_{self.tag}.orders"

    @property
    def table(self) -> str:
        return f"soak_{self.tag}"


def graph_texts(names: Names, http_port: int, on_invalid_item: str) -> tuple[str, str]:
    """(graph 1, graph 2) as YAML."""
    schema = json.dumps(SCHEMA)
    first = textwrap.dedent(f"""
        version: 1
        name: soak_ingest
        defaults: {{dead_letter: dead}}
        schemas: {{order: {schema}}}
        connections:
          nats: {{type: nats, url: "{NATS_URL}", streams: {{{names.stream}: {{subjects: ["{names.subject}"]}}}}}}
        nodes:
          ingest: {{type: http_source, config: {{port: {http_port}, schema: order,
                    on_invalid_item: {on_invalid_item}, max_batch: 10000}}}}
          check: {{type: validate, inputs: [ingest], config: {{schema: order}}}}
          price: {{type: map, inputs: [check], config: {{expr: '{{"id": msg.id, "customer": msg.customer,
                   "total": msg.amount * 1.2}}'}}}}
          publish: {{type: jetstream_sink, inputs: [price], config: {{connection: nats, subject: {names.subject}}}}}
          dead: {{type: file_sink, inputs: [check.errors], config: {{path: dead_ingest.ndjson, mode: append}}}}
    """)
    second = textwrap.dedent(f"""
        version: 1
        name: soak_store
        defaults: {{dead_letter: dead}}
        connections:
          nats: {{type: nats, url: "{NATS_URL}"}}
          pg: {{type: postgres, dsn: "{PG_DSN}"}}
        nodes:
          read: {{type: jetstream_source, config: {{connection: nats, stream: {names.stream}, durable: store,
                  ack_wait: 30s}}}}
          shape: {{type: map, inputs: [read], config: {{expr: '{{"id": msg.id, "customer": msg.customer,
                   "total": msg.total, "delivered": meta.delivered}}'}}}}
          store:
            type: postgres_sink
            inputs: [shape]
            config:
              connection: pg
              table: {names.table}
              mode: upsert
              key: [id]
              columns: {{id: msg.id, customer: msg.customer, total: msg.total, delivered: msg.delivered}}
          dead: {{type: file_sink, inputs: [store.errors], config: {{path: dead_store.ndjson, mode: append}}}}
    """)
    return first, second


# -- the graph processes -----------------------------------------------------------------------------------


class Graph:
    """One `streamdag run` subprocess with its metrics port; CPU and RSS read from /proc."""

    def __init__(self, name: str, path: Path, workdir: Path):
        self.name, self.path, self.workdir = name, path, workdir
        self.metrics_port = _free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self._cpu: tuple[float, float] | None = None  # (wall, cpu seconds) at the last sample
        self._scrape: Any = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", "run", "-q", str(self.path), "--metrics-port",
            str(self.metrics_port), cwd=str(ROOT), env=env, stdout=log, stderr=log)
        log.close()
        self._cpu = None
        self._scrape = None

    async def stop(self) -> float:
        """SIGTERM; seconds until the process exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.returncode is not None:
            raise RuntimeError(f"{self.name} had already exited with {self.proc.returncode}; see its log")
        self.proc.send_signal(signal.SIGTERM)
        await self.proc.wait()
        return time.monotonic() - t0

    def usage(self) -> tuple[float | None, float | None]:
        """(RSS MiB, CPU % of one core since the last call) of the whole process."""
        if self.proc is None or self.proc.returncode is not None:
            return None, None
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{self.proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            return None, None
        cpu = (int(parts[11]) + int(parts[12])) / _TICKS
        now = time.monotonic()
        pct = None
        if self._cpu is not None and now > self._cpu[0]:
            pct = 100 * (cpu - self._cpu[1]) / (now - self._cpu[0])
        self._cpu = (now, cpu)
        return rss, pct

    async def latency(self, sink: str) -> dict[str, float | None]:
        """p50/p95/p99 of the sink's end-to-end histogram since the last call (ms), and its count."""
        from engine.observe.histogram import quantile
        from engine.observe.top import parse_metrics

        try:
            text = await asyncio.to_thread(_get, f"http://127.0.0.1:{self.metrics_port}/metrics")
        except OSError:
            return {"n": None}
        scrape = parse_metrics(text)
        now = scrape.nodes.get(sink, {}).get("e2e_buckets") or []
        before = (self._scrape.nodes.get(sink, {}).get("e2e_buckets") or []) if self._scrape else []
        self._scrape = scrape
        if before and len(before) == len(now):
            now = [(b, c - pc) for (b, c), (_, pc) in zip(now, before, strict=True)]
        n = now[-1][1] if now else 0
        out: dict[str, float | None] = {"n": n}
        for q in (0.5, 0.95, 0.99):
            v = quantile(q, now) if n else None
            out[f"p{int(q * 100)}"] = round(v * 1000, 2) if v is not None else None
        return out


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read().decode()


# -- the load --------------------------------------------------------------------------------------------


@dataclass
class Load:
    """The client side: what was sent, accepted and refused, and reply latencies per interval."""

    next_id: int = 0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: bytearray = field(default_factory=bytearray)  # accepted[id] = 1
    accepted_n: int = 0
    refused_n: int = 0
    malformed_n: int = 0
    latencies: list[float] = field(default_factory=list)  # this interval's, seconds
    bad_share: float = 0.0


def _body(load: Load, n: int) -> tuple[bytes, list[int]]:
    """An NDJSON body of n items (some malformed while `bad_share` > 0) and the id of each line."""
    lines, ids = [], []
    for _ in range(n):
        i = load.next_id
        load.next_id += 1
        ids.append(i)
        if load.bad_share and random.random() < load.bad_share:
            load.malformed_n += 1
            lines.append(b'{"id": %d, "customer": "c", "amount": "oops"}' % i if i % 2
                         else b'{"id": %d, "customer": "c", "amount": ' % i)
        else:
            lines.append(b'{"id": %d, "customer": "c-%d", "amount": %d.5}' % (i, i % 1000, i % 100))
    return b"\n".join(lines) + b"\n", ids


async def _client(load: Load, url: str, items: int, interval: float, deadline: float, worker: int,
                  workers: int) -> None:
    """Sends a request every `interval * workers` seconds (staggered by worker) until `deadline`."""
    import aiohttp

    period = interval * workers
    t = time.monotonic() + worker * interval
    async with aiohttp.ClientSession() as session:
        while t < deadline:
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t += period
            body, ids = _body(load, items)
            key = f"soak-{ids[0]}"
            sent = time.monotonic()
            for attempt in range(20):  # 503 (no room, or graph 1 restarting) is retried with the same key
                try:
                    async with session.post(url, data=body, headers={
                            "Content-Type": "application/x-ndjson", "Idempotency-Key": key}) as resp:
                        status, reply = resp.status, await resp.json(content_type=None)
                except aiohttp.ClientError:
                    status, reply = 599, {}
                if status not in (503, 599):
                    break
                await asyncio.sleep(0.1 * (attempt + 1))
            load.latencies.append(time.monotonic() - sent)
            load.requests += 1
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if status == 202:
                refused = {r["index"] for r in reply.get("refused", [])}
                load.refused_n += len(refused)
                if ids[-1] >= len(load.accepted):
                    load.accepted.extend(bytearray(ids[-1] + 1 - len(load.accepted)))
                for k, i in enumerate(ids):
                    if k not in refused:
                        load.accepted[i] = 1
                        load.accepted_n += 1


# -- the soak --------------------------------------------------------------------------------------------


async def _pending(js: Any, names: Names) -> tuple[int | None, int | None]:
    try:
        info = await js.consumer_info(names.stream, "store")
    except Exception:  # noqa: BLE001 - not created yet, or the server is busy
        return None, None
    return int(info.num_pending or 0), int(info.num_ack_pending or 0)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg
    import nats

    names = Names()
    workdir = Path(tempfile.mkdtemp(prefix="streamdag-soak-"))
    http_port = _free_port()
    first, second = graph_texts(names, http_port, args.on_invalid_item)
    (workdir / "ingest.yaml").write_text(first)
    (workdir / "store.yaml").write_text(second)
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    pg = await asyncpg.connect(PG_DSN)
    # `writes` counts the upserts of a row: 1 = written once; more = a duplicate delivery reached the table
    await pg.execute(f"CREATE TABLE {names.table} (id bigint PRIMARY KEY, customer text, total double precision, "
                     f"delivered int, writes int NOT NULL DEFAULT 1)")
    await pg.execute(f"CREATE FUNCTION {names.table}_count() RETURNS trigger AS $$ BEGIN "
                     f"NEW.writes := OLD.writes + 1; RETURN NEW; END $$ LANGUAGE plpgsql")
    await pg.execute(f"CREATE TRIGGER {names.table}_writes BEFORE UPDATE ON {names.table} FOR EACH ROW "
                     f"EXECUTE FUNCTION {names.table}_count()")
    ingest, store = Graph("ingest", workdir / "ingest.yaml", workdir), Graph("store", workdir / "store.yaml", workdir)
    load = Load()
    load.accepted = bytearray(int(args.rate * args.duration * 1.2) + 10 * args.items)
    out = open(args.json, "w") if args.json else None
    summary: dict[str, Any] = {}

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        if out is not None:
            out.write(json.dumps(row) + "\n")

    try:
        await ingest.start()
        url = f"http://127.0.0.1:{http_port}/api/v1/data/ingest"
        await _wait_ready(url, workdir)  # graph 1 has created the stream graph 2 reads
        await store.start()
        emit({"soak": names.tag, "duration": args.duration, "rate": args.rate, "items_per_request": args.items,
              "on_invalid_item": args.on_invalid_item, "workdir": str(workdir)})
        t0 = time.monotonic()
        deadline = t0 + args.duration
        interval = args.items / args.rate
        clients = [asyncio.ensure_future(_client(load, url, args.items, interval, deadline, w, args.connections))
                   for w in range(args.connections)]
        restart = asyncio.ensure_future(_restart(store, js, names, t0 + args.restart_at, args.rate, summary))
        sent_before = 0
        next_tick = t0 + args.interval
        while time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += args.interval
            elapsed = time.monotonic() - t0
            for g in (ingest, store):
                if g.proc is not None and g.proc.returncode not in (None, 0):
                    raise RuntimeError(f"{g.name} exited with {g.proc.returncode}; see {workdir}/{g.name}.log")
            load.bad_share = args.bad_share if args.bad_at <= elapsed < args.bad_at + args.bad_for else 0.0
            lat, load.latencies = load.latencies, []
            e1, e2 = await ingest.latency("publish"), await store.latency("store")
            (rss1, cpu1), (rss2, cpu2) = ingest.usage(), store.usage()
            pending, ack_pending = await _pending(js, names)
            emit({"t": round(elapsed, 1), "requests": len(lat), "items_sent": load.next_id - sent_before,
                  "accepted_total": load.accepted_n, "refused_total": load.refused_n,
                  "malformed_total": load.malformed_n, "statuses_total": dict(load.statuses),
                  "http_ms": {"p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95), "p99": _pct(lat, 0.99)},
                  "e2e_ingest_ms": e1, "e2e_store_ms": e2,
                  "rss_mb": {"ingest": _r(rss1), "store": _r(rss2)},
                  "cpu_pct": {"ingest": _r(cpu1), "store": _r(cpu2)},
                  "pending": pending, "ack_pending": ack_pending, "load_avg": load_average()})
            sent_before = load.next_id
        await asyncio.gather(*clients)
        await restart
        summary.update(await _account(load, js, pg, names, store))
        summary["stop_ingest_s"] = round(await ingest.stop(), 2)
        summary["stop_store_s"] = round(await store.stop(), 2)
        emit({"summary": summary})
        return summary
    finally:
        for g in (ingest, store):
            if g.proc is not None and g.proc.returncode is None:
                g.proc.kill()
                await g.proc.wait()
        if not args.keep:
            await pg.execute(f"DROP TABLE IF EXISTS {names.table}; DROP FUNCTION IF EXISTS {names.table}_count()")
            try:
                await js.delete_stream(names.stream)
            except Exception:  # noqa: BLE001 - never created
                pass
        await pg.close()
        await nc.close()
        if out is not None:
            out.close()


def _r(v: float | None) -> float | None:
    return round(v, 1) if v is not None else None


async def _wait_ready(url: str, workdir: Path) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(url.replace("/api/v1/data/ingest", "/readyz")) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"graph 1 did not become ready; see {workdir}/ingest.log")


async def _restart(store: Graph, js: Any, names: Names, at: float, rate: float, summary: dict[str, Any]) -> None:
    """SIGTERM graph 2 at `at`, start it again, and time how long its backlog takes to drain."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    summary["restart_stop_s"] = round(await store.stop(), 2)
    t0 = time.monotonic()
    await store.start()
    steady = max(100, rate * 0.05)  # what a steady consumer has pending between two pulls
    while time.monotonic() - t0 < 120:
        pending, ack_pending = await _pending(js, names)
        if pending is not None and time.monotonic() - t0 > 0.5 and pending + (ack_pending or 0) <= steady:
            summary["backlog_recovered_s"] = round(time.monotonic() - t0, 2)
            return
        await asyncio.sleep(0.1)


async def _account(load: Load, js: Any, pg: Any, names: Names, store: Graph) -> dict[str, Any]:
    """Wait for the table to catch up, then count lost, unexpected and duplicated items."""
    last, same_since = -1, time.monotonic()
    while time.monotonic() - same_since < 5:  # until the row count stops moving for 5 s (or is complete)
        rows = await pg.fetchval(f"SELECT count(*) FROM {names.table}")
        if rows >= load.accepted_n:
            break
        if rows != last:
            last, same_since = rows, time.monotonic()
        await asyncio.sleep(0.5)
    seen = bytearray(len(load.accepted))
    unexpected = duplicated = 0
    async with pg.transaction():
        async for rec in pg.cursor(f"SELECT id, writes FROM {names.table}", prefetch=10000):
            i = rec["id"]
            if 0 <= i < len(seen) and load.accepted[i]:
                seen[i] = 1
            else:
                unexpected += 1
            duplicated += rec["writes"] - 1
    lost = load.accepted_n - sum(seen)
    info = await js.stream_info(names.stream)
    cinfo = await js.consumer_info(names.stream, "store")
    return {"requests": load.requests, "statuses": load.statuses, "items_sent": load.next_id,
            "malformed": load.malformed_n, "refused": load.refused_n, "accepted": load.accepted_n,
            "stream_messages": info.state.messages,
            # > 0: duplicates stored in the stream (Nats-Msg-Id should drop them); < 0: lost before it
            "stream_minus_accepted": info.state.messages - load.accepted_n, "rows": await pg.fetchval(f"SELECT count(*) FROM {names.table}"),
            "lost": lost, "unexpected": unexpected, "duplicated": duplicated,
            # rows whose message came to graph 2 more than once: handed back (nak) at its SIGTERM
            "redelivered_rows": await pg.fetchval(f"SELECT count(*) FROM {names.table} WHERE delivered > 1"),
            "consumer_pending_at_end": int(cinfo.num_pending or 0) + int(cinfo.num_ack_pending or 0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    p.add_argument("--rate", type=float, default=2000, help="items per second (default 2000)")
    p.add_argument("--items", type=int, default=50, help="items per request (default 50)")
    p.add_argument("--connections", type=int, default=8, help="client connections (default 8)")
    p.add_argument("--interval", type=float, default=None, help="seconds per report line (default duration/12)")
    p.add_argument("--bad-share", type=float, default=0.01, help="share of malformed items in the spell")
    p.add_argument("--bad-at", type=float, default=None, help="start of the malformed spell (default duration/3)")
    p.add_argument("--bad-for", type=float, default=None, help="its length (default min(30, duration/4))")
    p.add_argument("--restart-at", type=float, default=None, help="SIGTERM + restart of graph 2 (default 2/3)")
    p.add_argument("--on-invalid-item", choices=["accept_valid", "reject_request"], default="accept_valid")
    p.add_argument("--json", help="also write every line to this JSON-lines file")
    p.add_argument("--keep", action="store_true", help="keep the stream and table")
    args = p.parse_args(argv)
    args.interval = args.interval or max(1.0, args.duration / 12)
    args.bad_at = args.duration / 3 if args.bad_at is None else args.bad_at
    args.bad_for = min(30.0, args.duration / 4) if args.bad_for is None else args.bad_for
    args.restart_at = args.duration * 2 / 3 if args.restart_at is None else args.restart_at
    summary = asyncio.run(soak(args))
    return 0 if summary.get("lost") == 0 and summary.get("duplicated") == 0 and not summary.get("unexpected") else 1


if __name__ == "__main__":
    sys.exit(main())
