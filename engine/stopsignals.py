"""SIGINT and SIGTERM stop a run, from the first line of `main` to its return, whatever the process inherited.

Two gaps let a signal slip past `loop.add_signal_handler` (issue 23's follow-up):
- before the event loop exists (imports, compiling the graph: 0.2 to 1 s): SIGTERM had its
  default action (the process died, exit 143, nothing drained) and a SIGINT that the parent had
  set to SIG_IGN, as a shell does for `cmd &` in a script, was dropped;
- a process that starts with SIGINT ignored: Python then installs no KeyboardInterrupt handler,
  so only the loop's handler, set later, could see one.

`catch_early()` installs a Python handler for both at once, whatever the inherited disposition, that
only counts the signal; `on_loop(loop, fn)` hands both to the loop and replays the ones counted
meanwhile, so a signal that came during start-up stops the run as soon as it starts (it drains
nothing yet, prints its integrity line and exits with the run's code). A second signal aborts as
usual. `restore()` gives back the inherited handlers when the command returns (main() may be called
in-process, from a test). SIGINT is honoured even when it was inherited ignored: a shell's SIG_IGN
for background jobs is not a request from the user, and `kill -INT` must not be a no-op (docs/operate.md).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DUPLICATE_WINDOW", "STOP_SIGNALS", "catch_early", "on_loop", "rearm", "restore"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_pending: list[int] = []  # signals received before the loop took over
_inherited: dict[int, Any] = {}


def _count(signum: int, _frame: Any) -> None:
    _pending.append(signum)


def catch_early() -> None:
    """Count SIGINT and SIGTERM from now on (the main thread only: signal.signal's rule)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        previous = signal.signal(sig, _count)
        _inherited.setdefault(sig, previous)


DUPLICATE_WINDOW = 0.2  # seconds after on_loop in which a loop's delivery of a counted signal is a duplicate


def on_loop(loop: Any, fn: Callable[..., object], *args: Any) -> None:
    """Route both signals to `fn(*args)` on `loop`, then call it once per signal counted before.

    uvloop listens to its self-pipe (`signal.set_wakeup_fd`) from the moment it runs, so a signal
    that came after that and before these handlers is both counted here and in the pipe: if the
    loop reads the pipe after this call, it delivers it too. Such a delivery comes at the loop's
    next poll; one of a signal already counted, within DUPLICATE_WINDOW, is dropped (a genuine
    second one that soon is dropped with it: the run is stopping already)."""
    owed = list(_pending)
    _pending.clear()
    until = loop.time() + DUPLICATE_WINDOW

    def deliver(sig: int) -> None:
        if sig in owed and loop.time() < until:
            owed.remove(sig)
            return
        fn(*args)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, deliver, sig)
    for _ in owed:
        loop.call_soon(fn, *args)


def rearm() -> None:
    """Count both again after the loop closed (it gave them their defaults back), until `restore`; only
    when `catch_early` armed them (main() did, not a caller of the command function itself)."""
    if _inherited:
        catch_early()


def restore() -> None:
    """Put back the handlers the process had before `catch_early`; forget what was counted."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in _inherited.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _inherited.clear()
    _pending.clear()
