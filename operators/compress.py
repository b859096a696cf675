"""`compress` / `decompress`: gzip or zstd, one message body at a time.

`compress` turns the body into bytes first: bytes stay as they are, any other value is JSON-encoded
(orjson; a string body becomes a JSON string), so `decompress` with `parse: json` gives the original
value back. `decompress` takes bytes, or a string holding base64 (what `file_sink` writes for a
bytes body), and detects the codec from the magic number unless told. A body that cannot be
(de)compressed or parsed goes to `errors`; output larger than `max_size` is refused (zip bombs).
"""

from __future__ import annotations

import base64
import binascii
import io
import zlib
from typing import Any, Literal

import orjson
import zstandard
from pydantic import Field, model_validator

from engine import Msg, NodeConfig, Operator, Output, PayloadTooLarge
from engine import codec as json_codec

__all__ = ["Compress", "CompressConfig", "Decompress", "DecompressConfig"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class CompressConfig(NodeConfig):
    """Compress each message's body (JSON-encoded first unless it is already bytes)."""

    codec: Literal["gzip", "zstd"] = Field("zstd", description="Compression codec.", examples=["zstd"])
    level: int | None = Field(
        None, ge=1, le=22, description="Codec level (gzip 1-9, zstd 1-22); codec default if unset."
    )

    @model_validator(mode="after")
    def _level_in_range(self) -> CompressConfig:
        if self.codec == "gzip" and self.level is not None and self.level > 9:
            raise ValueError(f"gzip levels are 1-9, got {self.level}")
        return self


class Compress(Operator):
    """Sets `meta.content_encoding` to the codec; `size` becomes the compressed length."""

    Config = CompressConfig
    example = """\
version: 1
name: compress_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  pack:
    type: compress
    inputs: [orders]
    config: {codec: zstd, level: 3}
  out: {type: file_sink, inputs: [pack], config: {path: out/orders.zst, format: raw}}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    inline = True

    def __init__(self, node_id: str, config: CompressConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        if config.codec == "zstd":
            self._zstd = zstandard.ZstdCompressor(level=config.level or 3)
        self._level = config.level or 6

    def _compress(self, data: bytes) -> bytes:
        if self.config.codec == "zstd":
            return self._zstd.compress(data)  # type: ignore[no-any-return]
        return zlib.compress(data, self._level, wbits=31)  # a gzip member (mtime 0: same input, same bytes)

    def process(self, batch: list[Msg], out: Output) -> None:
        ok = out.port("out")
        codec = self.config.codec
        dumps = orjson.dumps
        for m in batch:
            body = m.body
            try:
                data = body if isinstance(body, bytes) else dumps(body)
                packed = self._compress(data)
            except (TypeError, orjson.JSONEncodeError, zstandard.ZstdError, zlib.error) as exc:
                out.error(m, f"compress: {type(exc).__name__}: {exc}")
                continue
            ok.append(Msg(packed, {**m.meta, "content_encoding": codec}, m.ack, len(packed)))


class DecompressConfig(NodeConfig):
    """Decompress each body (bytes, or base64 text) and optionally parse it."""

    codec: Literal["auto", "gzip", "zstd"] = Field("auto", description="`auto` reads the magic number.")
    parse: Literal["bytes", "json", "text"] = Field(
        "bytes", description="Output body: raw bytes, the parsed JSON value, or UTF-8 text."
    )
    max_size: int = Field(64 * 1024 * 1024, ge=1, description="Largest decompressed body in bytes.")


class _Bad(Exception):
    """One body that cannot be decompressed or parsed."""


class Decompress(Operator):
    Config = DecompressConfig
    example = """\
version: 1
name: decompress_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  pack: {type: compress, inputs: [orders], config: {codec: gzip}}
  unpack:
    type: decompress
    inputs: [pack]
    config: {codec: auto, parse: json}
  show: {type: stdout, inputs: [unpack]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    inline = True

    def __init__(self, node_id: str, config: DecompressConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self._zstd = zstandard.ZstdDecompressor()

    def _unpack(self, body: Any) -> bytes:
        if isinstance(body, str):
            try:
                body = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _Bad(f"text body is not base64: {exc}") from None
        if not isinstance(body, (bytes, bytearray)):
            raise _Bad(f"body is {type(body).__name__}, not bytes")
        codec = self.config.codec
        if codec == "auto":
            codec = "gzip" if body[:2] == _GZIP_MAGIC else "zstd" if body[:4] == _ZSTD_MAGIC else ""
            if not codec:
                raise _Bad("not gzip or zstd data (unknown magic number)")
        limit = self.config.max_size
        try:
            if codec == "gzip":
                d = zlib.decompressobj(31)
                data = d.decompress(body, limit)
                if d.unconsumed_tail:
                    raise _Bad(f"decompressed body is larger than max_size ({limit} bytes)")
                if not d.eof:
                    raise _Bad("truncated gzip data")
                if d.unused_data:
                    raise _Bad("trailing data after the gzip member")
                return data
            declared = zstandard.frame_content_size(body)
            if declared < 0:  # size not in the frame header: measure with a bounded streaming read first
                reader = self._zstd.stream_reader(io.BytesIO(body), read_across_frames=True)
                declared = len(reader.read(limit + 1))
            if declared > limit:
                raise _Bad(f"decompressed body is larger than max_size ({limit} bytes)")
            dobj = self._zstd.decompressobj()
            data = dobj.decompress(body)
            if not dobj.eof:
                raise _Bad("truncated zstd data")
            if dobj.unused_data:
                raise _Bad("trailing data after the zstd frame")
            return data
        except (zlib.error, zstandard.ZstdError) as exc:
            raise _Bad(f"{codec}: {exc}") from None

    def process(self, batch: list[Msg], out: Output) -> None:
        ok = out.port("out")
        parse = self.config.parse
        for m in batch:
            try:
                data = self._unpack(m.body)
                if parse == "json":
                    value: Any = json_codec.loads(data)
                elif parse == "text":
                    value = data.decode("utf-8")
                else:
                    value = data
            except _Bad as exc:
                out.error(m, f"decompress: {exc}")
                continue
            except (orjson.JSONDecodeError, UnicodeDecodeError, PayloadTooLarge) as exc:
                out.error(m, f"decompress: {parse}: {exc}")
                continue
            meta = {k: v for k, v in m.meta.items() if k != "content_encoding"}
            ok.append(Msg(value, meta, m.ack, len(data)))
