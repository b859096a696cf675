"""Stream provisioning (live) and the offline config checks of the JetStream nodes."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

sys.path.insert(0, os.path.dirname(__file__))

from jetstream_fixtures import NATS_URL, add_stream, connect, unique, wait_for
from jetstream_pipe import Pipe, make_ctx

from engine.runtime.context import Resources
from engine.spec.connections import Connection, NatsStream
from operators.connectors.jetstream.sink import JetStreamSinkConfig
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig
from operators.connectors.jetstream.streams import StreamConflictError, ensure_streams


def nats_conn(**streams: dict) -> object:
    return TypeAdapter(Connection).validate_python({"type": "nats", "streams": streams})


# -- offline ------------------------------------------------------------------------------------------------


def test_stream_declaration_parses_units():
    s = nats_conn(
        ORDERS={
            "subjects": ["orders.>"],
            "retention": "workqueue",
            "max_age": "7d",
            "max_msg_size": "1MB",
            "max_msgs": 1_000_000,
            "storage": "memory",
            "duplicate_window": "2m",
        }
    ).streams["ORDERS"]
    assert (s.max_age, s.max_msg_size, s.max_msgs, s.duplicate_window) == (
        604800.0,
        1 << 20,
        1_000_000,
        120.0,
    )
    assert s.retention == "workqueue" and s.storage == "memory"


@pytest.mark.parametrize(
    "streams, needle",
    [
        ({"A": {"subjects": ["a"], "max_age": "7x"}}, "not a duration"),
        ({"A": {"subjects": ["a"], "max_msg_size": "lots"}}, "not a size"),
        ({"A": {"subjects": ["a"], "retention": "forever"}}, "retention"),
        ({"A": {"subjects": ["a"], "storage": "disk"}}, "storage"),
        ({"A": {"subjects": []}}, "subjects"),
        ({"A": {"subjects": ["a b"]}}, "invalid subject"),
        ({"A.B": {"subjects": ["a"]}}, "invalid stream name"),
        ({"A": {"subjects": ["a"]}, "B": {"subjects": ["a"]}}, "is in streams"),
        ({"A": {"subjects": ["a"], "max_age": "1m", "duplicate_window": "2m"}}, "duplicate_window"),
        ({"A": {"subjects": ["a"], "replicas": 0}}, "replicas"),
        ({"A": {"subjects": ["a"], "maxage": "1d"}}, "maxage"),
    ],
)
def test_bad_stream_declarations_are_refused_offline(streams, needle):
    with pytest.raises(ValidationError, match=needle):
        nats_conn(**streams)


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"deliver": "by_start_sequence"}, "needs start_sequence"),
        ({"deliver": "by_start_time"}, "needs start_time"),
        ({"start_sequence": 4}, "only used with"),
        ({"backoff": ["1s", "2s", "3s"], "max_deliver": 3}, "max_deliver must be larger"),
        ({"max_ack_pending": 10, "batch": 100}, "smaller than batch"),
        ({"durable": "a.b"}, "may not contain"),
        ({"ack_wait": "soon"}, "not a duration"),
        ({"codec": "xml"}, "codec"),
    ],
)
def test_bad_source_configs_are_refused_offline(kw, needle):
    base = {"connection": "nats", "stream": "S", "durable": "d"}
    with pytest.raises(ValidationError, match=needle):
        JetStreamSourceConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({}, "exactly one"),
        ({"subject": "a", "subject_expr": "'b'"}, "exactly one"),
        ({"subject": "a.*"}, "invalid subject"),
        ({"subject": "a", "headers": {"bad key": "'x'"}}, "invalid header"),
    ],
)
def test_bad_sink_configs_are_refused_offline(kw, needle):
    with pytest.raises(ValidationError, match=needle):
        JetStreamSinkConfig(connection="nats", **kw)


# -- live ---------------------------------------------------------------------------------------------------


@pytest.mark.services
def test_streams_created_once_and_conflicts_reported():
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        name = unique().upper()
        spec = NatsStream(
            subjects=[name.lower() + ".>"],
            max_age="1h",
            max_msg_size="1KB",
            max_msgs=1000,
            storage="memory",
            duplicate_window="1m",
        )
        try:
            assert await ensure_streams(js, {name: spec}) == [name]
            cfg = (await js.stream_info(name)).config
            assert (cfg.max_age, cfg.max_msg_size, cfg.max_msgs, cfg.duplicate_window) == (
                3600,
                1024,
                1000,
                60,
            )
            assert await ensure_streams(js, {name: spec}) == []  # present and equal: nothing to do
            other = spec.model_copy(update={"max_age": 7200.0, "storage": "file"})
            with pytest.raises(StreamConflictError) as exc:
                await ensure_streams(js, {name: other})
            text = str(exc.value)
            assert (
                name in text and "max_age: declared 7200.0, server has 3600.0" in text and "storage" in text
            )
        finally:
            await js.delete_stream(name)
            await nc.close()

    asyncio.run(main())


@pytest.mark.services
def test_source_start_provisions_the_connection_streams():
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        name = unique().upper()
        resources = Resources()
        ctx = make_ctx(
            "src", NATS_URL, resources, {name: {"subjects": [name.lower() + ".>"], "max_msgs": 50}}
        )
        src = JetStreamSource("src", JetStreamSourceConfig(connection="nats", stream=name, durable="d"), ctx)
        try:
            await src.start()
            assert (await js.stream_info(name)).config.max_msgs == 50
            assert (await js.consumer_info(name, "d")).config.durable_name == "d"
            await src.stop()
        finally:
            await resources.close()
            await js.delete_stream(name)
            await nc.close()

    asyncio.run(main())


@pytest.mark.services
@pytest.mark.parametrize("deliver", ["by_start_sequence", "by_start_time", "new", "last"])
def test_deliver_policies(deliver):
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        p = unique()
        await add_stream(js, p, subjects=[p + ".>"])
        resources = Resources()
        try:
            for i in range(1, 11):
                await js.publish(f"{p}.a", orjson.dumps({"id": i}))
            kw: dict = {"deliver": deliver}
            if deliver == "by_start_sequence":
                kw["start_sequence"] = 6
            if deliver == "by_start_time":
                raw = await nc.request(f"$JS.API.STREAM.MSG.GET.{p}", b'{"seq": 6}')
                ts = orjson.loads(raw.data)["message"]["time"]
                kw["start_time"] = datetime.fromisoformat(ts[:26].rstrip("Z") + "+00:00").astimezone(
                    UTC
                )
            src = JetStreamSource(
                "src",
                JetStreamSourceConfig(connection="nats", stream=p, durable="d", **kw),
                make_ctx("src", NATS_URL, resources),
            )
            got: list[int] = []

            class Collect(MemorySinkLocal):
                async def write(self, batch):
                    got.extend(m.body["id"] for m in batch)

            pipe = Pipe(src, Collect())
            expect = {
                "by_start_sequence": [6, 7, 8, 9, 10, 11, 12],
                "by_start_time": [6, 7, 8, 9, 10, 11, 12],
                "new": [11, 12],
                "last": [10, 11, 12],
            }[deliver]

            async def later() -> None:
                await wait_for(lambda: src._req_n > 0, what="first pull")
                for i in (11, 12):
                    await js.publish(f"{p}.a", orjson.dumps({"id": i}))

            task = asyncio.ensure_future(later())
            await pipe.run(lambda: len(got) >= len(expect))
            await task
            # 11 and 12 are published after the first pull: on a busy machine they can arrive in the
            # same fetch as the last expected message, before the pipe sees its stop condition
            full = expect + [i for i in (11, 12) if i not in expect]
            assert len(got) >= len(expect) and got == full[: len(got)]
        finally:
            await resources.close()
            await js.delete_stream(p)
            await nc.close()

    asyncio.run(main())


class MemorySinkLocal:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.mark.services
def test_consumer_settings_reach_the_server_and_a_conflicting_durable_is_refused():
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        p = unique()
        await add_stream(js, p, subjects=[p + ".>"])
        resources = Resources()
        try:
            cfg = JetStreamSourceConfig(
                connection="nats",
                stream=p,
                durable="d",
                subjects=[p + ".a.>"],
                ack_wait="45s",
                max_deliver=4,
                backoff=["1s", "5s"],
                max_ack_pending=2000,
                batch=500,
            )
            src = JetStreamSource("src", cfg, make_ctx("src", NATS_URL, resources))
            await src.start()
            await src.stop()
            c = (await js.consumer_info(p, "d")).config
            # the server replaces ack_wait with backoff[0]; one delivery more than max_deliver, in which
            # the source dead-letters a message never settled (see jetstream/source.py)
            assert (c.ack_wait, c.max_deliver, c.backoff, c.max_ack_pending) == (1, 5, [1, 5], 2000)
            assert (
                c.filter_subject == p + ".a.>" and getattr(c.ack_policy, "value", c.ack_policy) == "explicit"
            )
            plain = cfg.model_copy(update={"backoff": [], "durable": "e"})
            other_src = JetStreamSource("src", plain, make_ctx("src", NATS_URL, resources))
            await other_src.start()
            await other_src.stop()
            assert (await js.consumer_info(p, "e")).config.ack_wait == 45
            # binding again with the same settings is fine
            again = JetStreamSource("src", cfg, make_ctx("src", NATS_URL, resources))
            await again.start()
            await again.stop()
            other = cfg.model_copy(update={"deliver": "new"})
            clash = JetStreamSource("src", other, make_ctx("src", NATS_URL, resources))
            with pytest.raises(Exception, match="cannot create or bind consumer 'd'"):
                await clash.start()
        finally:
            await resources.close()
            await js.delete_stream(p)
            await nc.close()

    asyncio.run(main())


@pytest.mark.services
@pytest.mark.parametrize(
    "codec, data, body", [("text", b"h\xc3\xa9", "hé"), ("bytes", b"\x00\x01", b"\x00\x01")]
)
def test_text_and_bytes_codecs(codec, data, body):
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        p = unique()
        await add_stream(js, p, subjects=[p + ".>"])
        resources = Resources()
        try:
            await js.publish(p + ".a", data)
            src = JetStreamSource(
                "src",
                JetStreamSourceConfig(connection="nats", stream=p, durable="d", codec=codec),
                make_ctx("src", NATS_URL, resources),
            )
            got: list = []

            class Collect(MemorySinkLocal):
                async def write(self, batch):
                    got.extend(m.body for m in batch)

            await Pipe(src, Collect()).run(lambda: bool(got) and src.acked == 1)
            assert got == [body]
        finally:
            await resources.close()
            await js.delete_stream(p)
            await nc.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "inner, outer, ok",
    [
        ("orders.new", "orders.>", True),
        ("orders.*", "orders.>", True),
        ("orders.>", "orders.>", True),
        ("orders", "orders.>", False),
        ("orders.>", "orders.*", False),
        ("orders.a.b", "orders.*", False),
        ("orders.a", "orders.*", True),
        ("orders.*", "orders.a", False),
        ("x.a", "orders.>", False),
        ("orders.a.b", "orders.*.b", True),
        ("orders", "orders", True),
    ],
)
def test_subject_within(inner, outer, ok):
    from operators.connectors.jetstream.streams import subject_within

    assert subject_within(inner, outer) is ok


def test_offline_checks_against_declared_streams():
    from engine.api import CheckContext
    from operators.connectors.jetstream.sink import JetStreamSink

    conns = {"nats": {"type": "nats", "streams": {"ORDERS": {"subjects": ["orders.>"]}}}}
    ctx = CheckContext(connections=conns)
    src = JetStreamSourceConfig(
        connection="nats", stream="ORDERS", durable="d", subjects=["orders.eu.*", "shop.>"]
    )
    issues = JetStreamSource.check(src, ctx)
    assert [(i.loc, i.code) for i in issues] == [(("subjects", 1), "E240")]
    undeclared = JetStreamSourceConfig(connection="nats", stream="OTHER", durable="d")
    assert [i.code for i in JetStreamSource.check(undeclared, ctx)] == ["W340"]
    ok_sink = JetStreamSinkConfig(connection="nats", subject="orders.clean")
    bad_sink = JetStreamSinkConfig(connection="nats", subject="clean.orders")
    assert JetStreamSink.check(ok_sink, ctx) == []
    assert [i.code for i in JetStreamSink.check(bad_sink, ctx)] == ["W341"]


@pytest.mark.services
def test_several_filter_subjects_on_an_old_server_are_refused_not_ignored():
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        p = unique()
        await add_stream(js, p, subjects=[p + ".>"])
        resources = Resources()
        try:
            cfg = JetStreamSourceConfig(
                connection="nats", stream=p, durable="d", subjects=[p + ".a", p + ".b"]
            )
            src = JetStreamSource("src", cfg, make_ctx("src", NATS_URL, resources))
            v = nc.connected_server_version
            if (v.major, v.minor) >= (2, 10):
                await src.start()
                c = (await js.consumer_info(p, "d")).config
                assert sorted(c.filter_subjects or []) == [p + ".a", p + ".b"]
                await src.stop()
            else:
                with pytest.raises(Exception, match="need nats-server 2.10"):
                    await src.start()
        finally:
            await resources.close()
            await js.delete_stream(p)
            await nc.close()

    asyncio.run(main())
