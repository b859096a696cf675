"""Metrics of a graph reading the real NATS JetStream: counts, end-to-end latency from the server's
timestamps, the ledger, and (when the source implements the hook) its lag."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.observe.conftest import start_run, wait_for
from tests.observe.test_metrics import scrape, value

pytestmark = pytest.mark.services

N = 400


async def _publish(stream: str, subject: str, n: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[subject + ".>"]))
        for i in range(n):
            await js.publish(f"{subject}.new", f'{{"id": {i}, "amount": {i % 50}}}'.encode())
    finally:
        await nc.close()


async def _delete(stream: str) -> None:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:  # noqa: BLE001 - already gone
        pass
    finally:
        await nc.close()


def test_jetstream_graph_metrics(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"OPERATE_{tag.upper()}", f"operate_{tag}"
    asyncio.run(_publish(stream, subject, N))
    graph = f"""
        version: 1
        name: observed_js
        connections:
          nats: {{type: nats, url: "nats://127.0.0.1:4222"}}
        nodes:
          src:
            type: jetstream_source
            config: {{connection: nats, stream: {stream}, durable: operate-{tag}, subjects: ["{subject}.>"], batch: 100}}
          price:
            type: map
            inputs: [src]
            config: {{expr: '{{"id": msg.id, "total": double(msg.amount) * 1.2}}'}}
          out:
            type: file_sink
            inputs: [price]
            config: {{path: out.ndjson}}
          dead:
            type: file_sink
            inputs: [src.errors, price.errors, out.errors]
            config: {{path: dead.ndjson}}
    """
    run = start_run(tmp_path, graph)
    try:
        sm = wait_for(
            lambda: (
                (s := scrape(run))
                and value(s, "streamdag_node_committed_total", node="out") == N
                and value(s, "streamdag_source_in_flight", source="src") == 0
                and s
            ),
            30,
            "every JetStream message committed and acknowledged",
        )
        assert value(sm, "streamdag_source_settled_total", source="src", outcome="delivered") == N
        assert value(sm, "streamdag_integrity_mismatch", source="src") == 0
        # JetStream stamps each message on publish: latency = publish -> file commit, for all N
        assert value(sm, "streamdag_end_to_end_latency_seconds_count", sink="out") == N
        mean = value(sm, "streamdag_end_to_end_latency_seconds_sum", sink="out") / N
        assert 0 < mean < 60
        lag = [v for (name, lab), v in sm.items() if name == "streamdag_source_lag_messages"]
        assert lag in ([], [0.0])  # the gauge appears once jetstream_source implements lag()
        assert run.stop() == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        asyncio.run(_delete(stream))
    assert len((tmp_path / "out.ndjson").read_text().splitlines()) == N


def test_connection_lost_and_regained_on_a_private_nats_server(tmp_path: Path, caplog) -> None:
    """Our own nats-server (never the shared one) is stopped and started again under a running graph."""
    import logging

    from engine.compile.validate import load_graph
    from engine.observe.metrics import render_metrics
    from engine.observe.session import Observers
    from engine.runtime.scheduler import Runner
    from tests.connectors.jetstream_fixtures import PrivateServer
    from tests.observe.test_monitor import events, until

    caplog.set_level(logging.INFO, logger="streamdag")
    srv = PrivateServer()
    srv.start()
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "g.yaml"
    path.write_text(f"""
version: 1
name: conn
connections:
  nats: {{type: nats, url: "{srv.url}", reconnect_wait: 0.1}}
nodes:
  src:
    type: jetstream_source
    config: {{connection: nats, stream: OPERATE_{tag.upper()}, durable: c{tag}, subjects: ["operate_{tag}.>"]}}
  out: {{type: file_sink, inputs: [src], config: {{path: out.ndjson}}}}
  dead: {{type: file_sink, inputs: [src.errors, out.errors], config: {{path: dead.ndjson}}}}
""")
    key = ("", "nats:nats")

    async def scenario() -> tuple[str, str]:
        await srv.wait_ready()
        runner = Runner(load_graph(str(path)))
        obs = await Observers.start(runner, metrics_port=0, interval=0.05)
        run = asyncio.create_task(runner.run())
        try:
            await until(lambda: obs.monitor.connections.get(key) is True, "connected", 20)
            srv.stop()
            await until(lambda: obs.monitor.connections.get(key) is False, "the loss to be seen", 20)
            down = render_metrics(obs.server.registry).decode()  # type: ignore[union-attr]
            srv.start()
            await until(lambda: obs.monitor.connections.get(key) is True, "the reconnection", 30)
            up = render_metrics(obs.server.registry).decode()  # type: ignore[union-attr]
        finally:
            runner.stop()
            await asyncio.wait_for(run, 30)
            await obs.close()
        return down, up

    try:
        down, up = asyncio.run(scenario())
    finally:
        srv.cleanup()
    gauge = 'streamdag_connection_up{connection="nats:nats",graph="conn",node=""}'
    assert f"{gauge} 0.0" in down and f"{gauge} 1.0" in up
    (lost,) = events(caplog, "connection_lost")
    (regained,) = events(caplog, "connection_regained")
    assert lost.levelno == logging.ERROR and lost.connection == "nats:nats"  # type: ignore[attr-defined]
    assert regained.created > lost.created
