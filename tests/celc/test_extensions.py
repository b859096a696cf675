"""cel-go's extensions, compiled, against cel-expr-python's own implementation of them (strings,
math, encoders, optionals, bindings) on the differential inputs; lists, sets and regex (which the
runtime lacks and gets the compiler's implementations for) against expected values."""

from __future__ import annotations

import pytest

from tests.celc.differential import outcome_of_compiled, outcome_of_runtime, same_outcome
from tests.celc.test_differential import INPUTS

EXTRA = [
    {"name": "  Ünïcode ✓ straße\t", "tags": ["x", "é", "x"], "amount": -2.5, "id": -7, "m": {"x": ""}},
    {"name": "a,b,,c", "tags": [3, 1, 2], "amount": 0.5, "id": 1, "m": {"x": {"y": 1}}},
    {"name": "%s", "tags": [], "amount": -0.5, "id": 0, "m": {"x": None}},
]

# each against the runtime's own extension, on every input
DIFFERENTIAL = [
    "msg.name.lowerAscii()", "msg.name.upperAscii()", "msg.name.trim()", "msg.name.reverse()",
    'msg.name.split(",")', 'msg.name.split("")', 'msg.name.split(",", 2)', 'msg.name.split(",", 0)',
    'msg.name.replace("a", "0")', 'msg.name.replace("", "-")', 'msg.name.replace("a", "0", 1)',
    "msg.name.charAt(0)", "msg.name.charAt(size(msg.name))", "msg.name.charAt(100)",
    'msg.name.indexOf("c")', 'msg.name.indexOf("")', 'msg.name.indexOf("b", 1)', 'msg.name.lastIndexOf("c")',
    'msg.name.lastIndexOf("")', "msg.name.substring(1)", "msg.name.substring(1, 3)", "msg.name.substring(3, 1)",
    'msg.tags.join("-")', "msg.tags.join()", "strings.quote(msg.name)",
    '"%s|%d".format([msg.name, msg.id])', '"%.2f".format([msg.amount])', '"%x".format([msg.id])',
    '"%e".format([msg.amount])', '"%b".format([msg.id])', '"%o".format([msg.id])', '"%s".format([msg.ok])',
    "math.greatest(msg.id, 3, -1)", "math.least(msg.id, 3.5)", "math.greatest(msg.tags)", "math.abs(msg.id)",
    "math.abs(msg.amount)", "math.ceil(msg.amount)", "math.floor(msg.amount)", "math.round(msg.amount)",
    "math.trunc(msg.amount)", "math.sign(msg.amount)", "math.sign(msg.id)", "math.isNaN(msg.amount)",
    "math.isInf(msg.amount)", "math.isFinite(msg.amount)", "math.sqrt(msg.amount)", "math.sqrt(msg.id)",
    "math.bitAnd(msg.id, 6)", "math.bitOr(msg.id, 8)", "math.bitXor(msg.id, 5)", "math.bitNot(msg.id)",
    "math.bitShiftLeft(msg.id, 3)", "math.bitShiftRight(msg.id, 1)", "math.bitShiftRight(msg.id, -1)",
    "base64.encode(bytes(msg.name))", 'base64.decode("aGk=")', 'base64.decode("aGk")', 'base64.decode("!!")',
    "msg.?m.?x.orValue(42)", "msg.?missing.orValue(0)", "msg.?m.hasValue()", "msg.tags[?0].orValue('none')",
    "msg.tags[?5].hasValue()", "optional.of(msg.id).value()", "optional.none().value()",
    "optional.ofNonZeroValue(msg.name).orValue('empty')", "msg.?m.?x.or(optional.of('alt')).value()",
    "has(msg.?m.x)", "msg.?m.x.orValue('no')",
    "cel.bind(x, msg.id, x * x)", "cel.bind(t, msg.tags, t.size() + t.size())",
    "msg.tags.first().orValue('-')", "msg.tags.last().hasValue()",
]


# Where the runtime is wrong and the compiled code follows cel-go: cel-expr-python 0.1.3 rejects a
# substring whose end is the string's size ("abc".substring(1, 3) is "bc" in cel-go).
KNOWN = {("msg.name.substring(1, 3)", "abc")}


@pytest.mark.parametrize("src", DIFFERENTIAL)
def test_extension_compiled_matches_runtime(src: str) -> None:
    compiled_any = False
    for msg in [*INPUTS, *EXTRA]:
        if (src, msg.get("name")) in KNOWN:
            assert outcome_of_compiled(src, msg, {}) == ("value", "bc")
            continue
        want = outcome_of_runtime(src, msg, {})
        assert want is not None, f"the runtime rejects {src}"
        got = outcome_of_compiled(src, msg, {})
        if got is None:
            continue
        compiled_any = True
        assert same_outcome(want, got), (src, msg, want, got)
    assert compiled_any, f"{src} did not compile"
