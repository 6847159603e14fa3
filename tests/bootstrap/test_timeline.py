"""The run's timeline: the status history every stage writes, its spans, and the picture ``run`` draws from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bootstrap.engine import Engine
from bootstrap.engine.timeline import LABEL, MARGIN, ROW, STAGE_COLOURS, WIDTH, Span, render, spans, summary
from scripts.synthetic_imagenet import Generated
from tests.bootstrap.pack.test_pack import config


def line(t: float, stage: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "stage": stage, **fields}


HISTORY = [
    line(0, "run", state="running"),  # an earlier run, killed during fetch
    line(1, "fetch", state="running"),
    line(100, "run", state="running"),
    line(101, "fetch", state="running"),
    line(101, "fetch val.tar", done=0),
    line(140, "fetch val.tar", done=10),
    line(150, "fetch", state="done"),
    line(150, "pack", state="running"),
    line(150, "pack train", done=0),
    line(230, "pack train", done=100),
    line(240, "pack", state="done"),
    line(240, "run", state="done"),
    line(300, "run", state="running"),  # a run that found everything done: not the picture
    line(300, "run", state="done"),
]


def test_spans_are_the_last_run_that_did_work_from_each_names_first_to_last_update() -> None:
    found = spans(HISTORY)
    assert [(s.name, s.start, s.end) for s in found] == [
        ("run", 100, 240), ("fetch", 101, 150), ("fetch val.tar", 101, 140), ("pack", 150, 240),
        ("pack train", 150, 230)]  # fmt: skip
    assert summary(found) == {"wall_seconds": 140, "stage_seconds": {"fetch": 49, "pack": 90}, "overlap_seconds": 0}


def test_a_thousand_shards_are_one_row() -> None:
    history = [line(0, "run", state="running"), line(0, "fetch", state="running"),
               *(line(i, f"fetch imagenet1k-train-{i:04d}.tar", done=i) for i in range(1, 1025)),
               line(1030, "fetch", state="done")]  # fmt: skip
    assert [(s.name, s.start, s.end) for s in spans(history)] == [
        ("fetch", 0, 1030), ("run", 0, 0), ("fetch imagenet1k-train-*.tar", 1, 1024)]  # fmt: skip


def test_overlapping_stages_are_counted_once_in_the_wall_time() -> None:
    found = [Span("run", 0, 100), Span("fetch", 0, 80), Span("pack", 20, 100)]
    assert summary(found) == {"wall_seconds": 100, "stage_seconds": {"fetch": 80, "pack": 80}, "overlap_seconds": 60}
    # a gap between stages is not overlap: fetch 0-30, organise 30-35, pack 32-60, a pause, backup 200-300
    gaps = [Span("run", 0, 300), Span("fetch", 0, 30), Span("organise", 30, 35), Span("pack", 32, 60),
            Span("backup", 200, 300)]  # fmt: skip
    assert summary(gaps)["overlap_seconds"] == 3


def test_the_picture_puts_each_bar_where_its_span_is(tmp_path: Path) -> None:
    found = spans(HISTORY)
    render(found, tmp_path / "t.png", "title")
    image = cv2.imread(str(tmp_path / "t.png"))
    assert image.shape[1] == WIDTH and image.shape[0] > ROW * len(found)
    scale = (WIDTH - LABEL - 2 * MARGIN) / 140
    row = [s.name for s in found].index("pack train")
    y = MARGIN + 30 + row * ROW + ROW // 2
    inside, before = LABEL + MARGIN + int(100 * scale), LABEL + MARGIN + int(40 * scale)
    assert tuple(image[y, inside]) == STAGE_COLOURS["pack"] and tuple(image[y, before]) == (255, 255, 255)
    assert np.count_nonzero(image[:, : LABEL - 10] != 255) > 0  # the labels


def test_run_writes_the_history_and_draws_its_timeline(archives: Generated, tmp_path: Path) -> None:
    engine = Engine(config(tmp_path, archives))
    engine.run()
    history = [json.loads(text) for text in engine.paths.status_history.read_text().splitlines()]
    names = {h["stage"] for h in history}
    assert {"run", "fetch", "organise", "pack", "pack train", "pack val", "shuffle train", "verify"} <= names
    picture = cv2.imread(str(engine.paths.timeline))
    assert picture is not None and picture.shape[0] > ROW * 8
    drawn = engine.paths.timeline.read_bytes()
    Engine(config(tmp_path, archives)).run()  # everything done: the picture stays the real run's
    assert engine.paths.timeline.read_bytes() == drawn


@pytest.mark.parametrize("cut", [5, 17])
def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path, cut: int) -> None:
    from bootstrap.engine.timeline import read_history

    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(h) + "\n" for h in HISTORY[:4]) + json.dumps(HISTORY[4])[:cut])
    assert read_history(path) == HISTORY[:4]
