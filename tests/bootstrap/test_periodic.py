"""The background ticker behind the heartbeat, the status publisher and the tests' hot-plug."""

from __future__ import annotations

import threading

import pytest

from bootstrap.common.periodic import Periodic


class _Flaky(Periodic):
    """Fails its first tick, then counts."""

    def __init__(self) -> None:
        super().__init__(0.01, "flaky")
        self.ticks = 0
        self.after_failure = threading.Event()

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("injected: the first tick fails")
        self.after_failure.set()


def test_a_failed_tick_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    with _Flaky() as flaky:
        assert flaky.after_failure.wait(10), "the thread ended with its first failed tick"
    assert flaky.ticks >= 2
    assert any("flaky: this tick failed" in r.getMessage() and r.exc_info for r in caplog.records)
