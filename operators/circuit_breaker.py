"""`circuit_breaker`: stop calling an inner operator that keeps failing, for a while.

States: *closed* (calls go through; a failing call is re-raised, so the node's retry policy and
then its `errors` port handle that batch, and it counts), *open* after `failures` consecutive
failed calls (for `reset_after` seconds nothing reaches the inner operator), *half-open* (the next
batch is a trial: success closes the circuit, failure opens it again). While open, `when_open`
says what happens to batches: `wait` holds them (the input fills and upstream slows down:
backpressure, nothing lost, nothing dead-lettered), `errors` sends them to the errors port at once
with the reason. A failed call is an exception from the inner `process`; messages the inner
operator itself sends to `errors` are not failures of the service. Time comes from the node's clock.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import Field

from engine import CheckContext, CheckIssue, Msg, NodeConfig, Operator, Output
from operators.inner import InnerOperator, check_inner, load_inner

__all__ = ["CircuitBreaker", "CircuitBreakerConfig"]


class CircuitBreakerConfig(NodeConfig):
    """Run `operator`; after `failures` failed calls in a row, stop calling it for `reset_after` seconds."""

    operator: InnerOperator = Field(
        description="The operator to call and guard: `type` and `config`, as a node has (no `inputs`).",
        examples=[{"type": "map", "config": {"expr": "msg"}}],
    )
    failures: int = Field(5, ge=1, le=10_000, description="Consecutive failed calls that open the circuit.")
    reset_after: float = Field(30.0, gt=0, le=86_400, description="Seconds the circuit stays open.")
    when_open: Literal["wait", "errors"] = Field(
        "wait", description="`wait`: hold batches (backpressure); `errors`: send them to the errors port."
    )


class CircuitBreaker(Operator):
    """`state` is "closed", "open" or "half-open"; `opened` counts how many times it opened."""

    Config = CircuitBreakerConfig
    example = """\
version: 1
name: circuit_breaker_example
connections:
  pg: {type: postgres, dsn: "${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  enrich:
    type: circuit_breaker
    inputs: [orders]
    config:
      failures: 5                    # failed calls in a row that open the circuit
      reset_after: 30                 # seconds
      when_open: wait                # hold batches (backpressure) while open
      operator:
        type: pg_lookup
        config: {connection: pg, table: customers, key_column: id, key: msg.user, into: customer}
  show: {type: stdout, inputs: [enrich]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    port_docs: ClassVar[dict[str, str]] = {
        "<inner ports>": "the ports of `operator` (its `out` and any named ports, such as the `miss` port of "
            "`redis_lookup`)",
    }

    def __init__(self, node_id: str, config: CircuitBreakerConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        cls, inner_config = load_inner(config.operator)
        if cls is None:
            raise ValueError(f"circuit_breaker: invalid inner operator {config.operator.type!r}")
        self.inner = cls(f"{node_id}[inner]", inner_config, ctx)
        self.tick_interval = self.inner.tick_interval
        self.state = "closed"
        self.failed = 0  # consecutive failed calls
        self.open_until = 0.0
        self.opened = 0

    @classmethod
    def output_ports(cls, config: CircuitBreakerConfig) -> tuple[str, ...]:
        inner, inner_config = load_inner(config.operator)
        return inner.output_ports(inner_config) if inner is not None else ("out",)

    @classmethod
    def check(cls, config: CircuitBreakerConfig, ctx: CheckContext) -> Iterable[CheckIssue]:
        return check_inner(config.operator, ctx, "circuit_breaker")

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def process(self, batch: list[Msg], out: Output) -> None:
        import asyncio

        if self.state == "open":
            remaining = self.open_until - self.ctx.clock()
            if remaining > 0 and self.config.when_open == "errors":
                reason = f"circuit open after {self.failed} failed call(s); retrying in {remaining:.1f}s"
                for m in batch:
                    out.error(m, f"circuit_breaker: {reason}")
                return
            if remaining > 0:
                self.ctx.log.info("circuit open: holding input for %.2fs", remaining)
                await asyncio.sleep(remaining)
            self.state = "half-open"
        try:
            result = self.inner.process(batch, out)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.failed += 1
            if self.state == "half-open" or self.failed >= self.config.failures:
                self._open()
            raise
        if self.state != "closed":
            self.ctx.log.warning("circuit closed again: the trial batch went through")
        self.state = "closed"
        self.failed = 0

    def _open(self) -> None:
        self.state = "open"
        self.open_until = self.ctx.clock() + self.config.reset_after
        self.opened += 1
        self.ctx.log.warning(
            "circuit open after %d failed call(s): no calls for %.1fs", self.failed, self.config.reset_after
        )

    def tick(self, now: float, out: Output) -> Any:
        return self.inner.tick(now, out)

    def flush(self, out: Output) -> Any:
        return self.inner.flush(out)
