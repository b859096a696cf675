"""What operators and sources write to: per-port lists filled in a tight loop, sent after."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.codec import safe_payload
from engine.message import FILTERED, Bodies, Msg

if TYPE_CHECKING:
    from engine.runtime.stats import NodeStats

__all__ = ["ERRORS", "Outputs", "SourceOutput", "error_envelope", "inner_outputs"]

ERRORS = "errors"


def error_envelope(msg: Msg, node: str, reason: str, attempt: int = 1) -> Msg:
    """The message that goes to an `errors` port: reason, node, attempts and the original payload.

    It keeps the original's ack, so the source acks it once a dead-letter sink commits it. The
    payload is made safe here, once, for every sink that may write it: a value that would not encode
    (too deep, not JSON, bytes that are not UTF-8) travels as `payload_base64` with `payload_error`
    (engine.codec.safe_payload), so a dead-letter sink never fails on content."""
    meta = msg.meta
    body = {
        "error": reason,
        "node": node,
        "attempt": attempt,
        **safe_payload(msg.body),
        "meta": {k: v for k, v in meta.items() if isinstance(v, (str, float, bool, type(None)))
                 or (type(v) is int and -(1 << 63) <= v < 1 << 64)},
    }
    return Msg(body, {**meta, "error": reason, "error_node": node}, msg.ack, msg.size)


def inner_outputs(node_id: str, ports: tuple[str, ...], node_type: str) -> Outputs:
    """Outputs for an operator that runs inside another (`parallel`): counted on stats of its own,
    not the run's."""
    from engine.runtime.stats import NodeStats

    return Outputs(node_id, ports, NodeStats(node_id, "operator", node_type))


class Outputs:
    """Per-port output lists of one `process` call; the runtime sends them downstream after."""

    __slots__ = ("lists", "node_id", "stats")

    def __init__(self, node_id: str, ports: tuple[str, ...], stats: NodeStats):
        self.node_id = node_id
        self.lists: dict[str, list[Msg]] = {p: [] for p in ports}
        self.lists.setdefault(ERRORS, [])
        self.stats = stats

    def port(self, name: str = "out") -> list[Msg]:
        """The list to append messages to for `name` (fast path: `append` in a loop)."""
        return self.lists[name]

    def send(self, msg: Msg, port: str = "out") -> None:
        self.lists[port].append(msg)

    def error(self, msg: Msg, reason: str, attempt: int = 1) -> None:
        """Send `msg` to the `errors` port with why it failed."""
        self.lists[ERRORS].append(error_envelope(msg, self.node_id, reason, attempt))

    def drop(self, msg: Msg) -> None:
        """`msg` was filtered out on purpose: it is done."""
        self.stats.filtered += 1
        msg.ack.finish(FILTERED)

    def send_bodies(self, batch: Bodies, port: str = "out") -> None:
        """Send a whole `Bodies` (`Operator.process_bodies`): it stays one unless the port already
        holds messages."""
        held: Any = self.lists[port]
        if not held:
            self.lists[port] = batch  # type: ignore[assignment]
        elif type(held) is Bodies:
            self.lists[port] = held.concat(batch)  # type: ignore[assignment]
        else:
            held.extend(batch.msgs())

    def take(self) -> dict[str, list[Msg]]:
        lists = self.lists
        self.lists = {p: [] for p in lists}
        return lists


class SourceOutput:
    """What a source sends to: batches go downstream, acks come back through `tracker`."""

    def __init__(self, node_id: str, tracker: Any, send: Any, stats: NodeStats):
        self.node_id = node_id
        self.tracker = tracker  # engine.message.AckTracker: tracker.new(token) makes a message's ack
        self._send = send
        self.stats = stats
        import asyncio  # here, not at the top: node types import this module, and `validate` loads no asyncio

        self.stopping = asyncio.Event()  # set on SIGTERM/SIGINT: stop reading, return from run()

    async def send(self, msgs: list[Msg] | Bodies, errors: list[Msg] | None = None) -> None:
        """Send a batch downstream (a list of messages, or a `Bodies`); waits while the downstream
        has no room (backpressure)."""
        await self._send({"out": msgs, ERRORS: errors or []})

    async def send_ports(self, lists: dict[str, list[Msg]]) -> None:
        await self._send(lists)

    def error(self, msg: Msg, reason: str, attempt: int = 1) -> Msg:
        """Wrap a message that failed at the source (undecodable body...) for the errors port."""
        return error_envelope(msg, self.node_id, reason, attempt)

    async def wait_room(self) -> None:
        """Wait until the source has fewer unsettled messages than its `max_in_flight`."""
        await self.tracker.wait_room()
