"""The engine end to end on synthetic ILSVRC2012 archives, checked with MXNet's own readers."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bootstrap.common.errors import ArchiveError, PackError
from bootstrap.engine import Engine
from bootstrap.settings import PrepConfig
from scripts.synthetic_imagenet import Generated, Spec, generate

RESIZE = 64


def config(data: Path, archives: Generated, **overrides: Any) -> PrepConfig:
    values: dict[str, Any] = {
        "data_dir": data,
        "source": str(archives.root),
        "dataset_table": archives.table,
        "resize": RESIZE,
        "workers": 2,
        "max_failure_rate": 0.2,
        "checkpoint_seconds": 0.0,
        "bucket_mib": 1,
        "sample_every": 1,
    }
    values.update(overrides)
    return PrepConfig(**values)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def packed(archives: Generated, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, dict[str, Any]]:
    engine = Engine(config(tmp_path_factory.mktemp("data"), archives))
    return engine, engine.run()


def read_all(rec: Path) -> list[tuple[Any, bytes]]:
    import mxnet as mx

    reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
    return [mx.recordio.unpack(reader.read_idx(key)) for key in reader.keys]


def test_every_image_is_packed_or_listed(packed: tuple[Engine, dict[str, Any]], archives: Generated) -> None:
    engine, summary = packed
    out = engine.paths.recordio
    undecodable = {p.split("/", 1)[1] for p in archives.undecodable}
    failures = (out / "failures_train.tsv").read_text().splitlines()[1:]
    assert {line.split("\t")[1] for line in failures} == undecodable
    assert summary["splits"]["train"]["packed"] == len(archives.train_files) - len(undecodable)
    assert summary["splits"]["val"] == {**summary["splits"]["val"], "packed": len(archives.val_files), "failed": 0}
    lst_paths = {line.split("\t")[2] for line in (out / "train.lst").read_text().splitlines()}
    assert lst_paths | undecodable == set(archives.train_files)


def test_labels_follow_sorted_wnids_and_devkit_ground_truth(
    packed: tuple[Engine, dict[str, Any]], archives: Generated
) -> None:
    engine, _ = packed
    out = engine.paths.recordio
    wnids = sorted(archives.wnids)
    for split, truth in (("train", {p: p.split("/")[0] for p in archives.train_files}),
                         ("val", {f"{w}/{n}": w for n, w in archives.val_files.items()})):  # fmt: skip
        lst = {int(i): (float(label), path) for i, label, path in
               (line.split("\t") for line in (out / f"{split}.lst").read_text().splitlines())}  # fmt: skip
        records = read_all(out / f"{split}.rec")
        assert len(records) == len(lst)
        for header, _image in records:
            label, path = lst[header.id]
            assert header.label == label == wnids.index(truth[path])
    assert (out / "synsets.txt").read_text().splitlines()[0].split("\t")[:2] == [wnids[0], "0"]


def test_train_is_shuffled_deterministically_and_val_keeps_order(packed: tuple[Engine, dict[str, Any]]) -> None:
    engine, _ = packed
    out = engine.paths.recordio
    train_ids = [int(line.split("\t")[0]) for line in (out / "train.lst").read_text().splitlines()]
    val_ids = [int(line.split("\t")[0]) for line in (out / "val.lst").read_text().splitlines()]
    assert train_ids != sorted(train_ids)
    assert val_ids == sorted(val_ids)


def test_image_record_iter_reads_with_and_without_idx_and_in_parts(packed: tuple[Engine, dict[str, Any]]) -> None:
    import mxnet as mx

    engine, summary = packed
    rec = engine.paths.recordio / "train.rec"
    total = summary["splits"]["train"]["packed"]

    def count(**kwargs: Any) -> int:
        it = mx.io.ImageRecordIter(path_imgrec=str(rec), data_shape=(3, 32, 32), batch_size=4, resize=40, **kwargs)
        return sum(batch.data[0].shape[0] - batch.pad for batch in it)

    assert count() == total
    assert count(path_imgidx=str(rec.with_suffix(".idx")), shuffle=True) == total
    halves = [count(path_imgidx=str(rec.with_suffix(".idx")), num_parts=2, part_index=i) for i in range(2)]
    assert sum(halves) == total and all(halves)


def test_awkward_images_are_stored_as_decodable_rgb(packed: tuple[Engine, dict[str, Any]], archives: Generated) -> None:
    import cv2
    import numpy as np

    engine, _ = packed
    ids = {line.split("\t")[2]: int(line.split("\t")[0])
           for line in (engine.paths.recordio / "train.lst").read_text().splitlines()}  # fmt: skip
    records = {h.id: img for h, img in read_all(engine.paths.recordio / "train.rec")}
    for case in ("cmyk", "png", "gray", "exif_rotated", "progressive"):
        image = records[ids[archives.awkward[case].split("/", 1)[1]]]
        assert image[:3] == b"\xff\xd8\xff", case
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.ndim == 3 and decoded.shape[2] == 3 and min(decoded.shape[:2]) <= RESIZE, case


def test_rerun_after_success_does_nothing(packed: tuple[Engine, dict[str, Any]]) -> None:
    engine, summary = packed
    before = digests(engine.paths.recordio)
    assert Engine(engine.config).run() == summary
    assert digests(engine.paths.recordio) == before


def test_contact_sheet_has_a_title_gaps_and_a_full_caption_per_tile(packed: tuple[Engine, dict[str, Any]]) -> None:
    import cv2

    from bootstrap.pack.contact_sheet import BACKGROUND, GAP, LINE, TILE, WRAP, Sample

    engine, summary = packed
    sheet = cv2.imread(str(engine.paths.recordio / "contact_sheet_train.png"))
    shown = min(48, summary["splits"]["train"]["packed"])
    assert sheet is not None and sheet.shape[1] == min(8, shown) * (TILE + GAP) + GAP
    gaps = sheet[2 * LINE + GAP :, GAP + TILE : 2 * GAP + TILE]  # below the title, between the first two tiles
    assert (gaps == BACKGROUND).all()
    assert (sheet[: 2 * LINE, : 20 * GAP] != BACKGROUND).any()  # a title line above the tiles
    name = "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"
    caption = Sample(record_id=1234, label=2, class_name=name, image=b"").caption()
    assert caption[0] == "#1234  label 2"  # the record id, then the whole name wrapped, never cut at 24 characters
    assert " ".join(caption[1:]) == name and all(len(line) <= WRAP for line in caption)


def test_parts_have_their_own_idx_and_a_global_idx(archives: Generated, tmp_path: Path) -> None:
    import mxnet as mx

    engine = Engine(config(tmp_path, archives, parts=3))
    summary = engine.run()
    out = engine.paths.recordio
    sizes = [len(read_all(out / f"train_{i}.rec")) for i in range(3)]
    assert sum(sizes) == summary["splits"]["train"]["packed"] and max(sizes) - min(sizes) <= 1
    # The global idx addresses the parts as one concatenated file (DALI's multi-file form).
    joined = tmp_path / "joined.rec"
    joined.write_bytes(b"".join((out / f"train_{i}.rec").read_bytes() for i in range(3)))
    (tmp_path / "joined.idx").write_text((out / "train.global.idx").read_text())
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "joined.idx"), str(joined), "r")
    assert len(reader.keys) == sum(sizes)
    assert {mx.recordio.unpack(reader.read_idx(k))[0].id for k in reader.keys} == set(reader.keys)


def test_failures_over_threshold_fail_then_pass_when_accepted(archives: Generated, tmp_path: Path) -> None:
    with pytest.raises(PackError, match=r"2 of \d+ images could not be packed.*failures_train.tsv"):
        Engine(config(tmp_path, archives, max_failure_rate=0.001)).run()
    packed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "recordio").glob("*.rec")}
    Engine(config(tmp_path, archives, max_failure_rate=0.1)).run()
    # accepted without repacking: the very same files, untouched
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "recordio").glob("*.rec")} == packed
    assert set(packed) == {"train.rec", "val.rec"}


def test_count_mismatch_is_an_error_and_nothing_is_marked(archives: Generated, tmp_path: Path) -> None:
    table = json.loads(archives.table.read_text())
    table["counts"]["train"] += 1
    wrong = tmp_path / "table.json"
    wrong.write_text(json.dumps(table))
    engine = Engine(config(tmp_path / "data", archives, dataset_table=wrong))
    with pytest.raises(ArchiveError, match="holds 48 images but the dataset table promises 49"):
        engine.run()
    assert not engine.markers.is_done("pack-train")


def test_keep_tree_writes_the_packed_images_and_never_a_failed_one(archives: Generated, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    engine = Engine(config(tmp_path, archives, keep_tree=True))
    summary = engine.run()
    tree = engine.paths.tree
    train = {f"{p.parent.name}/{p.name}": p for p in (tree / "train").glob("*/*")}
    undecodable = {p.split("/", 1)[1] for p in archives.undecodable}
    assert undecodable and set(train) == set(archives.train_files) - undecodable  # what ImageFolder reads decodes
    assert len(train) == summary["splits"]["train"]["packed"]
    assert {p.name for p in (tree / "val").glob("*/*")} == set(archives.val_files)
    for name, wnid in archives.val_files.items():
        assert (tree / "val" / wnid / name).exists()
    stored = {image for _, image in read_all(engine.paths.recordio / "train.rec")}
    for path in train.values():  # the same transcoded bytes as the records: resized, 3-channel JPEG
        data = path.read_bytes()
        assert data in stored
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.ndim == 3 and min(image.shape[:2]) <= RESIZE


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


KILL_AT = {
    "pass one": lambda ckpt: ckpt["phase"] == 1 and ckpt["cursor"]["next_id"] > 40,
    "pass two": lambda ckpt: ckpt["phase"] == 2 and ckpt["next_bucket"] >= 1,
}


@pytest.mark.parametrize("moment", KILL_AT)
def test_kill_9_during_pack_resumes_to_identical_output(moment: str, tmp_path: Path) -> None:
    archives = generate(tmp_path / "src", Spec(classes=6, train_per_class=40, val_per_class=2, seed=5))
    reference = Engine(config(tmp_path / "ref", archives, formats="webdataset,tree"))
    reference.run()

    data = tmp_path / "killed"  # every format; --keep-tree is the alias for adding tree
    cfg = config(data, archives, workers=1, bucket_mib=1, formats="webdataset", keep_tree=True)
    argv = [sys.executable, "-m", "bootstrap", "pack", "--data-dir", str(data),
            "--dataset-table", str(archives.table), "--resize", str(RESIZE), "--workers", "1",
            "--max-failure-rate", "0.2", "--checkpoint-seconds", "0", "--bucket-mib", "1", "--keep-tree",
            "--formats", "webdataset"]  # fmt: skip
    Engine(cfg).fetch()
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    ckpt_path = data / ".state" / "pack-train" / "checkpoint.json"
    killed = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            ckpt = json.loads(ckpt_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            ckpt = None
        if ckpt and KILL_AT[moment](ckpt):
            helpers = descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.wait()
    assert killed, f"pack finished before reaching {moment}; make the data set larger"
    assert helpers, "the packer should have a fork server and workers"
    deadline = time.monotonic() + 10
    while [p for p in helpers if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in helpers if Path(f"/proc/{p}").exists()], "workers outlived the killed packer"
    Engine(cfg).run()
    assert digests(data / "recordio") == {k: v for k, v in digests(reference.paths.recordio).items()}
    assert digests(data / "webdataset") == digests(reference.paths.webdataset)
    for split in ("train", "val"):  # the class tree too: every packed image once, the same bytes
        tree, want = data / "imagenet" / split, reference.paths.tree / split
        assert {f.relative_to(tree): f.read_bytes() for f in tree.rglob("*.JPEG")} == {
            f.relative_to(want): f.read_bytes() for f in want.rglob("*.JPEG")}  # fmt: skip
