"""OpenTelemetry traces of a run: one span per node per batch, so one message can be followed from the
HTTP request that brought it to the row it became, across graphs and services.

Off unless `streamdag run --trace` (or an embedder sets `RunState.tracer`): the runtime then checks one
attribute per batch (`if s.tracer is None`) and nothing else, and this module and the SDK (the
optional `[otel]` extra) are never imported.

How a trace moves:

- A message's context is the W3C `traceparent` string in `meta["traceparent"]`. Only this module
  writes it, and only on messages of a sampled batch: its presence means "traced; your parent span
  is this". A message without it costs a node one dict lookup.
- A source batch starts a span whose parent is the context the messages came with: `traceparent` of
  the HTTP request (`http_source` puts it in `meta["headers"]`), of the JetStream message headers, or
  of the Redis entry's `traceparent` field. Without one, the span is a root, sampled by the ratio
  (one `random()` per source batch; an incoming sampled or unsampled flag is respected, as
  `ParentBased` does).
- An operator's or sink's batch gets a span only when some of its messages carry a context: the
  first is the parent, every other distinct one a span link. Before `process` or `write`, each traced
  message's meta is replaced (never changed in place: a meta may be shared) with a copy whose
  `traceparent` is this span, so what the node emits, and what `jetstream_sink` publishes
  (a `traceparent` header), continue the trace.
- Attributes: graph, node, type, kind, batch size, outcome (`ok`, `partial`: some messages to
  `errors`, `failed`: the whole batch), retries; each failed attempt is an `exception` event, each
  message sent to `errors` a `dead_letter` event with its reason (at most `MAX_EVENTS` per span).
- Exemplars: a traced batch leaves its trace id on its bucket of `streamdag_node_batch_seconds` and,
  at a sink, of `streamdag_end_to_end_latency_seconds` (served in OpenMetrics, which Prometheus asks
  for when its exemplar storage is on).

Export is OTLP over HTTP/protobuf, configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._HEADERS`, `..._TIMEOUT`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`; `OTEL_TRACES_SAMPLER[_ARG]` when no ratio is given), from
the SDK's batch processor thread, so the event loop never waits on the collector.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.message import Msg

__all__ = ["MAX_EVENTS", "MAX_LINKS", "Tracing", "format_traceparent"]

MAX_LINKS = 128  # span links per batch span (the SDK's default limit)
MAX_EVENTS = 32  # dead_letter / exception events per span
_FAILED_OUTCOME = "failed"
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # W3C, version 00
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16  # invalid ids: such a header starts no trace of its own
_KIND = {"source": "CONSUMER", "operator": "INTERNAL", "sink": "PRODUCER"}


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _incoming(msgs: list[Msg]) -> list[str]:
    """The distinct contexts a source's messages arrived with (their transport's `traceparent` header)."""
    found = [h.get("traceparent") for m in msgs if (h := m.meta.get("headers"))]
    return [tp for tp in dict.fromkeys(found) if isinstance(tp, str) and _TRACEPARENT.fullmatch(tp)
            and tp[3:35] != _ZERO_TRACE and tp[36:52] != _ZERO_SPAN]


class Tracing:
    """The tracer of one run: spans per node per batch (see the module docstring)."""

    def __init__(self, tracer: Any, graph: str, provider: Any = None, root_ratio: float | None = None):
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self.graph = graph
        # with a ratio, the root decision is made here (one random() per source batch, no span object
        # for the batches left out); the provider's sampler then only follows parents
        self.root_ratio = root_ratio
        self.provider = provider
        self._trace = trace
        self._link = Link
        self._kinds = {k: getattr(SpanKind, v) for k, v in _KIND.items()}
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._propagator = TraceContextTextMapPropagator()
        # the acks of the sampled source batches still in flight: while there are none, no message
        # carries a context and an operator's or sink's batch costs one check, not a lookup per message
        self._live: list[list[Any]] = []
        # node id -> NodeStats (set by the Runner): a traced batch leaves its trace id as the exemplar of
        # its bucket in `streamdag_node_batch_seconds` and, at a sink, `streamdag_end_to_end_latency_seconds`
        self.stats: dict[str, Any] = {}

    @classmethod
    def configure(cls, graph: str, ratio: float | None = None, exporter: Any = None) -> Tracing:
        """An SDK provider for one run: OTLP HTTP/protobuf export (standard `OTEL_*` variables), the
        service named after the graph unless `OTEL_SERVICE_NAME` says otherwise, parent-based sampling
        at `ratio` (None: `OTEL_TRACES_SAMPLER` or always on). ImportError names the extra to install."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        except ImportError as exc:
            raise ImportError(f"tracing needs the OpenTelemetry SDK: pip install 'streamdag[otel]' ({exc})") from exc
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"trace sampling ratio {ratio} is not between 0 and 1")
        attrs = {"streamdag.graph": graph}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = f"streamdag.{graph}"
        kwargs: dict[str, Any] = {"resource": Resource.create(attrs)}
        if ratio is not None:
            kwargs["sampler"] = ParentBased(ALWAYS_ON)  # roots: `root_ratio`, decided per source batch
        provider = TracerProvider(shutdown_on_exit=False, **kwargs)  # `close` bounds the flush; no atexit wait
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider.get_tracer("streamdag"), graph, provider, ratio)

    def shutdown(self, timeout_millis: int = 5000) -> None:
        """Export what is pending (bounded by `timeout_millis`) and stop the processor thread."""
        if self.provider is not None:
            self.provider.force_flush(timeout_millis)
            self.provider.shutdown()

    async def close(self, timeout: float = 5.0) -> bool:
        """`shutdown` on a daemon thread, waited for at most `timeout` seconds with the event loop
        running (so a second signal still ends the process at once, and an unreachable collector
        cannot hold the exit up longer). False when spans were left unexported."""
        import asyncio
        import threading

        done = threading.Thread(target=self.shutdown, args=(int(timeout * 1000),), daemon=True,
                                name="streamdag-trace-shutdown")
        done.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while done.is_alive() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return not done.is_alive()

    # -- spans -------------------------------------------------------------------------------------

    def _context(self, tp: str) -> Any:
        return self._propagator.extract({"traceparent": tp})

    def _start(self, rn: Any, parent: str | None, others: list[str], size: int, server: bool = False) -> Any:
        links = []
        for tp in others[:MAX_LINKS]:
            sc = self._trace.get_current_span(self._context(tp)).get_span_context()
            if sc.is_valid:
                links.append(self._link(sc))
        return self._tracer.start_span(
            f"{rn.type} {rn.id}", context=self._context(parent) if parent else None, links=links,
            kind=self._server if server else self._kinds[rn.kind],
            attributes={"streamdag.graph": self.graph, "streamdag.node": rn.id, "streamdag.node.type": rn.type,
                        "streamdag.node.kind": rn.kind, "streamdag.batch.size": size,
                        "messaging.batch.message_count": size})

    def _stamp(self, span: Any, msgs: list[Msg], only_traced: bool) -> None:
        """Give traced messages (or all, for a source's sampled batch) this span as their context."""
        sc = span.get_span_context()
        tp = format_traceparent(sc.trace_id, sc.span_id, sc.trace_flags)
        n = 0
        for m in msgs:
            if not only_traced or "traceparent" in m.meta:
                m.meta = {**m.meta, "traceparent": tp}
                n += 1
        span.set_attribute("streamdag.batch.traced", n)

    def _dead_letters(self, span: Any, failures: list[tuple[Msg, str]]) -> None:
        for m, reason in failures[:MAX_EVENTS]:
            attrs: dict[str, Any] = {"streamdag.reason": reason}
            for key in ("id", "seq", "request_id"):
                v = m.meta.get(key)
                if isinstance(v, (str, int)):
                    attrs[f"streamdag.message.{key}"] = v
            span.add_event("dead_letter", attrs)

    def _finish(self, span: Any, outcome: str, retries: int) -> None:
        span.set_attribute("streamdag.outcome", outcome)
        span.set_attribute("streamdag.retries", retries)
        if outcome == _FAILED_OUTCOME:
            span.set_status(self._error)
        span.end()

    def _traced_in_flight(self) -> bool:
        """Whether a message of a sampled source batch may still be in the graph (its ack unsettled)."""
        live = self._live
        if live:
            live[:] = [acks for acks in live if any(a.pending > 0 for a in acks)]
        return bool(live)

    async def run(self, rn: Any, retry: Callable[..., Awaitable[Any]], call: Callable[[], Any], batch: list[Msg],
                  outputs: Any, failed: object) -> Any:
        """An operator's or sink's batch: `retry(rn, call, batch, outputs)` (the runtime's retrier),
        inside a span when some message of the batch is traced. `failed` is the retrier's FAILED."""
        if not self._traced_in_flight():
            return await retry(rn, call, batch, outputs)
        parents = list(dict.fromkeys(tp for m in batch if (tp := m.meta.get("traceparent")) is not None))
        if not parents:
            return await retry(rn, call, batch, outputs)
        span = self._start(rn, parents[0], parents[1:], len(batch))
        self._stamp(span, batch, only_traced=True)
        attempts = 0
        last = ""

        async def attempt() -> Any:
            nonlocal attempts, last
            attempts += 1
            try:
                result = call()
                return await result if inspect.isawaitable(result) else result
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                if attempts <= MAX_EVENTS:
                    span.record_exception(exc, {"streamdag.attempt": attempts})
                raise

        t0 = time.perf_counter()
        try:
            result = await retry(rn, attempt, batch, outputs)
        except BaseException:
            self._finish(span, _FAILED_OUTCOME, max(0, attempts - 1))
            raise
        if result is failed:
            self._dead_letters(span, [(m, last) for m in batch])
            outcome = _FAILED_OUTCOME
        else:
            errs = (outputs.lists.get("errors") if outputs is not None else None) or []
            fails = result if outputs is None and isinstance(result, list) else []
            dead = [(e, str(e.body.get("error", ""))) for e in errs if isinstance(e.body, dict)] + list(fails)
            self._dead_letters(span, dead)
            outcome = "partial" if dead else "ok"
            self._exemplars(rn, span, batch, time.perf_counter() - t0, {id(m) for m, _ in dead})
        self._finish(span, outcome, max(0, attempts - 1))
        return result

    def _exemplars(self, rn: Any, span: Any, batch: list[Msg], seconds: float, failed: set[int]) -> None:
        stats = self.stats.get(rn.id)
        if stats is None:
            return
        trace_id = f"{span.get_span_context().trace_id:032x}"
        now = time.time()
        stats.batch_seconds.set_exemplar(seconds, trace_id, now)
        if rn.kind == "sink":
            for m in batch:
                ts = m.meta.get("timestamp")
                if "traceparent" in m.meta and id(m) not in failed and isinstance(ts, (int, float)):
                    stats.end_to_end.set_exemplar(now - ts, trace_id, now)
                    break

    def wrap_source(self, rn: Any, send: Callable[[dict[str, list[Msg]]], Awaitable[None]]
                    ) -> Callable[[dict[str, list[Msg]]], Awaitable[None]]:
        """A source's send, making a span per batch sent (decided once, at start: no cost per batch
        when tracing is off)."""
        server = rn.type == "http_source"
        carries = bool(getattr(rn.cls, "trace_context", False))

        ratio = self.root_ratio
        rand = random.random

        async def traced_send(lists: dict[str, list[Msg]]) -> None:
            incoming = _incoming([m for ms in lists.values() for m in ms]) if carries else []
            if not incoming and ratio is not None and rand() >= ratio:
                await send(lists)  # a root left out by the ratio: no span, nothing stamped
                return
            msgs = [m for ms in lists.values() for m in ms]
            if not msgs:
                await send(lists)
                return
            sampled = [tp for tp in incoming if tp.endswith("-01")]
            parent = sampled[0] if sampled else (incoming[0] if incoming else None)
            span = self._start(rn, parent, [tp for tp in incoming if tp != parent], len(msgs), server)
            if not span.is_recording():
                span.end()
                await send(lists)
                return
            self._stamp(span, msgs, only_traced=False)
            self._live.append(list({id(m.ack): m.ack for m in msgs}.values()))
            errors = lists.get("errors") or []
            self._dead_letters(span, [(e, str(e.body.get("error", ""))) for e in errors if isinstance(e.body, dict)])
            try:
                await send(lists)
            finally:
                self._finish(span, "partial" if errors else "ok", 0)

        return traced_send
