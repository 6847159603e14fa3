"""One pass, three formats: RecordIO, WebDataset shards and the class tree, each read by its own ecosystem's library.

The records are read with mxnet, the shards with the ``webdataset`` library,
and the tree as ``ImageFolder`` sees it (folder = class, sorted WNIDs = labels);
every image must carry the same label and the same bytes in all three, and no
failed image may appear in any of them.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bootstrap.common.errors import ConfigError, VerifyError
from bootstrap.dataset.streams import Item
from bootstrap.engine import Engine
from bootstrap.pack.shards import END_OF_ARCHIVE, ShardSink, encode_sample, shard_pattern
from bootstrap.pack.tree import META_FILE
from bootstrap.settings import PrepConfig
from scripts.synthetic_imagenet import Generated
from tests.bootstrap.pack.test_pack import config, read_all

FORMATS = "webdataset,tree"


@pytest.fixture(scope="module")
def packed(archives: Generated, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, dict[str, Any]]:
    engine = Engine(config(tmp_path_factory.mktemp("data"), archives, formats=FORMATS))
    return engine, engine.run()


def records(engine: Engine, split: str) -> list[tuple[int, int, bytes]]:
    """(id, label, image) of every record, in file order, by mxnet's reader."""
    return [(h.id, int(h.label), image) for h, image in read_all(engine.paths.recordio / f"{split}.rec")]


def shard_samples(engine: Engine, split: str) -> list[tuple[str, bytes, int, dict[str, Any]]]:
    import webdataset as wds

    index = json.loads((engine.paths.webdataset / f"{split}.shards.json").read_text())
    urls = str(engine.paths.webdataset / index["pattern"])
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple("__key__", "jpg", "cls", "json")
    return [(key, image, int(cls), json.loads(meta)) for key, image, cls, meta in dataset]


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_shards_hold_the_records_in_their_order_with_their_labels(packed: tuple[Engine, dict[str, Any]],
                                                                      split: str) -> None:  # fmt: skip
    engine, summary = packed
    want = records(engine, split)
    got = shard_samples(engine, split)
    assert len(got) == len(want) == summary["splits"][split]["packed"]
    lines = (engine.paths.recordio / f"{split}.lst").read_text().splitlines()
    lst = {int(i): path for i, _, path in (line.split("\t") for line in lines)}
    for (record_id, label, image), (key, jpg, cls, meta) in zip(want, got, strict=True):
        assert key == f"{record_id:08d}" and jpg == image and cls == label
        assert meta == {"id": record_id, "label": label, "wnid": lst[record_id].split("/")[0],
                        "name": lst[record_id].split("/")[1]}  # fmt: skip
    assert summary["splits"][split]["shards"] == [f"{split}-000000.tar", f"{split}.shards.json"]


def test_the_tree_holds_each_packed_image_under_its_class_and_no_failed_one(
    packed: tuple[Engine, dict[str, Any]], archives: Generated
) -> None:
    engine, _ = packed
    wnids = sorted(archives.wnids)  # ImageFolder's labels: the class folders in sorted order
    undecodable = {p.split("/", 1)[1] for p in archives.undecodable}
    for split in ("train", "val"):
        tree = engine.paths.tree / split
        files = {(p.parent.name, p.name): p.read_bytes() for p in tree.glob("*/*")}
        by_record = {}
        for line in (engine.paths.recordio / f"{split}.lst").read_text().splitlines():
            record_id, _, relpath = line.split("\t")
            by_record[int(record_id)] = tuple(relpath.split("/"))
        want = {by_record[record_id]: (label, image) for record_id, label, image in records(engine, split)}
        assert set(files) == set(want)
        for (wnid, name), data in files.items():
            assert wnids.index(wnid) == want[(wnid, name)][0] and data == want[(wnid, name)][1]
    assert not {f"{p.parent.name}/{p.name}" for p in (engine.paths.tree / "train").glob("*/*")} & undecodable


def test_the_tree_carries_what_torchvision_imagenet_loads(packed: tuple[Engine, dict[str, Any]],
                                                          archives: Generated) -> None:  # fmt: skip
    """``meta.bin`` is torch.save's legacy format: four plain pickles and the storage keys (checked with torch in
    tests/torch); here its object is what torchvision's parse_devkit_archive builds."""
    engine, _ = packed
    devkit = engine.organise()
    with open(engine.paths.tree / META_FILE, "rb") as f:
        magic, protocol, sys_info, obj, storages = (pickle.load(f) for _ in range(5))
        assert f.read() == b""
    assert (magic, protocol, storages, sys_info["little_endian"]) == (0x1950A86A20F9469CFC6C, 1001, [], True)
    wnid_to_classes, val_wnids = obj
    assert wnid_to_classes == {c.wnid: tuple(c.words.split(", ")) for c in devkit.classes}
    assert val_wnids == devkit.val_wnids and len(val_wnids) == len(archives.val_files)
    devkit_name = next(p.name for p in archives.root.iterdir() if "devkit" in p.name)
    assert (engine.paths.tree / devkit_name).read_bytes() == (archives.root / devkit_name).read_bytes()


def test_every_format_is_backed_up_and_counted(packed: tuple[Engine, dict[str, Any]]) -> None:
    from bootstrap.instance.backup import scan

    engine, summary = packed
    assert summary["formats"] == ["recordio", "webdataset", "tree"]
    backed_up = {f.relpath for f in scan(engine.paths.root)}
    assert {"webdataset/train-000000.tar", "webdataset/val.shards.json", "imagenet/meta.bin"} <= backed_up
    assert sum(r.startswith("imagenet/train/") for r in backed_up) == summary["splits"]["train"]["packed"]


def _copy(engine: Engine, tmp_path: Path) -> Engine:
    shutil.copytree(engine.paths.root, tmp_path / "data", symlinks=True)
    return Engine(PrepConfig(**{**engine.config.__dict__, "data_dir": tmp_path / "data"}))


def _tamper_shard(engine: Engine) -> None:
    """One byte of the first image in the train shard flipped, the tar still well formed."""
    path = engine.paths.webdataset / "train-000000.tar"
    data = bytearray(path.read_bytes())
    data[512 + 100] ^= 0xFF  # inside the first member's data (after its 512-byte header)
    path.write_bytes(bytes(data))


def _stray_tree_file(engine: Engine) -> None:
    folder = next((engine.paths.tree / "train").iterdir())
    (folder / "stray.JPEG").write_bytes(b"not packed")


def _missing_tree_file(engine: Engine) -> None:
    next((engine.paths.tree / "val").glob("*/*")).unlink()


def _relabelled_sample(engine: Engine) -> None:
    path = engine.paths.webdataset / "val-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            relabel = member.name.endswith(".cls") and not data.startswith(b"7")
            member.size = 1 if relabel else member.size
            tar.addfile(member, io.BytesIO(b"7" if relabel else data))


@pytest.mark.parametrize("damage, message", [(_tamper_shard, "is not the image in its record"),
                                             (_stray_tree_file, "holds 47 files but 46"),
                                             (_missing_tree_file, "missing"),
                                             (_relabelled_sample, "its record says")])  # fmt: skip
def test_verify_reads_every_shard_member_and_tree_file(packed: tuple[Engine, dict[str, Any]], tmp_path: Path,
                                                       damage: Any, message: str) -> None:  # fmt: skip
    engine = _copy(packed[0], tmp_path)
    engine.verify(again=True)
    damage(engine)
    with pytest.raises(VerifyError, match=message):
        engine.verify(again=True)


def _item(record_id: int, size: int) -> Item:
    return Item(record_id, record_id % 3, f"n0{record_id % 3}/img_{record_id}.JPEG", bytes([record_id % 251]) * size)


def test_shards_roll_over_at_their_size_and_resume_byte_identically(tmp_path: Path) -> None:
    items = [_item(i, 700 + 97 * i) for i in range(30)]
    shard_bytes = 8 * 1024

    def write(directory: Path, stop_at: int | None = None) -> dict[str, Any] | None:
        sink, state = ShardSink(directory, "train", shard_bytes), None
        for n, item in enumerate(items):
            sink.add(item)
            if n == 11:
                state = sink.sync()
            if n == stop_at:
                return state  # killed: what was written after the checkpoint stays on disk, half done
        sink.close()
        return None

    write(tmp_path / "ref")
    shards = sorted((tmp_path / "ref").glob("*.tar"))
    assert len(shards) > 3
    for shard in shards:
        assert shard.stat().st_size <= shard_bytes and shard.read_bytes().endswith(END_OF_ARCHIVE)
        with tarfile.open(shard) as tar:
            assert len(tar.getnames()) % 3 == 0 and tar.getnames()
    index = json.loads((tmp_path / "ref" / "train.shards.json").read_text())
    assert index["samples"] == 30 and index["pattern"] == shard_pattern("train", len(shards))
    assert index["pattern"] == f"train-{{000000..{len(shards) - 1:06d}}}.tar"

    state = write(tmp_path / "killed", stop_at=25)  # killed two shards after its last checkpoint
    assert state is not None and state["shard"] < len(shards) - 1
    resumed = ShardSink(tmp_path / "killed", "train", shard_bytes, state)
    for item in items[12:]:
        resumed.add(item)
    resumed.close()
    assert {p.name: p.read_bytes() for p in (tmp_path / "killed").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "ref").iterdir()}  # fmt: skip


def test_a_sample_is_its_three_members_with_fixed_metadata() -> None:
    sample = encode_sample(_item(5, 1000))
    with tarfile.open(fileobj=io.BytesIO(sample + END_OF_ARCHIVE)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["00000005.jpg", "00000005.cls", "00000005.json"]
        assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}
        assert tar.extractfile(members[1]).read() == b"2"  # type: ignore[union-attr]


def test_formats_parse_with_recordio_always_and_keep_tree_as_an_alias(tmp_path: Path) -> None:
    assert PrepConfig(data_dir=tmp_path).output_formats == ("recordio",)
    assert PrepConfig(data_dir=tmp_path, formats="tree, webdataset").output_formats == ("recordio", "webdataset",
                                                                                          "tree")  # fmt: skip
    assert PrepConfig(data_dir=tmp_path, keep_tree=True).output_formats == ("recordio", "tree")
    with pytest.raises(ConfigError, match=r"formats: 'recordio,lmdb' .*comma-separated list of recordio, webdataset"):
        PrepConfig(data_dir=tmp_path, formats="recordio,lmdb")


def test_a_checkpoint_from_before_the_formats_is_packed_again_not_a_crash(packed: tuple[Engine, dict[str, Any]],
                                                                          tmp_path: Path) -> None:  # fmt: skip
    engine = _copy(packed[0], tmp_path)
    want = {p.name: p.read_bytes() for p in engine.paths.webdataset.iterdir()}
    engine.markers.clear("pack-val")
    work = engine.paths.pack_work("val")
    work.root.mkdir(parents=True)
    old = {"phase": "finishing", "outputs": ["val.rec", "val.idx"], "packed": 1, "failed": 0, "settings": {}}
    work.checkpoint.write_text(json.dumps(old))  # what the version before the formats left half-moved
    engine.pack()
    assert {p.name: p.read_bytes() for p in engine.paths.webdataset.iterdir()} == want
