"""Progress for long work: log lines with rate and ETA, a bar on a terminal, a status file.

On a terminal the bar is tqdm's (redrawn at most twice a second), and log
lines are printed above it (``BarSafeHandler``); elsewhere (systemd, a pipe)
there is no bar, and a log line with the rate and ETA every ``log_every``
seconds instead.  The status file is the machine-readable view of where a run is (stage,
done/total, rate, ETA, last error).  It is rewritten atomically at a bounded
rate, so a reader (the operator CLI, or the publisher that copies it to SSM)
never sees half a file.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bootstrap.common.state import atomic_write_json, read_state

log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


HISTORY_FIELDS = ("stage", "state", "done", "total", "unit")


class StatusFile:
    """The JSON status of a run, shared by all its stages; and, with ``history``, every update that names a stage,
    one JSON line each, appended (what the run's timeline is drawn from)."""

    def __init__(self, path: Path | None, history: Path | None = None) -> None:
        self.path, self.history = path, history
        self._lock = threading.Lock()  # pack and the fetch it follows update it from two threads

    def update(self, **fields: Any) -> None:
        if self.path is None:
            return
        with self._lock:
            self._update(self.path, fields)

    def _update(self, path: Path, fields: dict[str, Any]) -> None:
        now = time.time()
        try:
            status = read_state(path) or {}
            status.update(fields, updated_at=now)
            atomic_write_json(path, status)
            if self.history is not None and "stage" in fields:
                line = {"t": round(now, 3), **{k: fields[k] for k in HISTORY_FIELDS if k in fields}}
                self.history.parent.mkdir(parents=True, exist_ok=True)
                with open(self.history, "a") as f:  # one short line per write: whole lines even if killed
                    f.write(json.dumps(line) + "\n")
        except (OSError, ValueError) as e:  # a full disk must not hide the error that filled it
            log.warning("could not update the status file %s: %s", path, e)


class Progress:
    """Counts work done in one stage and reports it.

    ``unit`` is "B" for byte counts (shown as MiB/s) or a noun such as "images".
    """

    def __init__(
        self,
        stage: str,
        total: int | None,
        unit: str,
        *,
        status: StatusFile | None = None,
        done: int = 0,
        log_every: float = 10.0,
        status_every: float = 2.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = done
        self._start_done = done
        self._lock = threading.Lock()
        self._status = status or StatusFile(None)
        self._clock = clock
        self._start = self._last_log = self._last_status = clock()
        self._log_every, self._status_every = log_every, status_every
        stream = stream if stream is not None else sys.stderr
        self._bar = _bar(stage, total, unit, done, stream) if stream.isatty() else None
        self._write_status()

    def rate(self) -> float:
        elapsed = self._clock() - self._start
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def _fmt(self, n: float) -> str:
        return human_bytes(n) if self.unit == "B" else f"{n:,.0f} {self.unit}"

    def describe(self) -> str:
        total = f" / {self._fmt(self.total)}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        rate = self.rate()
        rate_s = f"{human_bytes(rate)}/s" if self.unit == "B" else f"{rate:,.1f} {self.unit}/s"
        eta = self.eta()
        eta_s = f", ETA {human_duration(eta)}" if eta is not None else ""
        return f"{self.stage}: {self._fmt(self.done)}{total}{pct} at {rate_s}{eta_s}"

    def _write_status(self, **extra: Any) -> None:
        self._status.update(
            stage=self.stage,
            done=self.done,
            total=self.total,
            unit=self.unit,
            rate=round(self.rate(), 3),
            eta_seconds=None if self.eta() is None else round(self.eta() or 0.0),
            **extra,
        )

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units; safe to call from several threads (upload callbacks do)."""
        with self._lock:
            self._advance(n)

    def _advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if now - self._last_status >= self._status_every:
            self._last_status = now
            self._write_status()
        if self._bar is not None:
            self._bar.update(n)  # tqdm throttles the redraw itself
        elif now - self._last_log >= self._log_every:
            self._last_log = now
            log.info("%s", self.describe())

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elapsed = self._clock() - self._start
        log.info("%s done in %s", self.describe().split(" at ")[0], human_duration(elapsed))
        self._write_status()


def _bar(stage: str, total: int | None, unit: str, done: int, stream: TextIO) -> Any:
    from tqdm import tqdm  # only on a terminal: the GPU agent imports this module without tqdm installed

    in_bytes = unit == "B"
    return tqdm(total=total, initial=done, desc=stage, unit="B" if in_bytes else f" {unit}", unit_scale=in_bytes,
                unit_divisor=1024, file=stream, mininterval=0.5, dynamic_ncols=True, leave=False)  # fmt: skip


class BarSafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines printed above a progress bar instead of through it (tqdm clears and redraws the bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise: StreamHandler.emit does the same
            self.handleError(record)
