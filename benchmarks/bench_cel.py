"""µs per evaluation: compiled CEL (engine.celc) against cel-expr-python and cel-python.

Run: `python -m pytest benchmarks/bench_cel.py --benchmark-columns=mean,median,ops --benchmark-sort=name`
(the machine is shared: figures are noisy while other work runs). Each round evaluates the
expression on N = 1000 messages, so the time in ms per round is the time in µs per evaluation.

`python -m benchmarks.bench_cel` measures the extensions and the pipeline library (`EXTENSIONS`):
compiled against cel-expr-python in the same environment, alternating the two round by round in
one process (warm, start-up excluded), and prints µs per evaluation and the ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine.celc import try_compile, try_compile_batch, try_compile_strict
from engine.expr import compile_expr

N = 1000
MESSAGES = [
    {
        "id": i,
        "amount": float(i % 40),
        "tags": ["a", "b"] if i % 3 else ["c"],
        "name": f"user-{i}@example.com",
        "items": [{"price": float(j), "qty": j} for j in range(i % 5)],
    }
    for i in range(N)
]
META: dict[str, Any] = {"source": "bench"}
EXPRESSIONS = {
    "filter": 'msg.amount > 10.0 && "a" in msg.tags',
    "map": '{"id": msg.id, "total": msg.amount * 1.2}',
    "string": 'msg.name.startsWith("user-") && msg.name.endsWith(".com") && size(msg.name) > 5',
    "regex": "msg.name.matches('^user-[0-9]+@')",
    "macro": "msg.items.exists(i, i.price > 2.0)",
}
# the common functions of issue 17: cel-go's extensions and the pipeline library
EXTENSIONS = {
    "lowerAscii+split": 'msg.name.lowerAscii().split("@")',
    "format": '"%s:%d".format([msg.name, msg.id])',
    "trim+replace": 'msg.name.trim().replace("-", "_")',
    "join": 'msg.tags.join(",")',
    "math.round": "math.round(msg.amount * 1.5)",
    "math.greatest": "math.greatest(msg.amount, 10.0, 3.0)",
    "optional": "msg.?discount.orValue(0.0) + msg.amount",
    "cel.bind": "cel.bind(a, msg.amount, a * a + a)",
    "sets.contains": 'sets.contains(msg.tags, ["a"])',
    "regex.extract": 'regex.extract(msg.name, "user-([0-9]+)").orValue("")',
    "regex.replace": 'regex.replace(msg.name, "[0-9]", "#")',
    "ts.parse+format": "ts.format(ts.parse(msg.id + 1700000000))",
    "crypto.sha256": "crypto.sha256(msg.name)",
    "mask": "mask(msg.name)",
    "coalesce": 'coalesce(msg.?nick.orValue(null), msg.name)',
    "json.encode": "json.encode(msg.tags)",
    "html.sanitize": 'html.sanitize("<b>" + msg.name + "</b>")',
}
PLAIN: dict[str, Callable[[dict], Any]] = {  # the same logic written as plain Python
    "filter": lambda m: m["amount"] > 10.0 and "a" in m["tags"],
    "map": lambda m: {"id": m["id"], "total": m["amount"] * 1.2},
    "string": lambda m: m["name"].startswith("user-") and m["name"].endswith(".com") and len(m["name"]) > 5,
    "regex": None,  # type: ignore[dict-item]
    "macro": lambda m: any(i["price"] > 2.0 for i in m["items"]),
}


def _celpy(src: str) -> Callable[[dict, dict], Any]:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(src))

    def run(body: dict, meta: dict) -> Any:
        return program.evaluate({"msg": celpy.json_to_cel(body), "meta": celpy.json_to_cel(meta)})

    return run


def _evaluator(engine: str, src: str) -> Callable[[dict, dict], Any]:
    if engine == "compiled":
        fn = try_compile(src)
        assert fn is not None, src
        return fn
    if engine == "cel-expr-python":
        return compile_expr(src, allow_compiler=False).fn
    return _celpy(src)


@pytest.mark.parametrize("engine", ["compiled", "cel-expr-python", "cel-python"])
@pytest.mark.parametrize("name", list(EXPRESSIONS))
def test_eval(benchmark: Any, name: str, engine: str) -> None:
    fn = _evaluator(engine, EXPRESSIONS[name])
    msgs = MESSAGES
    compiled = try_compile(EXPRESSIONS[name])
    assert compiled is not None
    for m in msgs[:50]:  # same results as the compiled code
        if engine == "cel-expr-python":
            assert fn(m, META) == compiled(m, META)

    def loop() -> None:
        for m in msgs:
            fn(m, META)

    benchmark.extra_info["messages_per_round"] = len(msgs)
    benchmark(loop)


@pytest.mark.parametrize("name", list(EXPRESSIONS))
def test_eval_batch(benchmark: Any, name: str) -> None:
    """The whole batch in one generated loop (`try_compile_batch`)."""
    fn = try_compile_batch(EXPRESSIONS[name])
    assert fn is not None
    metas = [META] * N
    one = try_compile(EXPRESSIONS[name])
    assert one is not None and fn(MESSAGES, metas) == [one(m, META) for m in MESSAGES]
    benchmark.extra_info["messages_per_round"] = N
    benchmark(fn, MESSAGES, metas)


@pytest.mark.parametrize("name", list(EXPRESSIONS))
def test_eval_strict_batch(benchmark: Any, name: str) -> None:
    """The engine's hot path (`Expr.many`, what map and filter call): one comprehension over the
    batch's bodies, which raises when any message fails and then goes message by message."""
    sb = try_compile_strict(EXPRESSIONS[name])
    assert sb is not None
    columns = [[MESSAGES, [META] * N][i] for i in sb.columns]
    one = try_compile(EXPRESSIONS[name])
    assert one is not None
    try:
        got = sb.fn(*columns)
    except Exception:  # noqa: BLE001 - some message fails: the batch path is not taken for this data
        pytest.skip("some message of the data set fails: the engine evaluates it one by one")
    assert got == [one(m, META) for m in MESSAGES]
    benchmark.extra_info["messages_per_round"] = N
    benchmark(sb.fn, *columns)


@pytest.mark.parametrize("name", [k for k, v in PLAIN.items() if v is not None])
def test_eval_plain_python(benchmark: Any, name: str) -> None:
    fn = PLAIN[name]

    def loop() -> None:
        for m in MESSAGES:
            fn(m)

    benchmark.extra_info["messages_per_round"] = N
    benchmark(loop)


@pytest.mark.parametrize("engine", ["compiled", "cel-expr-python"])
@pytest.mark.parametrize("name", list(EXTENSIONS))
def test_eval_extension(benchmark: Any, name: str, engine: str) -> None:
    src = EXTENSIONS[name]
    expr = compile_expr(src, allow_compiler=engine == "compiled")
    assert expr.compiled is (engine == "compiled"), src
    fn = expr.fn
    benchmark.extra_info["messages_per_round"] = N

    def loop() -> None:
        for m in MESSAGES:
            fn(m, META)

    benchmark(loop)


def alternating(rounds: int = 7) -> list[tuple[str, float, float | None]]:
    """(name, compiled µs, runtime µs or None) per extension expression: the median of `rounds`
    rounds of N messages each, compiled and runtime alternating round by round."""
    import statistics
    import time

    out = []
    for name, src in EXTENSIONS.items():
        compiled = compile_expr(src)
        assert compiled.compiled, (name, src)
        fns = {"compiled": compiled.fn}
        if "regex.extract" not in src:  # the runtime cannot return its optional
            fns["runtime"] = compile_expr(src, allow_compiler=False).fn
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                for m in MESSAGES:
                    fn(m, META)
                times[key].append((time.perf_counter() - t0) / N * 1e6)
        runtime = statistics.median(times["runtime"]) if "runtime" in times else None
        out.append((name, statistics.median(times["compiled"]), runtime))
    return out


def regex_engines(rounds: int = 7) -> list[tuple[str, float, float]]:
    """(case, RE2 binding µs, Python re µs) per call on 20-character strings, alternating."""
    import re
    import statistics
    import time

    import re2

    from engine.celc.ext import _finditer

    texts = [m["name"] for m in MESSAGES]
    out = []
    for pattern in ("[0-9]+", "user-([0-9]+)"):
        for case, fn in (("search", lambda rx, s: rx.search(s)),
                         ("extractAll", lambda rx, s: [m.group(0) for m in _finditer(rx, s)])):
            times: dict[Any, list[float]] = {re2.compile(pattern): [], re.compile(pattern, re.ASCII): []}
            for _ in range(rounds):
                for rx, acc in times.items():
                    t0 = time.perf_counter()
                    for text in texts:
                        fn(rx, text)
                    acc.append((time.perf_counter() - t0) / len(texts) * 1e6)
            binding, python = (statistics.median(v) for v in times.values())
            out.append((f"{case} {pattern}", binding, python))
    return out


def main() -> None:
    import os

    print(f"load: {os.getloadavg()[0]:.2f} (1 min); warm, in-process; median of 7 rounds of {N} messages, alternating")
    print(f"{'expression':18} {'compiled µs':>12} {'runtime µs':>11} {'ratio':>7}")
    for name, c, r in alternating():
        print(f"{name:18} {c:12.2f} {r if r is not None else float('nan'):11.2f} "
              f"{(r / c) if r is not None else float('nan'):7.1f}")
    print(f"\n{'regex (per call)':28} {'RE2 binding µs':>15} {'python re µs':>13}")
    for case, binding, python in regex_engines():
        print(f"{case:28} {binding:15.2f} {python:13.2f}")


if __name__ == "__main__":
    main()
