""""Did you mean" offers the names a YAML file uses (a field's alias), never the Python name behind it."""

from __future__ import annotations

import textwrap

from engine.compile.validate import check_text


def test_hints_offer_aliases_not_internal_names() -> None:
    _, diags = check_text(textwrap.dedent("""\
        version: 1
        name: dym
        schemas:
          s: {type: object}
        defaults: {dead_letter: out}
        nodes:
          g: {type: generate, config: {count: 1}}
          v: {type: validate, inputs: [g], config: {schema_: s}}
          h:
            type: http_source
            config: {port: 0, rate_limit: {global_: {rate: 5}}}
          out: {type: stdout, inputs: [v, h]}
    """), "g.yaml", {})
    messages = [d.message for d in diags]
    assert "nodes.v.config.schema_: unknown field 'schema_' (did you mean 'schema'?)" in messages, messages
    assert ("nodes.h.config.rate_limit.global_: unknown field 'global_' (did you mean 'global'?)"
            in messages), messages
    assert not any("'schema_'?" in m or "'global_'?" in m for m in messages)
