"""Fixtures of the connector tests: private Redis, NATS and PostgreSQL servers that a test may stop
and start again (`outage_harness`), removed even when the test fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.connectors.outage_harness import NatsService, PostgresService, RedisService
from tests.connectors.postgres_harness import PrivatePostgres


def _private(service: Any) -> Iterator[Any]:
    try:
        service.create()
        yield service
    finally:
        service.cleanup()


@pytest.fixture
def redis_service() -> Iterator[RedisService]:
    yield from _private(RedisService())


@pytest.fixture
def nats_service() -> Iterator[NatsService]:
    yield from _private(NatsService())


@pytest.fixture
def pg_service() -> Iterator[PostgresService]:
    if not PrivatePostgres.available():
        pytest.skip("needs PostgreSQL server binaries and root (to run them as the postgres user)")
    yield from _private(PostgresService())
