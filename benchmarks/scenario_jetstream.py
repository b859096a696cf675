"""Scenarios 2 and 3: the seed pipeline in backlog and live modes, and latency at fixed rates.

2. 200,000 messages (BENCH_JS_N), `backlog` (all published before the consumer starts) and `live`
   (a publisher process publishes as fast as it can while the consumer runs). The rate is messages
   over the time from the first publish (live) or the start (backlog) to the last commit.
3. A publisher process at a fixed rate for BENCH_LATENCY_SECONDS (default 5) seconds; each body
   carries its publish time and the latency is taken right after the commit that wrote it:
   p50/p95/p99/max. Rates 5k, 10k, 20k msg/s, then rising until the engine no longer keeps up
   (consumed < 95% of published rate or p99 > 1 s): the last rate it kept up with is its highest.

`python -m benchmarks.scenario_jetstream ratio [rounds]` (BENCH_JS_N messages, default 50,000;
5 rounds): the engine and baseline-lean alternating in one process, backlog then live, with medians,
per-round ratios, CPU per message of each and `uptime` before and after (see `run_ratio`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from benchmarks.jetstream_pg import BASELINES, Names, expected_kept, run_engine, warm
from benchmarks.machine import PG_DSN, load_average, peak_rss_mb, reset_peak_rss
from benchmarks.publisher import publish

__all__ = ["run_latency", "run_throughput"]

N = int(os.environ.get("BENCH_JS_N", "200000"))
LATENCY_SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "5"))
VARIANTS = {"engine": run_engine, **BASELINES}


def percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {}
    lat.sort()
    k = len(lat)
    pick = lambda q: round(lat[min(k - 1, int(q * k))] * 1000, 2)
    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "max_ms": round(lat[-1] * 1000, 2)}


async def _publisher(subject: str, n: int, rate: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.publisher", subject, str(n), str(rate),
        stdout=asyncio.subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return json.loads(out)


async def one_run(variant: str, n: int, mode: str, rate: float = 0) -> dict[str, Any]:
    """One variant over `n` messages: `backlog`, `live` (rate 0) or paced at `rate` msg/s."""
    import asyncpg
    import nats

    nc = await nats.connect()
    js = nc.jetstream()
    conn = await asyncpg.connect(PG_DSN)
    warm()
    names = Names(variant.replace("-", "_"))
    await names.create(js, conn)
    lat: list[float] = []

    def on_commit(bodies: list[dict[str, Any]]) -> None:
        now = time.time()
        lat.extend([now - b["ts"] for b in bodies])

    try:
        if mode == "backlog":
            await publish(names.subject, n, 0)
            while (await js.stream_info(names.stream)).state.messages < n:
                await asyncio.sleep(0.02)
        gc.collect()
        reset_peak_rss()
        load = load_average()
        ready = asyncio.Event()
        t_start, c0 = time.time(), time.process_time()
        task = asyncio.ensure_future(VARIANTS[variant](names, n, on_commit, ready))
        pub: dict[str, Any] = {}
        if mode != "backlog":
            await asyncio.wait([asyncio.ensure_future(ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
            pub = await _publisher(names.subject, n, rate)
        result = await task
        cpu = time.process_time() - c0
        t0 = pub.get("t0", t_start)
        seconds = result["done"] - t0
        rows = await conn.fetchval(f"SELECT count(*) FROM {names.table}")
        assert rows == expected_kept(n), (variant, rows, expected_kept(n))
        rec = {"variant": variant, "mode": mode, "messages": n, "seconds": round(seconds, 3),
               "msg_per_s": round(n / seconds),
               "cpu_us_per_msg": round(cpu / n * 1e6, 2), "peak_rss_mb": peak_rss_mb(), "load_average": load,
               **percentiles(lat)}
        if pub:
            rec["published_per_s"] = pub["rate"]
        if rate:
            rec["target_rate"] = rate
        return rec
    finally:
        await names.drop(js, conn)
        await conn.close()
        await nc.close()


def run_throughput(mode: str, n: int = N, variants: list[str] | None = None) -> list[dict[str, Any]]:
    import uvloop

    out = []
    for v in variants or list(VARIANTS):
        rec = uvloop.run(one_run(v, n, mode))
        rec["scenario"] = f"2 jetstream->pg {mode}"
        out.append(rec)
    return out


def _kept_up(rec: dict[str, Any]) -> bool:
    rate = rec["target_rate"]
    return (rec["published_per_s"] >= 0.95 * rate and rec["msg_per_s"] >= 0.95 * rec["published_per_s"]
            and rec.get("p99_ms", 1e9) < 1000)


def run_latency(seconds: float = LATENCY_SECONDS, rates: tuple[int, ...] = (5000, 10000, 20000),
                probe: tuple[int, ...] = (25000, 30000, 35000, 40000, 50000, 60000),
                variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Latency at each fixed rate, then rising rates until the engine falls behind."""
    import uvloop

    names = variants or ["engine", "baseline-tuned", "baseline-lean"]
    out: list[dict[str, Any]] = []
    highest = 0
    engine_ok = True
    for rate in (*rates, *probe):
        if rate in probe and not engine_ok:
            break  # the engine fell behind at the previous rate: no higher probe
        for v in names:
            rec = uvloop.run(one_run(v, int(rate * seconds), "rate", rate))
            rec["scenario"] = f"3 latency @{rate // 1000}k/s"
            rec["kept_up"] = _kept_up(rec)
            out.append(rec)
            if v == "engine":
                engine_ok = rec["kept_up"]
                if engine_ok:
                    highest = max(highest, rate)
    for rec in out:
        rec["engine_highest_sustained"] = highest
    return out


def _uptime() -> str:
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {load_average()}"


def run_ratio(n: int, rounds: int, modes: tuple[str, ...] = ("backlog", "live"),
              baseline: str = "baseline-lean") -> dict[str, Any]:
    """The engine beside one baseline, alternating in one process (`rounds` pairs per mode, the order
    flipped every round, so both see the same load drift). Per mode: median msg/s and median CPU per
    message (whole benchmark process: `process_time` from the variant's start to its end, connection
    set-up and graph compile included; the live publisher is another process and not counted) of
    each; the engine's speed and CPU as multiples of the baseline's, from the medians and as the
    median of the per-round ratios (the figure least moved by load that changes between rounds)."""
    import statistics

    import uvloop

    med = statistics.median
    out: dict[str, Any] = {"messages": n, "rounds": rounds, "uptime_before": _uptime()}
    for mode in modes:
        recs: dict[str, list[dict[str, Any]]] = {"engine": [], baseline: []}
        for r in range(rounds):
            for v in ("engine", baseline) if r % 2 == 0 else (baseline, "engine"):
                recs[v].append(uvloop.run(one_run(v, n, mode)))
        summary = {v: {"msg_per_s": med(x["msg_per_s"] for x in rs),
                       "cpu_us_per_msg": med(x["cpu_us_per_msg"] for x in rs),
                       "runs_msg_per_s": [x["msg_per_s"] for x in rs],
                       "runs_cpu_us_per_msg": [x["cpu_us_per_msg"] for x in rs],
                       **({"runs_published_per_s": [x["published_per_s"] for x in rs]}
                          if "published_per_s" in rs[0] else {})} for v, rs in recs.items()}
        pairs = list(zip(recs["engine"], recs[baseline]))
        out[mode] = {**summary,
                     "engine_speed_ratio": round(summary["engine"]["msg_per_s"] / summary[baseline]["msg_per_s"], 3),
                     "engine_cpu_ratio": round(summary["engine"]["cpu_us_per_msg"]
                                               / summary[baseline]["cpu_us_per_msg"], 3),
                     "median_round_speed_ratio": round(med(e["msg_per_s"] / b["msg_per_s"] for e, b in pairs), 3),
                     "median_round_cpu_ratio": round(med(e["cpu_us_per_msg"] / b["cpu_us_per_msg"]
                                                         for e, b in pairs), 3)}
    out["uptime_after"] = _uptime()
    return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "backlog"
    if what == "ratio":  # python -m benchmarks.scenario_jetstream ratio [rounds]   (BENCH_JS_N messages)
        print(json.dumps(run_ratio(int(os.environ.get("BENCH_JS_N", "50000")),
                                   int(sys.argv[2]) if len(sys.argv) > 2 else 5), indent=1))
        sys.exit(0)
    n = int(os.environ.get("BENCH_JS_N", "20000"))
    recs = run_latency(float(os.environ.get("BENCH_LATENCY_SECONDS", "2"))) if what == "latency" else run_throughput(what, n)
    for rec in recs:
        print(json.dumps(rec))
