"""A background thread that calls ``tick()`` every ``interval`` seconds while a ``with`` block runs."""

from __future__ import annotations

import threading
from typing import Self


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
            self.tick()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.stopped()
