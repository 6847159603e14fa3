"""The smoke run's report: each step's wall time and PASS/FAIL, what was left behind, what it cost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, SKIPPED, INTERRUPTED, KEPT = "PASS", "FAIL", "SKIPPED", "INTERRUPTED", "KEPT"
"""KEPT: the teardown was left out on purpose (``--keep``)."""


@dataclass
class Step:
    name: str
    title: str
    status: str = SKIPPED
    seconds: float = 0.0
    detail: str = ""
    started: float | None = None
    """time.time() when it began: the cost is computed from when things existed."""


@dataclass
class Report:
    run_id: str
    account: str
    region: str
    steps: list[Step]
    estimated_usd: float = 0.0
    cost_usd: dict[str, float] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    kept: bool = False
    cleanup_command: str = ""

    def step_named(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time the step; an exception fails it (recorded, not raised), Ctrl-C marks it interrupted and goes on."""
        step = self.step_named(name)
        step.started, clock = time.time(), time.monotonic()
        try:
            yield step
            step.status = PASS
        except KeyboardInterrupt:
            step.status, step.detail = INTERRUPTED, "interrupted (Ctrl-C)"
            raise
        except Exception as e:  # a failed step is the report's news, not a traceback
            step.status, step.detail = FAIL, str(e) or type(e).__name__
        finally:
            step.seconds = round(time.monotonic() - clock, 1)

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if s.status in (FAIL, INTERRUPTED)), None)

    @property
    def passed(self) -> bool:
        return all(s.status in (PASS, KEPT) for s in self.steps) and not self.leftovers

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "result": PASS if self.passed else FAIL,
                "cost_total_usd": round(sum(self.cost_usd.values()), 4)}  # fmt: skip

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    def render(self) -> str:
        lines = [f"smoke run {self.run_id} in account {self.account}, {self.region}:"]
        for s in self.steps:
            detail = f"  {s.detail}" if s.detail else ""
            lines.append(f"  {s.status:<11} {s.title:<52} {s.seconds:>7.1f}s{detail}")
        lines += [f"  left behind: {item}" for item in self.leftovers]
        total = sum(self.cost_usd.values())
        lines.append(f"cost: ${total:.4f} from the measured durations and scripts/prices.json (estimated before: "
                     f"${self.estimated_usd:.4f})")  # fmt: skip
        if self.kept:
            lines.append(f"kept for debugging (--keep): everything it made is still there; clean up with\n  "
                         f"{self.cleanup_command}")  # fmt: skip
        lines.append(f"result: {PASS if self.passed else FAIL}")
        return "\n".join(lines)
