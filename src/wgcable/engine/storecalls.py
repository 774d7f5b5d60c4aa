"""Store calls on a thread of their own, so that a hung store never stalls the engine.

The engine thread makes every driver call and refreshes the status on its interval. If it
also waited on the store, a broker that stops answering (stopped, or a link that died
without a reset) would freeze the status file, the health targets and the metrics for a
whole request timeout per call. So the engine only hands store calls over. Each call has a
key: a newer call replaces a queued one with the same key (only the latest status is worth
writing, one snapshot read serves every change noticed meanwhile). Results go back through
the call itself (a closure), never by waiting on it.

Before start() and after stop() calls run inline: the engine's one-pass methods then stay
synchronous (tests, a first pass).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StoreCalls:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._queue: dict[str, tuple[str, Callable[[], None]]] = {}  # key -> (what, call)
        self._running: tuple[str, float] | None = None  # (what, since) of the call under way
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-calls", daemon=True)
        self._thread.start()

    def stop(self, wait: float) -> None:
        """Stop taking calls; wait at most ``wait`` s for the one under way (a hung store
        must not hold up a stopping agent: the thread is a daemon)."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(wait)
        self._thread = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(self, key: str, what: str, call: Callable[[], None]) -> None:
        """Run ``call`` on the store thread, after those queued before it; it replaces a
        queued call with the same key, and goes to the end of the queue."""
        with self._cond:
            running = self._thread is not None and not self._stopping
            if running:
                self._queue.pop(key, None)
                self._queue[key] = (what, call)
                self._cond.notify_all()
        if not running:
            self._call(what, call)

    def stalled(self) -> tuple[str, float] | None:
        """What the call under way does and for how many seconds it has run; None if idle."""
        with self._cond:
            running = self._running
        return None if running is None else (running[0], self.clock() - running[1])

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key = next(iter(self._queue))
                what, call = self._queue.pop(key)
                self._running = (what, self.clock())
            try:
                self._call(what, call)
            finally:
                with self._cond:
                    self._running = None

    @staticmethod
    def _call(what: str, call: Callable[[], None]) -> None:
        # The calls report their own failures; anything else must not end the thread.
        try:
            call()
        except Exception:
            log.exception("%s failed unexpectedly", what)
