"""Pydantic's plugin lookup, skipped when no installed distribution declares a plugin.

The first model pydantic builds asks its plugin loader for plugins (`pydantic.plugin._loader`): that
imports `importlib.metadata` (which imports email, zipfile, csv, bz2, lzma, socket...) and reads the
entry points of every installed distribution again, about 5 % of the instructions of `streamdag
run` (benchmarks/bench_startup.py), for a lookup that finds nothing on most machines.

`skip_plugin_lookup()`, called by the CLI before it builds a model, asks the registry's scan of the
installed entry points (engine.registry, which the CLI reads anyway) whether any distribution
declares one in pydantic's group. Only when none does, it puts a loader in pydantic's place that
says "no plugins". Anything it cannot judge leaves pydantic's own lookup to run: a finder on
`sys.meta_path` that finds distributions of its own, `PYDANTIC_DISABLE_PLUGINS` set (pydantic's
switch, which it reads itself), pydantic's loader already imported. An installed plugin is loaded
as before (tests/compile/test_startup.py runs one).
"""

from __future__ import annotations

import os
import sys
import types

__all__ = ["LOADER", "skip_plugin_lookup"]

LOADER = "pydantic.plugin._loader"  # where pydantic's `create_schema_validator` imports `get_plugins` from


def _own_distribution_finders() -> bool:
    """A finder on `sys.meta_path`, other than the standard path finder, that finds distributions."""
    from importlib.machinery import PathFinder

    return any(f is not PathFinder and hasattr(f, "find_distributions") for f in sys.meta_path)


def _no_plugins() -> tuple[()]:
    return ()


def skip_plugin_lookup() -> bool:
    """Put a plugin loader that finds none in pydantic's place when no plugin is installed (see the
    module docstring); True if it did."""
    from engine import registry

    if LOADER in sys.modules or os.environ.get("PYDANTIC_DISABLE_PLUGINS") is not None:
        return False
    if _own_distribution_finders() or registry.declared(registry.PYDANTIC):
        return False
    loader = types.ModuleType(LOADER, "No pydantic plugin is installed (engine.pydantic_plugins).")
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[LOADER] = loader
    return True
