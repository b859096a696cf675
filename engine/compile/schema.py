"""The JSON Schema of the graph format, node configs included (from every registered type)."""

from __future__ import annotations

from typing import Any

from engine import registry
from engine.spec.models import GraphSpec, NodeSpec

__all__ = ["graph_schema"]


def graph_schema() -> dict[str, Any]:
    from pydantic import TypeAdapter

    from engine.spec.connections import Connection

    schema = GraphSpec.model_json_schema()
    defs = schema.setdefault("$defs", {})
    # `connections` holds `Connection`s, validated one by one (engine.compile.validate)
    connection = TypeAdapter(Connection).json_schema(ref_template="#/$defs/{model}")
    defs.update(connection.pop("$defs", {}))
    schema["properties"]["connections"]["additionalProperties"] = connection
    variants = []
    for name in registry.names(installed_only=True):
        cls = registry.load(name)
        if cls is None:
            continue
        # every node type's models live under its own prefix, so two plugins' `RateLimitConfig`s can't clash
        cfg = cls.Config.model_json_schema(ref_template=f"#/$defs/{name}.{{model}}")
        for k, v in cfg.pop("$defs", {}).items():
            defs[f"{name}.{k}"] = v
        title = f"{name}.{cls.Config.__name__}"
        defs[title] = cfg
        node = NodeSpec.model_json_schema(ref_template="#/$defs/{model}")
        for k, v in node.pop("$defs", {}).items():
            defs.setdefault(k, v)
        node["properties"]["type"] = {"const": name, "description": (cls.__doc__ or cls.Config.__doc__ or "").strip()}
        node["properties"]["config"] = {"$ref": f"#/$defs/{title}"}
        node["title"] = f"{name} node ({cls.kind})"
        variants.append(node)
    schema["properties"]["nodes"]["additionalProperties"] = {"oneOf": variants}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://streamdag.dev/schemas/graph.schema.json"
    return schema
