"""Log set-up for the CLI: JSON lines when stderr is not a terminal, text when it is; a global
level and per-node levels (`--log-level node.price=DEBUG`).

A record concerns a node when it comes from `streamdag.node.<id>` or carries `extra={"node": id}`
(the runtime's event lines do); such a record is judged by that node's level if one is set."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

__all__ = ["JsonFormatter", "LevelFilter", "WorkerTag", "parse_levels", "setup_logging", "tag_worker"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the record's `extra` fields, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        import orjson  # on the first line logged: `validate` (which logs nothing) never loads it

        return orjson.dumps(out, default=str).decode()


class LevelFilter(logging.Filter):
    """Applies the global level, or a node's own level to records about that node."""

    def __init__(self, default: int, per_node: dict[str, int], loggers: tuple[str, ...] = ()):
        super().__init__()
        self.default = default
        self.per_node = per_node
        self.loggers = loggers  # loggers with a level of their own: their level has decided already

    def filter(self, record: logging.LogRecord) -> bool:
        if self.per_node:
            node = getattr(record, "node", None)
            if node is None and record.name.startswith("streamdag.node."):
                node = record.name[len("streamdag.node.") :]
            if node is not None and node in self.per_node:
                return record.levelno >= self.per_node[node]
        name = record.name
        if not name.startswith("streamdag") or any(
            name == n or name.startswith(n + ".") for n in self.loggers
        ):
            return True
        return record.levelno >= self.default


def _level(text: str) -> int:
    value = logging.getLevelName(text.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {text!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def parse_levels(specs: list[str]) -> tuple[int, dict[str, int], dict[str, int]]:
    """`["INFO", "node.price=DEBUG", "streamdag.monitor=ERROR"]` -> (default, per node, per logger).

    Several specs may share one argument, separated by commas."""
    default = logging.INFO
    per_node: dict[str, int] = {}
    per_logger: dict[str, int] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            if "=" not in item:
                default = _level(item)
                continue
            name, level = item.split("=", 1)
            if name.startswith("node."):
                per_node[name[len("node.") :]] = _level(level)
            else:
                per_logger[name] = _level(level)
    return default, per_node, per_logger


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record, not the one at setup: while
    the progress bar is on screen, rich puts a proxy there that prints lines above the bar (a
    handler holding the real stderr would write its first line onto the bar's line)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def setup_logging(specs: list[str], fmt: str = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """Install one handler on the root logger; returns it (tests remove it again)."""
    default, per_node, per_logger = parse_levels(specs)
    if fmt == "auto":
        fmt = "text" if getattr(stream or sys.stderr, "isatty", lambda: False)() else "json"
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(LevelFilter(default, per_node, tuple(per_logger)))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_streamdag", False):
            root.removeHandler(h)
    handler._streamdag = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    lowest = min([default, *per_node.values()])
    root.setLevel(default)
    logging.getLogger("streamdag").setLevel(lowest)
    for name, level in per_logger.items():
        logging.getLogger(name).setLevel(level)
    return handler


class WorkerTag(logging.Filter):
    """Puts `worker` (its id, `<host>-<pid>`) on every record: the JSON lines of N workers stay apart."""

    def __init__(self, worker: str):
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def tag_worker(worker: str) -> None:
    """Tag every record that reaches the root logger's handlers with this worker's id."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerTag(worker))
        if not isinstance(handler.formatter, JsonFormatter):  # text: the id after the level
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(worker)s] %(name)s: %(message)s"))
