"""Every example in docs/cel.md (the lines between `<!-- examples -->` markers) is true, compiled
and on the runtime fallback, in the environment graphs get."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from engine.expr import compile_expr

DOC = Path(__file__).resolve().parents[2] / "docs" / "cel.md"


def examples() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- examples -->\n(.*?)<!-- /examples -->", text, re.S)
    return [m for block in blocks for m in re.findall(r"^- `(.*)`$", block, re.M)]


def test_the_docs_have_examples() -> None:
    found = examples()
    assert len(found) >= 30
    for name in ("ts.parse", "ts.format", "now()", "html.sanitize", "crypto.hmac", "crypto.encrypt", "crypto.decrypt",
                 "redact(", "mask(", "uuid.v4", "uuid.v7", "json.encode", "json.decode", "url.parse", "coalesce(",
                 "lowerAscii", "math.greatest", "base64.encode", "lists.range", "sets.contains", "optional.of",
                 ".?b", "cel.bind", "regex.extract", "regex.replace", "sortBy"):
        assert any(name in e for e in found), name


@pytest.mark.parametrize("src", examples())
def test_doc_example_is_true(src: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOC_HMAC_KEY", "Jefe")
    monkeypatch.setenv("DOC_KEYS", "k1=" + base64.b64encode(b"k" * 32).decode())
    expr = compile_expr(src)
    assert expr.compiled, src
    assert expr({}) is True, src
    if "regex.extract(" not in src and "sortBy" not in src:  # compiled only (docs/cel.md says why)
        assert compile_expr(src, allow_compiler=False)({}) is True, src
