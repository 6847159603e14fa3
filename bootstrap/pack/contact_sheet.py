"""A contact sheet: random packed records with their class names, as one PNG.

Numbers can say a pack is well-formed; only a person looking at it can say
the right pictures carry the right labels.  Records are read by offset from
the .idx, so this costs a few hundred small reads, not a pass over the file.
"""

from __future__ import annotations

import datetime
import os
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bootstrap.common.errors import PackError
from bootstrap.common.state import atomic_write_bytes
from bootstrap.pack.recordio import read_record, unpack_image

TILE = 160
GAP = 8
LINE = 14
"""Caption line height for FONT at SCALE."""
WRAP = 26
"""Characters per caption line at this font and tile width."""
MAX_LINES = 6
"""The record line and up to five of the name: ImageNet's longest class names (about 90 characters) fit."""
FONT, SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.4
BACKGROUND, INK = (235, 235, 235), (0, 0, 0)


@dataclass(frozen=True)
class Sample:
    record_id: int
    label: int
    class_name: str
    image: bytes

    def caption(self) -> list[str]:
        """``#id  label`` then the whole class name, wrapped (the last line ends in "..." only past MAX_LINES)."""
        lines = textwrap.wrap(self.class_name, WRAP, break_on_hyphens=False) or ["?"]
        if len(lines) > MAX_LINES - 1:
            lines = [
                *lines[: MAX_LINES - 2],
                textwrap.shorten(" ".join(lines[MAX_LINES - 2 :]), WRAP, placeholder="..."),
            ]
        return [f"#{self.record_id}  label {self.label}", *lines]


def _text(canvas: npt.NDArray[np.uint8], text: str, x: int, y: int, scale: float = SCALE) -> None:
    cv2.putText(canvas, text.encode("ascii", "replace").decode(), (x, y), FONT, scale, INK, 1, cv2.LINE_AA)


def _tile(sample: Sample, lines: int) -> npt.NDArray[np.uint8]:
    tile = np.full((TILE + 6 + LINE * lines, TILE, 3), 255, np.uint8)
    img = cv2.imdecode(np.frombuffer(sample.image, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        cv2.putText(tile, "UNDECODABLE", (8, TILE // 2), FONT, 0.5, (0, 0, 255), 1)
    else:
        h, w = img.shape[:2]
        scale = TILE / max(h, w)
        small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        top, left = (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
        tile[top : top + small.shape[0], left : left + small.shape[1]] = small
    for n, line in enumerate(sample.caption()):
        _text(tile, line, 4, TILE + LINE * (n + 1))
    return tile


def _grid(samples: list[Sample], title: str, columns: int = 8) -> npt.NDArray[np.uint8]:
    """The tiles in rows of ``columns`` with GAP between them, under a title line."""
    lines = max(len(s.caption()) for s in samples)
    tiles = [_tile(s, lines) for s in samples]
    columns = min(columns, len(tiles))
    th, tw = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    head = 2 * LINE + GAP
    sheet = np.full((head + rows * (th + GAP) + GAP, columns * (tw + GAP) + GAP, 3), BACKGROUND, np.uint8)
    _text(sheet, title, GAP, LINE + GAP // 2, 0.5)
    for n, tile in enumerate(tiles):
        y, x = head + (n // columns) * (th + GAP), GAP + (n % columns) * (tw + GAP)
        sheet[y : y + th, x : x + tw] = tile
    return sheet


def _sample_offsets(idx_path: Path, count: int, seed: int) -> list[int]:
    """``count`` random record offsets from an .idx, in memory proportional to ``count`` (reservoir sampling)."""
    rng = random.Random(seed)
    reservoir: list[int] = []
    with open(idx_path) as idx:
        for seen, line in enumerate(idx):
            offset = int(line.split("\t")[1])
            if seen < count:
                reservoir.append(offset)
            elif (slot := rng.randrange(seen + 1)) < count:
                reservoir[slot] = offset
    return reservoir


def contact_sheet(
    rec_path: Path, idx_path: Path, class_names: list[str], out: Path, *, split: str, count: int = 48, seed: int = 0
) -> int:
    """Write a grid of ``count`` random records to ``out``, titled with what it shows; returns how many."""
    chosen = sorted(_sample_offsets(idx_path, count, seed))
    samples = []
    with open(rec_path, "rb") as rec:
        for offset in chosen:
            rec.seek(offset)
            payload = read_record(rec)
            assert payload is not None
            header, image = unpack_image(payload)
            label = int(header.label)
            name = class_names[label] if 0 <= label < len(class_names) else "? (label outside the classes)"
            samples.append(Sample(header.id, label, name, image))
    if not samples:
        return 0
    title = (f"{split}: {len(samples)} random records of {rec_path.name}, sample seed {seed}, "
             f"{written_on().isoformat()}")  # fmt: skip
    ok, png = cv2.imencode(".png", _grid(samples, title))
    if not ok:
        raise PackError(f"could not encode the contact sheet {out}")
    atomic_write_bytes(out, png.tobytes())  # cv2.imwrite would only return False on a full disk
    return len(chosen)


def written_on() -> datetime.date:
    """Today (UTC), or the date of ``SOURCE_DATE_EPOCH`` when set, so that reruns can be byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else datetime.datetime.now(datetime.UTC)
    return moment.date()
