"""The demo's last look: one batch from each format on the mounted dataset volume, each by its own reader.

The records through ``bootstrap.readers.RecordIODataset`` and through DALI's
``readers.mxnet`` (``dali_pipeline`` on DALI's CPU backend: no GPU here), the
WebDataset shards through the ``webdataset`` library, and the class tree as
torchvision's ``ImageFolder`` lists it (folders in sorted order are the
labels; torchvision itself is in ``make test-torch``'s venv, not this one).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

BATCH = 8


def _describe(reader: str, labels: list[int], shape: tuple[int, ...]) -> None:
    print(f"  {reader:38} batch of {len(labels)}: labels {labels}, first image {'x'.join(map(str, shape))}")


def _records(mount: Path) -> None:
    from bootstrap.readers import RecordIODataset

    dataset = RecordIODataset(mount / "recordio" / "train.rec", mount / "recordio" / "train.idx", decode="rgb")
    batch = [dataset[i] for i in range(BATCH)]
    dataset.close()
    _describe("RecordIODataset (recordio/)", [label for _, label in batch], batch[0][0].shape)


def _dali(mount: Path) -> None:
    from bootstrap.readers import dali_pipeline

    # in file order (training=False), as the first reader reads them: the same labels
    pipe = dali_pipeline(mount / "recordio", "train", batch_size=BATCH, size=112, training=False, device="cpu",
                         device_id=None, num_threads=1)  # fmt: skip
    images, labels = pipe.run()
    _describe("DALI readers.mxnet (recordio/)", [int(x) for x in labels.as_array().ravel()], images.as_array().shape)


def _webdataset(mount: Path) -> None:
    import webdataset as wds

    index = json.loads((mount / "webdataset" / "train.shards.json").read_text())
    urls = str(mount / "webdataset" / index["pattern"])
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("jpg", "cls")
    images, labels = next(iter(dataset.batched(BATCH, collation_fn=lambda s: tuple(zip(*s, strict=True)))))
    _describe(f"webdataset ({index['pattern']})", list(labels), images[0].shape)


def _tree(mount: Path) -> None:
    root = mount / "imagenet" / "train"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = sorted((path, classes.index(path.parent.name)) for path in root.glob("*/*"))[::7][:BATCH]
    image = cv2.imdecode(np.frombuffer(files[0][0].read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    _describe("class tree as ImageFolder (imagenet/)", [label for _, label in files], image.shape)


READERS: tuple[Callable[[Path], None], ...] = (_records, _dali, _webdataset, _tree)


def one_batch_each(mount: Path) -> None:
    for read in READERS:
        read(mount)
        gc.collect()  # a reader's files (DALI's pipeline, a suspended webdataset iterator) close when it is freed
