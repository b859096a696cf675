"""`compress` / `decompress`: gzip and zstd round trips, bad input to errors, size guard, file_sink bytes."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from pydantic import ValidationError

from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.compress import Compress, CompressConfig, Decompress, DecompressConfig

BODIES: list[Any] = [{"id": 1, "text": "héllo " * 50}, [1, 2.5, None], "a string", 42, b"\x00\x01raw bytes"]


def run_op(cls: Any, config: dict[str, Any], bodies: list[Any]) -> dict[str, list[Msg]]:
    op = cls("c", cls.Config.model_validate(config), NodeContext("c", {}, {}, Resources()))
    out = Outputs("c", ("out",), NodeStats("c", "operator", "x"))
    tracker = AckTracker()
    op.process([Msg(b, {"seq": i}, tracker.new(i), 10) for i, b in enumerate(bodies)], out)
    return out.take()


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_round_trip_json_and_bytes(codec: str) -> None:
    packed = run_op(Compress, {"codec": codec, "level": 5}, BODIES)["out"]
    assert all(isinstance(m.body, bytes) and m.meta["content_encoding"] == codec for m in packed)
    assert packed[0].size == len(packed[0].body) < len(orjson.dumps(BODIES[0]))
    # standard tools read the output: it is plain gzip / a zstd frame
    plain = gzip.decompress if codec == "gzip" else zstandard.ZstdDecompressor().decompress
    assert plain(packed[0].body) == orjson.dumps(BODIES[0]) and plain(packed[4].body) == BODIES[4]
    json_back = run_op(Decompress, {"parse": "json"}, [m.body for m in packed[:4]])["out"]
    assert [m.body for m in json_back] == BODIES[:4]
    raw_back = run_op(Decompress, {"codec": codec}, [packed[4].body])["out"]
    assert raw_back[0].body == BODIES[4] and "content_encoding" not in raw_back[0].meta


def test_decompress_reads_base64_text_and_parses_text() -> None:
    packed = gzip.compress("plain text ✓".encode())
    out = run_op(Decompress, {"parse": "text"}, [base64.b64encode(packed).decode()])["out"]
    assert out[0].body == "plain text ✓"


def test_bad_inputs_go_to_errors_and_keep_their_ack() -> None:
    good = zstandard.ZstdCompressor().compress(b'{"ok": 1}')
    bodies = [
        b"not compressed at all",
        good[:-3],  # truncated frame
        gzip.compress(b"x")[:-4],  # truncated gzip
        "%%% not base64 %%%",
        {"a": "dict"},
        zstandard.ZstdCompressor().compress(b"{not json"),
        good,
        good + b"trailing",
    ]
    lists = run_op(Decompress, {"parse": "json"}, bodies)
    assert [m.body for m in lists["out"]] == [{"ok": 1}]
    errors = [m.body["error"] for m in lists["errors"]]
    assert len(errors) == 7 and all(e.startswith("decompress: ") for e in errors)
    assert "unknown magic" in errors[0] and "truncated zstd" in errors[1] and "not base64" in errors[3]
    assert (
        "dict, not bytes" in errors[4]
        and errors[5].startswith("decompress: json:")
        and "trailing" in errors[6]
    )
    assert [m.body["meta"]["seq"] for m in lists["errors"]] == [0, 1, 2, 3, 4, 5, 7]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_max_size_refuses_bombs(codec: str) -> None:
    data = b"\0" * 5_000_000
    if codec == "gzip":
        bomb = gzip.compress(data)
    else:  # no content size in the frame header: the streaming bound applies
        bomb = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    lists = run_op(Decompress, {"max_size": 1_000_000}, [bomb, bomb])
    assert lists["out"] == [] and all("larger than max_size" in m.body["error"] for m in lists["errors"])
    assert len(run_op(Decompress, {"max_size": 5_000_000}, [bomb])["out"][0].body) == 5_000_000


def test_unencodable_body_goes_to_errors() -> None:
    lists = run_op(Compress, {"codec": "zstd"}, [{"ok": 1}, {"big": 2**70}])
    assert len(lists["out"]) == 1 and lists["errors"][0].body["error"].startswith("compress: ")


def test_gzip_level_range() -> None:
    with pytest.raises(ValidationError):
        CompressConfig.model_validate({"codec": "gzip", "level": 12})
    assert CompressConfig.model_validate({"codec": "zstd", "level": 19}).level == 19
    assert DecompressConfig().codec == "auto"


def test_end_to_end_through_files(write_graph: Any, run: Any, tmp_path: Path) -> None:
    """compress -> file_sink (ndjson: base64 lines; raw: one gzip stream) -> file_source -> decompress."""
    write_graph(
        """\
        version: 1
        name: c1
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 500, template: '{"n": msg.i, "pad": "x" + string(msg.i)}'}}
          pack: {type: compress, inputs: [src], config: {codec: gzip, level: 9}}
          b64: {type: file_sink, inputs: [pack], config: {path: packed.ndjson}}
          raw: {type: file_sink, inputs: [pack], config: {path: packed.gz, format: raw}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """,
        "write.yaml",
    )
    report = run(tmp_path / "write.yaml")
    assert report.error is None and report.balanced and report.totals()["delivered"] == 500
    # raw: concatenated gzip members are one valid gzip stream (of the JSON bodies, with no separator)
    text, docs, decoder = (
        gzip.decompress((tmp_path / "packed.gz").read_bytes()).decode(),
        [],
        json.JSONDecoder(),
    )
    while text:
        doc, end = decoder.raw_decode(text)
        docs.append(doc)
        text = text[end:]
    assert docs == [{"n": i, "pad": f"x{i}"} for i in range(500)]
    write_graph(
        """\
        version: 1
        name: c2
        defaults: {dead_letter: dead}
        nodes:
          read: {type: file_source, config: {path: packed.ndjson}}
          unpack: {type: decompress, inputs: [read], config: {parse: json}}
          out: {type: file_sink, inputs: [unpack], config: {path: back.ndjson}}
          dead: {type: file_sink, inputs: [read.errors], config: {path: dead2.ndjson}}
    """,
        "read.yaml",
    )
    with open(tmp_path / "packed.ndjson", "ab") as fh:  # one line that is JSON but not compressed data
        fh.write(b'"bm90IGd6aXA="\n')
    report = run(tmp_path / "read.yaml")
    assert report.error is None and report.balanced
    assert report.totals() == {
        "entered": 501,
        "delivered": 500,
        "filtered": 0,
        "dead_lettered": 1,
        "nacked": 0,
        "in_flight": 0,
    }
    back = [orjson.loads(x) for x in (tmp_path / "back.ndjson").read_bytes().splitlines()]
    assert back == [{"n": i, "pad": f"x{i}"} for i in range(500)]
    [dead] = [orjson.loads(x) for x in (tmp_path / "dead2.ndjson").read_bytes().splitlines()]
    assert dead["node"] == "unpack" and "unknown magic" in dead["error"]


def test_raw_file_sink_sends_non_bytes_to_errors(write_graph: Any, run: Any, tmp_path: Path) -> None:
    write_graph("""\
        version: 1
        name: c3
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 10, template: 'msg.i % 2 == 0 ? string(msg.i) : "{}"'}}
          m: {type: map, inputs: [src], config: {expr: 'msg == "{}" ? {"odd": true} : msg'}}
          raw: {type: file_sink, inputs: [m], config: {path: out.txt, format: raw}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run(tmp_path / "graph.yaml")
    assert report.balanced and report.totals()["delivered"] == 5 and report.totals()["dead_lettered"] == 5
    assert (tmp_path / "out.txt").read_bytes() == b"02468"


def test_archive_example_graph(tmp_path: Path) -> None:
    """graphs/archive.yaml: every event ends up in exactly one shard file, users never split."""
    from engine.cli import main

    root = Path(__file__).resolve().parents[2]
    files = [tmp_path / "a0.zst", tmp_path / "a1.zst"]
    sets = [
        "--set",
        f"nodes.file0.config.path={files[0]}",
        "--set",
        f"nodes.file1.config.path={files[1]}",
        "--set",
        f"nodes.dead.config.path={tmp_path / 'dead.ndjson'}",
        "--set",
        "nodes.events.config.count=3000",
    ]
    assert main(["run", str(root / "graphs" / "archive.yaml"), "-q", *sets]) == 0
    shards = []
    for f in files:
        text = (
            zstandard.ZstdDecompressor().stream_reader(f.open("rb"), read_across_frames=True).read().decode()
        )
        rows, decoder = [], json.JSONDecoder()
        while text:
            group, end = decoder.raw_decode(text)
            assert 1 <= len(group) <= 500
            rows.extend(group)
            text = text[end:]
        shards.append(rows)
    assert sorted(r["id"] for s in shards for r in s) == list(range(3000))
    assert not {r["user"] for r in shards[0]} & {r["user"] for r in shards[1]}
    assert [r["id"] for r in shards[0]] == sorted(r["id"] for r in shards[0])  # ordered: true keeps order
