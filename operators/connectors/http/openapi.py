"""The OpenAPI 3.0 document served at `/openapi.json` (built from the node's config)."""

from __future__ import annotations

from typing import Any

from operators.connectors.http.config import HttpSourceConfig

__all__ = ["openapi_document"]


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        resp["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                           "schema": {"type": "integer", "minimum": 1}}}
    return resp


def openapi_document(cfg: HttpSourceConfig, item_schema: dict[str, Any] | None) -> dict[str, Any]:
    """What a client (or schemathesis) needs: the ingest operation, its bodies, codes and auth."""
    item = item_schema or {}
    body = {
        "oneOf": [
            item if item else {"type": "object"},
            {"type": "array", "items": item, "minItems": 1, "maxItems": cfg.max_batch},
        ]
    }
    accept_valid = cfg.on_invalid_item == "accept_valid"
    description = (
        "Replies 202 once every item's acknowledgement has resolved downstream." if cfg.ack == "committed"
        else "Replies 202 when the items are admitted, before the graph has committed them."
    )
    if accept_valid:
        description += (
            " Invalid items (failing the item schema or idempotency_expr, NDJSON lines that are not JSON) are"
            " refused one by one: the valid items are accepted as usual and the reply lists the refused ones"
            " under `refused` (index in the request, error code, message). A request with no valid item"
            " gets 422 `no_valid_item`."
        )
    else:
        description += " One invalid item refuses the whole request (422 or 400): none of its items is accepted."
    ingest: dict[str, Any] = {
        "operationId": "ingest",
        "summary": "Ingest one JSON object, a JSON array or NDJSON lines.",
        "description": description,
        "parameters": [
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "schema": {"type": "string", "maxLength": 255},
             "description": "Becomes the message id; a retry with the same key does not duplicate."},
            {"name": "Content-Encoding", "in": "header", "required": False,
             "schema": {"type": "string", "enum": ["identity", "gzip", "zstd"]}},
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": body},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "202": {"description": "Accepted.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
            "400": _error("Invalid JSON (with line, column and position) or a body that does not decode."),
            "401": _error("Missing or invalid credentials."),
            "409": _error("A request with the same Idempotency-Key is in progress."),
            "413": _error("Body, decoded body or batch too large."),
            "415": _error("Unsupported Content-Type or Content-Encoding."),
            "431": _error("Request line and headers too large."),
            "422": _error("No item is valid; `refused` lists why (none was accepted)." if accept_valid else
                          "Items failing the schema (none of the request's items were accepted)."),
            "429": _error("Rate limited.", retry_after=True),
            "502": _error("Some items were not committed downstream."),
            "503": _error("The graph has no room; retry later.", retry_after=True),
            "504": _error("Acknowledgements did not arrive in time; outcome unknown, retry with the same key."),
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "streamdag HTTP ingest", "version": "1"},
        "paths": {
            cfg.path: {"post": ingest},
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "Process up."}}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "Every connection of the graph reachable."},
                "503": {"description": "Some connection unreachable, or stopping."}}}},
        },
        "components": {
            "schemas": {
                "Accepted": {"type": "object", "required": ["accepted"],
                             "properties": {"accepted": {"type": "integer"}, "ack": {"type": "string"},
                                            "refused": {"type": "array",
                                                        "items": {"$ref": "#/components/schemas/Refused"},
                                                        "description": "Items left out (on_invalid_item: "
                                                                       "accept_valid), by index."}}},
                "Refused": {"type": "object", "required": ["index", "error", "message"],
                            "properties": {"index": {"type": "integer", "minimum": 0},
                                           "error": {"type": "string",
                                                     "enum": ["schema", "idempotency_expr", "invalid_json"]},
                                           "message": {"type": "string"}, "path": {"type": "string"},
                                           "line": {"type": "integer"}, "column": {"type": "integer"}}},
                "Error": {"type": "object", "required": ["error", "message"],
                          "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            },
        },
    }
    if cfg.auth is not None:
        if cfg.auth.scheme == "bearer":
            doc["components"]["securitySchemes"] = {"auth": {"type": "http", "scheme": "bearer"}}
        else:
            doc["components"]["securitySchemes"] = {"auth": {"type": "apiKey", "in": "header",
                                                             "name": cfg.auth.header}}
        ingest["security"] = [{"auth": []}]
    return doc
