"""``bootstrap.readers.dali_pipeline``: NVIDIA DALI's own ``readers.mxnet`` over our records, on DALI's CPU backend.

DALI's CUDA 12 wheel runs a pipeline with ``device_id=None`` on the CPU, so
the same reader, decoder and augmentations a GPU instance runs are checked
here, on a single .rec and on parts with the global idx, labels against the
.lst.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bootstrap.readers import dali_pipeline, split_files
from scripts.synthetic_imagenet import Generated
from tests.bootstrap.test_readers import _lst_labels, _packed

SIZE = 48


@pytest.fixture(scope="module")
def recordio(archives: Generated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _packed(tmp_path_factory.mktemp("one"), archives, parts=1)


@pytest.fixture(scope="module")
def parted(archives: Generated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _packed(tmp_path_factory.mktemp("parts"), archives, parts=3)


def labels_in_idx_order(recordio: Path, split: str) -> list[int]:
    """The .lst labels in the order of the idx DALI reads (parts: the global idx follows the parts in order)."""
    found = split_files(recordio, split)
    assert found is not None
    return [label for lst in found[2] for label in _lst_labels(lst)]


def one_epoch(pipe: Any, records: int) -> tuple[list[int], list[tuple[int, ...]]]:
    labels: list[int] = []
    shapes: list[tuple[int, ...]] = []
    while len(labels) < records:
        images, batch_labels = pipe.run()
        array = images.as_array()
        shapes.append(array.shape)
        assert array.dtype == np.float32 and abs(float(array.mean())) < 3  # normalised
        labels += [int(x) for x in batch_labels.as_array().ravel()]
    return labels[:records], shapes


@pytest.mark.parametrize("layout", ["single", "parts"])
def test_the_validation_pipeline_reads_every_record_in_order_with_its_lst_label(recordio: Path, parted: Path,
                                                                                 layout: str) -> None:  # fmt: skip
    directory = recordio if layout == "single" else parted
    want = labels_in_idx_order(directory, "val")
    pipe = dali_pipeline(directory, "val", batch_size=4, size=SIZE, training=False, device="cpu", device_id=None,
                         num_threads=1)  # fmt: skip
    assert pipe.epoch_size("reader") == len(want) > 0
    labels, shapes = one_epoch(pipe, len(want))
    assert labels == want
    assert set(shapes) == {(4, 3, SIZE, SIZE)}


@pytest.mark.parametrize("layout", ["single", "parts"])
def test_the_training_pipeline_shuffles_crops_and_shards(recordio: Path, parted: Path, layout: str) -> None:
    directory = recordio if layout == "single" else parted
    want = labels_in_idx_order(directory, "train")
    seen: Counter[int] = Counter()
    for rank in range(2):
        pipe = dali_pipeline(directory, "train", batch_size=5, size=SIZE, rank=rank, world_size=2, device="cpu",
                             device_id=None, num_threads=1)  # fmt: skip
        total = pipe.epoch_size("reader")
        share = total * (rank + 1) // 2 - total * rank // 2  # DALI's shard bounds
        labels, shapes = one_epoch(pipe, share)
        seen.update(labels)
        assert set(shapes) == {(5, 3, SIZE, SIZE)}
    assert seen == Counter(want)  # the two shards together: every record once


def test_it_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"has no train\.rec"):
        dali_pipeline(tmp_path, "train", batch_size=2, device="cpu", device_id=None)
