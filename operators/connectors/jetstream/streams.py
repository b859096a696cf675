"""Stream provisioning: create the declared streams that are missing, refuse conflicting ones."""

from __future__ import annotations

import logging
from typing import Any

from engine import ConfigError, NatsStream

__all__ = ["StreamConflictError", "ensure_streams", "stream_config", "stream_conflicts", "subject_within"]

log = logging.getLogger("streamdag.jetstream")


class StreamConflictError(ConfigError):
    """An existing stream's config differs from its declaration: fix one of them (nothing is changed)."""


def subject_within(inner: str, outer: str) -> bool:
    """True if every subject `inner` matches (wildcards allowed) is also matched by `outer`."""
    a, b = inner.split("."), outer.split(".")
    for i, tok in enumerate(b):
        if tok == ">":
            return i < len(a)
        if i >= len(a) or a[i] == ">" or (tok != "*" and (a[i] == "*" or a[i] != tok)):
            return False
    return len(a) == len(b)


def stream_config(name: str, spec: NatsStream) -> Any:
    """The nats-py `StreamConfig` of a declaration."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    return StreamConfig(
        name=name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        max_age=spec.max_age,
        max_msg_size=spec.max_msg_size,
        max_msgs=spec.max_msgs,
        max_bytes=spec.max_bytes,
        storage=StorageType(spec.storage),
        num_replicas=spec.replicas,
        duplicate_window=spec.duplicate_window,
        discard=DiscardPolicy(spec.discard),
    )


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def stream_conflicts(spec: NatsStream, existing: Any) -> list[str]:
    """How an existing stream's config (nats-py `StreamConfig`) differs from `spec`, one line each."""
    declared = {
        "subjects": sorted(spec.subjects),
        "retention": spec.retention,
        "max_age": float(spec.max_age),
        "max_msg_size": spec.max_msg_size,
        "max_msgs": spec.max_msgs,
        "max_bytes": spec.max_bytes,
        "storage": spec.storage,
        "replicas": spec.replicas,
        "duplicate_window": float(spec.duplicate_window),
        "discard": spec.discard,
    }
    actual = {
        "subjects": sorted(existing.subjects or []),
        "retention": _value(existing.retention),
        "max_age": float(existing.max_age or 0),
        "max_msg_size": existing.max_msg_size if existing.max_msg_size is not None else -1,
        "max_msgs": existing.max_msgs if existing.max_msgs is not None else -1,
        "max_bytes": existing.max_bytes if existing.max_bytes is not None else -1,
        "storage": _value(existing.storage),
        "replicas": existing.num_replicas or 1,
        "duplicate_window": float(existing.duplicate_window or 0),
        "discard": _value(existing.discard),
    }
    return [
        f"{k}: declared {declared[k]!r}, server has {actual[k]!r}"
        for k in declared
        if declared[k] != actual[k]
    ]


async def ensure_streams(js: Any, streams: dict[str, NatsStream]) -> list[str]:
    """Create missing streams; raise `StreamConflictError` naming every difference. Returns those created."""
    from nats.js.errors import NotFoundError

    created: list[str] = []
    problems: list[str] = []
    for name, spec in streams.items():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(stream_config(name, spec))
            except Exception as exc:  # noqa: BLE001 - reported with the stream's name below
                problems.append(f"stream {name!r}: cannot create it: {exc}")
                continue
            log.info("created stream %s (subjects %s)", name, ", ".join(spec.subjects))
            created.append(name)
            continue
        diffs = stream_conflicts(spec, info.config)
        if diffs:
            problems.append(f"stream {name!r} exists with another config: " + "; ".join(diffs))
    if problems:
        raise StreamConflictError("\n".join(problems))
    return created
