"""``bootstrap.readers`` under PyTorch's DataLoader, and the README's snippet: ``make test-torch`` (its own venv).

These need the CPU build of PyTorch, which ``make test``'s venv does not carry; they run with
``--confcutdir`` so the main suite's fixtures (moto, mxnet) are not loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bootstrap.pack.recordio import ImageHeader, encode_record, format_idx_line, pack_image
from bootstrap.readers import RecordIODataset, RecordIOStream, torch_iterable

ROOT = Path(__file__).resolve().parent.parent.parent
RECORDS = 40


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """``recordio/train.rec`` + ``.idx`` of RECORDS images, short side 64, each labelled with its record number."""
    out = tmp_path / "recordio"
    out.mkdir()
    rng = np.random.default_rng(0)
    with open(out / "train.rec", "wb") as rec, open(out / "train.idx", "w") as idx:
        for i in range(RECORDS):
            image = rng.integers(0, 256, (64, 64 + i % 7, 3), np.uint8)
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            idx.write(format_idx_line(i, rec.tell()))
            rec.write(encode_record(pack_image(ImageHeader(0, float(i), i, 0), jpeg)))
    return tmp_path


def test_the_readme_snippet_runs(data: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- snippet:torch -->\n```python\n(.*?)```", readme, re.S)
    assert code is not None
    setting = 'DATA, CROP = "/data", 224'
    assert setting in code.group(1)
    namespace: dict[str, object] = {}
    exec(code.group(1).replace(setting, f'DATA, CROP = "{data}", 48'), namespace)  # the README's own code
    batch = next(iter(namespace["shuffled"]))  # type: ignore[call-overload]
    images, labels = batch
    assert images.shape == (RECORDS, 3, 48, 48) and images.dtype == torch.float32
    assert sorted(labels.tolist()) == list(range(RECORDS))
    streamed = [label for _, chunk in namespace["in_order"] for label in chunk.tolist()]  # type: ignore[attr-defined]
    assert sorted(streamed) == list(range(RECORDS))


def test_loader_workers_of_every_rank_read_each_record_once(data: Path) -> None:
    rec, idx = data / "recordio" / "train.rec", data / "recordio" / "train.idx"
    labels = []
    for rank in range(3):  # three ranks, each with two loader workers: six shares
        loader = DataLoader(torch_iterable(RecordIOStream(rec, idx).shard(rank, 3)), batch_size=None, num_workers=2)
        labels += [int(label) for _, label in loader]
    assert sorted(labels) == list(range(RECORDS))  # every record once


def test_a_shuffled_map_style_epoch_sees_every_record(data: Path) -> None:
    dataset = RecordIODataset(data / "recordio" / "train.rec", data / "recordio" / "train.idx")
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2, collate_fn=list)
    labels = [label for batch in loader for _, label in batch]
    assert sorted(labels) == list(range(RECORDS)) and labels != list(range(RECORDS))  # all of them, shuffled
