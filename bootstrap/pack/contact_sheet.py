"""A contact sheet: random packed records with their class names, as one PNG.

Numbers can say a pack is well-formed; only a person looking at it can say
the right pictures carry the right labels.  Records are read by offset from
the .idx, so this costs a few hundred small reads, not a pass over the file.
"""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bootstrap.common.errors import PackError
from bootstrap.common.state import atomic_write_bytes
from bootstrap.pack.recordio import read_record, unpack_image

TILE = 160
CAPTION = 28


def _tile(image: bytes, caption: str) -> npt.NDArray[np.uint8]:
    tile = np.full((TILE + CAPTION, TILE, 3), 255, np.uint8)
    img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        cv2.putText(tile, "UNDECODABLE", (8, TILE // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
    else:
        h, w = img.shape[:2]
        scale = TILE / max(h, w)
        small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        top, left = (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
        tile[top : top + small.shape[0], left : left + small.shape[1]] = small
    cv2.putText(tile, caption[:24], (4, TILE + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


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
    rec_path: Path, idx_path: Path, class_names: list[str], out: Path, *, count: int = 48, seed: int = 0
) -> int:
    """Write a grid of ``count`` random records to ``out``; returns how many it shows."""
    chosen = sorted(_sample_offsets(idx_path, count, seed))
    tiles = []
    with open(rec_path, "rb") as rec:
        for offset in chosen:
            rec.seek(offset)
            payload = read_record(rec)
            assert payload is not None
            header, image = unpack_image(payload)
            label = int(header.label)
            name = class_names[label] if 0 <= label < len(class_names) else "?"
            tiles.append(_tile(image, f"{label} {name}"))
    if not tiles:
        return 0
    columns = min(8, len(tiles))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    ok, png = cv2.imencode(".png", np.vstack(rows))
    if not ok:
        raise PackError(f"could not encode the contact sheet {out}")
    atomic_write_bytes(out, png.tobytes())  # cv2.imwrite would only return False on a full disk
    return len(chosen)
