"""matches(): the fast Python path must agree with RE2 on every pattern it accepts."""

from __future__ import annotations

import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.celc.regex import compile_matcher, translate

_OPTS = re2.Options()
_OPTS.log_errors = False
_ATOMS = [
    "a",
    "b",
    "é",
    ".",
    "\\d",
    "\\w",
    "\\s",
    "\\S",
    "\\b",
    "\\.",
    "[ab]",
    "[^a]",
    "[a-c\\d]",
    "[\\s]",
    "^",
    "$",
    "(a|b)",
    "(?:ab)",
    "x",
    "\n",
    "\\$",
    "[.]",
]
_QUANT = ["", "", "", "*", "+", "?", "*?", "+?", "??"]
_TEXT = st.text(alphabet="abcé x.\n\t\v1٣$_", max_size=8)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(_ATOMS), st.sampled_from(_QUANT)), max_size=5))
    return "".join(a + q for a, q in parts)


@settings(max_examples=400, deadline=None)
@given(pattern=patterns(), texts=st.lists(_TEXT, min_size=1, max_size=6))
def test_python_path_agrees_with_re2(pattern: str, texts: list[str]) -> None:
    try:
        ref = re2.compile(pattern, options=_OPTS)
    except re2.error:
        return
    fast = compile_matcher(pattern)
    for t in texts:
        assert fast(t) == (ref.search(t) is not None), (pattern, t, translate(pattern))


def test_subset_selection() -> None:
    assert translate("^user-[0-9]+@") == "^user-[0-9]+@"
    assert translate("a$") == "a\\Z"
    assert translate("(a+)+$") is None  # repeated group
    assert translate("a*b*") is None  # two unbounded repetitions
    assert translate("(?i)abc") is None  # flags
    assert translate("[[:alpha:]]") is None  # POSIX class
    assert translate("\\pL") is None  # Unicode class
    assert translate("a{2,}") is None


def test_dollar_does_not_match_before_final_newline() -> None:
    assert compile_matcher("a$")("a\n") is False
    assert compile_matcher("a$")("a") is True


def test_ascii_classes() -> None:
    assert compile_matcher("\\d")("٣") is False
    assert compile_matcher("\\s")("\v") is False
