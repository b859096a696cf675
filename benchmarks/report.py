"""Turn a pytest-benchmark JSON of `bench_suite.py` into `results.json` and `results.md`.

`python -m benchmarks.report RAW.json [OUT_DIR]`: machine description (taken now, plus the load
average each record saw), one row per variant, and the ratio engine/baseline within a scenario.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import describe

__all__ = ["build", "markdown"]


def _records(raw: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for bench in raw.get("benchmarks", []):
        out.extend(bench.get("extra_info", {}).get("records", []))
    return out


def _group_key(rec: dict[str, Any]) -> str:
    return rec["scenario"]


def build(raw: dict[str, Any], machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Records with `ratio` (engine msg/s over this baseline's msg/s in the same scenario)."""
    records = _records(raw)
    engines = {_group_key(r): r for r in records if r["variant"] == "engine"}
    for r in records:
        e = engines.get(_group_key(r))
        if r["variant"] != "engine" and e is not None and r["msg_per_s"]:
            r["ratio"] = round(e["msg_per_s"] / r["msg_per_s"], 2)
    return {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": machine or describe(), "records": records}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Benchmark results", "",
        f"Generated {result['generated']} at commit `{m.get('commit', '')}` by `python -m benchmarks.run`.", "",
        f"* Machine: {m['nproc']} CPU(s), {m['cpu_model']}, {m['memory_gb']} GB RAM; {m['platform']}",
        f"* Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
        "* Services (same machine, loopback): " + ", ".join(f"{k} {v}" for k, v in m["services"].items()),
        f"* Load average when the report was written: {m['load_average']}; each row has the load average "
        "at its start. Clients and servers share the cores (and other work ran on the machine when the "
        "load is above 2), so compare rows within a scenario: the ratio is the figure that survives noise.",
        "", "Ratio = engine msg/s ÷ that baseline's msg/s in the same scenario (above 1: engine faster). "
        "Client CPU µs/msg is the benchmark process's own CPU time per message (servers not included): "
        "less sensitive to other work on the machine than msg/s.", "",
        "| scenario | variant | messages | msg/s | ratio | client CPU µs/msg | p50 ms | p95 ms | p99 ms | max ms | peak RSS MiB | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["records"]:
        scen = r["scenario"]
        if "kept_up" in r and not r["kept_up"]:
            scen += " (fell behind)"
        lines.append("| " + " | ".join([
            scen, r["variant"], _fmt(r.get("messages")), _fmt(r["msg_per_s"]), _fmt(r.get("ratio")), _fmt(r.get("cpu_us_per_msg")),
            _fmt(r.get("p50_ms")), _fmt(r.get("p95_ms")), _fmt(r.get("p99_ms")), _fmt(r.get("max_ms")),
            _fmt(r.get("peak_rss_mb")), " ".join(str(x) for x in r.get("load_average", [])[:1])]) + " |")
    highest = [r.get("engine_highest_sustained") for r in result["records"] if "engine_highest_sustained" in r]
    if highest:
        lines += ["", f"Highest rate the engine sustained in scenario 3: {highest[0]:,} msg/s "
                      "(published rate reached, ≥ 95% consumed, p99 < 1 s)."]
    lines += ["", "Latency rows (scenario 3): publish time carried in each body to right after the PostgreSQL "
              "commit that wrote it. Scenario 2 latencies are queueing times of a backlog, not service times.",
              "Peak RSS is of the whole benchmark process during that row (`VmHWM`, reset before each row); "
              "4a's two rows share one figure.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    raw_path = Path(argv[0])
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = build(json.loads(raw_path.read_text()))
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "results.md").write_text(markdown(result))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
