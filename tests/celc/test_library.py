"""The pipeline function library (engine/celc/library.py): each function with its edge cases,
compiled and on the runtime (same environment), encryption round trips, tampering and key
rotation, hostile HTML, and a bad input reaching the node's errors port in a running graph."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.expr import CelError, EvalError, compile_expr

K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 16).decode()


def both(src: str, msg: Any = None) -> Any:
    """The value compiled and on the runtime, which must agree (errors: the same failure)."""
    expr = compile_expr(src)
    assert expr.compiled, src
    runtime = compile_expr(src, allow_compiler=False)
    try:
        got = expr(msg or {})
    except EvalError as exc:
        with pytest.raises(EvalError):
            runtime(msg or {})
        raise exc
    assert runtime(msg or {}) == got, src
    return got


def fails(src: str, msg: Any, reason: str) -> None:
    with pytest.raises(EvalError, match=reason):
        both(src, msg)


def test_ts_parse_common_formats_to_rfc3339_utc() -> None:
    cases = {
        '"2024-05-01T12:00:00Z"': "2024-05-01T12:00:00Z",
        '"2024-05-01T14:00:00+02:00"': "2024-05-01T12:00:00Z",
        '"2024-05-01 12:00:00"': "2024-05-01T12:00:00Z",  # no zone: UTC
        '"2024-05-01"': "2024-05-01T00:00:00Z",
        '"2024-05-01T12:00:00.5Z"': "2024-05-01T12:00:00.500Z",
        '"20240501T120000Z"': "2024-05-01T12:00:00Z",
        "1714564800": "2024-05-01T12:00:00Z",
        "1714564800.25": "2024-05-01T12:00:00.250Z",
        '"1714564800"': "2024-05-01T12:00:00Z",
        '1714564800123, "unix_ms"': "2024-05-01T12:00:00.123Z",
        '"1714564800", "unix"': "2024-05-01T12:00:00Z",
        '"01/05/2024 12:00", "%d/%m/%Y %H:%M"': "2024-05-01T12:00:00Z",
        '"01/05/2024 14:00 +0200", "%d/%m/%Y %H:%M %z"': "2024-05-01T12:00:00Z",
    }
    for args, want in cases.items():
        assert both(f"ts.format(ts.parse({args}))") == want, args
    assert both('ts.format(ts.parse("2024-05-01T12:00:00Z"), "%Y/%m/%d")') == "2024/05/01"
    # local times: the zone applies only to text without an offset (DST included)
    assert both('ts.format(ts.parse("2024-05-01 14:00", "%Y-%m-%d %H:%M", "Europe/Paris"))') == "2024-05-01T12:00:00Z"
    assert both('ts.format(ts.parse("2024-01-15T14:00:00", "", "Europe/Paris"))') == "2024-01-15T13:00:00Z"
    assert both('ts.format(ts.parse("2024-05-01T14:00:00Z", "", "Europe/Paris"))') == "2024-05-01T14:00:00Z"
    assert both('ts.format(ts.parse("2024-05-01T14:00:00", "", "-05:00"))') == "2024-05-01T19:00:00Z"
    fails('ts.parse("2024-05-01", "", msg.z)', {"z": "Mars/Base"}, "unknown time zone 'Mars/Base'")
    assert both('ts.parse("2024-05-01T12:00:00Z") < ts.parse(1714564801)') is True


def test_ts_parse_rejects_bad_input_with_the_reason() -> None:
    fails("ts.parse(msg.t)", {"t": "yesterday"}, "not an ISO 8601")
    fails("ts.parse(msg.t)", {"t": ""}, "not an ISO 8601")
    fails("ts.parse(msg.t)", {"t": "2024-13-01"}, "not an ISO 8601")
    fails('ts.parse(msg.t, "%Y")', {"t": "abc"}, "does not match")
    fails('ts.parse(msg.t, "%Y %Y")', {"t": "2024 2024"}, "ts.parse: .* does not match")
    fails('ts.parse(msg.t, "unix_ms")', {"t": "12a"}, "not a number")
    fails("ts.parse(msg.t)", {"t": 10**15}, "out of range")
    fails("ts.parse(msg.t)", {"t": "1e400"}, "not an ISO 8601")
    fails("ts.parse(msg.t)", {"t": [1]}, "expected a string or epoch seconds")


def test_now_is_the_current_time() -> None:
    before = time.time()
    got = compile_expr("now()")({})
    assert abs(got.timestamp() - before) < 5


HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt&#58;alert(1)">x</a>',
    "<svg><script>alert(1)</script></svg>",
    "<iframe src=//evil></iframe>",
    "<style>body{}</style><b onclick=alert(1)>bold</b>",
    '<div style="background:url(javascript:alert(1))">d</div>',
    "<scr<script>ipt>alert(1)</script>",
    "<<img src=x onerror=alert(1)//<",
    '<a href="data:text/html;base64,PHNjcmlwdD4=">d</a>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
]


@pytest.mark.parametrize("html", HOSTILE)
def test_html_sanitize_removes_active_content(html: str) -> None:
    out = both("html.sanitize(msg.h)", {"h": html}).lower()
    for bad in ("<script", "onerror", "onclick", "javascript:", "<iframe", "<style", "data:text", "<svg"):
        assert bad not in out, (html, out)


def test_html_sanitize_keeps_text_and_safe_markup() -> None:
    assert both('html.sanitize("<p>Hi <b>Ünï</b> &amp; <em>x</em></p>")') == "<p>Hi <b>Ünï</b> &amp; <em>x</em></p>"
    assert both('html.sanitize("")') == ""
    assert both('html.text("<p>Hi <b>there</b></p>")') == "Hi there"
    keep = 'html.sanitize("<p><b>x</b><i>y</i><script>z</script></p>", ["b", "script"])'
    assert both(keep) == "<b>x</b>y"  # only the tags listed, and never script or style
    fails('html.sanitize("x", [1])', {}, "list of tag names")
    fails("html.sanitize(msg.h)", {"h": 5}, "no matching overload|expected string")


def test_hashes_and_hmac_known_vectors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert both('crypto.sha256("abc")') == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert both('crypto.sha256(b"")') == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    monkeypatch.setenv("SD_TEST_HMAC", "Jefe")  # RFC 4231 test case 2
    assert both('crypto.hmac("what do ya want for nothing?", "env:SD_TEST_HMAC")') == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    key = tmp_path / "hmac.key"
    key.write_text("Jefe\n")
    assert both(f'crypto.hmac("what do ya want for nothing?", "file:{key}")').startswith("5bdcc146")
    fails('crypto.hmac("x", "env:SD_TEST_UNSET_KEY")', {}, "SD_TEST_UNSET_KEY .* not set")
    fails(f'crypto.hmac("x", "file:{tmp_path}/none")', {}, "cannot read key file")


@pytest.mark.parametrize("src", ['crypto.hmac(msg.a, "secret")', "crypto.hmac(msg.a, msg.key)",
                                 'crypto.encrypt(msg.a, "key:abc")', 'crypto.decrypt(msg.a, "")'])
def test_keys_must_come_from_env_or_file(src: str) -> None:
    with pytest.raises(CelError, match="env:NAME"):
        compile_expr(src)


def test_encrypt_round_trip_tamper_and_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_TEST_KEYS", f"k1={K1}")
    for text in ["", "hello", "Ünïcode ✓ 🎉", "x" * 10_000]:
        for allow_compiler in (True, False):  # each decrypts what the other encrypted
            token = compile_expr("crypto.encrypt(msg.v, 'env:SD_TEST_KEYS')", allow_compiler)({"v": text})
            assert token.startswith("sd1:k1:") and (text not in token[7:] or text == "")
            assert both("crypto.decrypt(msg.v, 'env:SD_TEST_KEYS')", {"v": token}) == text
    token = compile_expr("crypto.encrypt(msg.v, 'env:SD_TEST_KEYS')")({"v": "secret"})
    again = compile_expr("crypto.encrypt(msg.v, 'env:SD_TEST_KEYS')")({"v": "secret"})
    assert token != again  # a fresh nonce each time
    dec = "crypto.decrypt(msg.v, 'env:SD_TEST_KEYS')"
    body = token.split(":")[2]
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    fails(dec, {"v": f"sd1:k1:{flipped}"}, "authentication failed")
    fails(dec, {"v": token[:-4]}, "authentication failed|too short|not base64url")
    fails(dec, {"v": "sd1:k9:" + body}, "key id 'k9' is not in the key ring")
    fails(dec, {"v": "plain text"}, "not a value crypto.encrypt produced")
    # rotation: a new key first encrypts; the old one still decrypts what it sealed
    monkeypatch.setenv("SD_TEST_KEYS", f"k2={K2}, k1={K1}")
    assert both(dec, {"v": token}) == "secret"
    new = compile_expr("crypto.encrypt(msg.v, 'env:SD_TEST_KEYS')")({"v": "s2"})
    assert new.startswith("sd1:k2:") and both(dec, {"v": new}) == "s2"
    monkeypatch.setenv("SD_TEST_KEYS", f"k2={K2}")  # k1 retired: its data no longer decrypts
    fails(dec, {"v": token}, "key id 'k1' is not in the key ring")
    monkeypatch.setenv("SD_TEST_KEYS", "k1=c2hvcnQ=")
    fails(dec, {"v": token}, "the key of entry 1 has 5 bytes, not 16, 24 or 32")


def test_a_key_file_is_never_echoed_in_errors(tmp_path: Path) -> None:
    secret = tmp_path / "not-a-ring"
    secret.write_text("top-secret-line=%%%\n")
    with pytest.raises(EvalError) as info:
        compile_expr(f'crypto.encrypt("x", "file:{secret}")')({})
    assert "entry 1" in str(info.value) and "top-secret" not in str(info.value)


def test_redact_mask_uuid_json_url_coalesce() -> None:
    msg = {"user": {"password": "p", "name": "n", "cards": [{"ssn": 1}]}, "password": "q"}
    assert both('redact(msg, ["password", "ssn"])', msg) == {
        "user": {"password": "[REDACTED]", "name": "n", "cards": [{"ssn": "[REDACTED]"}]}, "password": "[REDACTED]"}
    assert both('redact("text", ["a"])') == "text"
    fails("redact(msg, [1])", {}, "list of field names")
    assert both('mask("4111111111111111")') == "************1111"
    assert both('mask("Ünïcode", 2)') == "*****de"
    assert both('mask("abc")') == "***" and both('mask("")') == "" and both('mask("abc", 0)') == "***"
    fails('mask("abc", -1)', {}, "keep must be >= 0")
    v4, v7 = compile_expr("uuid.v4()")({}), compile_expr("uuid.v7()")({})
    assert uuid.UUID(v4).version == 4 and uuid.UUID(v7).version == 7 and uuid.UUID(v7).variant == uuid.RFC_4122
    first = compile_expr("uuid.v7()")({})
    time.sleep(0.002)
    assert compile_expr("uuid.v7()")({}) > first  # time-ordered
    assert json.loads(both("json.encode(msg)", {"a": [1, 2.5, "é", None, True]})) == {"a": [1, 2.5, "é", None, True]}
    assert both('json.decode("{\\"a\\": [1, 2.5]}")') == {"a": [1, 2.5]}
    fails('json.decode("{bad")', {}, "invalid JSON")
    fails('json.decode("NaN")', {}, "invalid JSON")
    fails("json.encode(msg.x)", {"x": float("nan")}, "NaN")
    url = both('url.parse("https://u@example.com:8443/a/b?q=1&q=2&r=#frag")')
    assert url == {"scheme": "https", "host": "example.com", "port": 8443, "path": "/a/b",
                   "query": {"q": "1", "r": ""}, "fragment": "frag", "user": "u"}
    fails('url.parse("http://[::1")', {}, "not a URL")
    assert both("coalesce(msg.a, msg.b, 'd')", {"a": None, "b": 2}) == 2
    assert both("coalesce(msg.a, null)", {"a": None}) is None


def test_library_errors_reach_the_errors_port(write_graph: Any, run: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_TEST_KEYS", f"k1={K1}")
    write_graph(
        """\
        version: 1
        name: lib
        nodes:
          src: {type: generate, config: {count: 3, template: '{"t": ["2024-05-01T12:00:00Z", "soon", "1714564800"][msg.i]}'}}
          fix: {type: map, inputs: [src], config: {expr: '{"at": ts.format(ts.parse(msg.t)), "id": crypto.encrypt(msg.t, "env:SD_TEST_KEYS")}'}}
          out: {type: file_sink, inputs: [fix], config: {path: out.ndjson}}
          dead: {type: file_sink, inputs: [fix.errors], config: {path: dead.ndjson}}
        """
    )
    report = run(tmp_path / "graph.yaml")
    assert report.error is None and report.balanced
    out = [json.loads(line) for line in (tmp_path / "out.ndjson").read_text().splitlines()]
    dead = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert [o["at"] for o in out] == ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z"]
    assert all(re.fullmatch(r"sd1:k1:[-_A-Za-z0-9]+", o["id"]) for o in out)
    assert len(dead) == 1 and "ts.parse: 'soon' is not an ISO 8601" in json.dumps(dead[0])


def test_timestamps_of_early_years_keep_four_digits() -> None:
    """strftime writes year 1 as "1" on glibc; RFC 3339 (and the runtime) want "0001"."""
    assert both('string(timestamp("0001-01-01T00:00:00Z"))') == "0001-01-01T00:00:00Z"
    assert both('ts.format(ts.parse("0999-03-04T05:06:07.5Z"))') == "0999-03-04T05:06:07.500Z"


@pytest.mark.parametrize(("src", "message"), [
    ('crypto.hamc(msg.a, "env:K")', "unknown function 'crypto.hamc' (did you mean 'crypto.hmac'?)"),
    ("msg.name.lowerAsci()", "unknown member function '.lowerAsci()' (did you mean 'lowerAscii'?)"),
    ("math.greatst(1, 2)", "did you mean 'math.greatest'?"),
    ("ts.parce(msg.t)", "did you mean 'ts.parse'?"),
    ("mask(msg.a, 1, 2)", "'mask' takes 1 or 2 arguments, got 3"),
    ("uuid.v4(1)", "'uuid.v4' takes 0 arguments, got 1"),
])
def test_offline_unknown_functions_and_arity(src: str, message: str) -> None:
    with pytest.raises(CelError) as info:
        compile_expr(src)
    assert message in info.value.message


def test_validate_reports_them_as_e203(tmp_path: Path) -> None:
    from engine.compile.validate import check_file

    path = tmp_path / "g.yaml"
    path.write_text("""\
version: 1
name: offline
defaults: {dead_letter: dead}
nodes:
  src: {type: generate, config: {count: 1}}
  a: {type: map, inputs: [src], config: {expr: 'html.sanitise(msg.x)'}}
  b: {type: map, inputs: [src], config: {expr: 'crypto.hmac(msg.x, "hunter2")'}}
  out: {type: stdout, inputs: [a, b]}
  dead: {type: stdout, inputs: []}
""")
    graph, diags = check_file(str(path))
    e203 = sorted((d.line, d.message) for d in diags if d.code == "E203")
    assert graph is None and [line for line, _ in e203] == [6, 7], diags
    assert "did you mean 'html.sanitize'?" in e203[0][1]
    assert "never from the graph text" in e203[1][1]
