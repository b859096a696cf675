"""`RetryPolicy.call`: the one retry loop connectors that read on their own use."""

from __future__ import annotations

import asyncio
import logging

import pytest

from engine import MessageError, RetryPolicy, StopRetrying

log = logging.getLogger("test.retry")
FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002)


def flaky(failures: list[BaseException], result: str = "ok"):
    calls = {"n": 0}

    async def fn() -> str:
        calls["n"] += 1
        if failures:
            raise failures.pop(0)
        return result

    return fn, calls


def test_an_unavailable_service_is_retried_until_it_answers() -> None:
    fn, calls = flaky([ConnectionRefusedError()] * 7)
    assert asyncio.run(FAST.call(fn, what="read", log=log)) == "ok" and calls["n"] == 8


def test_a_message_error_is_raised_at_once() -> None:
    fn, calls = flaky([MessageError("bad row")])
    with pytest.raises(MessageError):
        asyncio.run(FAST.call(fn, what="read", log=log))
    assert calls["n"] == 1


def test_max_attempts_bounds_it_and_retry_if_narrows_it() -> None:
    fn, calls = flaky([TimeoutError()] * 5)
    with pytest.raises(TimeoutError):
        asyncio.run(FAST.model_copy(update={"max_attempts": 3}).call(fn, what="read", log=log))
    assert calls["n"] == 3
    fn, calls = flaky([KeyError("x")])
    with pytest.raises(KeyError):
        asyncio.run(FAST.call(fn, what="read", log=log, retry_if=lambda e: isinstance(e, OSError)))
    assert calls["n"] == 1


def test_a_stop_ends_the_wait() -> None:
    async def main() -> float:
        stopping = asyncio.Event()
        fn, _ = flaky([ConnectionResetError()] * 100)
        slow = RetryPolicy(initial_backoff=30, max_backoff=30)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        loop.call_later(0.05, stopping.set)
        with pytest.raises(StopRetrying):
            await slow.call(fn, what="read", log=log, stopping=stopping)
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0


def test_the_first_failure_and_the_recovery_are_logged(caplog) -> None:
    fn, _ = flaky([ConnectionRefusedError()] * 3)
    with caplog.at_level(logging.DEBUG, logger="test.retry"):
        asyncio.run(FAST.call(fn, what="XREADGROUP", log=log))
    levels = [(r.levelname, r.getMessage().split(" ")[0]) for r in caplog.records]
    assert levels[0] == ("WARNING", "XREADGROUP") and levels[-1] == ("INFO", "XREADGROUP")
    assert "after 4 attempts" in caplog.records[-1].getMessage()
