"""Keyed partitions on the machine's JetStream: `jetstream_sink` with `partition` writes `<subject>.<p>`
(p = `partition_of(key)`), `jetstream_source` with `partitions` reads them, each partition owned by
one worker at a time through NATS KV. One worker owns them all; two split them; kill -9 of one
hands its partitions to the other (timed); a worker started mid-run takes its share. Every message
lands once in an idempotent table, in the partition its key belongs to."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import partition_of
from operators.connectors.jetstream.partitions import bucket_name
from tests.connectors.jetstream_fixtures import NATS_URL, connect
from tests.connectors.postgres_harness import DSN, sql
from tests.workers_harness import Supervised

pytestmark = pytest.mark.services

P = 6  # partitions
USERS = 23
TOOK = re.compile(r"(took|released) partition (\d+)")


class Setup:
    def __init__(self, tmp_path: Path):
        self.name = f"parts_{uuid.uuid4().hex[:8]}"
        self.stream, self.subject, self.table = self.name.upper(), f"{self.name}.clicks", self.name
        self.tmp = tmp_path

    def publish(self, n: int, first: int = 0) -> None:
        """n messages through a `jetstream_sink` with `partition` (the graph under test, as a user runs it)."""
        graph = self.tmp / f"pub_{first}.yaml"
        graph.write_text(f"""\
version: 1
name: {self.name}_pub
connections:
  nats: {{type: nats, url: "{NATS_URL}"}}
nodes:
  gen: {{type: generate, config: {{count: {n}, template: '{{"id": msg.i + {first}, "user": "u" + string((msg.i + {first}) % {USERS})}}'}}}}
  pub:
    type: jetstream_sink
    inputs: [gen]
    config: {{connection: nats, subject: {self.subject}, partition: {{key: msg.user, count: {P}}}, msg_id: "string(msg.id)"}}
  dead: {{type: stdout, inputs: [gen.errors, pub.errors]}}
""")
        subprocess.run([sys.executable, "-m", "engine.cli", "run", str(graph)], check=True, timeout=60,
                       stdout=subprocess.DEVNULL)

    def graph(self, rate: int) -> Path:
        path = self.tmp / "read.yaml"
        path.write_text(f"""\
version: 1
name: {self.name}
defaults: {{max_in_flight: 100}}
connections:
  nats: {{type: nats, url: "{NATS_URL}", reconnect_wait: 0.2}}
  pg: {{type: postgres, dsn: "{DSN}"}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {self.stream}, durable: counts, subjects: [{self.subject}], partitions: {P},
             partition_ttl: 1.5s, ack_wait: 2s, batch: 20, expires: 0.5s}}
  pace: {{type: rate_limit, inputs: [read], config: {{rate: {rate}, burst: 10}}}}
  store:
    type: postgres_sink
    inputs: [pace]
    config: {{connection: pg, table: {self.table}, mode: insert_ignore, key: [id],
             columns: {{id: msg.id, part: meta.partition, usr: msg.user}}}}
""")
        return path

    def rows(self) -> int:
        return int(asyncio.run(sql(f'SELECT count(*) AS n FROM "{self.table}"'))[0]["n"])

    def check_rows(self, n: int) -> None:
        got = asyncio.run(sql(f'SELECT id, part, usr FROM "{self.table}"'))
        assert sorted(r["id"] for r in got) == list(range(n))  # nothing lost, each once (the key)
        wrong = [dict(r) for r in got if r["part"] != partition_of(r["usr"], P)]
        assert not wrong, wrong[:5]  # each message came from its key's partition


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)

    async def create() -> None:
        nc = await connect()
        await nc.jetstream().add_stream(name=s.stream, subjects=[f"{s.subject}.*"])
        await nc.close()
        await sql(f'CREATE TABLE "{s.table}" (id bigint PRIMARY KEY, part int NOT NULL, usr text NOT NULL)')

    async def drop() -> None:
        nc = await connect()
        js = nc.jetstream()
        for name in (s.stream, f"KV_{bucket_name(s.stream, 'counts')}"):
            try:
                await js.delete_stream(name)
            except Exception:  # noqa: BLE001 - not created
                pass
        await nc.close()
        await sql(f'DROP TABLE IF EXISTS "{s.table}"')

    asyncio.run(create())
    yield s
    asyncio.run(drop())


def _events(run: Supervised, since: int = 0) -> list[tuple[int, str, int]]:
    """(pid, took|released, partition) from the workers' logs, in order (the records from `since` on)."""
    with run._lock:
        events = list(run.events)[since:]
    out = []
    for e in events:
        m = TOOK.search(str(e.get("msg", "")))
        if m:
            out.append((int(str(e.get("worker", "-0")).rsplit("-", 1)[-1]), m[1], int(m[2])))
    return out


def _took(run: Supervised, since: int = 0) -> dict[int, set[int]]:
    """Partitions each worker process (by pid) took, from its log."""
    out: dict[int, set[int]] = {}
    for pid, what, p in _events(run, since):
        if what == "took":
            out.setdefault(pid, set()).add(p)
    return out


def _owned(run: Supervised) -> dict[int, set[int]]:
    """Partitions each worker process (by pid) owns now, from its log."""
    out: dict[int, set[int]] = {}
    for pid, what, p in _events(run):
        (out.setdefault(pid, set()).add if what == "took" else out.setdefault(pid, set()).discard)(p)
    return out


def test_one_worker_owns_every_partition(setup: Setup) -> None:
    n = 600
    setup.publish(n)
    run = Supervised(setup.graph(2000), 1, "--registry", "off", "--log-level", "info")
    try:
        run.wait_until(lambda: setup.rows() == n, 30, f"{n} rows")
    finally:
        run.signal()
        code, _, integrity = run.finish()
    assert code == 0, run.text
    assert list(_took(run).values()) == [set(range(P))]
    setup.check_rows(n)
    assert integrity.startswith("integrity OK"), integrity


def test_two_workers_split_the_partitions_and_one_takes_over_after_kill_9(setup: Setup) -> None:
    n = 1500
    setup.publish(n)
    run = Supervised(setup.graph(300), 2, "--registry", "off", "--log-level", "info")
    try:
        # the fair share, ceil(6 / 2) each (one may take all first, then give half back)
        run.wait_until(lambda: sorted(map(len, _owned(run).values())) == [P // 2, P // 2], 20,
                       "both workers own their share")
        split = _owned(run)
        run.wait_until(lambda: setup.rows() > 300, 30, "300 rows")
        with run._lock:
            mark = len(run.events)
        killed_at = time.monotonic()
        dead = run.kill_worker(1)  # the supervisor restarts it after 0.5 s: it and worker 0 share the partitions
        run.wait_until(lambda: split[dead] <= set().union(*_took(run, mark).values()), 15,
                       "the killed worker's partitions taken by the others")
        takeover = time.monotonic() - killed_at
        run.wait_until(lambda: setup.rows() == n, 60, f"{n} rows")
    finally:
        run.signal()
        code, workers, integrity = run.finish()
    print(f"\npartition takeover after kill -9: {takeover:.2f}s (partition_ttl 1.5s)")
    assert takeover < 10, takeover
    assert code == 0, run.text
    assert workers[1]["killed"] == 1
    assert integrity.startswith("integrity OK"), integrity
    setup.check_rows(n)


def test_a_worker_started_mid_run_takes_its_share(setup: Setup) -> None:
    # The second worker's start (two interpreters and their imports) can outlast the first one's backlog on
    # a loaded machine: the rest of the messages is published once it holds its share, so it has some to
    # read whatever its start took; the hand-over itself usually happens with the first batch in flight.
    n1, n2 = 1500, 300
    setup.publish(n1)
    graph = setup.graph(250)
    first = Supervised(graph, 1, "--registry", "off", "--log-level", "info")
    second = None
    try:
        first.wait_until(lambda: setup.rows() > 200, 30, "200 rows")
        second = Supervised(graph, 1, "--registry", "off", "--log-level", "info")
        try:
            second.wait_until(lambda: sum(map(len, _took(second).values())) == P // 2, 60, "the new worker's share")
        except AssertionError:
            print([e for e in first.events if "partition" in str(e.get("msg"))][-20:])
            print([e for e in second.events if "partition" in str(e.get("msg"))][-20:])
            raise
        at_share = setup.rows()
        first.wait_until(lambda: any("released partition" in str(e.get("msg")) for e in list(first.events)), 30,
                         "the first worker released its extra partitions")
        setup.publish(n2, first=n1)
        second.wait_until(lambda: setup.rows() == n1 + n2, 60, f"{n1 + n2} rows")
    finally:
        first.signal()
        if second is not None:
            second.signal()
        code1, _, line1 = first.finish()
        code2, _, line2 = second.finish() if second is not None else (0, {}, "")
    print(f"\nthe new worker had its share with {at_share} of the first {n1} messages stored")
    assert code1 == 0 and code2 == 0, first.text + (second.text if second else [])
    setup.check_rows(n1 + n2)
    d1, d2 = (int(re.search(r"(\d+) delivered", line)[1]) for line in (line1, line2))  # type: ignore[index]
    assert d2 > 0, line2
    assert d1 + d2 == n1 + n2, (line1, line2)  # a graceful hand-over processes nothing twice
