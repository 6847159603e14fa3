"""``bootstrap.readers`` against mxnet's own reader and writer, one file or parts, map-style and sharded streams."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bootstrap.engine import Engine
from bootstrap.readers import RecordIODataset, RecordIOStream, torch_iterable
from bootstrap.settings import PrepConfig
from scripts.synthetic_imagenet import Generated


def _packed(root: Path, archives: Generated, parts: int) -> Path:
    config = PrepConfig(data_dir=root, source=str(archives.root), dataset_table=archives.table, resize=64,
                        workers=1, max_failure_rate=0.2, parts=parts)  # fmt: skip
    Engine(config).run()
    return root / "recordio"


@pytest.fixture(scope="module")
def recordio(archives: Generated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _packed(tmp_path_factory.mktemp("one"), archives, parts=1)


def _mxnet_records(recordio: Path, split: str) -> list[tuple[int, bytes]]:
    import mxnet as mx

    reader = mx.recordio.MXIndexedRecordIO(str(recordio / f"{split}.idx"), str(recordio / f"{split}.rec"), "r")
    out = []
    for key in reader.keys:
        header, image = mx.recordio.unpack(reader.read_idx(key))
        out.append((int(header.label), image))
    return out


def _lst_labels(lst: Path) -> list[int]:
    return [int(float(line.split("\t")[1])) for line in lst.read_text().splitlines()]


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_map_style_dataset_reads_what_mxnet_reads(recordio: Path, split: str) -> None:
    dataset = RecordIODataset(recordio / f"{split}.rec", recordio / f"{split}.idx")
    want = _mxnet_records(recordio, split)
    assert len(dataset) == len(want) > 0
    assert [(label, image) for image, label in (dataset[i] for i in range(len(dataset)))] == want
    assert [label for label, _ in want] == _lst_labels(recordio / f"{split}.lst")
    assert dataset[-1] == dataset[len(dataset) - 1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_decoded_items_and_a_transform(recordio: Path) -> None:
    rgb = RecordIODataset(recordio / "val.rec", recordio / "val.idx", decode="rgb", transform=lambda a: a.shape)
    bgr = RecordIODataset(recordio / "val.rec", recordio / "val.idx", decode="bgr")
    shape, label = rgb[0]
    image, same_label = bgr[0]
    assert shape == image.shape and image.dtype == np.uint8 and min(shape[:2]) <= 64 and label == same_label
    with pytest.raises(ValueError, match="decode='yuv'"):
        RecordIODataset(recordio / "val.rec", recordio / "val.idx", decode="yuv")


def test_parts_with_the_global_idx_read_as_one_file(archives: Generated, tmp_path: Path, recordio: Path) -> None:
    parted = _packed(tmp_path, archives, parts=3)
    parts = [parted / f"train_{i}.rec" for i in range(3)]
    whole = RecordIODataset(parts, parted / "train.global.idx")
    single = RecordIODataset(recordio / "train.rec", recordio / "train.idx")
    by_key = {whole.key(i): whole[i] for i in range(len(whole))}  # the parts hold the records in their own order
    assert by_key == {single.key(i): single[i] for i in range(len(single))} and len(by_key) == len(whole)
    streamed = list(RecordIOStream(parts, parted / "train.global.idx"))
    assert streamed == [whole[i] for i in range(len(whole))]


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_stream_shards_cover_every_record_once_in_file_order(recordio: Path, world_size: int) -> None:
    stream = RecordIOStream(recordio / "train.rec", recordio / "train.idx")
    everything = list(stream)
    shards = [list(stream.shard(rank, world_size)) for rank in range(world_size)]
    assert [item for shard in shards for item in shard] == everything  # contiguous shares, in order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(stream.shard(rank, world_size)) for rank in range(world_size)] == [len(s) for s in shards]
    with pytest.raises(ValueError, match=r"rank 3 is not in 0\.\.2"):
        stream.shard(3, 3)


def test_records_written_by_mxnet_read_the_same(tmp_path: Path) -> None:
    import mxnet as mx

    writer = mx.recordio.MXIndexedRecordIO(str(tmp_path / "mx.idx"), str(tmp_path / "mx.rec"), "w")
    images = [bytes([i]) * (5 + i * 37) for i in range(20)]  # lengths not multiples of 4: padding exercised
    for i, image in enumerate(images):
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(i % 4), i, 0), image))
    writer.close()
    dataset = RecordIODataset(tmp_path / "mx.rec", tmp_path / "mx.idx")
    assert [dataset[i] for i in range(len(dataset))] == [(image, i % 4) for i, image in enumerate(images)]
    assert list(RecordIOStream(tmp_path / "mx.rec", tmp_path / "mx.idx")) == [dataset[i] for i in range(20)]


def test_a_dataset_survives_pickling_into_a_loader_worker(recordio: Path) -> None:
    dataset = RecordIODataset(recordio / "val.rec", recordio / "val.idx")
    first = dataset[0]
    clone: Any = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker gets: no open file descriptors
    assert clone[0] == first


def test_the_torch_wrapper_says_what_it_needs(recordio: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    stream = RecordIOStream(recordio / "val.rec", recordio / "val.idx")
    assert len(list(stream)) == len(stream)  # the reader itself needs no torch
    with pytest.raises(ImportError, match="torch_iterable needs PyTorch: pip install torch"):
        torch_iterable(stream)
