"""A background thread that calls ``tick()`` every ``interval`` seconds while a ``with`` block runs."""

from __future__ import annotations

import logging
import threading
from typing import Self

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses define ``tick()``; ``stopped()`` runs once more after the block, in the caller's thread."""

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def started(self) -> None:
        """Runs in the thread before the first interval."""

    def stopped(self) -> None:
        """Runs after the thread has ended."""

    def _loop(self) -> None:
        self.started()
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # one failed tick must not end the thread: the next one tries again
                log.exception("%s: this tick failed; trying again in %.0fs", self._thread.name, self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.stopped()
