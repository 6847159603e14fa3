"""The run's timeline: when each stage and each piece of work in it ran, from the status history, as a picture.

``spans`` is pure: one span per name that the history shows (a stage such as
``pack``, or a piece of work such as ``pack train`` or ``fetch
ILSVRC2012_img_val.tar``; a hub dataset's numbered shards are one name),
from its first update to its last, within the last
``run`` (an earlier, interrupted run's lines are in the history too).
``render`` draws them as bars on a common time axis with OpenCV, which the
download instance has anyway; ``summary`` gives the numbers the run reports:
the wall time, the sum of the stages' times, and how much of it overlapped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGE_COLOURS = {  # BGR
    "fetch": (200, 120, 40), "organise": (120, 120, 120), "pack": (60, 160, 60), "shuffle": (90, 190, 90),
    "verify": (40, 170, 210), "inspect": (150, 150, 150), "backup": (170, 80, 170), "snapshot": (60, 80, 200),
    "publish": (40, 40, 160), "run": (90, 90, 90),
}  # fmt: skip
WIDTH, ROW, LABEL, MARGIN = 1100, 26, 300, 20
SHARD_NUMBER = re.compile(r"-\d{3,}(\.tar)$")
"""``fetch imagenet1k-train-0007.tar`` is drawn and summed as ``fetch imagenet1k-train-*.tar``."""


@dataclass(frozen=True)
class Span:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def kind(self) -> str:
        return self.name.split(" ", 1)[0].rstrip(":")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The history's lines; a line cut short by a kill is skipped."""
    lines = []
    for text in path.read_text().splitlines() if path.exists() else []:
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def spans(history: Iterable[Mapping[str, Any]]) -> list[Span]:
    """Each name's first and last update in the last ``run`` that did any work (counted progress), in the order
    they started: a run that found everything done leaves the picture of the one before."""
    lines = [line for line in history if "t" in line and "stage" in line]
    starts = [i for i, line in enumerate(lines) if line["stage"] == "run" and line.get("state") == "running"]
    bounds = list(zip(starts, [*starts[1:], len(lines)], strict=True)) or [(0, len(lines))]
    worked = [(a, b) for a, b in bounds if any("done" in line for line in lines[a:b])]  # a progress count moved
    a, b = worked[-1] if worked else bounds[-1]
    lines = lines[a:b]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for line in lines:
        name = SHARD_NUMBER.sub(r"-*\1", line["stage"])  # a thousand shards are one row
        first.setdefault(name, line["t"])
        last[name] = line["t"]
    return sorted((Span(name, first[name], last[name]) for name in first), key=lambda s: (s.start, s.name))


def summary(found: list[Span]) -> dict[str, Any]:
    """Wall time, the top-level stages' own times, and how much of their sum overlapped (ran while another did)."""
    stages = [s for s in found if " " not in s.name and s.name != "run"]
    if not found:
        return {"wall_seconds": 0.0, "stage_seconds": {}, "overlap_seconds": 0.0}
    wall = max(s.end for s in found) - min(s.start for s in found)
    covered, reach = 0.0, float("-inf")  # the union of the stages' intervals
    for span in sorted(stages, key=lambda s: s.start):
        covered += max(0.0, span.end - max(span.start, reach))
        reach = max(reach, span.end)
    total = sum(s.seconds for s in stages)
    return {"wall_seconds": round(wall, 1), "stage_seconds": {s.name: round(s.seconds, 1) for s in stages},
            "overlap_seconds": round(total - covered, 1)}  # fmt: skip


def describe(numbers: Mapping[str, Any]) -> str:
    stages = sum(numbers["stage_seconds"].values())
    return (f"{numbers['wall_seconds']:,.1f} s wall, the stages' own times add up to {stages:,.1f} s, "
            f"{numbers['overlap_seconds']:,.1f} s of it overlapped")  # fmt: skip


def draw(history: Path, out: Path) -> str | None:
    """The last run's timeline from ``history`` into the PNG ``out``; its description, or None without a run."""
    found = spans(read_history(history))
    if not found:
        return None
    text = describe(summary(found))
    render(found, out, text)
    return text


def render(found: list[Span], out: Path, title: str) -> None:
    """Bars on a shared time axis, one row per span, coloured by stage."""
    import cv2
    import numpy as np

    start = min(s.start for s in found)
    wall = max(max(s.end for s in found) - start, 1e-3)
    height = 2 * MARGIN + 30 + ROW * len(found) + 30
    image = np.full((height, WIDTH, 3), 255, np.uint8)
    scale = (WIDTH - LABEL - 2 * MARGIN) / wall
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title, (MARGIN, MARGIN + 12), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    top = MARGIN + 30
    for row, span in enumerate(found):
        y = top + row * ROW
        x0 = LABEL + MARGIN + int((span.start - start) * scale)
        x1 = max(x0 + 2, LABEL + MARGIN + int((span.end - start) * scale))
        cv2.rectangle(image, (x0, y + 4), (x1, y + ROW - 4), STAGE_COLOURS.get(span.kind, (0, 0, 0)), -1)
        cv2.putText(image, span.name[:40], (MARGIN, y + ROW - 9), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    axis = top + ROW * len(found) + 6
    cv2.line(image, (LABEL + MARGIN, axis), (WIDTH - MARGIN, axis), (0, 0, 0), 1)
    step = _tick(wall)
    for k in range(int(wall // step) + 1):
        x = LABEL + MARGIN + int(k * step * scale)
        cv2.line(image, (x, axis), (x, axis + 5), (0, 0, 0), 1)
        cv2.putText(image, _clock(k * step), (x - 12, axis + 20), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), image):
        raise OSError(f"could not write {out}")


def _tick(wall: float) -> float:
    """A round step that gives at most about ten ticks."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400):
        if wall / step <= 10:
            return float(step)
    return 28800.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
