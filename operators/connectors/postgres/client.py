"""What the PostgreSQL nodes share: identifier checks, the pool per named connection, value conversion.

`postgres_sink`, `postgres_source` and `pg_lookup` each open no connection of their own: they ask
`pool_for(ctx, name)` for the one asyncpg pool of the named `connections:` entry (kept in the run's
shared resources, closed at the end of the run). Names from the config are validated offline by
`identifier_issues` (E220) and double-quoted at run time by `quote_ident`; message content only
ever travels as bind parameters or COPY data, never as SQL text.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import re
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from engine import (
    MESSAGE,
    UNAVAILABLE,
    CheckIssue,
    ConnectorError,
    ErrorClass,
    MessageError,
    PayloadTooLarge,
    codec,
    register_classifier,
)

if TYPE_CHECKING:
    import asyncpg

    from engine import Context

__all__ = [
    "IDENT_RE",
    "TYPE_RE",
    "check_all",
    "classify_postgres",
    "column_values",
    "db_message",
    "identifier_issues",
    "is_row_error",
    "is_transient",
    "json_text",
    "json_value",
    "plain_text",
    "pool_for",
    "quote_ident",
    "quote_qualified",
    "split_qualified",
    "to_text",
    "type_issues",
    "undecoded_row",
    "value_getter",
]

# A plain SQL identifier: what we accept for tables and columns (no quoting tricks needed, ≤ 63 bytes).
_INF = float("inf")
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
# A SQL type name as written in a column declaration: `bigint`, `numeric(12,2)`, `timestamp with time
# zone`, `text[]`, `varchar(40)`. Only letters, digits, spaces, one parenthesised size, array brackets.
TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]{0,62}(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\])*\Z")


def split_qualified(name: str) -> tuple[str | None, str]:
    """`schema.table` → (schema, table); `table` → (None, table)."""
    schema, dot, table = name.rpartition(".")
    return (schema, table) if dot else (None, table)


def quote_ident(name: str) -> str:
    """Double-quote one identifier (names are validated first; quoting is a second fence)."""
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name: str) -> str:
    """Quote `table` or `schema.table`."""
    schema, table = split_qualified(name)
    return quote_ident(table) if schema is None else f"{quote_ident(schema)}.{quote_ident(table)}"


def identifier_issues(loc: tuple[str | int, ...], name: str, what: str, qualified: bool = False) -> list[CheckIssue]:
    """E220 issues for a table (`qualified`: may be `schema.table`) or column name that is not a plain identifier."""
    parts = name.split(".") if qualified else [name]
    if len(parts) > 2 or not all(IDENT_RE.match(p) for p in parts):
        form = "name or schema.name" if qualified else "name"
        return [CheckIssue(loc, "E220", f"{what} {name!r} is not a safe SQL identifier: use a {form} of letters, "
                                        "digits and _ (not starting with a digit, at most 63 characters)")]
    return []


def type_issues(loc: tuple[str | int, ...], sql_type: str) -> list[CheckIssue]:
    """E220 for a column type that is not a plain SQL type name."""
    if TYPE_RE.match(sql_type.strip()):
        return []
    return [CheckIssue(loc, "E220", f"column type {sql_type!r} is not a plain SQL type name "
                                    "(like bigint, numeric(12,2), timestamptz, text[])")]


def check_all(issues: Iterable[CheckIssue]) -> None:
    """Raise the first error issue (used at start, so a config that skipped `validate` is still safe)."""
    for issue in issues:
        if issue.severity == "error":
            raise ValueError(f"{'.'.join(map(str, issue.loc))}: {issue.code} {issue.message}")


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value in (_INF, -_INF):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def json_text(value: Any) -> str | None:
    """A value as JSON text, for json/jsonb columns (a string becomes `"x"`); None stays NULL."""
    if value is None:
        return None
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def plain_text(value: Any) -> str | None:
    """A value as the text PostgreSQL's input function for the column type parses (`true`, `42`, `1.5`).

    Objects and arrays become JSON text; timestamps ISO 8601; bytes `\\x…` hex; None stays NULL."""
    t = type(value)
    if t is str:
        return value
    if t is int:
        return str(value)
    if value is None:
        return None
    if t is float:
        return _float_text(value)
    if t is bool:
        return "true" if value else "false"
    if isinstance(value, (int, decimal.Decimal)):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    return str(value)


def to_text(value: Any, json_column: bool) -> str | None:
    """`json_text` for json/jsonb columns, else `plain_text`."""
    return json_text(value) if json_column else plain_text(value)


def json_value(value: Any) -> Any:
    """A value read from PostgreSQL as a JSON-friendly one (what a message body may hold).

    Numeric → int when integral else float; timestamps, dates, times → ISO 8601 text; uuid → text;
    bytea → hex text; arrays and records recursively; json/jsonb arrive decoded already. A json
    value beyond the payload limits raises its `PayloadTooLarge` here, for its row alone."""
    if value is None or isinstance(value, (str, bool, int, float, dict)):
        return value
    if type(value) is _Undecodable:
        raise value.error
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() and value.is_finite() else float(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return str(value)


def is_transient(exc: BaseException) -> bool:
    """A failure of the connection or the server (retry the whole batch), not of the data."""
    import asyncpg
    from asyncpg.exceptions import _base

    if isinstance(exc, _base.DataError):  # a value the driver could not encode: the row's fault
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError, asyncpg.InterfaceError,
                        _base.InternalClientError)):  # a session killed while idle in the pool
        return True
    return isinstance(exc, (
        asyncpg.PostgresConnectionError,          # 08xxx: connection lost, refused, resolution unknown
        asyncpg.exceptions.OperatorInterventionError,  # 57xxx: terminated by admin, shutdown, cannot connect now
        asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, out of memory/disk
        asyncpg.exceptions.TransactionRollbackError,  # 40xxx: serialization failure, deadlock
    ))


def classify_postgres(exc: BaseException) -> ErrorClass | None:
    """PostgreSQL errors for `engine.errors.classify`: `is_transient` (08*, 57P*, 53*, 40*, a lost
    connection or timeout) is a service's fault; `is_row_error` (22*, 23*, ...) the message's."""
    if type(exc).__module__.split(".", 1)[0] != "asyncpg" and not isinstance(exc, (OSError, TimeoutError)):
        return None
    if is_transient(exc):
        return UNAVAILABLE
    if is_row_error(exc):
        return MESSAGE
    return None


register_classifier(classify_postgres)


def is_row_error(exc: BaseException) -> bool:
    """A failure caused by the data of some row (bad value, constraint): isolate the row, keep the rest."""
    import asyncpg
    from asyncpg.exceptions import _base

    return isinstance(exc, (
        UnicodeError,                                      # a string with lone surrogates
        _base.DataError,                                   # driver could not encode a value
        asyncpg.exceptions.DataError,                      # 22xxx: bad input syntax, out of range...
        asyncpg.exceptions.IntegrityConstraintViolationError,  # 23xxx: unique, not null, check, fk
        asyncpg.exceptions.CardinalityViolationError,      # 21000: one key twice in one statement
        asyncpg.exceptions.ProgramLimitExceededError,      # 54xxx: index row too large...
    ))


def db_message(exc: BaseException) -> str:
    """The database's words for a failure: SQLSTATE, message and detail."""
    state = getattr(exc, "sqlstate", None)
    text = getattr(exc, "message", None) or str(exc)
    detail = getattr(exc, "detail", None)
    if detail:
        text = f"{text} ({detail})"
    return f"postgres {state}: {text}" if state else f"postgres: {text}"


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Decode json/jsonb to Python values on read; accept Python values (or JSON text) on write."""

    def encode(value: Any) -> str:
        return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()

    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=encode, decoder=_decode_json, schema="pg_catalog")


class _Undecodable:
    """A json/jsonb value that does not decode within the payload limits, kept with its text."""

    __slots__ = ("error", "text")

    def __init__(self, text: str, error: MessageError):
        self.text, self.error = text, error


def undecoded_row(row: Any, skip: str = "") -> dict[str, Any]:
    """A row that `json_value` refused, for its dead letter: json values beyond the limits as their
    text, the others as read (the error envelope writes what is not JSON as text)."""
    return {k: v.text if type(v) is _Undecodable else v for k, v in row.items() if k != skip}


def _decode_json(text: str) -> Any:
    """json/jsonb text → value, through engine.codec. Beyond its limits (PostgreSQL nests jsonb far
    deeper than orjson can write) the value becomes an `_Undecodable`: raising here would fail the
    whole query, so `json_value` raises it later, for its row alone."""
    try:
        return codec.loads(text)
    except PayloadTooLarge as exc:
        return _Undecodable(text, exc)
    except ValueError as exc:  # a number orjson cannot read (PostgreSQL's numeric has no range)
        return _Undecodable(text, MessageError(f"json value does not decode: {exc}"))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: keep the session as it is (asyncpg already rolls back an open transaction).

    The default reset (`RESET ALL; UNLISTEN *; ...`) is one more round trip per batch; our nodes set
    no session state besides the sink's temporary staging table, which is meant to stay."""


DEFAULT_DSN = "postgresql://root@127.0.0.1:5432/test"


def connect_args(settings: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """DSN and server settings (application_name) of a named connection's settings."""
    return settings.get("dsn") or DEFAULT_DSN, {"application_name": settings.get("application_name") or "streamdag"}


async def pool_for(ctx: Context, name: str) -> asyncpg.Pool:
    """The asyncpg pool of the named connection, shared by every node of the run that names it."""
    import asyncpg

    settings = ctx.connection(name)
    dsn, server_settings = connect_args(settings)

    async def create() -> asyncpg.Pool:
        try:
            return await _create_pool(dsn, settings, server_settings)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ConnectorError(f"postgres connection {name!r} ({server_of(dsn)}): cannot connect: "
                                 f"{str(exc) or type(exc).__name__}") from exc

    async def close(pool: asyncpg.Pool) -> None:
        import asyncio

        try:
            await asyncio.wait_for(pool.close(), 5.0)
        except (TimeoutError, OSError):
            pool.terminate()

    return await ctx.resources.get(f"postgres:{name}", create, close)


def server_of(dsn: str) -> str:
    """`host:port, database db` of a URL or key=value DSN, for messages (never the password)."""
    from urllib.parse import urlsplit

    if "://" in dsn:
        u = urlsplit(dsn)
        host, port, db = u.hostname or "localhost", str(u.port or 5432), u.path.lstrip("/")
    else:
        kv = dict(p.split("=", 1) for p in dsn.split() if "=" in p)
        host, port, db = kv.get("host", "localhost"), kv.get("port", "5432"), kv.get("dbname", "")
    return f"{host}:{port}" + (f", database {db}" if db else "")


async def _create_pool(dsn: str, settings: dict[str, Any], server_settings: dict[str, str]) -> asyncpg.Pool:
    import asyncpg

    return await asyncpg.create_pool(
        dsn,
        min_size=settings.get("min_size", 1),
        max_size=settings.get("max_size", 4),
        timeout=settings.get("connect_timeout", 5.0),
        command_timeout=settings.get("command_timeout"),
        server_settings=server_settings,
        init=_init_connection,
        reset=_keep_session,
    )


_PATH_RE = re.compile(r"(msg|meta)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\Z")


def value_getter(source: str) -> Callable[[Any, Any], Any]:
    """A function `(body, meta) -> value` for a CEL expression.

    Plain field paths (`msg`, `msg.customer.id`, `meta.key`) are read directly from the dicts, with
    CEL's semantics (a missing key is an `EvalError`); anything else runs through `compile_expr`."""
    from engine import EvalError, compile_expr

    m = _PATH_RE.match(source.strip())
    if m is None:
        return compile_expr(source)
    root_is_msg = m.group(1) == "msg"
    parts = [p for p in m.group(2).split(".") if p]

    def get(body: Any, meta: Any) -> Any:
        value = body if root_is_msg else meta
        for part in parts:
            if not isinstance(value, dict):
                raise EvalError(f"no such key: {part} (not a map)")
            try:
                value = value[part]
            except KeyError:
                raise EvalError(f"no such key: {part}") from None
        return value

    if not parts:
        return (lambda body, meta: body) if root_is_msg else (lambda body, meta: meta)
    if len(parts) == 1:
        key = parts[0]

        def get_one(body: Any, meta: Any) -> Any:
            try:
                return (body if root_is_msg else meta)[key]
            except KeyError:
                raise EvalError(f"no such key: {key}") from None
            except (TypeError, IndexError):
                raise EvalError(f"no such key: {key} (not a map)") from None

        get_one.key = key  # type: ignore[attr-defined]  # column_values reads a whole column at once
        get_one.from_msg = root_is_msg  # type: ignore[attr-defined]
        return get_one
    return get


def column_values(get: Any, batch: list[Any]) -> list[Any] | None:
    """`get(m.body, m.meta)` for every message of `batch` in one pass, or None when some message
    fails (the caller then goes message by message and names the failing ones)."""
    key = getattr(get, "key", None)
    if key is not None:
        try:
            if get.from_msg:
                return [m.body[key] for m in batch]
            return [m.meta[key] for m in batch]
        except (KeyError, TypeError, IndexError):
            return None
    many = getattr(get, "many", None)
    if many is not None:  # a CEL expression: one comprehension over the batch (engine.expr.Expr.many)
        return many(batch)  # type: ignore[no-any-return]
    from engine import EvalError

    try:
        return [get(m.body, m.meta) for m in batch]
    except EvalError:
        return None
