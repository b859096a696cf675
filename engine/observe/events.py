"""Log lines for events a human should see, emitted from the runtime's hot paths at batch granularity.

Dead-lettered messages get one line each (node, reason, source and position, never the payload
unless `include_payload` is set), at most `limit_per_second` lines a second; the rest are counted
and summarised in one line, so a flood of bad input cannot flood the log."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["DeadLetterLog", "dead_letter_policy", "deadletter_log", "log_dead_letters"]

deadletter_log = logging.getLogger("streamdag.deadletter")


class DeadLetterLog:
    """Rate limit and payload policy of dead-letter log lines (one per process)."""

    def __init__(self, limit_per_second: int = 20, include_payload: bool = False):
        self.limit_per_second = limit_per_second
        self.include_payload = include_payload
        self._window = 0.0
        self._used = 0
        self._suppressed = 0

    def reset(self) -> None:
        """Forget the current second's budget (a new run, or a test)."""
        self._window, self._used, self._suppressed = 0.0, 0, 0

    def flush(self) -> None:
        """Log how many lines the limit held back (at each new second, and at the end of a run)."""
        if self._suppressed:
            deadletter_log.warning(
                "%d more dead-lettered message(s) not logged one by one",
                self._suppressed,
                extra={"event": "dead_lettered_suppressed", "count": self._suppressed},
            )
            self._suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window >= 1.0:
            self.flush()
            self._window, self._used = now, 0
        if self._used < self.limit_per_second:
            self._used += 1
            return True
        self._suppressed += 1
        return False


dead_letter_policy = DeadLetterLog()


def log_dead_letters(sink: str, committed: list[Any]) -> None:
    """One warning per message committed by dead-letter sink `sink`."""
    policy = dead_letter_policy
    now = time.monotonic()
    for m in committed:
        if not policy.allow(now):
            continue
        body = m.body if isinstance(m.body, dict) else {}
        meta = m.meta
        extra: dict[str, Any] = {
            "event": "dead_lettered",
            "node": body.get("node", meta.get("error_node")),
            "reason": body.get("error", meta.get("error")),
            "dead_letter_sink": sink,
            "source": meta.get("source"),
        }
        for key in ("seq", "line", "subject", "key", "id", "stream_seq"):
            if key in meta and isinstance(meta[key], (str, int, float)):
                extra[key] = meta[key]
        if policy.include_payload:
            extra["payload"] = body.get("payload", m.body)
        deadletter_log.warning("message dead-lettered by %s: %s", extra["node"], extra["reason"], extra=extra)
