"""`map`: replace each message body with the value of a CEL expression."""

from __future__ import annotations

from pydantic import Field

from engine import Bodies, CelExpr, EvalError, Msg, NodeConfig, Operator, Output, compile_expr

__all__ = ["Map", "MapConfig"]


class MapConfig(NodeConfig):
    """Replace the body with a CEL expression over `msg` (body) and `meta`."""

    expr: CelExpr = Field(description="The new body.", examples=['{"id": msg.id, "total": msg.amount * 1.2}'])


class Map(Operator):
    Config = MapConfig
    example = """\
version: 1
name: map_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  price:
    type: map
    inputs: [orders]
    config: {expr: '{"id": msg.id, "total": msg.amount * 1.2, "subject": meta.source}'}
  show: {type: stdout, inputs: [price]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    inline = True
    takes_bodies = True

    def __init__(self, node_id: str, config: MapConfig, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(node_id, config, ctx)
        # bodies straight from a JSON decoder: the fields the expression copies need no checks
        self.expr = compile_expr(config.expr, json_bodies=getattr(ctx, "json_bodies", False))

    def process_bodies(self, batch: Bodies, out: Output) -> bool:
        bodies = self.expr.many_bodies(batch)  # None: some message fails or defers; then `process`
        if bodies is None:
            return False
        out.send_bodies(batch.with_bodies(bodies))
        return True

    def process(self, batch: list[Msg], out: Output) -> None:
        # the common case: the whole batch maps in one comprehension; new bodies first, so a
        # failure changes nothing and the batch goes message by message
        bodies = self.expr.many(batch)
        ok = out.port("out")
        if bodies is not None:
            for m, body in zip(batch, bodies):  # the message is ours (one holder): rewrite it in place
                m.body = body
            ok.extend(batch)
            return
        fn = self.expr.fn
        mapped = []
        for m in batch:
            try:
                mapped.append((m, fn(m.body, m.meta)))
            except EvalError as exc:
                out.error(m, f"map: {exc}")
        for m, body in mapped:  # only now: if `fn` raised something else, the batch is retried as it came
            m.body = body
            ok.append(m)
