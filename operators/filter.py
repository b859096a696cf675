"""`filter`: keep the messages for which a CEL expression is true; the others are done (acked)."""

from __future__ import annotations

from itertools import compress

from pydantic import Field

from engine import (
    FILTERED,
    Bodies,
    CelExpr,
    EvalError,
    Msg,
    NodeConfig,
    Operator,
    Output,
    compile_expr,
    finish_all,
)

__all__ = ["Filter", "FilterConfig"]


class FilterConfig(NodeConfig):
    """Keep messages whose expression is `true`; a non-boolean result is an error."""

    expr: CelExpr = Field(description="A boolean CEL expression.", examples=["msg.total > 100.0"])


class Filter(Operator):
    Config = FilterConfig
    preserves_bodies = True  # every port but `errors` sends messages it received, bodies unchanged
    example = """\
version: 1
name: filter_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  big:
    type: filter
    inputs: [orders]
    config: {expr: 'msg.amount > 100.0'}
  show: {type: stdout, inputs: [big]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    inline = True
    takes_bodies = True

    def __init__(self, node_id: str, config: FilterConfig, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(node_id, config, ctx)
        self.expr = compile_expr(config.expr, boolean=True)

    def process_bodies(self, batch: Bodies, out: Output) -> bool:
        keep = self.expr.many_bodies(batch)  # only bools, or None: then `process`, message by message
        if keep is None:
            return False
        kept = batch.keep(keep, FILTERED)  # the dropped settled once per source batch
        out.stats.filtered += len(batch) - len(kept)
        out.send_bodies(kept)
        return True

    def process(self, batch: list[Msg], out: Output) -> None:
        keep = self.expr.many(batch)  # the common case: one comprehension, and only bools
        if keep is not None:
            ok = out.port("out")
            before = len(ok)
            ok.extend(compress(batch, keep))
            dropped = len(batch) - (len(ok) - before)
            if dropped:  # settled in runs: a source batch's shared ack once per run, not per message
                finish_all([m.ack for m, k in zip(batch, keep) if not k], FILTERED)
                out.stats.filtered += dropped
            return
        fn = self.expr.fn
        ok = out.port("out")
        dropped = 0
        for m in batch:
            try:
                keep = fn(m.body, m.meta)
            except EvalError as exc:
                out.error(m, f"filter: {exc}")
                continue
            if keep is True:
                ok.append(m)
            elif keep is False:
                dropped += 1
                m.ack.finish(FILTERED)
            else:
                out.error(m, f"filter: expression gave {type(keep).__name__}, not bool")
        out.stats.filtered += dropped
