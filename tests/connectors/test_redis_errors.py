"""`classify_redis`: Redis replies as redis-py parses them (the code stripped from the text when
redis-py has a class for it), sorted into the server's fault or not."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from engine.errors import UNAVAILABLE, classify
from operators.connectors.redis.connection import first_refusal


@pytest.mark.parametrize("reply", [
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "LOADING Redis is loading the dataset in memory",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN The cluster is down",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOREPLICAS Not enough good replicas to write.",
])
def test_replies_of_a_server_that_cannot_serve_now_are_unavailable(reply: str) -> None:
    exc = BaseParser.parse_error(reply)
    assert classify(exc) == UNAVAILABLE
    assert first_refusal([b"1-0", exc]) is exc


@pytest.mark.parametrize("reply", [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR The ID specified in XADD is equal or smaller than the target stream top item",
])
def test_other_replies_are_not_the_servers_state(reply: str) -> None:
    exc = BaseParser.parse_error(reply)
    assert classify(exc) != UNAVAILABLE
    assert first_refusal([exc]) is None
