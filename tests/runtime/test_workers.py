"""`streamdag run --workers N` without services: the work split, the refusals, SIGTERM draining
every worker, a killed worker restarted, one integrity line for the graph."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from engine.supervise import Slot, exit_code
from tests.workers_harness import Supervised

GEN = """\
version: 1
name: workers_gen
defaults: {{dead_letter: dead}}
nodes:
  gen: {{type: generate, config: {{{gen}, batch: 50}}}}
  keep: {{type: filter, inputs: [gen], config: {{expr: "msg.i % 2 == 0"}}}}
  out: {{type: file_sink, inputs: [keep], config: {{path: out.ndjson, mode: append}}}}
  dead: {{type: stdout, inputs: [gen.errors, keep.errors, out.errors]}}
"""


def _graph(tmp_path: Path, gen: str) -> Path:
    path = tmp_path / "gen.yaml"
    path.write_text(GEN.format(gen=gen))
    return path


def test_a_finite_source_is_split_and_every_message_is_read_once(tmp_path: Path) -> None:
    path = _graph(tmp_path, "count: 3000")
    out = tmp_path / "out.ndjson"  # file_sink, mode append: each worker appends whole batches
    run = Supervised(path, 3)
    code, workers, integrity = run.finish()
    ids = [json.loads(line)["i"] for line in out.read_text().splitlines()]
    assert code == 0, run.text
    assert sorted(ids) == list(range(0, 3000, 2))  # every kept message once, whichever worker made it
    assert {i: w["in"] for i, w in workers.items()} == {0: 1000, 1: 1000, 2: 1000}
    assert sum(w["delivered"] for w in workers.values()) == 1500
    assert integrity.startswith("integrity OK: 3000 in = 1500 delivered + 1500 filtered") and "3 workers" in integrity
    assert len({pid for _, pid in run.started()}) == 3


def test_sigterm_drains_every_worker_and_the_integrity_line_covers_them(tmp_path: Path) -> None:
    path = _graph(tmp_path, "rate: 4000")  # unbounded: only the signal ends it
    out = tmp_path / "out.ndjson"
    run = Supervised(path, 2)
    run.wait_until(lambda: out.exists() and out.stat().st_size > 20_000, 30, "output from the workers")
    run.signal()
    code, workers, integrity = run.finish()
    ids = [json.loads(line)["i"] for line in out.read_text().splitlines()]
    assert code == 0, run.text
    assert len(ids) == len(set(ids)) and all(i % 2 == 0 for i in ids)
    assert set(workers) == {0, 1} and all(w["in"] > 0 and w["exit"] == 0 and w["runs"] == 1 for w in workers.values())
    total_in = sum(w["in"] for w in workers.values())
    assert integrity.startswith(f"integrity OK: {total_in} in = {len(ids)} delivered + {total_in - len(ids)} filtered")
    assert " + 0 in flight" in integrity


def test_a_killed_worker_is_restarted_and_the_run_still_ends_cleanly(tmp_path: Path) -> None:
    path = _graph(tmp_path, "rate: 2000")
    run = Supervised(path, 2)
    run.wait_until(lambda: len(run.started()) == 2, 30, "two workers")
    time.sleep(0.5)
    killed = run.kill_worker(1)
    run.wait_until(lambda: len(run.started()) == 3, 30, "worker 1 restarted")
    index, pid = run.started()[-1]
    assert (index, pid != killed) == (1, True)
    restart = [e for e in run.events if e.get("event") == "worker_restart"]
    assert restart and restart[0]["code"] == -9 and "killed by signal 9" in restart[0]["msg"]
    time.sleep(0.5)
    run.signal()
    code, workers, integrity = run.finish()
    assert code == 0, run.text
    assert workers[1]["runs"] == 2 and workers[1]["killed"] == 1 and workers[0]["runs"] == 1
    assert integrity.startswith("integrity OK") and "1 run(s) killed without a report" in integrity


def test_stateful_operators_and_unshareable_sources_are_refused_with_a_position(tmp_path: Path) -> None:
    path = tmp_path / "win.yaml"
    path.write_text("""\
version: 1
name: win
defaults: {dead_letter: dead}
nodes:
  gen: {type: generate, config: {count: 10}}
  counts:
    type: window
    inputs: [gen]
    config: {kind: tumbling, size: 1m, key: 'string(msg.i)'}
  dead: {type: stdout, inputs: [counts, counts.late]}
""")
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path), "--workers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{path}:7:11: E260 nodes.counts: window cannot run under --workers 2: it keeps its open windows" \
        in proc.stderr
    single = subprocess.run([sys.executable, "-m", "engine.cli", "validate", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert single.returncode == 0, single.stdout  # one worker: the same graph is fine


def test_the_exit_code_is_the_worst_of_the_workers_last_runs() -> None:
    def slots(*codes: int | None, gave_up: int = -1) -> list[Slot]:
        return [Slot(i, last_code=c, gave_up=i == gave_up) for i, c in enumerate(codes)]

    assert exit_code(slots(0, 0, 0)) == 0
    assert exit_code(slots(0, 3, 0)) == 3
    assert exit_code(slots(0, 0, gave_up=1)) == 2  # a crash loop, even if its last code was 0
    assert exit_code(slots(2, 1)) == 1  # an invalid graph says so first
    assert exit_code(slots(0, -9)) == 2  # last run killed and not restarted (a stop came first)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    run = Supervised(_graph(tmp_path, "rate: 2000"), 2)
    out = tmp_path / "out.ndjson"
    run.wait_until(lambda: len(run.started()) == 2 and out.exists() and out.stat().st_size > 0, 30, "workers at work")
    pids = [pid for _, pid in run.started()]
    run.proc.kill()  # kill -9: no forwarding; the kernel sends each worker SIGTERM (PR_SET_PDEATHSIG)
    run.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "orphaned workers kept running"


def test_http_workers_share_one_port(tmp_path: Path) -> None:
    """SO_REUSEPORT: both workers listen on the same port and the kernel spreads the connections."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "http.yaml"
    path.write_text(f"""\
version: 1
name: workers_http
defaults: {{dead_letter: out}}
nodes:
  ingest: {{type: http_source, config: {{host: 127.0.0.1, port: {port}}}}}
  out: {{type: file_sink, inputs: [ingest], config: {{path: out.ndjson, mode: append}}}}
""")
    run = Supervised(path, 2)
    try:
        run.wait_until(lambda: len([e for e in run.events if "listening on" in str(e.get("msg"))]) == 2, 30,
                       "both workers listening")
        for i in range(60):  # a new connection each: the kernel picks a listener per connection
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/data/ingest", data=b'{"n": %d}' % i,
                                         headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status in (200, 202)
    finally:
        run.signal()
        code, workers, integrity = run.finish()
    assert code == 0, run.text
    lines = [json.loads(x)["n"] for x in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert sorted(lines) == list(range(60))
    assert all(w["in"] > 0 for w in workers.values()), workers  # both took connections
    assert sum(w["in"] for w in workers.values()) == 60 and integrity.startswith("integrity OK: 60 in")


def test_hosts_split_a_finite_source_by_slots(tmp_path: Path) -> None:
    """Two "hosts": a supervisor with slots 1 and 2 of 3, and a single process with slot 0."""
    path = _graph(tmp_path, "count: 3000")
    host_b = Supervised(path, 2, "--slots", "3", "--first-slot", "1")
    host_a = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path), "--slots", "3", "-q"],
                            capture_output=True, text=True, timeout=60)
    code, workers, integrity = host_b.finish()
    assert (host_a.returncode, code) == (0, 0), host_a.stderr + "\n".join(host_b.text)
    ids = [json.loads(line)["i"] for line in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert sorted(ids) == list(range(0, 3000, 2))  # every kept message once, over both hosts
    assert {i: w["in"] for i, w in workers.items()} == {0: 1000, 1: 1000}
    assert integrity.startswith("integrity OK: 2000 in")
    bad = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path), "--workers", "2", "--slots", "2",
                          "--first-slot", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--first-slot 1 + --workers 2 is more than --slots 2" in bad.stderr
