"""CEL compiled to Python: parse once, generate the source of one function, compile it once.

`try_compile(source)` returns a callable `(body, meta) -> value` with the semantics and results of
cel-expr-python (`plain_value()`), or None when the expression uses something the compiler does not
translate; the engine then evaluates it on the runtime (`engine.expr`). `explain(source)` says why an
expression is not compiled. The few cases the generated code cannot reproduce exactly at run time
(iterating a map in `map`/`filter`, whose order is the runtime's hash order; map literals mixing
`1`, `1u` and `true` keys) are handed to the runtime for that message only, so results never differ.

Trust: the expression is untrusted. The generator only emits its own templates (CEL names become
generated temporaries, field names and literals become Python literals via `repr`), the output is
checked against a syntax whitelist (`sandbox.check_source`) and runs without builtins.

The compiler lives in `engine.celc.compiler` and is imported on first use of one of its names:
`engine.celc.cost` (the cost estimate `validate` makes of every expression) needs only the parser,
and importing the code generator with it cost `streamdag validate` 5-10 ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.celc.compiler import (
        StrictBatch,
        compile_program,
        compile_strict_batch,
        explain,
        python_source,
        try_compile,
        try_compile_batch,
        try_compile_strict,
    )

__all__ = ["StrictBatch", "compile_program", "compile_strict_batch", "explain", "python_source", "try_compile",
           "try_compile_batch", "try_compile_strict"]


def __getattr__(name: str) -> Any:
    if name not in __all__:  # a submodule not imported yet, or a typo: the usual AttributeError
        raise AttributeError(f"module 'engine.celc' has no attribute {name!r}")
    from engine.celc import compiler

    return getattr(compiler, name)
