"""Schemathesis against the gateway's own /openapi.json, over loopback (bounded examples, ~10 s).

Positive and negative cases must get a documented status and body (no 5xx, nothing off-schema),
and every item of every (non-replayed) 202 must be in the sink, and nothing else.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")

from hypothesis import HealthCheck, given, settings

from tests.connectors.http_harness import Gateway

SCHEMA = {"type": "object", "required": ["id"],
          "properties": {"id": {"type": "integer"}, "tag": {"type": "string", "maxLength": 8}}}


class _Running:
    """A Gateway on its own event loop in a thread, so sync clients (requests) can call it."""

    def __init__(self, tmp_path: Any, **config: Any):
        self.tmp_path = tmp_path
        self.config = config
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.done = asyncio.Event()
        async with Gateway(self.tmp_path, schemas={"item": SCHEMA}, schema="item", max_batch=20,
                           auth={"env": "HTTP_FUZZ_TOKENS"}, **self.config) as gw:
            self.gw = gw
            self.ready.set()
            await self.done.wait()

    def __enter__(self) -> Gateway:
        self.thread.start()
        assert self.ready.wait(10)
        return self.gw

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(10)


@pytest.fixture
def gateway(tmp_path: Any, monkeypatch: Any) -> Iterator[Gateway]:
    monkeypatch.setenv("HTTP_FUZZ_TOKENS", "fuzz:s3cret")
    with _Running(tmp_path) as gw:
        yield gw


@pytest.fixture
def gateway_accept_valid(tmp_path: Any, monkeypatch: Any) -> Iterator[Gateway]:
    monkeypatch.setenv("HTTP_FUZZ_TOKENS", "fuzz:s3cret")
    with _Running(tmp_path, on_invalid_item="accept_valid") as gw:
        yield gw


def test_fuzz_ingest_against_its_openapi_document(gateway: Gateway) -> None:
    _fuzz_ingest(gateway)


def test_fuzz_ingest_accepting_the_valid_items_against_its_openapi_document(gateway_accept_valid: Gateway) -> None:
    """With `on_invalid_item: accept_valid` the replies (202 with `refused`, 422 `no_valid_item`) match the
    document too, and still only schema-valid items get in."""
    _fuzz_ingest(gateway_accept_valid)


def _fuzz_ingest(gateway: Gateway) -> None:
    doc = requests.get(gateway.url + "/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(doc)
    operation = schema["/api/v1/data/ingest"]["POST"]
    accepted = 0
    statuses: set[int] = set()
    session = requests.Session()

    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        nonlocal accepted
        resp = case.call(base_url=gateway.url, session=session, headers={"Authorization": "Bearer s3cret"},
                         timeout=5)
        statuses.add(resp.status_code)
        assert resp.status_code < 500, resp.text
        case.validate_response(resp, excluded_checks=_loose_checks())
        replayed = any(k.lower() == "idempotent-replayed" for k in resp.headers)
        if resp.status_code == 202 and not replayed:
            accepted += resp.json()["accepted"]

    run()
    assert 202 in statuses
    lines = gateway.lines()
    assert len(lines) == accepted  # every item of every 202, and nothing else
    # only schema-valid items got in; JSON Schema counts 1e20 as an integer, and so do we
    bad = [line["body"] for line in lines if not _integral(line["body"].get("id"))]
    assert not bad, bad


def test_fuzz_unauthenticated_requests_get_401_and_nothing_enters(gateway: Gateway) -> None:
    doc = requests.get(gateway.url + "/openapi.json", timeout=5).json()
    operation = schemathesis.openapi.from_dict(doc)["/api/v1/data/ingest"]["POST"]
    session = requests.Session()

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        resp = case.call(base_url=gateway.url, session=session, timeout=5)
        assert resp.status_code == 401, resp.text

    run()
    assert gateway.lines() == []


def _integral(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _loose_checks() -> list[Any]:
    """Checks that judge the API's semantics (e.g. 'a positive case must be accepted') and so
    disagree with documented refusals such as 409/422 on a reused Idempotency-Key."""
    from schemathesis import checks

    return [c for c in (getattr(checks, n, None) for n in ("positive_data_acceptance", "ignored_auth",
                                                           "negative_data_rejection")) if c is not None]
