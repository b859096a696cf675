"""The window's batch path (`Window._fold_batch`) against its item-by-item path: same output.

Random streams (keys, event times with disorder, late items, values that are ints, floats, and
now and then a null or a string that sends the batch item by item), random batch sizes, every
`acks` mode, tumbling and session windows, with and without lateness. Each stream runs twice,
once with the batch path turned off, and everything observable must be equal: each batch's
messages on `out`, `late` and `errors` (bodies, meta, the item acks each carries), the acks
released and when, the checkpoint's pending acks and positions, and the state left at the end.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.message import AckTracker, CompositeAck, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig
from tests.connectors.postgres_harness import DSN

AGGREGATES = {
    "n": {"op": "count"},
    "nv": {"op": "count", "expr": "msg.v"},
    "total": {"op": "sum", "expr": "msg.v"},
    "lo": {"op": "min", "expr": "msg.v"},
    "hi": {"op": "max", "expr": "msg.v"},
    "mean": {"op": "avg", "expr": "msg.v"},
}


def tokens(ack: Any) -> Any:
    if isinstance(ack, CompositeAck):
        return [tokens(a) for a in ack.children]
    return getattr(ack, "token", repr(type(ack)))


def covered(part: Any) -> dict[str, tuple[int, list[int]]]:
    """The sequences a partition's checkpoint covers: per stream its floor and those above it."""
    return {s: (c.floor, list(c.seqs)) for s, c in part.covered.items()}


def stream(rng: random.Random, n: int, dirty: bool) -> list[dict[str, Any]]:
    items = []
    clock = 0.0
    for i in range(n):
        clock += rng.choice([0, 0.1, 0.25, 0.5, 1])
        t = clock - rng.choice([0, 0, 0, 0.3, 1, 2.5, 6, 15])  # disorder; now and then late
        v: Any = rng.choice([rng.randrange(-5, 50), rng.random() * 10, 3])
        if dirty and rng.random() < 0.02:
            v = rng.choice([None, "x", True])  # not a number: the batch goes item by item
        item = {"id": i, "k": rng.choice(["a", "b", "c", 7, None]), "t": round(t, 3), "v": v}
        if dirty and rng.random() < 0.01:
            del item["t"]  # an error
        items.append(item)
    return items


def run(cfg: dict[str, Any], items: list[dict[str, Any]], cuts: list[int], batch_path: bool) -> list[Any]:
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 100.0)
    op = Window("win", WindowConfig(**cfg), ctx)
    if not batch_path:
        op._fold_batch = lambda *a: False  # type: ignore[method-assign]
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    tracker = AckTracker()
    seen: list[Any] = []
    start = 0
    for stop in [*cuts, len(items)]:
        batch = [
            Msg(dict(b), {"seq": b["id"] + 1, "stream": "s"}, tracker.new(b["id"]))
            for b in items[start:stop]
        ]
        start = stop
        op.process(batch, out)
        ports = out.take()
        part = op.parts.get(None)
        seen.append([
            [(m.body, m.meta, tokens(m.ack), m.size) for m in ports["out"]],
            [(m.body, m.meta, tokens(m.ack)) for m in ports["late"]],
            [(m.body, m.meta) for m in ports.get("errors", [])],
            tracker.take(),  # acks settled (delivered, failed) in this batch, in order
            None if part is None else ([tokens(a) for a in part.pending], covered(part)),
        ])
    op.flush(out)
    ports = out.take()
    seen.append([(m.body, m.meta, tokens(m.ack)) for m in ports["out"]])
    seen.append(op.late_items)
    for m in ports["out"]:
        m.ack.finish(1)
    seen.append(tracker.take())
    return seen


CONFIGS = [
    {"kind": "tumbling", "size": 5},
    {"kind": "tumbling", "size": 5, "offset": 1.5, "max_out_of_orderness": 2, "allowed_lateness": 4},
    {"kind": "tumbling", "size": 2, "allowed_lateness": 3},
    {"kind": "session", "gap": 3},
    {"kind": "session", "gap": 1, "max_out_of_orderness": 2, "allowed_lateness": 4},
    {"kind": "session", "gap": 7.5, "max_out_of_orderness": 1},
]


@pytest.mark.parametrize("acks", ["hold", "release"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{c['kind']}{i}" for i, c in enumerate(CONFIGS)])
def test_batch_path_equals_item_path(cfg: dict[str, Any], acks: str) -> None:
    rng = random.Random(f"{cfg}{acks}")
    config = {**cfg, "key": "msg.k", "time": "event", "timestamp": "msg.t", "acks": acks,
              "aggregates": AGGREGATES}
    calls = {"batch": 0}
    original = Window._fold_batch

    def counting(self: Window, *a: Any) -> bool:
        done = original(self, *a)
        calls["batch"] += done
        return done

    for round_ in range(12):
        n = rng.choice([1, 30, 200, 600])
        items = stream(rng, n, dirty=round_ % 3 == 2)
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.choice([0, 2, 8, 40])))) if n > 1 else []
        Window._fold_batch = counting  # type: ignore[method-assign]
        try:
            fast = run(config, items, cuts, batch_path=True)
        finally:
            Window._fold_batch = original  # type: ignore[method-assign]
        assert fast == run(config, items, cuts, batch_path=False)
    assert calls["batch"] > 0  # the batch path did run


def test_batch_path_processing_time_and_global_window() -> None:
    """No key (one global window) and processing time: the whole batch in one run."""
    rng = random.Random(3)
    cfg = {"kind": "tumbling", "size": 1, "acks": "release", "aggregates": AGGREGATES}
    items = stream(rng, 300, dirty=False)
    assert run(cfg, items, [100, 200], True) == run(cfg, items, [100, 200], False)


def test_integer_and_float_sums_add_up_in_arrival_order() -> None:
    """Float sums depend on the order of additions: the batch path adds in arrival order too."""
    cfg = {"kind": "tumbling", "size": 10, "time": "event", "timestamp": "msg.t", "acks": "release",
           "aggregates": {"total": {"op": "sum", "expr": "msg.v"}, "mean": {"op": "avg", "expr": "msg.v"}}}
    items = [{"id": i, "t": 1, "v": v} for i, v in enumerate([1e16, 1.0, -1e16, 1.0, 3, 0.1, 0.2])]
    fast = run(cfg, items, [], True)
    assert fast == run(cfg, items, [], False)
    assert fast[-3][0][0]["aggregates"]["total"] == ((((((1e16 + 1.0) - 1e16) + 1.0) + 3) + 0.1) + 0.2)


def test_min_max_state_of_strings_is_not_compared_with_numbers() -> None:
    """A window whose min holds a string refuses a number (errors), batch path or not."""
    cfg = {"kind": "tumbling", "size": 10, "time": "event", "timestamp": "msg.t", "acks": "release",
           "aggregates": {"lo": {"op": "min", "expr": "msg.v"}}}
    items = [{"id": 0, "t": 1, "v": "a"}, *({"id": i, "t": 1, "v": i} for i in range(1, 5))]
    fast = run(cfg, items, [1], True)
    assert fast == run(cfg, items, [1], False)
    assert len(fast[1][2]) == 4  # the numbers went to errors


@pytest.mark.services
def test_batch_path_with_checkpoints_restore_and_replay() -> None:
    """acks: checkpoint against the real PostgreSQL: save, a crash, restore, replay of covered and
    uncovered items; both paths give the same windows, late items, settled acks and positions."""
    import asyncio

    from tests.operators.test_window_checkpoint import Rig

    rng = random.Random(5)
    rows = [(i + 1, f"k{rng.randrange(9)}", round(i / 20 - rng.choice([0, 0, 0.4, 3]), 2), rng.randrange(50))
            for i in range(600)]

    async def scenario(rig: Rig, batch_path: bool) -> list[Any]:
        seen: list[Any] = []

        def window() -> Window:
            resources = Resources()
            rig.resources.append(resources)
            ctx = NodeContext("win", {"pg": {"type": "postgres", "dsn": DSN}}, {}, resources, clock=rig.clock)
            config = {"kind": "tumbling", "size": 5, "time": "event", "timestamp": "msg.t", "key": "msg.k",
                      "max_out_of_orderness": 0.5, "allowed_lateness": 1, "aggregates": AGGREGATES,
                      "checkpoint": {"connection": "pg", "interval": 0.3, "table": rig.table}}
            op = Window("win", WindowConfig(**config), ctx)
            if not batch_path:
                op._fold_batch = lambda *a: False  # type: ignore[method-assign]
            return op

        async def feed(op: Window, tracker: AckTracker, part: list[tuple[int, str, float, int]]) -> None:
            out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
            msgs = [Msg({"k": k, "t": t, "v": v}, {"stream": "S", "seq": seq}, tracker.new(seq)) for seq, k, t, v in part]
            r = op.process(msgs, out)
            if r is not None:
                await r
            ports = out.take()
            seen.append([(m.body, m.meta) for m in ports["out"] + ports["late"]])
            for m in ports["out"] + ports["late"]:
                m.ack.finish(1)
            seen.append((tracker.take(), covered(op.parts[None])))
            rig.clock.now += 0.1

        first = window()
        await first.start()
        tracker = AckTracker()
        for i in range(0, 400, 50):
            await feed(first, tracker, rows[i : i + 50])
        settled = {t for d, _ in seen[1::2] for t in d[0]}
        second = window()  # a crash: the store restores; the source replays what is not settled, and some that is
        await second.start()
        again = AckTracker()
        replay = [r for r in rows[:400] if r[0] not in settled or r[0] % 7 == 0] + rows[400:]
        for i in range(0, len(replay), 50):
            await feed(second, again, replay[i : i + 50])
        out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
        r = second.flush(out)
        if r is not None:
            await r
        seen.append([m.body for m in out.take()["out"]])
        seen.append(second.metrics())
        return seen

    async def main() -> tuple[list[Any], list[Any]]:
        results = []
        for batch_path in (True, False):
            rig = Rig()
            try:
                results.append(await scenario(rig, batch_path))
            finally:
                await rig.close()
        return results[0], results[1]

    fast, slow = asyncio.run(main())
    for seen in (fast, slow):  # save timings and sizes aside, the checkpoint counters must agree
        seen[-1] = {k: v for k, v in seen[-1].items() if not k.endswith("_us") and "bytes" not in k}
    assert fast[-1]["checkpoint_replayed_skipped"] > 0 and fast[-1]["checkpoint_saves"] > 0
    assert fast == slow
