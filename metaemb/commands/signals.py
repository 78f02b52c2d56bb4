"""How `train` stops on a batch scheduler's signal: SIGTERM (a time limit, scancel) and SIGHUP
(a closed session) end a single-process run as Ctrl-C does, so its log says why it stopped
and how to resume. Signals someone set otherwise (nohup's ignored SIGHUP) and torchrun ranks,
which must die at once when a peer fails, keep their handling."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


def worker_signal(exc: RuntimeError) -> signal.Signals | None:
    """The signal (SIGTERM, SIGHUP) that killed a data-loader worker, from PyTorch's message
    ("DataLoader worker (pid N) is killed by signal: Terminated."), or None."""
    text = str(exc)
    for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if sig is not None and f"killed by signal: {signal.strsignal(sig)}" in text:
            return sig
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a batch scheduler's time limit, scancel, a closed session): handled
    as Ctrl-C is, so the log says why the run stopped and how to resume it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum, self.name = signum, signal.Signals(signum).name


@contextlib.contextmanager
def stopped_by_scheduler() -> Iterator[None]:
    """Inside the block SIGTERM and SIGHUP raise `Terminated` in a single-process run."""
    # Under torchrun a rank blocked in a collective (a peer died) runs no Python handler until
    # the backend times out: there the signal keeps its default and ends the rank at once.
    distributed = os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")
    if threading.current_thread() is not threading.main_thread() or distributed:
        yield
        return

    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a data-loader worker inherited it: end as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    # Only a signal left at its default: nohup's (or a launcher's) SIG_IGN, or a parent's own
    # handler, is theirs to keep.
    wanted = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    wanted = [s for s in wanted if signal.getsignal(getattr(signal, s)) is signal.SIG_DFL]
    before = {s: signal.signal(getattr(signal, s), stop) for s in wanted}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(getattr(signal, s), handler)
