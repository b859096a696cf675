"""`streamdag validate | run | graph | schema | docs`: parses arguments and calls spec, compile and runtime."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from engine import stopsignals
from engine.compile.diagnostics import GraphInvalid

if TYPE_CHECKING:
    import asyncio

# Each command imports what it needs when it runs: `validate` loads no asyncio, no runtime and no
# observability (prometheus_client, rich); `run` loads the metrics server only with --metrics-port.

__all__ = ["main"]

EXIT_OK, EXIT_INVALID, EXIT_RUN_ERROR, EXIT_INTEGRITY = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (`| head`): what a shell reports for SIGPIPE
EXIT_CODES = """\
exit codes: 0 ok (a run stopped by a signal too, when it balanced); 1 the graph (or a --set) is
invalid; 2 the run failed (a node could not start, a connection, an unhandled error); 3 the
integrity check did not balance."""

SET_RULES = """\
--set PATH=VALUE changes one setting of the file before it is checked (repeat it for more).
PATH is dot-separated keys from the top of the file: nodes.read.config.path, defaults.batch_size.
Keys that are missing are added; a key on the way that holds a value (not a mapping) is an error.
VALUE is read as one YAML value: 5 is a number, true a boolean, null null, [a, b] a list and
{k: v} a mapping; anything else, including text YAML cannot read (a:, msg.x == "a"), is the text as
written. To force text, quote it for YAML (--set 'p="5"') or use --set-string PATH=VALUE."""


_GC_PAUSED: list[bool] = []  # non-empty while `_pause_gc` holds automatic collection off


def _pause_gc() -> None:
    """No automatic garbage collection while a command starts: what a start builds (modules, classes,
    pydantic models) lives until the process exits, and collecting passes over it cost ~3% of the
    instructions of `validate` (benchmarks/bench_startup.py). `_resume_gc` ends the pause."""
    if gc.isenabled() and not _GC_PAUSED:
        gc.disable()
        _GC_PAUSED.append(True)


def _resume_gc() -> None:
    """The start is over (the first graph checked, or the run about to start): what it built moves to
    the permanent generation (`gc.freeze`, which later passes skip) and automatic collection resumes."""
    if _GC_PAUSED:
        _GC_PAUSED.clear()
        gc.freeze()
        gc.enable()


def _add_set(parser: argparse.ArgumentParser) -> None:
    """`--set` and `--set-string` (SET_RULES); both land in `args.set`, --set-string as `PATH:=VALUE`."""
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a setting, e.g. nodes.read.config.path=x.ndjson (rules below)")
    parser.add_argument("--set-string", action="append", dest="set", metavar="PATH=VALUE",
                        type=lambda item: item.replace("=", ":=", 1) if "=" in item else item,
                        help="like --set, the value always text as written")


def _cmd_validate(args: argparse.Namespace) -> int:
    from engine.compile.validate import check_file

    status = EXIT_OK
    report = []
    for path in args.files:
        graph, diags = check_file(path, overrides=args.set)
        _resume_gc()
        if graph is None:
            status = EXIT_INVALID
        if args.format == "json":  # for editors and CI annotations
            report.append({"file": path, "ok": graph is not None,
                           "diagnostics": [{"line": d.line, "col": d.col, "code": d.code, "severity": d.severity,
                                            "message": d.message} for d in diags],
                           "cel": [{"node": n, "expr": e, "compiled": c, "whole_batches": c and _batched(graph, n, e)}
                                   for n, e, c in graph.cel] if graph else []})
            continue
        for d in diags:
            print(d.format() if d.severity == "error" else d.format().replace(f" {d.code} ", f" {d.code} warning: ", 1))
        if graph is None:
            continue
        print(f"{path}: ok ({len(graph.nodes)} nodes" + (f", {len(graph.warnings)} warning(s))" if graph.warnings else ")"))
        if args.explain_cel:
            for node, source, compiled in graph.cel:
                how = ("compiled, whole batches" if _batched(graph, node, source) else "compiled") if compiled else "runtime"
                print(f"  {node}: {how}  {source}" + ("" if compiled else _why(source)))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    return status


def _batched(graph: Any, node_id: str, source: str) -> bool:
    """Whether the engine evaluates `source` a batch at a time (one comprehension, `Expr.many`):
    the expression of a map or filter, a route's conditions and key, when compiled."""
    rn = graph.nodes[node_id]
    config = rn.config
    batched = rn.type in ("map", "filter") and getattr(config, "expr", None) == source
    batched = batched or (rn.type == "route" and (source in (getattr(config, "routes", None) or {}).values()
                                                  or source == getattr(config, "key", None)))
    try:
        from engine import celc

        return batched and celc.try_compile_strict(source) is not None
    except (ImportError, AttributeError):
        return False


def _why(source: str) -> str:
    """Why an expression runs on the CEL runtime rather than compiled, if the compiler says."""
    try:
        from engine import celc

        reason = celc.explain(source)
    except (ImportError, AttributeError):
        return ""
    return f"  ({reason})" if reason else ""


def _cmd_schema(args: argparse.Namespace) -> int:
    from engine.compile.schema import graph_schema

    print(json.dumps(graph_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _cmd_docs(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) the reference page of every node type."""
    from pathlib import Path

    from engine.compile.docs import node_pages

    out = Path(args.output)
    stale = []
    for name, text in node_pages().items():
        path = out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(str(path))
        if not args.check:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date (run: streamdag docs -o {out}): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{len(stale)} page(s) {'would change' if args.check else 'written'} in {out}")
    return 0


def _load(args: argparse.Namespace, workers: int = 1) -> Any:
    """The checked graph of `args.file` (with `--set` overrides), or None after printing its errors."""
    from engine.compile.validate import load_graph

    try:
        return load_graph(args.file, overrides=args.set, workers=workers)
    except GraphInvalid as exc:
        print(exc, file=sys.stderr)
        return None


def _cmd_graph(args: argparse.Namespace) -> int:
    from engine.compile import render

    graph = _load(args)
    if graph is None:
        return EXIT_INVALID
    if args.format == "png":
        return _graph_png(render.to_dot(graph), args.output)
    if args.format == "svg":  # Graphviz when installed, else our own layered layout (engine.compile.layout)
        from engine.observe.png import dot_to_svg

        text = dot_to_svg(render.to_dot(graph)) or render.to_svg(graph)
    else:
        text = {"mermaid": render.to_mermaid, "dot": render.to_dot}[args.format](graph)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _graph_png(dot_text: str, output: str | None) -> int:
    """`graph --format png` through Graphviz; without `dot`, a clear error and exit 2."""
    from engine.observe.png import dot_to_png

    try:
        png = dot_to_png(dot_text)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_ERROR
    if output:
        with open(output, "wb") as fh:
            fh.write(png)
    elif sys.stdout.isatty():
        print("error: PNG is binary: give -o FILE or redirect stdout", file=sys.stderr)
        return EXIT_RUN_ERROR
    else:
        sys.stdout.buffer.write(png)
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


async def _run(args: argparse.Namespace, graph: Any) -> int:
    """Run the graph; on a reload (`--watch`, SIGHUP: engine.reload) run the next one, and so on. The
    exit code is the worst of the runs'."""
    from engine.reload import Reloader

    reloader = None
    if args.worker_index is None:  # a supervisor's worker leaves SIGHUP to the supervisor
        reloader = Reloader(args.file, args.set, _slots(args), graph, watch=args.watch)
        reloader.install()
    signals = [0]  # signals received, over every run
    worst = EXIT_OK
    try:
        while True:
            code, graph = await _run_once(args, graph, reloader, signals)
            worst = max(worst, code)
            if graph is None:
                return worst
    finally:
        if reloader is not None:
            reloader.uninstall()


async def _run_once(args: argparse.Namespace, graph: Any, reloader: Any, signals: list[int]) -> tuple[int, Any]:
    """One run of `graph`: its exit code, and the graph to run next when a reload drained it (else None)."""
    import asyncio

    from engine.runtime.scheduler import Runner

    worker = _worker_info(args)
    try:
        tracer = _start_tracing(args, graph)
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID, None
    runner = Runner(graph, worker=worker, tracer=tracer)
    try:
        observers = await _start_observers(runner, args)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_ERROR, None
    if args.metrics_port == 0 and observers.server is not None:
        args.metrics_port = observers.server.port  # a reloaded graph serves on the same port
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()

    def on_signal() -> None:
        signals[0] += 1
        signalled.set()
        if signals[0] == 1:
            logging.getLogger("streamdag").warning("signal received: draining in-flight messages (again to abort)")
            runner.stop()
        else:
            raise SystemExit(EXIT_RUN_ERROR)

    stopsignals.on_loop(loop, on_signal)  # and the signals that came during start-up: the run stops at once
    if signals[0]:  # a signal came between a reload's drain and these handlers (the last run's got it)
        signalled.set()
        runner.stop()
    # registering may wait on an unreachable registry: a signal meanwhile goes straight to the (stopped) run
    registering = asyncio.ensure_future(_start_presence(runner, args, graph, observers))
    interrupted = asyncio.ensure_future(signalled.wait())
    await asyncio.wait({registering, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if not registering.done():
        registering.cancel()
    presence = (await asyncio.gather(registering, return_exceptions=True))[0]
    if isinstance(presence, BaseException):
        presence = None
    progress = None
    child = args.worker_index is not None  # started by a supervisor: it prints the summary
    if sys.stderr.isatty() and not args.quiet and not child:
        progress = _start_progress(runner)
    reload = asyncio.ensure_future(reloader.during(runner)) if reloader is not None and not signals[0] else None
    _resume_gc()
    try:
        report = await runner.run()
    finally:
        if progress:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
        if presence is not None:
            await presence.close()
        await observers.close()
        if tracer is not None and not await tracer.close(5.0):  # export what is pending, at most 5 s
            logging.getLogger("streamdag").warning("traces: the collector did not take the last spans in 5 s")
        following = None
        if reload is not None:
            reload.cancel()
            following = (await asyncio.gather(reload, return_exceptions=True))[0]
    following = following if not signals[0] and not isinstance(following, BaseException) else None
    if child:
        return _worker_report(args, report), None
    if not args.quiet:
        _summary(report, sys.stderr)
        _latency_summary(report, sys.stderr)
    if report.error is not None:
        print(f"error: {report.error}", file=sys.stderr)
        return EXIT_RUN_ERROR, None
    return (EXIT_OK if report.balanced else EXIT_INTEGRITY), following


async def _start_observers(runner: Any, args: argparse.Namespace) -> Any:
    """The integrity monitor, and the metrics/status server when `--metrics-port` is given."""
    from engine.observe.events import dead_letter_policy
    from engine.observe.session import Observers

    dead_letter_policy.include_payload = bool(getattr(args, "log_payloads", False))
    return await Observers.start(runner, getattr(args, "metrics_port", None),
                                 getattr(args, "metrics_host", "127.0.0.1"),
                                 tap=bool(getattr(args, "tap", False) or runner.graph.spec.tap))


async def _start_presence(runner: Any, args: argparse.Namespace, graph: Any, observers: Any) -> Any:
    """This run's heartbeat in the NATS worker registry (engine.observe.presence), when there is one."""
    if getattr(args, "registry", None) == "off":
        return None
    from engine.observe.presence import Presence, registry_url

    settings = registry_url(graph, getattr(args, "registry", None))
    if settings is None:
        return None
    server = observers.server
    url = f"http://{server.host}:{server.port}" if server is not None else None
    presence = Presence(runner, settings, url)
    if not await presence.start():
        return None
    if server is not None:
        server.presence = presence
    return presence


def _cmd_workers(args: argparse.Namespace) -> int:
    """`streamdag workers G`: the registered workers of the graph, on every host, and their sum."""
    import asyncio

    from engine.observe.presence import format_workers, list_workers, registry_url, sum_totals

    graph = _load(args)
    if graph is None:
        return EXIT_INVALID
    settings = registry_url(graph, args.registry)
    if settings is None:
        print(f"error: {args.file}: no `nats` connection to find the worker registry in; give --registry URL",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        records = asyncio.run(list_workers(settings, graph.spec.name))
    except Exception as exc:  # noqa: BLE001 - a CLI answer, not a traceback
        print(f"error: worker registry at {settings['url']}: {exc}", file=sys.stderr)
        return EXIT_RUN_ERROR
    if args.format == "json":
        print(json.dumps({"graph": graph.spec.name, "workers": records, "sum": sum_totals(records)}, indent=2))
        return EXIT_OK
    print(format_workers(graph.spec.name, records))
    return EXIT_OK


def _start_progress(runner: Any) -> asyncio.Task[None]:
    """A rich progress bar on stderr (a terminal) while the run lasts."""
    import asyncio

    from engine.observe.progress import show_progress

    return asyncio.create_task(show_progress(runner), name="observe:progress")


def _latency_summary(report: Any, out: Any) -> None:
    """End-to-end latency (source timestamp to commit) per sink, when sources stamp messages."""
    from engine.observe.histogram import seconds_text
    from engine.observe.snapshot import histogram_quantile

    for s in report.stats.values():
        h = getattr(s, "end_to_end", None)
        if s.kind == "sink" and h is not None and h.count:
            p50, p99 = (seconds_text(histogram_quantile(q, h), h.bounds[-1]) for q in (0.5, 0.99))
            print(f"latency {s.node_id}: p50 {p50}, p99 {p99} "
                  f"(source timestamp to commit, {h.count:,} messages)", file=out)


def _worker_info(args: argparse.Namespace) -> Any:
    """This process's `WorkerInfo`: slot `--first-slot` + i of `--slots` for worker i of a supervisor
    (`--worker-index`), or slot `--first-slot` of `--slots` for a single process; None for a plain run.
    Worker i serves metrics on `--metrics-port` + i (0 stays 0: any free port)."""
    index = getattr(args, "worker_index", None)
    if index is None and _slots(args) == 1:
        return None
    if index is not None and not 0 <= index < args.workers:
        raise SystemExit(f"error: --worker-index {index} is not below --workers {args.workers}")
    from engine.observe.logs import tag_worker
    from engine.runtime.context import WorkerInfo

    if args.metrics_port and index is not None:
        args.metrics_port += index
    worker = WorkerInfo(args.first_slot + (index or 0), _slots(args))
    tag_worker(worker.id)
    return worker


def _worker_report(args: argparse.Namespace, report: Any) -> int:
    """A worker's end: its totals for the supervisor, which prints the graph's summary; its exit code."""
    from engine.supervise import write_report

    if report.error is not None:
        print(f"error: worker {args.worker_index}: {report.error}", file=sys.stderr)
    return write_report(args.worker_report, args.worker_index, report)


def _cmd_top(args: argparse.Namespace) -> int:
    from engine.observe.top import run_top

    urls = list(args.url) or ["http://127.0.0.1:9464"]
    if args.graph:  # every registered worker of the graph that serves metrics
        import asyncio

        from engine.compile.validate import load_graph
        from engine.observe.presence import list_workers, registry_url

        try:
            graph = load_graph(args.graph)
        except GraphInvalid as exc:
            print(exc, file=sys.stderr)
            return EXIT_INVALID
        settings = registry_url(graph, args.registry)
        records = asyncio.run(list_workers(settings, graph.spec.name)) if settings else []
        urls = [r["metrics"] for r in records if r.get("metrics")]
        if not urls:
            print(f"error: no registered worker of {graph.spec.name} serves metrics (run it with --metrics-port)",
                  file=sys.stderr)
            return EXIT_RUN_ERROR
    return run_top(urls, interval=args.interval, once=args.once)


def _slots(args: argparse.Namespace) -> int:
    """Worker slots of the graph on every host: `--slots`, else this host's `--workers`."""
    return int(args.slots or args.workers)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.first_slot < 0 or args.first_slot + args.workers > _slots(args):
        print(f"error: --first-slot {args.first_slot} + --workers {args.workers} is more than --slots {_slots(args)}",
              file=sys.stderr)
        return EXIT_INVALID
    graph = _load(args, workers=_slots(args))
    if graph is None:
        return EXIT_INVALID
    child = args.worker_index is not None
    for w in graph.warnings if not child else ():
        print(w.format().replace(f" {w.code} ", f" {w.code} warning: ", 1), file=sys.stderr)
    if args.workers > 1 and not child:
        if args.watch:
            print("error: --watch is not supported with --workers > 1: the supervisor does not reload its "
                  "workers; stop the run (SIGTERM drains every worker) and start it again with the new graph",
                  file=sys.stderr)
            return EXIT_INVALID
        from engine.supervise import supervise

        _resume_gc()  # the supervisor lasts as long as its workers
        return supervise(args.argv, args.workers)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        import asyncio

        runner = asyncio.run
    try:
        return int(runner(_run(args, graph)))
    finally:
        stopsignals.rearm()  # the closed loop gave SIGTERM back its default: a late one must not kill us


def _cmd_test(args: argparse.Namespace) -> int:
    """`streamdag test [PATH...]`: run graph test files (docs/testing.md); exit 0 when every case passes."""
    quiet_logs = logging.getLogger("streamdag")
    level = quiet_logs.level
    if not args.log_level:  # the report says what was dead-lettered or late; the nodes' warnings would repeat it
        quiet_logs.setLevel(logging.ERROR)
    try:
        return _run_tests(args)
    finally:
        quiet_logs.setLevel(level)


def _run_tests(args: argparse.Namespace) -> int:
    import time

    from engine.testing import find_test_files
    from engine.testing.report import junit_report, text_report
    from engine.testing.runner import CaseResult, run_file
    from engine.testing.spec import check_test_file

    t0 = time.perf_counter()
    files = find_test_files(args.paths or ["."])
    if not files:
        print(f"error: no test files (*.test.yaml) under {' '.join(args.paths or ['.'])}", file=sys.stderr)
        return EXIT_INVALID
    results: list[CaseResult] = []
    invalid = {}
    for path in files:
        tf, diags = check_test_file(path)
        if tf is None:
            invalid[path] = [d for d in diags if d.severity == "error"]
            continue
        results.extend(run_file(tf, args.k))
    if args.k and not results and not invalid:  # a typo in -k would otherwise pass CI with nothing run
        print(f"error: no case name contains {args.k!r} in {len(files)} test file(s)", file=sys.stderr)
        return EXIT_INVALID
    if args.format == "junit":
        xml = junit_report(results, invalid)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(xml)
        else:
            sys.stdout.write(xml)
    if args.format == "text" or args.output:
        text_report(results, invalid, time.perf_counter() - t0, sys.stdout, verbose=not args.quiet)
    return EXIT_OK if not invalid and all(r.passed for r in results) else EXIT_INVALID


def _cmd_tap(args: argparse.Namespace) -> int:
    """`streamdag tap URL NODE[.PORT]`: print a sample of the messages passing a node of a running graph."""
    from engine.observe.tap import follow

    if args.filter:
        from engine.expr import CelError, compile_expr

        try:
            compile_expr(args.filter)
        except CelError as exc:
            print(f"error: --filter: CEL {exc.line}:{exc.col}: {exc.message}", file=sys.stderr)
            return EXIT_INVALID
    try:
        return follow(args.url, args.target, args.rate, args.filter, args.count, args.format, sys.stdout)
    except KeyboardInterrupt:
        return EXIT_OK


def _add_tap_command(sub: Any) -> None:
    t = sub.add_parser("tap", help="watch a sample of the messages passing a node of a running graph")
    t.add_argument("url", help="the run's metrics address, e.g. http://127.0.0.1:9464 (run --metrics-port --tap)")
    t.add_argument("target", metavar="NODE[.PORT]", help="a node (every output port; a sink: what reaches it) or one port")
    t.add_argument("--rate", type=float, default=10.0, help="most messages per second shown (default 10)")
    t.add_argument("--filter", metavar="CEL", help="only messages for which this is true (msg, meta)")
    t.add_argument("-n", "--count", type=_positive, metavar="N", help="stop after N messages")
    t.add_argument("--format", choices=["text", "ndjson"], default="text")
    t.set_defaults(fn=_cmd_tap)


def _add_test_command(sub: Any) -> None:
    t = sub.add_parser("test", help="run graph test files (*.test.yaml) with in-memory sources and sinks")
    t.add_argument("paths", nargs="*", metavar="PATH", help="test files or directories to search (default: .)")
    t.add_argument("--format", choices=["text", "junit"], default="text", help="junit: JUnit XML for CI")
    t.add_argument("-o", "--output", metavar="FILE", help="write the JUnit XML here (the text report still prints)")
    t.add_argument("-k", metavar="TEXT", help="only the cases whose name contains TEXT")
    t.add_argument("-q", "--quiet", action="store_true", help="no line per passing case")
    t.set_defaults(fn=_cmd_test)


def _cmd_alerts(args: argparse.Namespace) -> int:
    """`streamdag alerts G`: the graph's Prometheus alert rules (engine/observe/alerts.py)."""
    from engine.observe.alerts import Thresholds, alert_rules, render_rules

    graph = _load(args)
    if graph is None:
        return EXIT_INVALID
    try:
        th = Thresholds(dead_letter_rate=args.dead_letter_rate, lag_messages=args.lag,
                        consistency=args.consistency, stall_seconds=args.stall, pending=args.pending)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return _write_text(render_rules(alert_rules(graph, th)), args.output)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """`streamdag dashboard G`: a Grafana dashboard of the graph (engine/observe/dashboard.py)."""
    from engine.observe.dashboard import dashboard

    graph = _load(args)
    if graph is None:
        return EXIT_INVALID
    return _write_text(json.dumps(dashboard(graph, datasource=args.datasource), indent=2) + "\n", args.output)


def _write_text(text: str, output: str | None) -> int:
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _start_tracing(args: argparse.Namespace, graph: Any) -> Any:
    """`run --trace [RATIO]`: OpenTelemetry spans exported by OTLP (engine/observe/tracing.py), or None."""
    if args.trace is None:
        return None
    from engine.observe.tracing import Tracing

    ratio = None
    if args.trace != "env":
        try:
            ratio = float(args.trace)
        except ValueError:
            raise ValueError(f"--trace {args.trace!r}: expected a sampling ratio between 0 and 1") from None
    return Tracing.configure(graph.spec.name, ratio)


def _add_trace_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--trace", nargs="?", const="env", metavar="RATIO",
                   help="export OpenTelemetry traces by OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT...; needs the [otel] "
                   "extra): a span per node per batch, RATIO of the source batches sampled (default: "
                   "OTEL_TRACES_SAMPLER, else all); docs/observe.md")


def _add_monitoring_commands(sub: Any) -> None:
    """`alerts` and `dashboard`: what Prometheus and Grafana need to watch a graph, from its file."""
    a = sub.add_parser("alerts", help="print the Prometheus alert rules of a graph (check: promtool check rules)")
    a.add_argument("file")
    a.add_argument("-o", "--output", metavar="FILE")
    a.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    a.add_argument("--dead-letter-rate", type=float, default=0.0, metavar="PER_S",
                   help="alert when dead letters per second (5 min average) exceed this (default 0: any)")
    a.add_argument("--lag", type=int, default=1000, metavar="N", help="lag growing: only above N messages (default 1000)")
    a.add_argument("--consistency", type=float, default=0.92, metavar="SCORE",
                   help="alert below this check-consistency score (default 0.92)")
    a.add_argument("--stall", type=float, default=60.0, metavar="SECONDS",
                   help="no progress: in flight and nothing settled this long (default 60)")
    a.add_argument("--for", dest="pending", default="1m", metavar="DURATION",
                   help="how long the fast conditions must hold before they fire (default 1m)")
    a.set_defaults(fn=_cmd_alerts)
    d = sub.add_parser("dashboard", help="print a Grafana dashboard (JSON) of a graph")
    d.add_argument("file")
    d.add_argument("-o", "--output", metavar="FILE")
    d.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    d.add_argument("--datasource", default="${DS_PROMETHEUS}", metavar="UID",
                   help="Prometheus data source uid (default: asked on import)")
    d.set_defaults(fn=_cmd_dashboard)


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands contributed through the `streamdag.commands` entry points (e.g. check-consistency).

    Each entry point names a module with `add_arguments(parser)` and `main(args) -> int`; the engine
    finds them by name, never by importing `operators`."""
    from engine import registry

    for ep in registry.commands():  # the same scan as the node types'
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            logging.getLogger("streamdag").warning("command %s failed to load: %s", ep.name, exc)
            continue
        doc = (module.__doc__ or "").strip().splitlines()
        sp = sub.add_parser(ep.name, help=doc[0].split(": ", 1)[-1] if doc else None)
        module.add_arguments(sp)
        sp.set_defaults(fn=module.main)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI. `only`: a built-in command about to run; its subparser is the only one built (the
    others and the plugin subcommands, whose modules would be imported, cost a start for nothing)."""
    cls = argparse.ArgumentParser if only is None else _OneCommandParser
    p = cls(prog="streamdag", description="Declarative dataflow graphs.")
    p.add_argument("--log-level", action="append", default=[], metavar="LEVEL|node.ID=LEVEL",
                   help="DEBUG, INFO (default), WARNING, ERROR; or node.ID=LEVEL; repeatable")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="a limit on untrusted graph content for this command, e.g. cel_cost=5000000 "
                   "(sets STREAMDAG_LIMIT_<NAME>; names and defaults: docs/limits.md); repeatable")
    sub = p.add_subparsers(dest="command", required=True)

    added: set[Any] = set()
    for name, add in _BUILTIN.items():
        if (only is None or only == name) and add not in added:  # one function may add two commands
            added.add(add)
            add(sub)
    if only is None:
        _add_plugin_commands(sub)
    return p


class _Misuse(Exception):
    """A command line the one-command parser rejects: the full parser gives the message."""


class _OneCommandParser(argparse.ArgumentParser):
    """The parser of `build_parser(only=...)`: its usage lines list one command, so its errors are
    left to the full parser (which prints the message a user has always seen)."""

    def error(self, message: str) -> NoReturn:
        raise _Misuse(message)


def _add_validate(sub: Any) -> None:
    v = sub.add_parser("validate", help="check graph files offline; every problem at once")
    v.add_argument("files", nargs="+")
    _add_set(v)
    v.add_argument("--explain-cel", action="store_true", help="say which CEL expressions run compiled, and why not")
    v.add_argument("--format", choices=["text", "json"], default="text", help="json: one report per file")
    v.set_defaults(fn=_cmd_validate)



def _add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="run a graph until its sources are drained or a signal arrives",
                       epilog=SET_RULES + "\n\n" + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file")
    _add_set(r)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    r.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="run N worker processes of the graph, supervised by this one (docs/scale.md)")
    r.add_argument("--slots", type=_positive, metavar="TOTAL",
                   help="worker slots of the graph on every host together (default: --workers); with --first-slot, "
                   "hosts split postgres_source, generate and file_source between them (docs/scale.md)")
    r.add_argument("--first-slot", type=int, default=0, metavar="K",
                   help="this host's workers take slots K .. K+N-1 of --slots (default 0)")
    r.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its children
    r.add_argument("--worker-report", help=argparse.SUPPRESS)
    r.add_argument("--watch", action="store_true",
                   help="reload when the graph file changes (SIGHUP reloads too): a valid new graph takes over "
                   "after the running one drains; an invalid one is logged and ignored (engine/reload.py)")
    r.add_argument("--registry", metavar="URL|off",
                   help="NATS where workers register (default: the graph's first nats connection; off: none)")
    _add_observe_args(r)
    _add_trace_args(r)
    r.set_defaults(fn=_cmd_run)


def _add_graph(sub: Any) -> None:
    g = sub.add_parser("graph", help="draw the graph")
    g.add_argument("file")
    g.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid")
    g.add_argument("-o", "--output")
    _add_set(g)
    g.set_defaults(fn=_cmd_graph)


def _add_top(sub: Any) -> None:
    t = sub.add_parser("top", help="live view of a running graph (served with `run --metrics-port`)")
    t.add_argument("url", nargs="*", help="the run's metrics address (default http://127.0.0.1:9464); several: "
                   "the workers of one graph, shown as their sum")
    t.add_argument("--graph", metavar="FILE", help="every registered worker of this graph (the NATS worker registry)")
    t.add_argument("--registry", metavar="URL", help="NATS of the worker registry (default: the graph's nats connection)")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    t.add_argument("--once", action="store_true", help="print one view (rates over one interval) and exit")
    t.set_defaults(fn=_cmd_top)


def _add_workers(sub: Any) -> None:
    w = sub.add_parser("workers", help="list the running workers of a graph (every host) and their sum")
    w.add_argument("file")
    w.add_argument("--registry", metavar="URL", help="NATS of the worker registry (default: the graph's nats connection)")
    _add_set(w)
    w.add_argument("--format", choices=["text", "json"], default="text")
    w.set_defaults(fn=_cmd_workers)


def _add_schema(sub: Any) -> None:
    s = sub.add_parser("schema", help="print the JSON Schema of the graph format")
    s.set_defaults(fn=_cmd_schema)


def _add_docs(sub: Any) -> None:
    d = sub.add_parser("docs", help="write the reference page of every node type (docs/nodes/<type>.md)")
    d.add_argument("-o", "--output", default="docs/nodes", help="folder of the pages (default docs/nodes)")
    d.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    d.set_defaults(fn=_cmd_docs)


_BUILTIN = {"validate": _add_validate, "run": _add_run, "graph": _add_graph, "top": _add_top, "workers": _add_workers,
            "schema": _add_schema, "docs": _add_docs, "test": _add_test_command, "tap": _add_tap_command,
            "alerts": _add_monitoring_commands, "dashboard": _add_monitoring_commands}
_GLOBAL_VALUED = ("--log-level", "--limit")  # the options before the command that take a value


def _command_word(argv: list[str]) -> str | None:
    """The subcommand in `argv` (the first word that is neither an option nor an option's value)."""
    it = iter(argv)
    for token in it:
        if token == "--":
            return next(it, None)
        if token in ("-h", "--he", "--hel", "--help"):  # the top-level help lists every command
            return None
        if token.startswith("-"):
            if "=" not in token and any(len(token) > 3 and o.startswith(token) for o in _GLOBAL_VALUED):
                next(it, None)
            continue
        return token
    return None


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _port(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 65535:  # the event loop would bind n % 65536 without a word
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, not {n}")
    return n


def _add_observe_args(r: argparse.ArgumentParser) -> None:
    """`run` options for metrics, the status page and logs (engine.observe)."""
    r.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve /metrics (Prometheus), /api/stats and a status page / on this port (0: any free)")
    r.add_argument("--metrics-host", default="127.0.0.1", help="address to bind the metrics port (default 127.0.0.1)")
    r.add_argument("--log-level", dest="run_log_levels", action="append", default=[], metavar="LEVEL|node.ID=LEVEL",
                   help="log level, or one node's level (node.price=DEBUG); repeatable")
    r.add_argument("--log-format", choices=["auto", "json", "text"], default=None,
                   help="auto (default): JSON lines unless stderr is a terminal")
    r.add_argument("--log-payloads", action="store_true", help="include payloads in dead-letter log lines")
    r.add_argument("--tap", action="store_true",
                   help="let `streamdag tap` read payloads through the metrics port (off by default; docs/operate.md)")


def _setup_logging(args: argparse.Namespace) -> None:
    from engine.observe.logs import setup_logging

    specs = [*(args.log_level if isinstance(args.log_level, list) else [args.log_level]),
             *getattr(args, "run_log_levels", [])]
    try:
        setup_logging(specs, getattr(args, "log_format", None) or "auto")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from exc


def _apply_limits(assignments: list[str]) -> None:
    """`--limit name=value` into the environment (the limits are read from it), then check them all."""
    from engine.limits import Limits, set_limit

    try:
        for item in assignments:
            set_limit(item)
        Limits.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from exc


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_word(words)
    if argv is None and command in ("validate", "run"):  # the process's own command line: its start
        _pause_gc()
        from engine.pydantic_plugins import skip_plugin_lookup

        skip_plugin_lookup()  # no pydantic plugin installed: no entry-point scan (engine.pydantic_plugins)
    try:
        args = build_parser(command if command in _BUILTIN else None).parse_args(words)
    except _Misuse:
        args = build_parser().parse_args(words)  # exits with argparse's message and status 2
    args.argv = words  # what `--workers` starts its workers with
    if command == "run":  # from here a signal stops the run, even one that comes before the loop exists
        stopsignals.catch_early()
    try:
        _setup_logging(args)
        _apply_limits(args.limit)
        code = int(args.fn(args))
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_stdout()
    except OSError as exc:
        if exc.filename is None:
            raise
        # an output or input file the command was given (-o, --report-json, ...): a message, not a traceback
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_RUN_ERROR
    finally:
        stopsignals.restore()
        _resume_gc()
    return code


def _closed_stdout() -> int:
    """The reader of stdout went away (`streamdag schema | head -1`): stop quietly, as other CLIs do
    (status 141, 128 + SIGPIPE). stdout goes to /dev/null so the interpreter's last flush cannot fail."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in a test)
        pass
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
