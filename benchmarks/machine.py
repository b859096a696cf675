"""What a benchmark figure needs beside it: the machine, the services, the load, and peak RSS.

Peak RSS is per scenario: `reset_peak_rss()` clears the kernel's high-water mark of this process
(`/proc/self/clear_refs`, Linux) and `peak_rss_mb()` reads it back (VmHWM), so scenarios run one
after the other in one process each get their own figure.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
from typing import Any

__all__ = ["NATS_URL", "PG_DSN", "REDIS_URL", "describe", "load_average", "peak_rss_mb", "reset_peak_rss"]

PG_DSN = os.environ.get("STREAMDAG_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STREAMDAG_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (no-op where the kernel does not offer it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last `reset_peak_rss`, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        return 0.0


async def _service_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        versions["postgresql"] = (await conn.fetchval("SHOW server_version")).split()[0]
        await conn.close()
    except Exception as exc:  # noqa: BLE001 - a missing service is reported, not fatal
        versions["postgresql"] = f"unavailable ({type(exc).__name__})"
    try:
        import redis.asyncio as aredis

        r = aredis.Redis.from_url(REDIS_URL)
        versions["redis"] = (await r.info("server"))["redis_version"]
        await r.aclose()
    except Exception as exc:  # noqa: BLE001
        versions["redis"] = f"unavailable ({type(exc).__name__})"
    try:
        import nats

        nc = await nats.connect(NATS_URL, allow_reconnect=False)
        versions["nats-server"] = nc._server_info.get("version", "?")
        await nc.close()
    except Exception as exc:  # noqa: BLE001
        versions["nats-server"] = f"unavailable ({type(exc).__name__})"
    return versions


def _libraries() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nats-py", "asyncpg", "redis", "orjson", "jsonschema_rs", "uvloop", "cel-expr-python", "aiohttp"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def describe() -> dict[str, Any]:
    """nproc, CPU model, memory, Python, client libraries, service versions, load average, git commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _mem_total_gb(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "services": asyncio.run(_service_versions()),
        "libraries": _libraries(),
        "load_average": load_average(),
        "commit": commit,
    }
