"""The targeted mutations: each breaks one core invariant with a one-line change, and names the test
files that must then fail. `run.py` applies them one at a time to a copy of the tree.

A mutation is found by the exact text of its line (leading and trailing blanks ignored), which must
occur once in the file, or once after the first line containing `after`. When the code moves on and
the line no longer matches, `test_mutations.py` (in the default run) fails and the check reports the
mutation `stale`: update it here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MUTATIONS", "Mutation"]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # from the repository root
    line: str  # the original line, stripped
    mutant: str  # what replaces it (indentation kept)
    tests: tuple[str, ...]  # test files (or node ids) of which at least one must fail
    invariant: str  # what the change breaks, in a few words
    after: str | None = None  # look for `line` only after the first line containing this


_CHANNEL_PUT = (
    "while self.count and (self.count + len(batch) > self.capacity"
    " or self.bytes + size > self.capacity_bytes):"
)
_HTTP_RESOLVE = "if req.remaining == 0 and not req.future.done():"
_JS_SOURCE = "operators/connectors/jetstream/source.py"
_JS_TESTS = ("tests/connectors/test_jetstream.py", "tests/connectors/test_redeliver_on_error.py")
_HTTP_TESTS = ("tests/connectors/test_http_ack_rounds.py", "tests/connectors/test_http_ingest.py")

MUTATIONS: tuple[Mutation, ...] = (
    # -- channels and acks (engine/runtime, engine/message.py)
    Mutation(
        "channel-bytes-x10",
        "engine/runtime/channel.py",
        _CHANNEL_PUT,
        _CHANNEL_PUT.replace("self.capacity_bytes)", "self.capacity_bytes * 10)"),
        ("tests/runtime/test_channel_bytes.py",),
        "a channel holds at most capacity_bytes",
    ),
    Mutation(
        "channel-messages-x10",
        "engine/runtime/channel.py",
        _CHANNEL_PUT,
        _CHANNEL_PUT.replace("> self.capacity or", "> self.capacity * 10 or"),
        ("tests/runtime/test_scheduler.py",),
        "a channel holds at most capacity messages",
    ),
    Mutation(
        "in-flight-limit-off-by-one",
        "engine/message.py",
        "return self.limit <= 0 or self.in_flight < self.limit",
        "return self.limit <= 0 or self.in_flight <= self.limit",
        ("tests/runtime/test_scheduler.py",),
        "a source stops at max_in_flight unsettled messages",
    ),
    Mutation(
        "failed-ack-committed",
        "engine/message.py",
        "if ack.error is None:",
        "if True:",
        ("tests/runtime/test_scheduler.py",),
        "a failed message is rejected, never committed upstream",
        after="def settle(self, ack: Ack) -> None:",
    ),
    Mutation(
        "dead-lettered-counted-filtered",
        "engine/message.py",
        "elif outcome & DEAD_LETTERED:",
        "elif outcome & FILTERED:",
        ("tests/runtime/test_scheduler.py",),
        "the ledger counts a dead-lettered message as dead-lettered",
    ),
    Mutation(
        "fan-out-retains-one-less",
        "engine/runtime/router.py",
        "own_ack(m).retain(extra)",
        "own_ack(m).retain(extra - 1)",
        ("tests/runtime/test_scheduler.py",),
        "a fanned-out message is acked only after every branch commits",
    ),
    # -- http_source: the reply after every item of a request settled
    Mutation(
        "http-commit-resolves-early",
        "operators/connectors/http/source.py",
        _HTTP_RESOLVE,
        "if not req.future.done():",
        _HTTP_TESTS,
        "no 202 before every item of the request is committed",
        after="async def commit(",
    ),
    Mutation(
        "http-reject-resolves-early",
        "operators/connectors/http/source.py",
        _HTTP_RESOLVE,
        "if not req.future.done():",
        _HTTP_TESTS,
        "no reply before every item of the request settled, failures included",
        after="async def reject(",
    ),
    Mutation(
        "http-failures-ignored",
        "operators/connectors/http/source.py",
        "if pending.failures:",
        "if False:",
        _HTTP_TESTS,
        "a request with a failed item gets 502, never 202",
    ),
    Mutation(
        "http-schema-check-skipped",
        "operators/connectors/http/body.py",
        "if is_valid(item):",
        "if True:",
        ("tests/connectors/test_http_ingest.py", "tests/connectors/test_http_guard.py"),
        "items failing the schema are refused (422)",
    ),
    # -- operators
    Mutation(
        "route-first-each-reversed",
        "operators/route.py",
        "for lst, fn in conds:",
        "for lst, fn in reversed(conds):",
        ("tests/operators/test_route.py",),
        "mode first: the first matching route wins, on the per-message path too",
        after="def _first_each(",
    ),
    Mutation(
        "validate-schema-skipped",
        "operators/validate.py",
        "if is_valid(m.body):",
        "if True:",
        ("tests/operators/test_validate.py",),
        "validate sends schema failures to errors",
    ),
    Mutation(
        "window-fires-one-tick-late",
        "operators/windowing.py",
        "while fire and fire[0] <= wm:",
        "while fire and fire[0] < wm:",
        ("tests/operators/test_window.py",),
        "a window fires when the watermark reaches its end (wm >= end)",
    ),
    Mutation(
        "window-purged-one-tick-late",
        "operators/windowing.py",
        "while purge and purge[0] + self.lateness <= wm:",
        "while purge and purge[0] + self.lateness < wm:",
        ("tests/operators/test_window.py",),
        "a window's state is purged at end + allowed_lateness",
    ),
    Mutation(
        "aggregate-min-is-max",
        "operators/window_aggregates.py",
        "return value if state is None or value < state else state",
        "return value if state is None or value > state else state",
        ("tests/operators/test_window.py",),
        "min keeps the smallest value",
        after="class Min(",
    ),
    # -- connectors
    Mutation(
        "lww-batch-keeps-lowest-version",
        "operators/connectors/postgres/sink.py",
        """order += [f"{quote_ident(cfg.version or '')} DESC NULLS LAST", "__ord"]  # ties: first arrival""",
        """order += [f"{quote_ident(cfg.version or '')} ASC NULLS LAST", "__ord"]""",
        ("tests/connectors/test_postgres_sink.py",),
        "last_write_wins keeps the highest version within a batch",
    ),
    Mutation(
        "lww-older-version-overwrites",
        "operators/connectors/postgres/sink.py",
        'conflict += f" WHERE EXCLUDED.{v} IS NOT NULL AND (t.{v} IS NULL OR t.{v} < EXCLUDED.{v})"',
        'conflict += f" WHERE EXCLUDED.{v} IS NOT NULL"',
        ("tests/connectors/test_postgres_sink.py",),
        "last_write_wins never replaces a row with an older version",
    ),
    Mutation(
        "jetstream-nak-becomes-ack",
        _JS_SOURCE,
        """lines.append((reply, b'-NAK {"delay":%d}' % delay))""",
        """lines.append((reply, b"+ACK"))""",
        _JS_TESTS,
        "a failed message is nak'ed (redelivered), not acked away",
    ),
    Mutation(
        "jetstream-max-deliver-off-by-one",
        _JS_SOURCE,
        "if delivered >= cfg.max_deliver and tracker is not None and self._out is not None:",
        "if delivered > cfg.max_deliver and tracker is not None and self._out is not None:",
        _JS_TESTS,
        "a message is dead-lettered at its max_deliver-th delivery",
    ),
    Mutation(
        "jetstream-dead-letter-not-termed",
        _JS_SOURCE,
        'lines.append((reply, b"+TERM"))',
        'lines.append((reply, b"+ACK"))',
        ("tests/connectors/test_jetstream.py",),
        "a dead-lettered message is terminated (+TERM) once its dead letter is committed",
        after="async def commit(",
    ),
    Mutation(
        "redis-xack-skips-one",
        "operators/connectors/redis/streams.py",
        'pipe.execute_command("XACK", self.config.stream, self.config.group, *ids[i:i + _ACK_CHUNK])',
        'pipe.execute_command("XACK", self.config.stream, self.config.group, *ids[i + 1:i + _ACK_CHUNK])',
        ("tests/connectors/test_redis_streams.py",),
        "every committed entry is XACKed",
    ),
    Mutation(
        "redis-dead-letters-left-pending",
        "operators/connectors/redis/streams.py",
        "if dead:",
        "if False:",
        ("tests/connectors/test_redis_streams.py",),
        "an entry dead-lettered by the source is XACKed even when its dead letter failed",
        after="async def reject(",
    ),
    # -- compile and CEL
    Mutation(
        "cycle-not-reported",
        "engine/compile/validate.py",
        """c.add(("nodes", cycle[1], "inputs"), "E214", f"cycle: {' -> '.join(cycle)}")""",
        "pass",
        ("tests/compile/test_diagnostics.py",),
        "a cycle in the graph is the offline error E214",
    ),
    Mutation(
        "cel-int-overflow-by-one",
        "engine/celc/values.py",
        "if INT64_MIN <= r <= INT64_MAX:",
        "if INT64_MIN <= r <= INT64_MAX + 1:",
        ("tests/celc/test_api.py", "tests/celc/test_conformance.py"),
        "int arithmetic past int64 is an overflow error",
        after="def _int_result(",
    ),
    Mutation(
        "cel-encrypt-key-id-not-authenticated",
        "engine/celc/library.py",
        'sealed = aead.encrypt(nonce, _data(v, "crypto.encrypt"), header.encode())',
        'sealed = aead.encrypt(nonce, _data(v, "crypto.encrypt"), None)',
        ("tests/celc/test_library.py",),
        "crypto.encrypt authenticates the prefix and key id with the ciphertext",
    ),
    Mutation(
        "cel-schema-int-double-not-reported",
        "engine/celc/types.py",
        'if kinds == {"int", "double"}:',
        "if False:",
        ("tests/celc/test_types.py",),
        "int/double arithmetic on an integer schema field is E206",
    ),
)
