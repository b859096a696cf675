"""Two source trees, the same benchmark scenarios, alternating old/new in one run (issue 20's check).

    python benchmarks/compare.py OLD_TREE NEW_TREE [-r ROUNDS] [-s memory,window,...] [--out FILE]

Each tree runs with its own interpreter (`TREE/.venv/bin/python` if there is one) and its own code
(cwd and PYTHONPATH = the tree), under `nice -n 10`. A round runs every scenario once per tree, one
child process each, old and new back to back (which goes first alternates by round), so a burst of
load on the shared machine hits both alike. The scenarios are those of `benchmarks/results/`
(`python -m benchmarks.run`), engine variant only and smaller: the snippets below call each tree's
own `benchmarks/` modules, whose scenario code is the same on both sides of issue 20 (only import
paths moved).

Per row: the warm figure (measured inside the child around the engine's own run, start-up and set-up
excluded: msg/s, or CPU µs per message where a fixed rate makes msg/s meaningless), the warm CPU
time of the child per message over the same span (its own CPU, servers and load generators not
included: it moves much less with the machine's load than wall time), and the whole-process wall
time of the child (interpreter start, imports, set-up such as publishing the
backlog, the run, teardown). `ratio` is new speed ÷ old speed (above 1: the new tree is faster), the
median over rounds of each round's old/new pair; `spread` is the lowest and highest pair ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["SCENARIOS", "main"]

# scenario -> (python snippet printing one JSON object with "warm", unit, higher_is_better)
_MEMORY = """
import json, time, gc
from benchmarks import scenario_memory as s
from engine.compile.validate import check_text
check_text(s._graph(10, {compress}), "warm.yaml")
n = {n}
gc.collect()
t0, c0 = time.perf_counter(), time.process_time()
got = s.run_engine(n, {compress})
t, c = time.perf_counter() - t0, time.process_time() - c0
if not {compress}:
    assert got == s.expected(n), got
print(json.dumps({{"warm": n / t, "cpu_us": c / n * 1e6}}))
"""
_WINDOW = """
import json, time
from benchmarks import bench_window as b
batches = b.make_batches()
b.run_once(b.CONFIGS["{kind}"], batches[:20])
best = None
for _ in range(2):
    c0 = time.process_time()
    emitted = b.run_once(b.CONFIGS["{kind}"], batches)
    c = time.process_time() - c0
    best = c if best is None else min(best, c)
assert emitted > b.KEYS
print(json.dumps({{"warm": b.ITEMS / best, "cpu_us": best / b.ITEMS * 1e6}}))
"""
_JETSTREAM = """
import json, uvloop
from benchmarks import scenario_jetstream as s
rec = uvloop.run(s.one_run("engine", {n}, "{mode}", {rate}))
print(json.dumps({{"warm": rec["{key}"], "cpu_us": rec["cpu_us_per_msg"], "p99_ms": rec.get("p99_ms")}}))
"""
_REDIS = """
import json, time, uuid, uvloop
import redis.asyncio as aredis
from benchmarks import bench_redis as b
b.N = {n}
async def main():
    r = aredis.Redis.from_url(b.REDIS_URL)
    tag = uuid.uuid4().hex[:8]
    src, dst = f"redis-cmp-{{tag}}-a", f"redis-cmp-{{tag}}-a.out"
    try:
        await b.prefill(r, src)
        c0 = time.process_time()
        took = await b.streamdag(src, dst, "script")
        c = time.process_time() - c0
        assert (await r.xpending(src, "g"))["pending"] == 0
        return {{"warm": b.N / took, "cpu_us": c / b.N * 1e6}}
    finally:
        await r.delete(src, dst)
        await r.aclose()
print(json.dumps(uvloop.run(main())))
"""
_HTTP = """
import json, time, uuid, uvloop
from benchmarks import scenario_edges as e
from benchmarks.machine import NATS_URL
async def main():
    import nats
    from nats.js.api import StreamConfig
    p = f"cmp_http_{{uuid.uuid4().hex[:8]}}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=p.upper(), subjects=[p + ".in"]))
    try:
        c0 = time.process_time()
        res = await e._http_engine(p + ".in")
        c = time.process_time() - c0
        stored = (await js.stream_info(p.upper())).state.messages
        assert res["statuses"] == {{"202": res["requests"]}}, res["statuses"]
        assert stored >= res["requests"] * e.HTTP_ITEMS, (stored, res["requests"])
        return {{"warm": res["rps"] * e.HTTP_ITEMS, "cpu_us": c / (res["requests"] * e.HTTP_ITEMS) * 1e6}}
    finally:
        await js.delete_stream(p.upper())
        await nc.close()
print(json.dumps(uvloop.run(main())))
"""
STARTUP_GRAPH = """version: 1
name: startup
nodes:
  one: {type: generate, config: {count: 1}}
  discard: {type: drop, inputs: [one]}
defaults: {dead_letter: discard}
"""

# name -> (kind, snippet or CLI argv tail, unit of the warm figure, higher is better)
SCENARIOS: dict[str, tuple[str, str | list[str], str, bool]] = {
    "1a memory (200k)": ("py", _MEMORY.format(n=200_000, compress=False), "msg/s", True),
    "1b memory +batch+compress (200k)": ("py", _MEMORY.format(n=200_000, compress=True), "msg/s", True),
    "window tumbling (100k items)": ("py", _WINDOW.format(kind="tumbling"), "items/CPU s", True),
    "window session (100k items)": ("py", _WINDOW.format(kind="session"), "items/CPU s", True),
    "2 jetstream->pg backlog (50k)": ("py", _JETSTREAM.format(n=50_000, mode="backlog", rate=0, key="msg_per_s"),
                                      "msg/s", True),
    "2 jetstream->pg live (50k)": ("py", _JETSTREAM.format(n=50_000, mode="live", rate=0, key="msg_per_s"),
                                   "msg/s", True),
    "3 latency @20k/s (2 s)": ("py", _JETSTREAM.format(n=40_000, mode="rate", rate=20_000, key="cpu_us_per_msg"),
                               "client CPU µs/msg", False),
    "4a redis->map->redis (20k)": ("py", _REDIS.format(n=20_000), "msg/s", True),
    "4b http(100/req)->jetstream (3 s)": ("py", _HTTP.format(), "msg/s", True),
    "startup: streamdag validate": ("cli", ["validate", "{graph}"], "", True),
    "startup: streamdag run (generate 1 -> drop)": ("cli", ["run", "-q", "{graph}"], "", True),
}
_GROUPS = {"memory": "1a 1b", "window": "window", "jetstream": "2 ", "latency": "3 ", "redis": "4a",
           "http": "4b", "startup": "startup"}


def _python(tree: Path) -> str:
    venv = tree / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _once(tree: Path, name: str, graph: Path) -> dict[str, float]:
    kind, what, _, _ = SCENARIOS[name]
    py = _python(tree)
    if kind == "py":
        argv = [py, "-c", str(what)]
    else:
        cli = Path(py).parent / "streamdag"
        argv = [str(cli) if cli.exists() else py, *([] if cli.exists() else ["-m", "engine.cli"]),
                *(a.format(graph=graph) for a in what)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # run from .pyc, as an installed package does
    t0 = time.perf_counter()
    done = subprocess.run(["nice", "-n", "10", *argv], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{name} in {tree} exited {done.returncode}:\n{done.stderr[-2000:]}")
    out: dict[str, float] = {"process_s": wall}
    if kind == "py":
        out.update({k: v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items() if v is not None})
    return out


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _speed(value: float, higher: bool) -> float:
    return value if higher else 1 / value


def _row(name: str, old: list[dict[str, float]], new: list[dict[str, float]]) -> list[str]:
    _, _, unit, higher = SCENARIOS[name]
    cells = [name]
    for key, hi in (("warm", higher), ("cpu_us", False), ("process_s", False)):
        if key not in old[0] or (key == "cpu_us" and not higher):  # the latency row's warm figure is its CPU
            continue
        pairs = [_speed(n[key], hi) / _speed(o[key], hi) for o, n in zip(old, new)]
        o_med, n_med = statistics.median(r[key] for r in old), statistics.median(r[key] for r in new)
        fmt = (lambda v: f"{v * 1e3:,.0f} ms") if key == "process_s" else (
            (lambda v: f"{v:,.0f}") if o_med >= 100 else (lambda v: f"{v:,.2f}"))
        label = {"process_s": "whole process, wall", "cpu_us": "warm, CPU µs/msg"}.get(key, f"warm, {unit}")
        cells += [label, fmt(o_med), fmt(n_med), f"{statistics.median(pairs):.2f}",
                  f"{min(pairs):.2f}–{max(pairs):.2f}", str(len(pairs))]
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("-r", "--rounds", type=int, default=5)
    p.add_argument("-s", "--scenarios", default=",".join(_GROUPS),
                   help=f"comma-separated groups of {', '.join(_GROUPS)} (default all)")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    groups = [_GROUPS[g.strip()] for g in args.scenarios.split(",") if g.strip()]
    names = [n for n in SCENARIOS if any(n.startswith(pre) for g in groups for pre in g.split(" ") if pre)]
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    samples: dict[tuple[str, str], list[dict[str, float]]] = {(t, n): [] for t in trees for n in names}
    before = _uptime()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="streamdag-compare-") as tmp:
        graph = Path(tmp) / "startup.yaml"
        graph.write_text(STARTUP_GRAPH)
        for tree in trees.values():  # warm: .pyc files, file cache
            _once(tree, names[-1] if "startup" in names[-1] else names[0], graph)
        for rnd in range(args.rounds):
            order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
            for name in names:
                for t in order:
                    samples[(t, name)].append(_once(trees[t], name, graph))
                    print(f"round {rnd + 1} {t:3} {name}: {samples[(t, name)][-1]}", file=sys.stderr, flush=True)
    after = _uptime()
    lines = [f"old = {trees['old']}, new = {trees['new']}; {args.rounds} rounds, alternating; "
             f"{os.cpu_count()} CPUs; {time.time() - started:.0f} s",
             f"uptime before: {before}", f"uptime after:  {after}", "",
             "| scenario | figure | old (median) | new (median) | ratio new/old | spread | rounds |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name in names:
        cells = _row(name, samples[("old", name)], samples[("new", name)])
        for i in range(1, len(cells), 6):
            lines.append("| " + " | ".join([cells[0] if i == 1 else "", *cells[i:i + 6]]) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
