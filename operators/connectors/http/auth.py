"""Credentials (bearer tokens / API keys from env or file, constant-time compare) and token buckets."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable

from operators.connectors.http.config import HttpAuthConfig, HttpBucketConfig

__all__ = ["Authenticator", "BucketSet", "TokenBucket", "load_credentials"]


def _parse(text: str, sep: str, origin: str) -> list[tuple[str, bytes]]:
    creds: list[tuple[str, bytes]] = []
    for n, raw in enumerate(text.split(sep), 1):
        line = raw.split("#", 1)[0].strip() if sep == "\n" else raw.strip()
        if not line:
            continue
        name, _, token = line.rpartition(":")
        if not token:
            raise ValueError(f"{origin}: credential {n} is empty")
        creds.append((name or f"{origin}#{n}", token.encode()))
    return creds


def load_credentials(cfg: HttpAuthConfig, resolve_path: Callable[[str], str] = lambda p: p) -> list[tuple[str, bytes]]:
    """(name, secret) pairs from `cfg.env` and `cfg.file`; raises ValueError when there are none."""
    creds: list[tuple[str, bytes]] = []
    if cfg.env:
        value = os.environ.get(cfg.env)
        if value is None:
            raise ValueError(f"auth.env: environment variable {cfg.env} is not set")
        creds += _parse(value, ",", f"env:{cfg.env}")
    if cfg.file:
        path = resolve_path(cfg.file)
        with open(path, encoding="utf-8") as fh:
            creds += _parse(fh.read(), "\n", f"file:{cfg.file}")
    if not creds:
        raise ValueError("auth is configured but no credential was found")
    return creds


class Authenticator:
    """Finds the credential a request presents. Every secret is compared (no early exit), each with
    `hmac.compare_digest` over SHA-256 digests (equal lengths), so timing tells nothing of which
    secret, how much of one, or how long one is."""

    def __init__(self, cfg: HttpAuthConfig, creds: list[tuple[str, bytes]]):
        self.scheme = cfg.scheme
        self.header = cfg.header.lower()
        self.creds = [(name, hashlib.sha256(secret).digest()) for name, secret in creds]
        self.challenge = 'Bearer realm="ingest"' if cfg.scheme == "bearer" else f'ApiKey header="{cfg.header}"'

    def presented(self, headers: dict[str, str]) -> bytes | None:
        if self.scheme == "bearer":
            value = headers.get("authorization", "")
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return token.strip().encode()
        key = headers.get(self.header)
        return key.strip().encode() if key else None

    def identify(self, headers: dict[str, str]) -> str | None:
        """The name of the matching credential, or None (→ 401)."""
        secret = self.presented(headers)
        if secret is None:
            return None
        found: str | None = None
        secret = hashlib.sha256(secret).digest()
        for name, cred in self.creds:
            if hmac.compare_digest(secret, cred) and found is None:
                found = name
        return found


class TokenBucket:
    """`rate` tokens a second up to `capacity`; `take()` returns 0 when granted, else seconds to wait."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> float:
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= n:
            self.tokens = tokens - n
            return 0.0
        self.tokens = tokens
        return (n - tokens) / self.rate


class BucketSet:
    """A global bucket and one per key (LRU-bounded so unknown clients cannot grow memory)."""

    def __init__(self, global_: HttpBucketConfig | None, per_key: HttpBucketConfig | None,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        now = clock()
        self.glob = TokenBucket(global_.rate, global_.capacity(), now) if global_ else None
        self.per_key = per_key
        self.keys: OrderedDict[str, TokenBucket] = OrderedDict()
        self.max_keys = max_keys

    def admit(self, key: str) -> int:
        """0 if the request may go on, else whole seconds for `Retry-After` (at least 1)."""
        now = self.clock()
        if self.per_key is not None:
            bucket = self.keys.get(key)
            if bucket is None:
                bucket = self.keys[key] = TokenBucket(self.per_key.rate, self.per_key.capacity(), now)
                if len(self.keys) > self.max_keys:
                    self.keys.popitem(last=False)
            else:
                self.keys.move_to_end(key)
            wait = bucket.take(now)
            if wait:
                return max(1, math.ceil(wait))
        if self.glob is not None:
            wait = self.glob.take(now)
            if wait:
                if self.per_key is not None:  # give the per-key token back: the request is refused
                    self.keys[key].tokens += 1
                return max(1, math.ceil(wait))
        return 0
