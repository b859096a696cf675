"""The status page in headless Chromium: the graph is drawn and live rates and queue fill appear."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.observe.conftest import LiveRun

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install -y chromium); status page not rendered",
)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a private profile; virtual time lets the page poll /api/stats twice."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3500",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_status_page_renders_live_stats(live_run: LiveRun, tmp_path: Path) -> None:
    proc = chromium(tmp_path / "profile", "--dump-dom", live_run.url + "/")
    dom = proc.stdout
    assert "<svg" in dom, proc.stderr[-2000:]
    # the script ran, fetched /api/stats and wrote live labels into the drawing and the tables
    assert 'class="live rate"' in dom and "msg/s" in dom
    assert "<td>price</td><td>map</td>" in dom and "<td>gen</td>" in dom
    status = re.search(r'<div id="status"[^>]*>(.*?)</div>', dom)
    assert status and status.group(1).startswith("running") and "updated" in status.group(1), status
    assert "<td>ok</td>" in dom  # integrity column of the source table
    # every edge (gen->price, price->out and three errors edges into dead) shows its target's queue fill
    assert len(re.findall(r'<polyline [^>]*data-fill="[0-9.]+"', dom)) == len(re.findall("<polyline ", dom)) == 5


def test_status_page_screenshot(live_run: LiveRun, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    proc = chromium(
        tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,700", live_run.url + "/"
    )
    assert shot.exists(), proc.stderr[-2000:]
    assert png_size(shot) == (1000, 700)
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
    if os.environ.get("STREAMDAG_ARTIFACTS"):  # keep the picture for a human to look at
        shutil.copy(shot, Path(os.environ["STREAMDAG_ARTIFACTS"]) / "status_page.png")
