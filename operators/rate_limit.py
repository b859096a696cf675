"""`rate_limit`: let at most `rate` messages per second through (token bucket), delaying the rest.

Delaying instead of dropping keeps every message: the wait backs up into the input edge and from
there to the sources, like any slow node. `burst` messages may pass at once after an idle spell.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from engine import Msg, NodeConfig, Operator, Output

__all__ = ["RateLimit", "RateLimitConfig", "TokenBucket"]


class RateLimitConfig(NodeConfig):
    """Pass at most `rate` messages per second; hold the rest back (never drop)."""

    rate: float = Field(gt=0, description="Messages per second.", examples=[10000])
    burst: int | None = Field(None, ge=1, description="Messages that may pass at once; default: one second's worth.")

    @model_validator(mode="after")
    def _default_burst(self) -> RateLimitConfig:
        if self.burst is None:
            self.burst = max(1, int(self.rate))
        return self


class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; `take(n)` says how long to wait for n."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, n: int) -> float:
        """Take n tokens (going into debt if needed); return the seconds to wait before using them."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class RateLimit(Operator):
    Config = RateLimitConfig
    preserves_bodies = True  # every port but `errors` sends messages it received, bodies unchanged
    example = """\
version: 1
name: rate_limit_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  slow:
    type: rate_limit
    inputs: [orders]
    config: {rate: 5000, burst: 500}     # messages per second; held back, never dropped
  show: {type: stdout, inputs: [slow]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""

    def __init__(self, node_id: str, config: RateLimitConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self.bucket = TokenBucket(config.rate, config.burst or 1)

    async def process(self, batch: list[Msg], out: Output) -> None:
        import asyncio

        # large batches are let through in bursts so the output rate stays smooth
        step = self.bucket.burst
        port = out.port("out")
        for i in range(0, len(batch), step):
            part = batch[i:i + step]
            wait = self.bucket.take(len(part))
            if wait > 0:
                await asyncio.sleep(wait)
            port.extend(part)
