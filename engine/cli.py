"""`streamdag validate | run | graph | schema`: parses arguments and calls spec, compile and runtime."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from engine.compile.diagnostics import GraphInvalid
from engine.compile.validate import check_file, load_graph

__all__ = ["main"]

EXIT_OK, EXIT_INVALID, EXIT_RUN_ERROR, EXIT_INTEGRITY = 0, 1, 2, 3


def _cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        graph, diags = check_file(path, overrides=args.set)
        for d in diags:
            print(d.format() if d.severity == "error" else d.format().replace(f" {d.code} ", f" {d.code} warning: ", 1))
        if graph is None:
            status = EXIT_INVALID
            continue
        print(f"{path}: ok ({len(graph.nodes)} nodes" + (f", {len(graph.warnings)} warning(s))" if graph.warnings else ")"))
        if args.explain_cel:
            for node, source, compiled in graph.cel:
                print(f"  {node}: {'compiled' if compiled else 'runtime '}  {source}")
    return status


def _cmd_schema(args: argparse.Namespace) -> int:
    from engine.compile.schema import graph_schema

    print(json.dumps(graph_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _cmd_graph(args: argparse.Namespace) -> int:
    from engine.compile import render

    try:
        graph = load_graph(args.file, overrides=args.set)
    except GraphInvalid as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    text = {"mermaid": render.to_mermaid, "dot": render.to_dot, "svg": render.to_svg}[args.format](graph)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _summary(report: Any, out: Any) -> None:
    rows = [s.as_dict() for s in report.stats.values()]
    cols = ["node", "type", "in", "out", "errors", "filtered", "committed", "dead_lettered", "retries"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols), file=out)
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols), file=out)
    t = report.totals()
    rate = t["entered"] / report.seconds if report.seconds > 0 else 0.0
    verdict = "OK" if report.balanced else "MISMATCH"
    print(f"integrity {verdict}: {t['entered']} in = {t['delivered']} delivered + {t['filtered']} filtered + "
          f"{t['dead_lettered']} dead-lettered + {t['nacked']} failed (not acknowledged) + {t['in_flight']} in flight"
          f"  [{report.seconds:.2f}s, {rate:,.0f} msg/s]", file=out)


async def _progress(runner: Any, stream: Any) -> None:
    """One status line on a terminal, refreshed twice a second."""
    totals = {nid: runner.nodes[nid].total() for nid, rn in runner.graph.nodes.items() if rn.kind == "source"}
    known = sum(v for v in totals.values() if v) if totals and all(totals.values()) else None
    t0 = time.perf_counter()
    while True:
        await asyncio.sleep(0.5)
        done = sum(t.entered - t.in_flight for t in runner.trackers.values())
        rate = done / max(1e-9, time.perf_counter() - t0)
        if known:
            frac = done / known
            bar = "#" * int(frac * 30)
            stream.write(f"\r[{bar:<30}] {done:,}/{known:,} ({frac:.0%}) {rate:,.0f} msg/s ")
        else:
            stream.write(f"\r{done:,} messages settled, {rate:,.0f} msg/s ")
        stream.flush()


async def _run(args: argparse.Namespace, graph: Any) -> int:
    from engine.runtime.scheduler import Runner

    runner = Runner(graph)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logging.getLogger("streamdag").warning("signal received: draining in-flight messages (again to abort)")
            runner.stop()
        else:
            raise SystemExit(EXIT_RUN_ERROR)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    progress = None
    if sys.stderr.isatty() and not args.quiet:
        progress = asyncio.create_task(_progress(runner, sys.stderr))
    try:
        report = await runner.run()
    finally:
        if progress:
            progress.cancel()
            sys.stderr.write("\n")
    if not args.quiet:
        _summary(report, sys.stderr)
    if report.error is not None:
        print(f"error: {report.error}", file=sys.stderr)
        return EXIT_RUN_ERROR
    return EXIT_OK if report.balanced else EXIT_INTEGRITY


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        graph = load_graph(args.file, overrides=args.set)
    except GraphInvalid as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    for w in graph.warnings:
        print(w.format().replace(f" {w.code} ", f" {w.code} warning: ", 1), file=sys.stderr)
    try:
        import uvloop

        return uvloop.run(_run(args, graph))
    except ImportError:
        return asyncio.run(_run(args, graph))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamdag", description="Declarative dataflow graphs.")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check graph files offline; every problem at once")
    v.add_argument("files", nargs="+")
    v.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    v.add_argument("--explain-cel", action="store_true", help="say which CEL expressions run compiled")
    v.set_defaults(fn=_cmd_validate)

    r = sub.add_parser("run", help="run a graph until its sources are drained or a signal arrives")
    r.add_argument("file")
    r.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a setting, e.g. nodes.read.config.path=x.ndjson")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    r.set_defaults(fn=_cmd_run)

    g = sub.add_parser("graph", help="draw the graph")
    g.add_argument("file")
    g.add_argument("--format", choices=["mermaid", "dot", "svg"], default="mermaid")
    g.add_argument("-o", "--output")
    g.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    g.set_defaults(fn=_cmd_graph)

    s = sub.add_parser("schema", help="print the JSON Schema of the graph format")
    s.set_defaults(fn=_cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
