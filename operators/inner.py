"""An operator inside another one (`parallel`, `circuit_breaker`): its spec, loading and offline check."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine import CelError, CheckContext, CheckIssue, Operator, cel_fields, compile_expr, registry

__all__ = ["InnerOperator", "check_inner", "load_inner"]


class InnerOperator(BaseModel):
    """The operator a wrapper runs: a node type and its config, as in a graph node."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="An operator type (not a source or sink).", examples=["map"])
    config: dict[str, Any] = Field(default_factory=dict, description="That type's config.")


def load_inner(spec: InnerOperator) -> tuple[type[Operator] | None, Any]:
    """The inner operator's class and validated config; (None, None) when either is invalid."""
    try:
        cls = registry.load(spec.type)
    except registry.RegistryError:
        return None, None
    if cls is None or cls.kind != "operator":
        return None, None
    try:
        return cls, cls.Config.model_validate(spec.config)  # type: ignore[return-value]
    except ValidationError:
        return None, None


def check_inner(
    spec: InnerOperator, ctx: CheckContext, wrapper: str, field: str = "operator"
) -> list[CheckIssue]:
    """The inner node's type and config, checked like a graph node's (E200-E203 at the inner field)."""
    name = spec.type
    try:
        inner = registry.load(name)
    except registry.RegistryError as exc:
        return [CheckIssue((field, "type"), "E200", str(exc))]
    if inner is None:
        hint = registry.closest(name, registry.names())
        more = f" (did you mean '{hint}'?)" if hint else ""
        return [CheckIssue((field, "type"), "E200", f"unknown node type '{name}'{more}")]
    if inner.kind != "operator":
        return [CheckIssue((field, "type"), "E202", f"'{name}' is a {inner.kind}; {wrapper} runs operators")]
    try:
        inner_config = inner.Config.model_validate(spec.config)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = (field, "config", *(p for p in err["loc"] if isinstance(p, (str, int))))
            if err["type"] == "extra_forbidden":
                top = len(loc) == 3
                hint = registry.closest(str(loc[-1]), registry.field_names(inner.Config)) if top else None
                issues.append(
                    CheckIssue(loc, "E201", "unknown field" + (f" (did you mean '{hint}'?)" if hint else ""))
                )
            else:
                issues.append(CheckIssue(loc, "E202", err["msg"]))
        return issues
    issues = []
    for fpath, source in cel_fields(inner_config):
        try:
            compile_expr(source, allow_compiler=False)
        except CelError as exc:
            offset = exc.col - 1 if exc.line == 1 else None
            issues.append(CheckIssue((field, "config", *fpath), "E203", f"CEL: {exc.message}", offset=offset))
    for issue in inner.check(inner_config, ctx):
        issue.loc = (field, "config", *issue.loc)
        issues.append(issue)
    return issues
