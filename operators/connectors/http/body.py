"""Request body → list of JSON items: content decoding with a size cap, JSON / array / NDJSON, schema.

Every failure is an `IngestError` carrying the HTTP status and a message that names the problem
(with the byte position, line and column for bad JSON), so the handler only formats it; but an
item beyond the payload limits (engine.codec: nested deeper than 254 levels) raises
`PayloadTooLarge`, as it is dead-lettered, not only refused.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from engine import codec

__all__ = ["IngestError", "SchemaCheck", "decode_body", "media_type", "parse_items"]

_CHUNK = 64 * 1024  # decompressed bytes produced per step; the cap is checked after each step
JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})


class IngestError(Exception):
    """A request the gateway refuses: `status`, a machine-readable `code` and a readable message."""

    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` → `application/json` (absent → JSON)."""
    if not content_type:
        return "application/json"
    return content_type.split(";", 1)[0].strip().lower()


def _too_large(limit: int) -> IngestError:
    return IngestError(413, "too_large", f"decoded body exceeds max_decompressed_bytes ({limit} bytes)")


def _gunzip(data: bytes, limit: int) -> bytes:
    # wbits 16+MAX_WBITS: gzip container only. Output is produced in bounded steps so a bomb
    # stops at `limit` + one chunk of memory, whatever its ratio.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    buf = data
    try:
        while True:
            chunk = d.decompress(buf, _CHUNK)
            out += chunk
            if len(out) > limit:
                raise _too_large(limit)
            buf = d.unconsumed_tail
            if d.eof:
                if d.unused_data.strip(b"\x00"):
                    # concatenated gzip members are legal; decode them the same way
                    rest = _gunzip(d.unused_data, limit - len(out))
                    out += rest
                return bytes(out)
            if not buf and not chunk:
                raise IngestError(400, "bad_encoding", "gzip body is truncated")
    except zlib.error as exc:
        raise IngestError(400, "bad_encoding", f"gzip body does not decode: {exc}") from None


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _unzstd(data: bytes, limit: int) -> bytes:
    """Decode zstd frames (concatenated frames are one stream, as gzip members are); bytes after a
    frame that do not start another one are a bad encoding (400), never ignored."""
    out = bytearray()
    rest = data
    while True:
        frame, rest = _unzstd_frame(rest, limit - len(out), trust_header=not out)
        out += frame
        if not rest:
            return bytes(out)
        if not rest.startswith(_ZSTD_MAGIC):
            raise IngestError(400, "bad_encoding", f"zstd body has {len(rest)} byte(s) after its frame that "
                              "are not a zstd frame")


def _unzstd_frame(data: bytes, limit: int, trust_header: bool) -> tuple[bytes, bytes]:
    """The first zstd frame of `data`, decoded (at most `limit` bytes), and the bytes after it.
    `trust_header`: a declared size over `limit` is 413 at once (not after a later frame's magic:
    garbage may follow it, and decoding tells garbage, 400, from a frame too large, 413)."""
    import io

    import zstandard

    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise IngestError(400, "bad_encoding", f"zstd body does not decode: {exc}") from None
    if trust_header and declared > limit:  # -1 when the frame does not declare its size
        raise _too_large(limit)
    try:
        # Pass 1 only counts: read_to_iter yields at most _CHUNK bytes a step, so a bomb stops
        # at `limit` + one chunk. zstd reports no truncation there, so pass 2 (bounded now, as the
        # same bytes decode to the same size) decodes for real and checks the frame ended.
        total = 0
        for chunk in zstandard.ZstdDecompressor().read_to_iter(io.BytesIO(data), read_size=4096,
                                                                write_size=_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
        d = zstandard.ZstdDecompressor().decompressobj()
        out = d.decompress(data)
    except zstandard.ZstdError as exc:
        raise IngestError(400, "bad_encoding", f"zstd body does not decode: {exc}") from None
    if not d.eof:
        raise IngestError(400, "bad_encoding", "zstd body is truncated")
    return out, d.unused_data


def decode_body(data: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding` (identity, gzip, zstd) without ever holding more than `limit` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        if len(data) > limit:
            raise _too_large(limit)
        return data
    if enc in ("gzip", "x-gzip"):
        return _gunzip(data, limit)
    if enc == "zstd":
        return _unzstd(data, limit)
    raise IngestError(415, "unsupported_encoding",
                      f"Content-Encoding {enc!r} is not supported (use gzip, zstd or none)")


def _json_error(exc: orjson.JSONDecodeError, line_offset: int = 0) -> IngestError:
    line = exc.lineno + line_offset
    return IngestError(400, "invalid_json", f"invalid JSON at line {line} column {exc.colno} (byte {exc.pos}): "
                       f"{exc.msg}", {"line": line, "column": exc.colno, "position": exc.pos})


def parse_items(data: bytes, mtype: str, max_batch: int,
                max_bytes: int = codec.MAX_BYTES, refused: dict[int, dict[str, Any]] | None = None
                ) -> tuple[list[Any], bool]:
    """Items of a body and whether it was a single object (not an array or NDJSON). Raises
    `PayloadTooLarge` for an item nested deeper than `codec.MAX_DEPTH`.

    With `refused`, an NDJSON line that is not JSON does not refuse the body: it keeps its place in
    the items (as None) and `refused[index]` says why."""
    if mtype in JSON_TYPES:
        # an array's items are written one by one: each may nest MAX_DEPTH levels below the array
        depth = codec.MAX_DEPTH + 1 if data.lstrip()[:1] == b"[" else codec.MAX_DEPTH
        try:
            value = codec.loads(data, max_bytes, depth)
        except orjson.JSONDecodeError as exc:
            raise _json_error(exc) from None
        if isinstance(value, list):
            if len(value) > max_batch:
                raise IngestError(413, "batch_too_large", f"{len(value)} items exceed max_batch ({max_batch})")
            if not value:
                raise IngestError(400, "empty", "the array is empty")
            return value, False
        return [value], True
    if mtype in NDJSON_TYPES:
        items: list[Any] = []
        start = 0
        lineno = 0
        n = len(data)
        while start < n:
            end = data.find(b"\n", start)
            if end < 0:
                end = n
            lineno += 1
            line = data[start:end]
            start = end + 1
            if not line.strip():
                continue
            if len(items) >= max_batch:
                raise IngestError(413, "batch_too_large", f"more than max_batch ({max_batch}) NDJSON lines")
            try:
                items.append(codec.loads(line, max_bytes))
            except orjson.JSONDecodeError as exc:
                err = _json_error(exc, lineno - 1)
                err.extra["position"] = start - len(line) - 1 + exc.pos
                if refused is None:
                    raise err from None
                index = len(items)
                refused[index] = {"index": index, "error": err.code, "message": err.message, **err.extra}
                items.append(None)
        if not items:
            raise IngestError(400, "empty", "the NDJSON body has no items")
        return items, False
    raise IngestError(415, "unsupported_media_type",
                      f"Content-Type {mtype!r} is not supported (use application/json or application/x-ndjson)")


class SchemaCheck:
    """A compiled JSON Schema; `errors(items)` lists every failing item with its path and reason."""

    def __init__(self, schema: dict[str, Any]):
        import jsonschema_rs

        self.validator = jsonschema_rs.validator_for(schema)

    def errors(self, items: list[Any], limit: int = 100) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        is_valid = self.validator.is_valid
        for i, item in enumerate(items):
            if is_valid(item):
                continue
            for err in self.validator.iter_errors(item):
                path = "/" + "/".join(str(p) for p in err.instance_path)
                out.append({"index": i, "path": path, "message": err.message})
                break
            if len(out) >= limit:
                break
        return out
