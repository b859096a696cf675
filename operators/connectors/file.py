"""NDJSON files and stdout: `file_source`, `file_sink`, `stdout` (no services needed)."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, Literal

import orjson
from pydantic import Field

from engine import (
    Bodies,
    ConnectorError,
    Msg,
    NodeConfig,
    PayloadTooLarge,
    Sink,
    Size,
    Source,
    SourceSender,
    codec,
)

__all__ = ["FileSink", "FileSinkConfig", "FileSource", "FileSourceConfig", "Stdout", "StdoutConfig"]


# a batch stops at about this much input, however many lines `batch` allows: the batch then stays in
# the CPU cache from parse to write (1M-line pipeline: ~6 % less CPU than the ~128 KiB batches before)
_READ_BYTES = 64 << 10


class FileSourceConfig(NodeConfig):
    """Read a file line by line: NDJSON (one JSON value a line) or raw text lines."""

    path: str = Field(description="File to read, relative to the graph file.", examples=["orders.ndjson"])
    format: Literal["ndjson", "lines"] = Field("ndjson", description="`lines` gives each line as a string.")
    batch: int = Field(1000, ge=1, le=100_000, description="Lines per emitted batch (about: a batch also "
                       "stops at about 64 KiB of input, so that it stays in the CPU cache).")
    skip_blank: bool = Field(True, description="Ignore blank lines (empty or only whitespace: they are not messages).")
    line_numbers: bool = Field(
        False, description="Put each message's line number in `meta.line` (for dead letters that say where a "
        "record came from). Off, every message of a batch shares one `meta` ({source, path}), which saves "
        "about 0.1 µs a message. A line that is not JSON names its line number in its error either way.")
    max_payload_bytes: Size = Field(
        codec.MAX_BYTES, ge=1, description="Longest line decoded as JSON; a longer one, or one nested deeper "
        "than 254 levels, goes to `errors` (docs/limits.md).")


class FileSource(Source):
    """A line that is not JSON, not UTF-8, or beyond the payload limits, goes to the `errors` port with
    the reason, its line number and the column (1-based, in characters; in bytes for bad UTF-8) within
    the line; its original bytes travel with it (a dead letter that is not UTF-8 text keeps them as
    `payload_base64`, docs/limits.md). A UTF-8 byte order mark at the start of the file is skipped."""

    Config = FileSourceConfig
    example = """\
version: 1
name: file_source_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  read:
    type: file_source
    config: {path: data/orders.ndjson}    # relative to the graph file
  out: {type: file_sink, inputs: [read], config: {path: out/orders.ndjson}}
  dead: {type: file_sink, inputs: [read.errors], config: {path: out/dead.ndjson}}
"""
    shared_by = "lines: worker i of N reads the lines numbered i+1, i+1+N, ... (every N-th line)"

    @classmethod
    def json_bodies(cls, config: Any) -> bool:
        return True  # ndjson through orjson, `lines` as str; a bad line goes to `errors`

    def total(self) -> int | None:
        return None

    async def start(self) -> None:
        """A file that cannot be read stops the run before it starts (and before a sink truncates)."""
        path = self.ctx.path(self.config.path)
        try:
            open(path, "rb").close()  # noqa: ASYNC230 - once, at start
        except OSError as exc:
            raise ConnectorError(f"file_source {self.id}: cannot read {path}: {exc.strerror or exc}") from exc

    async def run(self, out: SourceSender) -> None:
        cfg: FileSourceConfig = self.config
        path = self.ctx.path(cfg.path)
        tracker = out.tracker
        limit = cfg.max_payload_bytes
        # a line this short can be neither over the size limit nor nested deeper than codec allows
        short = min(limit, 2 * codec.MAX_DEPTH + 1)
        raw_lines = cfg.format == "lines"
        sid, spath = self.id, cfg.path
        with open(path, "rb") as fh:  # noqa: ASYNC230 - a local file, read a batch at a time
            if fh.read(3) != _BOM:  # a BOM (Windows editors write one) is not part of the first line
                fh.seek(0)
            lineno, pos = 0, fh.tell()
            while not out.stopping.is_set():
                await out.wait_room()
                lines = fh.readlines(min(cfg.batch * 128, _READ_BYTES))
                if not lines:
                    break
                first = lineno + 1
                lineno += len(lines)
                numbers: Sequence[int] = range(first, lineno + 1)
                # a message's size only feeds byte-capacity accounting: the batch's average is enough
                pos, size = fh.tell(), (fh.tell() - pos) // len(lines)
                w = self.ctx.worker
                bodies: list[Any] | None = None
                # the common case: one worker, no line that could break a limit, every line JSON (a
                # blank line is not): orjson itself mapped in C, no look at the lines before (orjson
                # skips the line end as whitespace)
                if not raw_lines and w.count == 1 and max(map(len, lines)) <= short:
                    try:
                        bodies = list(map(orjson.loads, lines))
                    except orjson.JSONDecodeError:
                        pass  # a blank line, or one that is not JSON: line by line below
                if bodies is None:
                    if cfg.skip_blank:
                        kept = [(n, raw) for n, raw in zip(numbers, lines) if raw.strip()]
                        numbers, lines = [n for n, _ in kept], [raw for _, raw in kept]
                    if w.count > 1:  # worker i of N: the lines numbered i+1 (mod N), 1-based like `line`
                        kept = [(n, raw) for n, raw in zip(numbers, lines) if w.owns(n - 1)]
                        numbers, lines = [n for n, _ in kept], [raw for _, raw in kept]
                    if not lines:
                        continue
                    bodies, bad = _decode_lines(lines, numbers, raw_lines, limit, short)
                else:
                    bad = False
                # one ack for the batch (a file has nothing to acknowledge per line: engine.message)
                ack = tracker.new_batch(len(lines), numbers[0] if numbers else first)
                if cfg.line_numbers:
                    msgs = [
                        Msg(body, {"source": sid, "path": spath, "line": n}, ack, size)
                        for body, n in zip(bodies, numbers)
                    ]
                elif not bad:  # one meta for the batch (never changed in place), the bodies alone
                    await out.send(Bodies.of(bodies, {"source": sid, "path": spath}, ack, size))
                    continue
                else:
                    msgs = Msg.many(bodies, {"source": sid, "path": spath}, ack, size)
                errors: list[Msg] = []
                if bad:  # undecodable lines go to errors with their bytes and the parser's message
                    errors = [out.error(m.derive(m.body.raw), m.body.reason) for m in msgs if type(m.body) is _BadLine]
                    msgs = [m for m in msgs if type(m.body) is not _BadLine]
                await out.send(msgs, errors)


def _decode_lines(lines: list[bytes], numbers: Sequence[int], raw_lines: bool, limit: int, short: int
                  ) -> tuple[list[Any], bool]:
    """A batch's bodies the careful way, and whether a line is bad (then a `_BadLine` in its place)."""
    if raw_lines:
        try:
            return [raw.rstrip(b"\r\n").decode() for raw in lines], False
        except UnicodeDecodeError:
            return _decode_each(lines, numbers), True
    try:
        if max(map(len, lines)) <= short:  # no line can break a limit: orjson itself
            return list(map(orjson.loads, lines)), False
        return [codec.loads(raw, limit) for raw in lines], False
    except (orjson.JSONDecodeError, PayloadTooLarge):
        return _parse_each(lines, numbers, limit), True


class _BadLine:
    """A line that is not JSON (or beyond the payload limits), while its batch is being built."""

    __slots__ = ("raw", "reason")

    def __init__(self, raw: bytes, reason: str):
        self.raw, self.reason = raw, reason


_BOM = b"\xef\xbb\xbf"


def _not_utf8(raw: bytes, n: int) -> str | None:
    """Why line `n` is not UTF-8 (with the byte column), or None when it is."""
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return f"line {n} byte {exc.start + 1}: not UTF-8 ({exc.reason}); its bytes are kept"
    return None


def _decode_each(lines: list[bytes], numbers: Sequence[int]) -> list[Any]:
    """`format: lines`, a batch with a line that is not UTF-8: that line becomes a `_BadLine`."""
    return [_BadLine(raw.rstrip(b"\r\n"), why) if (why := _not_utf8(raw, n)) else raw.rstrip(b"\r\n").decode()
            for n, raw in zip(numbers, lines)]


def _parse_each(lines: list[bytes], numbers: Sequence[int], limit: int) -> list[Any]:
    """Parse line by line (a batch with a bad line): a bad line becomes a `_BadLine`. orjson counts
    positions in the one line it was given: its `line 1 column C (char P)` becomes the file's line."""
    bodies: list[Any] = []
    for n, raw in zip(numbers, lines):
        try:
            bodies.append(codec.loads(raw, limit))
        except orjson.JSONDecodeError as exc:
            why = _not_utf8(raw, n) or f"line {n} column {exc.colno}: invalid JSON: {exc.msg}"
            bodies.append(_BadLine(raw.rstrip(b"\r\n"), why))
        except PayloadTooLarge as exc:
            bodies.append(_BadLine(raw.rstrip(b"\r\n"), f"line {n}: {exc}"))
    return bodies


class FileSinkConfig(NodeConfig):
    """Write each message as one NDJSON line (a bytes body as a base64 JSON string), or raw."""

    path: str = Field(description="File to write, relative to the graph file.", examples=["out.ndjson"])
    mode: Literal["overwrite", "append"] = Field("overwrite", description="Truncate at start, or append.")
    fsync: bool = Field(False, description="fsync after every batch (slower; survives a power cut).")
    with_meta: bool = Field(False, description='Write {"body": ..., "meta": ...} instead of the body.')
    format: Literal["ndjson", "raw"] = Field(
        "ndjson", description="`raw` writes bytes and string bodies as they are, with no separator "
        "(concatenated gzip members or zstd frames are still one valid stream); other bodies go to `errors`.")


def _encode_raw(batch: list[Msg]) -> tuple[bytes, list[tuple[Msg, str]]]:
    parts: list[bytes] = []
    failed: list[tuple[Msg, str]] = []
    for m in batch:
        body = m.body
        if isinstance(body, (bytes, bytearray)):
            parts.append(bytes(body))
        elif isinstance(body, str):
            parts.append(body.encode())
        else:
            failed.append((m, f"format raw takes bytes or string bodies, not {type(body).__name__}"))
    return b"".join(parts), failed


def _encode_bodies(bodies: list[Any]) -> bytes | None:
    """Plain JSON bodies, the common case, as NDJSON: `dumps` mapped in C with no keywords (~15% less
    than `_dump_lines`); None for a batch with anything else (bytes, an int or bool key...), which
    `_encode` writes as the same bytes `dumps` gives with its options."""
    try:
        return b"\n".join(map(orjson.dumps, bodies)) + b"\n"
    except TypeError:
        return None


def _encode(batch: list[Msg], with_meta: bool) -> tuple[bytes, list[tuple[Msg, str]]]:
    """The batch as NDJSON, and the messages that do not encode (too deep, an int over 64 bits) with why."""
    if not with_meta and batch:
        data = _encode_bodies([m.body for m in batch])
        if data is not None:
            return data, []
    try:  # string keys only: orjson's fast path (OPT_NON_STR_KEYS costs ~20%)
        return _dump_lines(batch, with_meta, orjson.OPT_APPEND_NEWLINE), []
    except TypeError:  # a map with int or bool keys (CEL allows them): written as string keys
        pass
    opt = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    try:
        return _dump_lines(batch, with_meta, opt), []
    except TypeError:  # some message does not encode at all: find it, write the others
        lines: list[bytes] = []
        failed: list[tuple[Msg, str]] = []
        for m in batch:
            try:
                lines.append(_dump_lines([m], with_meta, opt))
            except TypeError as exc:
                failed.append((m, f"body does not encode as JSON: {codec.encode_failure(exc)}"))
        return b"".join(lines), failed


def _dump_lines(batch: list[Msg], with_meta: bool, opt: int) -> bytes:
    dumps = orjson.dumps
    if with_meta:
        return b"".join([dumps({"body": m.body, "meta": m.meta}, default=_default, option=opt) for m in batch])
    return b"".join([dumps(m.body, default=_default, option=opt) for m in batch])


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):  # lossless, and the line stays JSON (decompress reads it back)
        return base64.b64encode(value).decode("ascii")
    return str(value)


class _LinesSink(Sink):
    """A sink of NDJSON lines: a batch of plain JSON bodies is written without a `Msg` each."""

    async def write_bodies(self, batch: Bodies) -> bool:
        data = _encode_bodies(batch.bodies)
        if data is None:
            return False
        self._emit(data)
        return True

    def _emit(self, data: bytes) -> None:
        raise NotImplementedError


class FileSink(_LinesSink):
    """Commit = written and flushed (and fsynced if asked)."""

    Config = FileSinkConfig
    example = """\
version: 1
name: file_sink_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  out:
    type: file_sink
    inputs: [orders]
    config: {path: out/orders.ndjson, mode: append, with_meta: true}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""

    @classmethod
    def shared_write_issue(cls, config: Any) -> str:
        """Workers append whole batches (one write each, O_APPEND); overwrite would truncate and clobber."""
        if config.mode == "overwrite":
            return ("mode overwrite truncates the file in each worker, which would then write over the others' "
                    "lines; use mode: append (each batch is one appending write)")
        return ""

    def __init__(self, node_id: str, config: FileSinkConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self.fh: BinaryIO | None = None
        self.truncate = False  # overwrite mode, until the run is under way (start)
        self.takes_bodies = config.format == "ndjson" and not config.with_meta

    async def start(self) -> None:
        """Append: opened now. Overwrite: the file is truncated only once the run is under way (the
        first write, or the end of a run that wrote nothing), so a run that fails to start (an input
        file missing) leaves the previous output as it was. A path that cannot be written fails now."""
        path = self.ctx.path(self.config.path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # noqa: ASYNC240 - once, at start
        self.fh = open(path, "ab")  # noqa: ASYNC230
        self.truncate = self.config.mode == "overwrite"

    def _truncate_once(self) -> None:
        if self.truncate and self.fh is not None:
            self.fh.truncate(0)
            self.truncate = False

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        if self.config.format == "raw":
            data, failed = _encode_raw(batch)
        else:
            data, failed = _encode(batch, self.config.with_meta)
        self._emit(data)
        return failed

    def _emit(self, data: bytes) -> None:
        assert self.fh is not None
        self._truncate_once()
        self.fh.write(data)
        self.fh.flush()
        if self.config.fsync:
            os.fsync(self.fh.fileno())

    async def stop(self) -> None:
        if self.fh is not None:
            if self.ctx.started:  # a run that wrote nothing still leaves an empty file in overwrite mode
                self._truncate_once()
            self.fh.close()
            self.fh = None


class StdoutConfig(NodeConfig):
    """Print each message as one JSON line on standard output."""

    with_meta: bool = Field(False, description='Print {"body": ..., "meta": ...} instead of the body.')


class Stdout(_LinesSink):
    Config = StdoutConfig
    example = """\
version: 1
name: stdout_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  show: {type: stdout, inputs: [orders], config: {with_meta: false}}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""

    def __init__(self, node_id: str, config: StdoutConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self.takes_bodies = not config.with_meta

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        data, failed = _encode(batch, self.config.with_meta)
        self._emit(data)
        return failed

    @staticmethod
    def _emit(data: bytes) -> None:
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
