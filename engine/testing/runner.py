"""Runs the cases of a checked test file: the graph's plan with its connectors replaced by
in-memory doubles (engine.testing.doubles), one `Runner` per case, then every expectation compared.

The graph is the user's, checked as `validate` checks it; only the plan changes. Every source
becomes a `MemorySource` emitting the case's inputs (a source without inputs emits nothing), every
sink a `MemorySink`, `pg_lookup`/`redis_lookup` a `LookupStub` answering from the case's stubs,
`dedupe` a `DedupeStub` (a key seen earlier in the case is a duplicate). An expectation on a
`node.port` adds a capturing sink on that port (a copy, as any second consumer gets). Every other
operator runs as in production, inline chains, retries and dead-letter edges included, with the
case's fixed clock. Another operator that needs a service fails the case with a clear reason.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import orjson

from engine.compile.plan import Plan, build_plan
from engine.compile.validate import ResolvedNode
from engine.expr import EvalError, compile_expr
from engine.message import DeadLetter
from engine.testing.doubles import DedupeStub, LookupStub, MemorySink, MemorySource, StubConfig
from engine.testing.spec import LOOKUPS, Case, Expectation, TestFile, split_target

__all__ = ["CaseResult", "Failure", "case_plan", "run_file"]

_CAPTURE = "expect:"  # id prefix of the capturing sinks (not a valid node id: no clash)


@dataclass
class Failure:
    line: int  # of the failing expectation in the test file
    message: str
    diff: str = ""


@dataclass
class CaseResult:
    file: str
    name: str
    line: int
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class Unsupported(Exception):
    """The graph has a node a test cannot run without its service."""


def case_plan(tf: TestFile, case: Case) -> Plan:
    """The graph's plan for one case: connectors replaced by doubles, capturing sinks added."""
    g = tf.graph
    nodes: dict[str, ResolvedNode] = {}
    for nid, rn in g.nodes.items():
        if rn.kind == "source":
            msgs = [(m.body, dict(m.meta), m.raw) for m in case.inputs.get(nid, [])]
            rn = replace(rn, cls=MemorySource, config=msgs)
        elif rn.kind == "sink":
            rn = replace(rn, cls=MemorySink, config=None)
        elif rn.type in LOOKUPS:
            rn = replace(rn, cls=LookupStub, config=StubConfig(rn.config, rn.type, case.stubs.get(nid, {})))
        elif rn.type == "dedupe":
            rn = replace(rn, cls=DedupeStub)
        elif getattr(rn.config, "connection", None) is not None:
            raise Unsupported(f"node '{nid}' ({rn.type}) needs its service: a test runs no service and has "
                              "no double for it")
        nodes[nid] = rn
    for target in case.expect:
        node, port = split_target(g, target)
        if port is not None:
            up = g.nodes[node]
            cid = _CAPTURE + target
            nodes[cid] = ResolvedNode(cid, "memory_sink", MemorySink, None, [(node, port)], ("errors",), up.retry,
                                      up.capacity, up.capacity_bytes, up.batch_size)
    return build_plan(replace(g, nodes=MappingProxyType(nodes)))


def run_file(tf: TestFile, only: str | None = None) -> list[CaseResult]:
    """Every case of `tf` (those whose name contains `only`), in order, each in a fresh event loop."""
    return [asyncio.run(_run_case(tf, i, case)) for i, case in enumerate(tf.spec.cases)
            if not only or only in case.name]


async def _run_case(tf: TestFile, i: int, case: Case) -> CaseResult:
    from engine.runtime.scheduler import Runner

    result = CaseResult(tf.path, case.name, tf.line("cases", i))
    t0 = time.perf_counter()
    try:
        plan = case_plan(tf, case)
    except Unsupported as exc:
        result.failures.append(Failure(result.line, str(exc)))
        return result
    fixed = case.clock
    runner = Runner(plan, clock=(lambda: fixed) if fixed is not None else time.time)
    task = asyncio.ensure_future(runner.run())
    done, _ = await asyncio.wait({task}, timeout=case.timeout)
    if not done:
        runner.stop()
        await asyncio.wait({task}, timeout=5.0)
        result.failures.append(Failure(tf.line("cases", i, "timeout"),
                                       f"the case did not finish within {case.timeout:g}s (timeout)"))
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            result.seconds = time.perf_counter() - t0
            return result
    report = task.result()
    result.seconds = time.perf_counter() - t0
    if report.error is not None:
        result.failures.append(Failure(result.line, f"the run failed: {report.error}"))
    received = {nid: node.received for nid, node in runner.nodes.items() if isinstance(node, MemorySink)}
    for target, exp in case.expect.items():
        node, port = split_target(tf.graph, target)
        msgs = received[node if port is None else _CAPTURE + target]
        result.failures.extend(_check(tf, ("cases", i, "expect", target), target, exp, msgs))
    letters = [m.body for nid in sorted(plan.dead_letter_sinks | plan.mixed_sinks) if not nid.startswith(_CAPTURE)
               for m in received[nid] if nid in plan.dead_letter_sinks or type(m) is DeadLetter]
    result.failures.extend(_check_dead_letters(tf, i, case, letters))
    return result


def _canon(value: Any) -> Any:
    """JSON as compared: an integral float equals the integer (as in Python and JSON)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def _line(value: Any) -> str:
    return orjson.dumps(_canon(value), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                        default=str).decode()


def _diff(expected: list[Any], actual: list[Any], ordered: bool = True) -> str:
    exp, act = [_line(v) for v in expected], [_line(v) for v in actual]
    if not ordered:
        exp, act = sorted(exp), sorted(act)
    lines = difflib.unified_diff(exp, act, "expected", "actual", lineterm="", n=2)
    return "\n".join(lines)


def _check(tf: TestFile, at: tuple[str | int, ...], target: str, exp: Expectation, msgs: list[Any]
           ) -> list[Failure]:
    bodies = [m.body for m in msgs]
    out: list[Failure] = []
    if exp.count is not None and len(bodies) != exp.count:
        shown = "\n".join(f"  {_line(b)}" for b in bodies[:20]) + ("\n  ..." if len(bodies) > 20 else "")
        out.append(Failure(tf.line(*at, "count"), f"{target}: expected {exp.count} message(s), got {len(bodies)}",
                           shown))
    if exp.bodies is not None:
        exp_lines, act_lines = [_line(b) for b in exp.bodies], [_line(b) for b in bodies]
        same = exp_lines == act_lines if exp.ordered else Counter(exp_lines) == Counter(act_lines)
        if not same:
            what = "in order" if exp.ordered else "in any order"
            out.append(Failure(tf.line(*at, "bodies"),
                               f"{target}: bodies differ ({what}; expected {len(exp_lines)}, got {len(act_lines)})",
                               _diff(exp.bodies, bodies, exp.ordered)))
    for n, m in enumerate(msgs):
        if exp.contains is not None and not _contains(m.body, exp.contains):
            out.append(Failure(tf.line(*at, "contains"), f"{target}: message {n} does not contain {_line(exp.contains)}",
                               f"  {_line(m.body)}"))
            break
    for n, m in enumerate(msgs):
        if exp.meta is not None and not _contains(m.meta, exp.meta):
            out.append(Failure(tf.line(*at, "meta"), f"{target}: message {n}'s meta does not have {_line(exp.meta)}",
                               f"  meta: {_line(m.meta)}"))
            break
    if exp.each is not None:
        cond = compile_expr(exp.each)
        for n, m in enumerate(msgs):
            try:
                ok = cond(m.body, m.meta)
            except EvalError as exc:
                ok = f"error: {exc}"
            if ok is not True:
                out.append(Failure(tf.line(*at, "each"), f"{target}: message {n} does not meet `{exp.each}` ({ok})",
                                   f"  {_line(m.body)}"))
                break
    return out


def _contains(value: Any, part: Any) -> bool:
    """`part` is a JSON subset of `value`: an object's listed fields (recursively), anything else equal."""
    if isinstance(part, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], v) for k, v in part.items())
    return _line(value) == _line(part)


def _check_dead_letters(tf: TestFile, i: int, case: Case, letters: list[Any]) -> list[Failure]:
    """Each expected dead letter matches a distinct actual one; none is left over on either side."""
    expected = case.dead_letters or []
    left = list(letters)
    missing = []
    for j, dl in enumerate(expected):
        for k, env in enumerate(left):
            if _matches(dl, env):
                del left[k]
                break
        else:
            missing.append(j)
    out = []
    summary = "\n".join(f"  {_line(_brief(e))}" for e in letters) or "  (none)"
    for j in missing:
        dl = expected[j]
        want = ", ".join(f"{k}={v!r}" for k, v in (("node", dl.node), ("reason", dl.reason)) if v is not None)
        out.append(Failure(tf.line("cases", i, "dead_letters", j), f"dead letter not found: {want or 'any'}",
                           "dead letters:\n" + summary))
    if left:
        where = tf.line("cases", i, "dead_letters") if case.dead_letters is not None else tf.line("cases", i)
        out.append(Failure(where, f"{len(left)} unexpected dead letter(s)",
                           "\n".join(f"  {_line(_brief(e))}" for e in left)))
    return out


def _brief(env: Any) -> Any:
    return {k: env.get(k) for k in ("node", "error", "payload")} if isinstance(env, dict) else env


def _matches(dl: Any, env: Any) -> bool:
    if not isinstance(env, dict):
        return False
    if dl.node is not None and env.get("node") != dl.node:
        return False
    if dl.reason is not None and dl.reason not in str(env.get("error", "")):
        return False
    return dl.payload is None or _line(dl.payload) == _line(env.get("payload"))
