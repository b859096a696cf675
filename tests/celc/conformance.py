"""Run the CEL conformance tests (cel-spec "simple" files as JSON) on the compiler and on the runtime.

`python -m tests.celc.conformance` prints pass counts per file. A test runs on the compiler when
`engine.celc` translates its expression ("claimed"); otherwise the engine would use the runtime, so
it is counted as a fallback. Tests that need protobuf messages are skipped and counted as skipped.
A claimed test also runs through the engine's batch path (one comprehension over a batch, which
may decline by raising): `batch_pass` / `batch_fail` count the tests where it returned a result.
"""

from __future__ import annotations

import base64
import glob
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel

from engine.celc import compile_program, compile_strict_batch
from engine.celc.parser import ParseError, Unsupported
from engine.celc.sandbox import UnsafeCode
from engine.celc.values import CelFailure, UInt
from engine.expr import new_env

__all__ = ["CONFORMANCE_DIR", "FileResult", "load", "main", "run_file"]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CANDIDATES = [  # shared/ lies beside the checkout (CI, /work/main) or two levels up (worktrees)
    os.environ.get("CEL_CONFORMANCE_DIR", ""),
    os.path.join(_REPO, "..", "shared", "cel-conformance"),
    os.path.join(_REPO, "..", "..", "shared", "cel-conformance"),
]
CONFORMANCE_DIR = next((c for c in _CANDIDATES if c and os.path.isdir(c)), _CANDIDATES[1])

_PRIMITIVE = {
    "int": cel.Type.INT,
    "uint": cel.Type.UINT,
    "double": cel.Type.DOUBLE,
    "bool": cel.Type.BOOL,
    "string": cel.Type.STRING,
    "bytes": cel.Type.BYTES,
    "null_type": cel.Type.NULL,
    "dyn": cel.Type.DYN,
    "google.protobuf.Timestamp": cel.Type.TIMESTAMP,
    "google.protobuf.Duration": cel.Type.DURATION,
}


# Tests whose expected value disagrees with its own expression in this conversion (the expression
# has no backslash, the expected bytes have one); the runtime fails them too.
KNOWN_BAD = {
    ("parse.json", "bytes_literals", "triple_single_quoted_unescaped_punctuation"),
    ("parse.json", "bytes_literals", "triple_double_quoted_unescaped_punctuation"),
}


class _NotComparable(Exception):
    """An expected value this runner cannot express (type values)."""


def cel_type(name: str) -> Any:
    """A cel.Type for a TYPE string of the conformance data (unknown names become dyn)."""
    if name in _PRIMITIVE:
        return _PRIMITIVE[name]
    if name.startswith("list(") and name.endswith(")"):
        return cel.Type.List(cel_type(name[5:-1]))
    if name.startswith("map(") and name.endswith(")"):
        k, _, v = name[4:-1].partition(", ")
        return cel.Type.Map(cel_type(k), cel_type(v))
    return cel.Type.DYN


def to_python(value: dict, uint_class: type = int) -> Any:
    """A VALUE of the conformance data as a Python value (uints as `uint_class`)."""
    ((kind, v),) = value.items()
    if kind == "int":
        return int(v)
    if kind == "uint":
        return uint_class(int(v))
    if kind == "double":
        return float(v)  # "NaN", "Infinity" and "-Infinity" arrive as strings
    if kind in ("string", "bool"):
        return v
    if kind == "null":
        return None
    if kind == "bytes_b64":
        return base64.b64decode(v)
    if kind == "list":
        return [to_python(x, uint_class) for x in v]
    if kind == "map":
        return {to_python(k, uint_class): to_python(x, uint_class) for k, x in v}
    raise _NotComparable(kind)


def matches(expected: dict, actual: Any) -> bool:
    """Value equality with exact CEL kinds (int is not bool or double), NaN matching NaN."""
    ((kind, v),) = expected.items()
    if kind in ("int", "uint"):
        return type(actual) in (int, UInt) and actual == int(v)
    if kind == "double":
        if type(actual) is not float:
            return False
        want = float(v)
        return (math.isnan(want) and math.isnan(actual)) or want == actual
    if kind == "bool":
        return actual is v
    if kind == "string":
        return type(actual) is str and actual == v
    if kind == "null":
        return actual is None
    if kind == "bytes_b64":
        return type(actual) in (bytes, bytearray) and bytes(actual) == base64.b64decode(v)
    if kind == "list":
        return (
            type(actual) is list and len(actual) == len(v) and all(matches(e, a) for e, a in zip(v, actual))
        )
    if kind == "map":
        if type(actual) is not dict or len(actual) != len(v):
            return False
        for ek, ev in v:
            hit = [ak for ak in actual if matches(ek, ak)]
            if len(hit) != 1 or not matches(ev, actual[hit[0]]):
                return False
        return True
    raise _NotComparable(kind)


@dataclass
class FileResult:
    """Counts for one file, and the names of compiled tests that failed."""

    name: str
    counts: Counter = field(default_factory=Counter)
    compiler_failures: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)  # "skipped: why" / "fallback: why" -> tests


def _expectation(test: dict) -> tuple[str, Any]:
    if "value" in test:
        return "value", test["value"]
    if "eval_error" in test or "any_eval_errors" in test:
        return "error", None
    if "typed_result" in test and "value" in test["typed_result"]:
        return "value", test["typed_result"]["value"]
    return "none", None


def _check(kind: str, want: Any, outcome: tuple[str, Any]) -> bool:
    status, got = outcome
    if kind == "error":
        return status == "error"
    return status == "value" and matches(want, got)


def _runtime_outcome(test: dict, fname: str) -> tuple[str, Any]:
    """The runtime's result in the environment every graph gets (`engine.expr.new_env`)."""
    variables = {d["name"]: cel_type(d["type"]) for d in test.get("type_env", []) if "type" in d}
    try:
        env = new_env(variables, container=test.get("container") or None)
        program = env.compile(test["expr"], disable_check=test["disable_check"])
        data = {k: to_python(v) for k, v in test.get("bindings", {}).items()}
        value = program.eval(data=data)
    except Exception as exc:  # noqa: BLE001 - compile errors, and errors the runtime raises
        return "error", str(exc)
    if value.type() == cel.Type.ERROR:
        return "error", str(value.value())
    return "value", value.plain_value()


def _compiler_outcome(test: dict, fname: str) -> tuple[str, Any] | None:
    """The compiled result, or None when the compiler does not claim the expression."""
    names = sorted(test.get("bindings", {}))
    if any(d.get("function") for d in test.get("type_env", [])) or test.get("container"):
        return None

    def runtime(*_args: Any) -> Any:  # what the engine does for a message the compiled code defers
        status, value = _runtime_outcome(test, fname)
        if status == "error":
            raise CelFailure(value)
        return value

    try:
        fn = compile_program(test["expr"], names, runtime=runtime, macros=not test["disable_macros"])
    except (ParseError, Unsupported, UnsafeCode, CelFailure, RecursionError):
        return None
    args = [to_python(test["bindings"][n], UInt) for n in names]
    try:
        return "value", fn(*args)
    except Exception as exc:  # noqa: BLE001 - any failure counts as the test's error outcome
        return "error", str(exc)


def _batch_outcome(test: dict) -> tuple[str, Any] | None:
    """The engine's batch path (`compile_strict_batch`) on a batch of one, two copies of the test's
    bindings: ('value', v) when it returns (both results must be v), None when it raises (the
    engine then evaluates those messages one by one) or does not compile."""
    names = sorted(test.get("bindings", {}))
    if any(d.get("function") for d in test.get("type_env", [])) or test.get("container"):
        return None
    try:
        sb = compile_strict_batch(test["expr"], macros=not test["disable_macros"], variables=names or ["_unused"])
    except (ParseError, Unsupported, UnsafeCode, CelFailure, RecursionError):
        return None
    args = [to_python(test["bindings"][n], UInt) for n in names] or [None]
    try:
        values = sb.fn(*[[args[i], args[i]] for i in sb.columns])
    except Exception:  # noqa: BLE001 - the batch path declines: the engine goes message by message
        return None
    if len(values) != 2 or not (values[0] is values[1] or values[0] == values[1] or values[0] != values[0]):
        return "value", _Mismatch(values)
    return "value", values[0]


class _Mismatch:
    """Two copies of one message gave different results in one batch (always a failure)."""

    def __init__(self, values: Any):
        self.values = values

    def __repr__(self) -> str:
        return f"different results for the same message: {self.values!r}"


def run_file(path: str) -> FileResult:
    """Run every test of one JSON file on both evaluators."""
    doc = load(path)
    fname = os.path.basename(path)
    result = FileResult(fname)
    c = result.counts
    for si, section in enumerate(doc["sections"]):
        for ti, test in enumerate(section["tests"]):
            c["tests"] += 1
            kind, want = _expectation(test)
            skip = ("needs protobuf messages" if test["needs_proto"] else
                    "check-only (a type-checker test, nothing to evaluate)" if test["check_only"] else
                    "no expected value (the test states only a type)" if kind == "none" else None)
            if skip:
                c["skipped"] += 1
                result.reasons[f"skipped: {skip}"] += 1
                continue
            if (fname, section["name"], test["name"]) in KNOWN_BAD:
                c["bad_data"] += 1
                continue
            try:
                c[
                    "runtime_pass" if _check(kind, want, _runtime_outcome(test, fname)) else "runtime_fail"
                ] += 1
                outcome = _compiler_outcome(test, fname)
                if outcome is None:
                    c["fallback"] += 1
                    result.reasons[f"fallback: {_fallback_reason(test)}"] += 1
                    continue
                where = f"{fname}[{si}:{ti}] {section['name']}/{test['name']}"
                for way, got in (("compiled", outcome), ("batch", _batch_outcome(test))):
                    if got is None:  # the batch path declined: the engine goes message by message
                        continue
                    ok = _check(kind, want, got)
                    c[f"{way}_{'pass' if ok else 'fail'}"] += 1
                    if not ok:
                        result.compiler_failures.append(
                            f"{where} ({way}): {test['expr']!r} want {kind} {want} got {got}")
            except _NotComparable as exc:
                c["skipped"] += 1
                result.reasons[f"skipped: the expected value is a {exc} (this runner cannot compare it)"] += 1
    return result


def _fallback_reason(test: dict) -> str:
    """Why the compiler does not claim `test` (the engine would evaluate it on the runtime)."""
    if any(d.get("function") for d in test.get("type_env", [])):
        return "declares its own functions"
    if test.get("container"):
        return "uses a container (qualified names)"
    names = sorted(test.get("bindings", {}))
    try:
        compile_program(test["expr"], names, runtime=None, macros=not test["disable_macros"])
    except (ParseError, Unsupported, UnsafeCode, CelFailure, RecursionError) as exc:
        text = str(exc)
        for generic in ("function '", "identifier '"):  # group by kind, not by the name
            if text.startswith(generic):
                return text.split("'")[0] + "'" + text.split("'")[1] + "'"
        return f"{type(exc).__name__}: {text[:60]}"
    return "compiles (claimed at run time)"


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


VENDORED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance_data")


def files() -> list[str]:
    """The vendored extension files (tests/celc/conformance_data), then the other files of the
    shared copy when it is present."""
    vendored = {os.path.basename(p): p for p in glob.glob(os.path.join(VENDORED_DIR, "*.json"))}
    shared = {os.path.basename(p): p for p in glob.glob(os.path.join(CONFORMANCE_DIR, "*.json"))}
    return [p for _, p in sorted({**shared, **vendored}.items())]


def main() -> None:
    """Print pass counts per file for the compiler and the runtime."""
    cols = (
        "tests",
        "skipped",
        "bad_data",
        "compiled_pass",
        "compiled_fail",
        "batch_pass",
        "batch_fail",
        "fallback",
        "runtime_pass",
        "runtime_fail",
    )
    print(f"{'file':22}" + "".join(f"{c:>14}" for c in cols))
    total: Counter = Counter()
    failures: list[str] = []
    why: list[tuple[str, Counter]] = []
    for path in files():
        r = run_file(path)
        total.update(r.counts)
        failures += r.compiler_failures
        if "_ext" in r.name or r.name in ("optionals.json", "lists.json"):
            why.append((r.name, r.reasons))
        print(f"{r.name:22}" + "".join(f"{r.counts[c]:>14}" for c in cols))
    print(f"{'total':22}" + "".join(f"{total[c]:>14}" for c in cols))
    for f in failures:
        print("FAIL", f)
    print("\nWhy tests of the extension files are skipped or fall back to the runtime:")
    for name, reasons in why:
        for reason, n in sorted(reasons.items()):
            print(f"  {name:22} {n:4}  {reason}")


if __name__ == "__main__":
    main()
