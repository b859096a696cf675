"""Graph file -> checked `Graph`, or every problem at once (pure: reads files, opens no connection)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from engine import registry
from engine.api import CheckContext, CheckIssue, Node, RetryPolicy, Upstream, cel_fields
from engine.compile.diagnostics import Diagnostic, GraphInvalid
from engine.compile.scale import check_workers
from engine.limits import Limits
from engine.spec.models import NODE_ID_PATTERN, GraphSpec
from engine.spec.source_map import Loaded, Pos, YamlError, interpolate_env, load_yaml

__all__ = ["Graph", "ResolvedNode", "check_file", "check_text", "load_graph"]

Path = tuple[str | int, ...]


NodeClass = type[Node]


@dataclass(frozen=True)
class ResolvedNode:
    id: str
    type: str
    cls: NodeClass
    config: Any
    inputs: list[tuple[str, str]]  # (upstream node, port)
    ports: tuple[str, ...]  # output ports, `errors` included
    retry: RetryPolicy
    capacity: int
    capacity_bytes: int
    batch_size: int

    @property
    def kind(self) -> str:
        return self.cls.kind


@dataclass(frozen=True)
class Graph:
    path: str
    spec: GraphSpec
    nodes: Mapping[str, ResolvedNode]  # read-only
    schemas: dict[str, Any]
    connections: dict[str, dict[str, Any]]
    warnings: list[Diagnostic] = field(default_factory=list)
    cel_sources: list[tuple[str, str]] = field(default_factory=list)  # (node, expression), every valid one

    @cached_property
    def cel(self) -> list[tuple[str, str, bool]]:
        """(node, expression, compiled): whether `engine.celc` compiles each expression to Python.
        Worked out on first use (`validate --explain-cel`, `--format json`), not while checking: the
        compiler costs 15-25 ms of import, and a check needs only the runtime's parse (issue 20)."""
        try:
            from engine import celc
        except ImportError:  # the compiler is optional: the runtime covers every expression
            return [(node, source, False) for node, source in self.cel_sources]
        return [(node, source, celc.try_compile(source) is not None) for node, source in self.cel_sources]

    @property
    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


class _Checker:
    def __init__(self, path: str, loaded: Loaded):
        self.path = path
        self.loaded = loaded
        self.diags: list[Diagnostic] = []
        self.lines: list[str] = []  # the file's text, for positions inside block scalars
        self.limits = Limits.from_env()
        self.cel_count = 0  # CEL expressions seen so far (E205)
        self.overridden: dict[Path, str] = {}  # paths set by --set, and the option that set them

    def _set_by(self, path: Path) -> str | None:
        for opath, shown in self.overridden.items():
            if path[: len(opath)] == opath or (opath[: len(path)] == path and len(path) > 2):
                return shown
        return None

    def add(self, path: Path, code: str, message: str, *, value: bool = False, severity: str = "error",
            pos: Pos | None = None) -> None:
        p = pos or self.loaded.pos(path, prefer_value=value)
        shown = self._set_by(path)
        if shown:
            message = f"{message} (set by {shown})"
        self.diags.append(Diagnostic(p.line, p.col, code, message, self.path, severity))  # type: ignore[arg-type]

    def pydantic_errors(self, exc: ValidationError | list[Any], prefix: Path, data: Any, model: Any,
                        unknown_code: str = "E100", value_code: str = "E101") -> None:
        """Pydantic's errors (of `model`, validating `data` found at `prefix`) as diagnostics."""
        for err in exc.errors() if isinstance(exc, ValidationError) else exc:
            loc = _data_path(data, err["loc"])
            full = (*prefix, *loc)
            dotted = ".".join(str(x) for x in full)
            if err["type"] == "extra_forbidden":
                known = _fields_at(model, err["loc"][:-1])
                hint = registry.closest(str(loc[-1]), known) if known else None
                msg = f"{dotted}: unknown field '{loc[-1]}'" + (f" (did you mean '{hint}'?)" if hint else "")
                self.add(full, unknown_code, msg)
            elif err["type"] == "missing":
                self.add(full, "E102" if unknown_code == "E100" else value_code, f"{dotted}: required field missing")
            else:
                self.add(full, value_code, f"{dotted}: {err['msg']}", value=True)


def _data_path(data: Any, loc: tuple[Any, ...]) -> Path:
    """Pydantic's `loc` without the union tags and wrapper names that are not in the data."""
    out: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        if (isinstance(cur, dict) and part in cur) or (isinstance(cur, list) and isinstance(part, int) and part < len(cur)):
            out.append(part)
            cur = cur[part]
        elif i == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at `loc` (for "did you mean")."""
    ann: Any = model
    for part in loc:
        ann = _strip(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            f = next((f for n, f in ann.model_fields.items() if (f.alias or n) == part), None)
            if f is None:
                return []
            ann = f.annotation
        elif get_origin(ann) is dict:
            ann = get_args(ann)[1]
        elif get_origin(ann) is list:
            ann = get_args(ann)[0]
        else:
            members = [m for m in _union(ann) if isinstance(m, type) and issubclass(m, BaseModel)]
            tagged = [m for m in members if "type" in m.model_fields and part in get_args(m.model_fields["type"].annotation)]
            if tagged:
                ann = tagged[0]
            else:
                return []
    ann = _strip(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return registry.field_names(ann)
    return []


def _strip(ann: Any) -> Any:
    from typing import Annotated

    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    members = [a for a in get_args(ann) if a is not type(None)] if get_origin(ann) is not None else []
    if members and len(members) == 1 and type(None) in get_args(ann):
        return _strip(members[0])
    return ann


def _union(ann: Any) -> tuple[Any, ...]:
    return get_args(_strip(ann))


def _cel_pos(base: Pos, line: int, col: int, lines: list[str] | None = None) -> Pos:
    """Where (line, col) inside a string value is in the file (block scalars need the file's lines)."""
    if base.style in ("|", ">"):
        return _block_pos(base, line, col, lines or [])
    shift = 1 if base.style in ("'", '"') else 0
    if line == 1:
        return Pos(base.line, base.col + shift + col - 1)
    return Pos(base.line + line - 1, col)


def _block_pos(base: Pos, line: int, col: int, lines: list[str]) -> Pos:
    """`|` keeps lines (add the block's indentation); `>` folds them into one (walk the offset back)."""
    block = lines[base.line:]  # the block's lines start after the indicator's line
    first = next((t for t in block if t.strip()), "")
    indent = len(first) - len(first.lstrip(" "))
    if base.style == "|" or line > 1:
        return Pos(base.line + line, indent + col)
    offset = col - 1
    for i, text in enumerate(block):
        if text.strip() and len(text) - len(text.lstrip(" ")) < indent:
            break
        piece = text[indent:]
        if offset <= len(piece):
            return Pos(base.line + 1 + i, indent + offset + 1)
        offset -= len(piece) + 1  # a folded line break is one space
    return Pos(base.line + 1, indent + col)


def _load_schema(ref: str | dict[str, Any], base_dir: str) -> Any:
    """An inline schema, or a schema file read under the same limits as the graph file."""
    if isinstance(ref, dict):
        return ref
    limits = Limits.from_env()
    try:
        text = _read_text(os.path.join(base_dir, ref), limits.graph_bytes)
        return json.loads(text) if ref.endswith(".json") else load_yaml(text, limits).data
    except YamlError as exc:
        raise ValueError(f"{exc.code} {exc.message} at {exc.line}:{exc.col}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _schema_problem(schema: Any) -> str | None:
    issue = _schema_issue(schema)
    return issue[0] if issue else None


def _schema_issue(schema: Any) -> tuple[str, Path] | None:
    """What is wrong with a JSON Schema, and where inside it (for the diagnostic's position)."""
    import jsonschema

    if not isinstance(schema, (dict, bool)):
        return "a JSON Schema must be an object or a boolean", ()
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" at /{where}" if where else ""), tuple(exc.absolute_path)
    return None


def _override_value(raw: str) -> Any:
    """A `--set` value (the rules: `streamdag run --help`, engine.cli.SET_RULES): a YAML scalar, a flow list or mapping, else the text as written."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
        return raw  # `a:` or `- x` read as block YAML is not what anyone means on a command line
    return value


def _apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict[Path, str], list[str]]:
    """Apply `--set PATH=VALUE` (engine.cli.SET_RULES; `PATH:=VALUE` is --set-string, the text as written).
    Returns the paths set (with what set them) and one message per mistake."""
    done: dict[Path, str] = {}
    errors: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        text = key.endswith(":")
        key = key[:-1] if text else key
        shown = f"--set{'-string' if text else ''} {key}={raw}" if sep else f"--set {item}"
        parts = key.split(".")
        if not sep:
            errors.append(f"{shown}: expected PATH=VALUE (for example nodes.read.config.path=in.ndjson)")
            continue
        if not key or any(not p.strip() for p in parts):
            errors.append(f"{shown}: PATH {key!r} has an empty key (keys are separated by single dots)")
            continue
        cur: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = cur.get(part) if isinstance(cur, dict) else None
            if nxt is None:
                nxt = cur[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                errors.append(f"{shown}: {where} is {type(nxt).__name__} {nxt!r}, not a mapping, so it has no "
                              f"key {parts[i + 1]!r}")
                break
            cur = nxt
        else:
            cur[parts[-1]] = raw if text else _override_value(raw)
            done[tuple(parts)] = shown
    return done, errors


def check_text(text: str, path: str = "<graph>", env: dict[str, str] | None = None,
               overrides: list[str] | None = None, workers: int = 1) -> tuple[Graph | None, list[Diagnostic]]:
    """Check a graph; return it (None when it has errors) and every diagnostic, sorted. With
    `workers` > 1, also what N worker processes cannot run (engine.compile.scale)."""
    base_dir = os.path.dirname(os.path.abspath(path))
    try:
        loaded = load_yaml(text)
    except YamlError as exc:
        what = "YAML syntax error: " if exc.code == "E001" else ""
        return None, [Diagnostic(exc.line, exc.col, exc.code, f"{what}{exc.message}", path)]
    c = _Checker(path, loaded)
    c.lines = text.splitlines()
    for dpath, pos in loaded.duplicates:
        what = "node id" if len(dpath) == 2 and dpath[0] == "nodes" else "key"
        c.add(dpath, "E002", f"duplicate {what} '{dpath[-1]}'", pos=pos)
    data = loaded.data
    if not isinstance(data, dict):
        c.add((), "E101", "a graph file must be a mapping with version, name and nodes")
        return None, sorted(c.diags)
    if overrides:
        c.overridden, errors = _apply_overrides(data, overrides)
        if errors:
            return None, [Diagnostic(0, 0, "E101", e, path) for e in errors]
    missing: list[tuple[Path, str]] = []
    data = interpolate_env(data, env, (), missing)
    for mpath, name in missing:
        c.add(mpath, "E110", f"environment variable {name} is not set and has no default (use ${{{name}:-default}})", value=True)

    try:
        spec: GraphSpec | None = GraphSpec.model_validate(data)
    except ValidationError as exc:
        c.pydantic_errors(exc, (), data, GraphSpec)
        spec = None
    checked = _check_connections(c, data.get("connections"))
    if spec is not None and checked is not None:
        spec.connections = checked
    else:
        spec = None
    if spec is None:
        # still check what can be checked per node, so every error shows in one run
        nodes_raw = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
        _check_nodes(c, nodes_raw, data, {}, {}, None)
        return None, sorted(c.diags)

    connections = {name: conn.model_dump() for name, conn in spec.connections.items()}
    schemas: dict[str, Any] = {}
    for name, ref in spec.schemas.items():
        try:
            schema = _load_schema(ref, base_dir)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            c.add(("schemas", name), "E219", f"schemas.{name}: cannot read schema file {ref!r}: {exc}", value=True)
            continue
        issue = _schema_issue(schema)
        if issue:  # an inline schema: point at the bad keyword; a file: at its name
            at = ("schemas", name, *issue[1]) if isinstance(ref, dict) else ("schemas", name)
            c.add(at, "E218", f"schemas.{name}: invalid JSON Schema: {issue[0]}", value=True)
        else:
            schemas[name] = schema
    graph_nodes, cel = _check_nodes(c, data["nodes"], data, connections, spec.schemas, spec)
    _check_cel_types(c, graph_nodes, schemas)
    check_workers(graph_nodes, workers, c.add)
    if any(d.severity == "error" for d in c.diags):
        return None, sorted(c.diags)
    warnings = [d for d in c.diags if d.severity == "warning"]
    graph = Graph(path, spec, MappingProxyType(graph_nodes), schemas, connections, warnings, cel)
    return graph, sorted(c.diags)


def _check_connections(c: _Checker, raw: Any) -> dict[str, Any] | None:
    """The entries of `connections`, each validated as its type's model (None when one is not:
    its errors are reported as GraphSpec's own would be)."""
    if not isinstance(raw, dict):
        return {}  # GraphSpec reports a value that is not a mapping
    from engine.spec.connections import Connection, validate_connection

    checked: dict[str, Any] = {}
    ok = True
    for name, entry in raw.items():
        model, errors = validate_connection(entry)
        if model is None:
            c.pydantic_errors(errors, ("connections", name), entry, Connection)
            ok = False
        checked[name] = model
    return checked if ok else None


def _check_nodes(c: _Checker, nodes_raw: dict[str, Any], data: dict[str, Any], connections: dict[str, Any],
                 schema_names: dict[str, Any], spec: GraphSpec | None) -> tuple[dict[str, ResolvedNode], list[tuple[str, str]]]:
    import re

    resolved: dict[str, ResolvedNode] = {}
    shells: dict[str, tuple[type[Node], list[tuple[str, str]], tuple[str, ...] | None]] = {}
    cel: list[tuple[str, str]] = []
    configs: dict[str, Any] = {}  # node -> its checked config
    check_ctx = CheckContext(connections=connections, schemas=dict(schema_names))
    defaults = spec.defaults if spec else None
    for node_id, raw in nodes_raw.items():
        npath: Path = ("nodes", node_id)
        if not re.match(NODE_ID_PATTERN, str(node_id)):
            c.add(npath, "E101", f"nodes.{node_id}: a node id is letters, digits, '_' and '-' (no dots)")
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            continue  # reported by the GraphSpec pass
        type_name = raw["type"]
        cls = None
        try:
            cls = registry.load(type_name)
        except registry.RegistryError as exc:
            c.add((*npath, "type"), "E200", str(exc), value=True)
            continue
        if cls is None:
            hint = registry.closest(type_name, registry.names())
            c.add((*npath, "type"), "E200", f"nodes.{node_id}.type: unknown node type '{type_name}'"
                  + (f" (did you mean '{hint}'?)" if hint else ""), value=True)
            continue
        raw_config = raw.get("config") or {}
        inputs = [(ref.partition(".")[0], ref.partition(".")[2] or "out")
                  for ref in raw.get("inputs") or [] if isinstance(ref, str)]
        config = None
        if isinstance(raw_config, dict):
            try:
                config = cls.Config.model_validate(raw_config)
            except ValidationError as exc:
                c.pydantic_errors(exc, (*npath, "config"), raw_config, cls.Config, "E201", "E202")
        if config is None:
            # keep the node for the edge checks; its ports are unknown when they depend on the config
            shells[node_id] = (cls, inputs, None if "output_ports" in vars(cls) else
                               tuple(dict.fromkeys((*cls.output_ports(None), "errors"))))
            continue
        _check_config(c, node_id, npath, cls, type_name, config, connections, schema_names, spec, check_ctx, cel)
        configs[node_id] = config
        ports = tuple(dict.fromkeys((*cls.output_ports(config), "errors")))
        shells[node_id] = (cls, inputs, ports)
        if defaults is None or spec is None:
            continue
        node_spec = spec.nodes[node_id]
        resolved[node_id] = ResolvedNode(
            id=node_id, type=type_name, cls=cls, config=config, inputs=inputs, ports=ports,
            retry=node_spec.retry or defaults.retry,
            capacity=node_spec.capacity or defaults.capacity,
            capacity_bytes=defaults.capacity_bytes,
            batch_size=node_spec.batch_size or defaults.batch_size,
        )
    dag = _check_edges(c, shells, nodes_raw, spec)
    if dag is not None:
        _check_upstream(c, dag, shells, configs, check_ctx)
    return resolved, cel


def _check_cel_types(c: _Checker, nodes: dict[str, ResolvedNode], schemas: dict[str, Any]) -> None:
    """E206: the CEL of a node whose every input is the `out` of a node with a JSON Schema (a
    `validate` node, a source that declares one), type-checked against that schema
    (`engine.celc.types`): int/double arithmetic on an integer field, a field the schema lacks."""
    for node_id, node in nodes.items():
        found: list[tuple[str, Any]] = []
        for up, port in node.inputs:
            upstream = nodes.get(up)
            ref = getattr(upstream.config, "schema_", None) if upstream is not None and port == "out" else None
            schema = schemas.get(ref) if isinstance(ref, str) else ref if isinstance(ref, dict) else None
            if schema is None:
                found = []
                break
            found.append((up, schema))
        for fpath, source in cel_fields(node.config) if found else ():
            cpath = ("nodes", node_id, "config", *fpath)
            dotted = ".".join(str(p) for p in cpath)
            from engine.celc.types import schema_issues  # the CEL parser: only for a graph that needs it

            for up, schema in found:
                for message in schema_issues(source, schema):
                    c.add(cpath, "E206", f"{dotted}: CEL against the schema of '{up}': {message}", value=True)


def _check_upstream(c: _Checker, successors: dict[str, list[str]], shells: dict[str, Any], configs: dict[str, Any],
                    check_ctx: CheckContext) -> None:
    """Each node type's `check_upstream`, told which sources reach the node (any port, `errors` too)."""
    reaches: dict[str, set[str]] = {}  # source -> every node downstream of it
    for source in (n for n in configs if shells[n][0].kind == "source"):
        seen, todo = set(), [source]
        while todo:
            for nxt in successors[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reaches[source] = seen
    for node_id, config in configs.items():
        sources = sorted(a for a, seen in reaches.items() if node_id in seen)
        upstream = tuple(Upstream(a, shells[a][0], configs[a]) for a in sources)
        if upstream:
            ctx = CheckContext(check_ctx.connections, check_ctx.schemas, upstream)
            _add_issues(c, ("nodes", node_id), shells[node_id][0].check_upstream(config, ctx))


def _check_config(c: _Checker, node_id: str, npath: Path, cls: type[Node], type_name: str, config: Any,
                  connections: dict[str, Any], schema_names: dict[str, Any], spec: GraphSpec | None,
                  check_ctx: CheckContext, cel: list[tuple[str, str]]) -> None:
    """CEL, connection and schema references, and the node type's own checks."""
    for fpath, source in cel_fields(config):
        # the CEL runtime loads only for an expression the quick check (celcheck) is unsure of
        from engine.compile.celcheck import surely_valid
        from engine.expr import CelError, check_expr

        cpath = (*npath, "config", *fpath)
        dotted = ".".join(str(p) for p in cpath)
        c.cel_count += 1
        if c.cel_count > c.limits.cel_expressions:  # compiling each costs milliseconds: bound the total
            if c.cel_count == c.limits.cel_expressions + 1:
                c.add(cpath, "E205", f"{dotted}: more than {c.limits.cel_expressions:,} CEL expressions in one graph; "
                      "this one and the rest are not checked (limit cel_expressions)", value=True)
            continue
        try:
            check_expr(source, typed=surely_valid(source))  # parse and type-check: what E203 needs
            cel.append((node_id, source))
        except CelError as exc:
            pos = _cel_pos(c.loaded.pos(cpath, prefer_value=True), exc.line, exc.col, c.lines)
            c.add(cpath, "E203", f"{dotted}: CEL: {exc.message}", pos=pos)
            continue
        _check_cel_cost(c, cpath, dotted, source)
    conn = getattr(config, "connection", None)
    if isinstance(conn, str):
        if conn not in connections and spec is not None:
            hint = registry.closest(conn, list(connections))
            c.add((*npath, "config", "connection"), "E215", f"nodes.{node_id}.config.connection: unknown connection '{conn}'"
                  + (f" (did you mean '{hint}'?)" if hint else ""), value=True)
        elif conn in connections and cls.connection_types and connections[conn]["type"] not in cls.connection_types:
            c.add((*npath, "config", "connection"), "E216",
                  f"nodes.{node_id}.config.connection: '{conn}' is a {connections[conn]['type']} connection; "
                  f"{type_name} needs {' or '.join(cls.connection_types)}", value=True)
    schema_ref = getattr(config, "schema_", None) if hasattr(config, "schema_") else getattr(config, "schema", None)
    if isinstance(schema_ref, str) and spec is not None and schema_ref not in schema_names:
        hint = registry.closest(schema_ref, list(schema_names))
        c.add((*npath, "config", "schema"), "E217", f"nodes.{node_id}.config.schema: unknown schema '{schema_ref}'"
              + (f" (did you mean '{hint}'?)" if hint else ""), value=True)
    elif isinstance(schema_ref, dict):
        problem = _schema_issue(schema_ref)
        if problem:
            c.add((*npath, "config", "schema", *problem[1]), "E218",
                  f"nodes.{node_id}.config.schema: invalid JSON Schema: {problem[0]}", value=True)
    _add_issues(c, npath, cls.check(config, check_ctx))


def _add_issues(c: _Checker, npath: Path, issues: Iterable[CheckIssue]) -> None:
    """A node type's own findings, placed at their paths inside the node's config."""
    for issue in issues:
        ipath = (*npath, "config", *issue.loc)
        where: Pos | None = None
        if issue.offset is not None:
            where = _cel_pos(c.loaded.pos(ipath, prefer_value=True), 1, issue.offset + 1, c.lines)
        # an unknown field (E201) points at its key, like the graph-level E201; other issues at the value
        c.add(ipath, issue.code, f"{'.'.join(str(p) for p in ipath)}: {issue.message}", value=issue.code != "E201",
              severity=issue.severity, pos=where)


def _check_cel_cost(c: _Checker, cpath: Path, dotted: str, source: str) -> None:
    """E204: the expression's estimated cost (engine/celc/cost.py) is above the limit `cel_cost`."""
    from engine.celc.cost import estimate

    limits = c.limits
    cost = estimate(source, limits.cel_assumed_size)
    if cost > limits.cel_cost:
        pos = _cel_pos(c.loaded.pos(cpath, prefer_value=True), 1, 1, c.lines)
        shown = f"{cost:,}" if cost < 10**12 else f"{cost:.2e}"
        c.add(cpath, "E204", f"{dotted}: CEL cost estimate {shown} steps is above the limit of {limits.cel_cost:,} "
              f"(a comprehension costs its range's size times its body; lists, maps and strings read from the "
              f"message are taken to hold {limits.cel_assumed_size}; limit cel_cost)", pos=pos)


def _raw_dead_letter(data: Any) -> str | None:
    """`defaults.dead_letter` read from the raw data when the graph model failed (no spurious W300)."""
    defaults = data.get("defaults") if isinstance(data, dict) else None
    dl = defaults.get("dead_letter") if isinstance(defaults, dict) else None
    return dl if isinstance(dl, str) else None


def _check_edges(c: _Checker, shells: dict[str, tuple[type[Node], list[tuple[str, str]], tuple[str, ...] | None]],
                 nodes_raw: dict[str, Any], spec: GraphSpec | None) -> dict[str, list[str]] | None:
    """Inputs, cycles, unconsumed ports; each node's successors (implicit dead-letter edges
    included), or None when there is a cycle."""
    successors: dict[str, list[str]] = {node_id: [] for node_id in shells}
    consumed: set[tuple[str, str]] = set()
    for node_id, raw in nodes_raw.items():  # a consumer with errors of its own still consumes (no W300/W301)
        if node_id not in shells and isinstance(raw, dict) and isinstance(raw.get("inputs"), list):
            consumed.update((r.partition(".")[0], r.partition(".")[2] or "out") for r in raw["inputs"] if isinstance(r, str))
    dead_letter = spec.defaults.dead_letter if spec is not None else _raw_dead_letter(c.loaded.data)
    for node_id, (cls, inputs, _ports) in shells.items():
        refs = nodes_raw[node_id].get("inputs") or []
        if cls.kind == "source" and refs:
            c.add(("nodes", node_id, "inputs"), "E212", f"nodes.{node_id}.inputs: a source takes no inputs")
        fed_by_defaults = node_id == dead_letter and cls.kind == "sink"  # every unwired errors port feeds it
        if cls.kind != "source" and not refs and not fed_by_defaults:
            c.add(("nodes", node_id), "E213", f"nodes.{node_id}: {'an' if cls.kind == 'operator' else 'a'} {cls.kind} needs at least one input")
        seen: dict[tuple[str, str], int] = {}
        for i, (up, port) in enumerate(inputs):
            ipath = ("nodes", node_id, "inputs", i)
            if (up, port) in seen:  # two edges from one port: every message would reach the node twice
                c.add(ipath, "E222", f"nodes.{node_id}.inputs[{i}]: '{up}.{port}' is already an input "
                      f"(inputs[{seen[up, port]}]): each message would reach {node_id} twice", value=True)
                continue
            seen[up, port] = i
            if up not in nodes_raw:
                hint = registry.closest(up, list(nodes_raw))
                c.add(ipath, "E210", f"nodes.{node_id}.inputs[{i}]: unknown node '{up}'"
                      + (f" (did you mean '{hint}'?)" if hint else ""), value=True)
                continue
            if up not in shells:
                continue  # that node has its own errors
            up_ports = shells[up][2]
            if up_ports is not None and port not in up_ports:
                hint = registry.closest(port, up_ports)
                c.add(ipath, "E211", f"nodes.{node_id}.inputs[{i}]: node '{up}' has no port '{port}' "
                      f"(ports: {', '.join(up_ports)})" + (f"; did you mean '{hint}'?" if hint else ""), value=True)
                continue
            consumed.add((up, port))
            if node_id not in successors[up]:
                successors[up].append(node_id)
    cycle = _find_cycle(successors)
    acyclic = successors if cycle is None else None
    if cycle is not None:
        c.add(("nodes", cycle[1], "inputs"), "E214", f"cycle: {' -> '.join(cycle)}")
    for node_id, (_cls, _inputs, ports) in shells.items():
        for port in ports or ():
            if port != "errors" and (node_id, port) not in consumed:
                c.add(("nodes", node_id), "W301",
                      f"nodes.{node_id}: output port '{port}' is not consumed "
                      "(messages sent there are acknowledged and counted as filtered)", severity="warning")
    dl = spec.defaults.dead_letter if spec is not None else _raw_dead_letter(c.loaded.data)
    if dl is not None:
        if dl not in shells or shells[dl][0].kind != "sink":
            c.add(("defaults", "dead_letter"), "E221", f"defaults.dead_letter: '{dl}' is not a sink of this graph", value=True)
        elif acyclic is not None:  # the runtime wires every errors port nobody consumes to it
            for n in shells:
                if n != dl and (n, "errors") not in consumed and dl not in acyclic[n]:
                    acyclic[n].append(dl)
    else:
        for node_id in shells:
            if (node_id, "errors") not in consumed:
                c.add(("nodes", node_id), "W300",
                      f"nodes.{node_id}: errors port is not consumed and no defaults.dead_letter is set "
                      "(a failing message would stop the graph)", severity="warning")
    return acyclic


def _find_cycle(successors: dict[str, list[str]]) -> list[str] | None:
    """The first cycle a depth-first search meets, as `[a, b, ..., a]` (nodes and successors in
    file order: the cycle `networkx.find_cycle` reports, without importing networkx at start-up)."""
    done: set[str] = set()
    for start, following in successors.items():
        if start in done:
            continue
        path, on_path, pending = [start], {start}, [iter(following)]
        while pending:
            for nxt in pending[-1]:
                if nxt in on_path:
                    return [*path[path.index(nxt):], nxt]
                if nxt not in done:
                    path.append(nxt)
                    on_path.add(nxt)
                    pending.append(iter(successors[nxt]))
                    break
            else:  # every successor explored: this node is on no cycle through the path
                done.add(path[-1])
                on_path.discard(path.pop())
                pending.pop()
    return None


def check_file(path: str, env: dict[str, str] | None = None, overrides: list[str] | None = None,
               workers: int = 1) -> tuple[Graph | None, list[Diagnostic]]:
    limits = Limits.from_env()
    try:
        text = _read_text(path, limits.graph_bytes)
    except OSError as exc:
        return None, [Diagnostic(1, 1, "E001", f"cannot read graph file: {exc.strerror}", path)]
    except YamlError as exc:
        return None, [Diagnostic(exc.line, exc.col, exc.code, exc.message, path)]
    return check_text(text, path, env, overrides, workers)


def _read_text(path: str, max_bytes: int) -> str:
    """The file's text, reading no more than `max_bytes` + 1 bytes: a bigger file is E003."""
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
        if len(raw) > max_bytes:
            size = os.fstat(fh.fileno()).st_size
            raise YamlError(f"file is {size} bytes, above the limit of {max_bytes} (limit graph_bytes)", 1, 1, "E003")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"YAML syntax error: not UTF-8 ({exc.reason} at byte {exc.start})", 1, 1) from None


def load_graph(path: str, env: dict[str, str] | None = None, overrides: list[str] | None = None,
               workers: int = 1) -> Graph:
    """A checked graph, or `GraphInvalid` with every error."""
    graph, diags = check_file(path, env, overrides, workers)
    if graph is None:
        raise GraphInvalid([d for d in diags if d.severity == "error"])
    return graph
