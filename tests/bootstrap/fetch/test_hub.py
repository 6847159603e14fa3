"""The Hugging Face hub as a source, against a stand-in answering the hub's URL scheme (``tests.fixtures.hub_server``):
the shard table pinned from every page of the file listing, a gated repository's errors, signed redirects that
never see the token and are renewed when they expire, and a whole run from the shards to verified RecordIO and
WebDataset, packed while the shards arrive."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import mxnet as mx
import pytest

from bootstrap.common.errors import ArchiveError, ChecksumError, ConfigError, FetchError
from bootstrap.dataset.archives import dataset_from_dict
from bootstrap.dataset.devkit import bundled_classes
from bootstrap.dataset.streams import END, Cursor, Item, shard_stream
from bootstrap.engine import Engine
from bootstrap.engine.timeline import read_history
from bootstrap.fetch.download import FetchOptions, fetch_archive
from bootstrap.fetch.hub import HubSource
from bootstrap.fetch.sources import Credentials
from bootstrap.layout import failures_name
from bootstrap.settings import PrepConfig
from scripts import cli
from scripts.synthetic_hub import HubRepo, HubSpec, generate
from scripts.synthetic_imagenet import add_member
from tests.bootstrap.pack.test_pack import digests
from tests.bootstrap.test_following import kill_9_while_packing_then_resume
from tests.fixtures.http_server import ServerOptions
from tests.fixtures.hub_server import COMMIT, HubServer

TOKEN = "hf_standin"
OPTS = FetchOptions(connections=2, chunk_size=1 << 20, max_attempts=4, backoff_seconds=0.01)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> HubRepo:
    return generate(tmp_path_factory.mktemp("hub"), HubSpec(classes=8, train_shards=3, val_shards=2, per_shard=12))


@pytest.fixture()
def hub_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("DATASET_SOURCE_TOKEN", raising=False)
    monkeypatch.delenv("DATASET_SOURCE_USERNAME", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return monkeypatch


def pin_table(hub: HubServer, env: pytest.MonkeyPatch, out: Path) -> dict[str, Any]:
    env.setenv("HF_ENDPOINT", hub.endpoint)
    assert cli.run(["hub-table", f"hf://{hub.repo}", "--out", str(out)]) == 0
    return dict(json.loads(out.read_text()))


def test_the_bundled_classes_are_ilsvrc2012s_in_sorted_wnid_order() -> None:
    classes = bundled_classes()
    assert len(classes) == 1000 and len({c.wnid for c in classes}) == 1000
    assert [c.label for c in classes] == list(range(1000))
    assert (classes[0].wnid, classes[0].words) == ("n01440764", "tench, Tinca tinca")
    assert (classes[999].wnid, classes[999].words) == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")
    # the two classes the devkit names alike stay two labels
    assert [c.label for c in classes if c.words == "crane"] == [134, 517]


def test_hub_table_pins_every_shard_of_every_page_at_the_commit(repo: HubRepo, hub_env: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:  # fmt: skip
    with HubServer(repo.root, page_size=3) as hub:
        table = pin_table(hub, hub_env, tmp_path / "table.json")
        assert hub.tree_pages == 3  # 5 shards, _info.json and README.md, 3 a page
    spec = dataset_from_dict(table)
    assert spec.revision == COMMIT and spec.name == "timm/imagenet-1k-wds"
    for split in ("train", "val"):
        pinned = [(s.name, s.size, s.sha256) for s in spec.shards[split]]
        assert pinned == [(p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
                          for p in repo.shards(split)]  # fmt: skip
    # the counts come from the repository's _info.json, served by the hub itself (not through the CDN)
    assert (spec.train_images, spec.val_images, spec.classes) == (36, 24, 1000)


@pytest.mark.parametrize(("token", "status", "advice"), [
    (None, "401", "set HF_TOKEN"),
    ("hf_someone_else", "403", "accept the dataset's terms at https://huggingface.co/datasets/timm/imagenet-1k-wds"),
])  # fmt: skip
def test_a_gated_repository_says_what_to_do(repo: HubRepo, tmp_path: Path, token: str | None, status: str,
                                            advice: str) -> None:  # fmt: skip
    with HubServer(repo.root) as hub:
        source = HubSource(hub.repo, COMMIT, Credentials(token=token), endpoint=hub.endpoint)
        spec = dataset_from_dict(table_of(repo)).shards["val"][0]
        with pytest.raises(FetchError) as raised:
            fetch_archive(source, spec, tmp_path, OPTS, sleep=lambda _: None)
    assert f"HTTP {status}" in str(raised.value) and advice in str(raised.value)
    assert "hf_someone_else" not in str(raised.value)


def table_of(repo: HubRepo) -> dict[str, Any]:
    def entry(path: Path) -> dict[str, Any]:
        return {"name": path.name, "size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    shards = {split: [entry(p) for p in repo.shards(split)] for split in ("train", "val")}
    counts = {"train": len(repo.labels["train"]), "val": len(repo.labels["val"]), "classes": 1000}
    return {"name": "timm/imagenet-1k-wds", "layout": "webdataset", "revision": COMMIT, "shards": shards,
            "counts": counts}  # fmt: skip


def test_signed_urls_are_reused_renewed_when_they_expire_and_never_see_the_token(repo: HubRepo,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    slow = ServerOptions(bytes_per_second=64 << 10)  # 170 KB a shard: ~1 MiB chunks take longer than the URL lives
    shard = repo.shards("train")[0]
    spec = dataset_from_dict(table_of(repo)).shards["train"][0]
    opts = FetchOptions(connections=1, chunk_size=1 << 20, max_attempts=4, backoff_seconds=0.01)
    with HubServer(repo.root, ttl_seconds=0.5, cdn=slow) as hub:
        source = HubSource(hub.repo, COMMIT, Credentials(token=TOKEN), endpoint=hub.endpoint)
        # two small ranges within the signed URL's life: one resolve
        assert b"".join(source.read(shard.name, 0, 512)) == shard.read_bytes()[:512]
        assert b"".join(source.read(shard.name, 512, 1024)) == shard.read_bytes()[512:1024]
        assert hub.resolves == {shard.name: 1}
        time.sleep(0.6)  # expired now: the CDN refuses it, the hub is asked again, the range fetched in full
        path = fetch_archive(source, spec, tmp_path, opts, sleep=lambda _: None)
        assert hub.refusals["expired"] >= 1 and hub.resolves[shard.name] >= 2
        assert hub.refusals["token"] == 0 and hub.refusals["forged"] == 0
    assert path.read_bytes() == shard.read_bytes()


def test_a_renamed_repository_is_followed_on_the_hub_and_the_token_stays_there(repo: HubRepo, tmp_path: Path) -> None:
    spec = dataset_from_dict(table_of(repo)).shards["val"][0]
    with HubServer(repo.root, renamed_from="timm/old-name") as hub:
        source = HubSource("timm/old-name", COMMIT, Credentials(token=TOKEN), endpoint=hub.endpoint)
        path = fetch_archive(source, spec, tmp_path, OPTS, sleep=lambda _: None)
        assert hub.resolves == {spec.name: 1} and hub.refusals == {"expired": 0, "forged": 0, "token": 0}
    assert path.read_bytes() == (repo.root / spec.name).read_bytes()


def test_a_shard_the_hub_serves_with_other_bytes_is_refused(repo: HubRepo, tmp_path: Path) -> None:
    table = table_of(repo)
    table["shards"]["val"][0]["sha256"] = "0" * 64
    spec = dataset_from_dict(table).shards["val"][0]
    with HubServer(repo.root) as hub:
        source = HubSource(hub.repo, COMMIT, Credentials(token=TOKEN), endpoint=hub.endpoint)
        with pytest.raises(ChecksumError, match=r"SHA256 is .* but the dataset table pins 0{64}"):
            fetch_archive(source, spec, tmp_path, OPTS, sleep=lambda _: None)
    assert not (tmp_path / spec.name).exists()


# -- reading shards ------------------------------------------------------------------------------------------------


def shard_of(tmp_path: Path, members: list[tuple[str, bytes]]) -> Path:
    path = tmp_path / "imagenet1k-train-0000.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add_member(tar, name, data)
    return path


def items(paths: list[Path], start: Cursor | None = None) -> list[Item | Cursor]:
    return list(shard_stream(paths, [p.stat().st_size for p in paths], bundled_classes(), 1 << 20, start))


def test_shards_read_as_one_stream_resume_at_any_cursor(repo: HubRepo) -> None:
    paths = repo.shards("train")
    everything = items(paths)
    images = [obj for obj in everything if isinstance(obj, Item)]
    assert [i.label for i in images] == repo.labels["train"] and [i.id for i in images] == list(range(36))
    classes = bundled_classes()
    assert all(i.relpath.startswith(classes[i.label].wnid + "/") and i.relpath.endswith(".JPEG") for i in images)
    cursors = [obj for obj in everything if isinstance(obj, Cursor)]
    assert cursors[-1].offset == END
    for cursor in cursors[1:-1:5]:  # inside a shard, and at the first sample of the next
        rest = [obj for obj in items(paths, cursor) if isinstance(obj, Item)]
        assert rest == images[cursor.next_id :]


def test_a_json_label_that_is_not_a_number_is_not_taken_for_one(tmp_path: Path) -> None:
    meta = b'{"label": "n01491361", "filename": "n01491361_7.JPEG"}'
    path = shard_of(tmp_path, [("a.jpg", b"x"), ("a.cls", b"3"), ("a.json", meta)])
    (item,) = [obj for obj in items([path]) if isinstance(obj, Item)]
    assert (item.label, item.relpath, item.data) == (3, "n01491361/n01491361_7.JPEG", b"x")


@pytest.mark.parametrize(("members", "message"), [
    ([("a.jpg", b"x"), ("a.cls", b"1000")], "label 1000 is outside the 1000 classes"),
    ([("a.jpg", b"x"), ("a.cls", b"3"), ("a.json", b'{"label": 4}')], ".json says label 4 but .cls says 3"),
    ([("a.jpg", b"x")], "lacks its label"),
    ([("a.cls", b"3")], "lacks its image"),
    ([("../../etc/a.jpg", b"x"), ("../../etc/a.cls", b"3")], "unsafe path"),
])  # fmt: skip
def test_a_damaged_or_malicious_shard_is_refused_by_name(tmp_path: Path, members: list[tuple[str, bytes]],
                                                         message: str) -> None:  # fmt: skip
    path = shard_of(tmp_path, members)
    with pytest.raises(ArchiveError, match=message.replace(".", r"\.")) as raised:
        items([path])
    assert path.name in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written beside it


# -- a whole run ------------------------------------------------------------------------------------------------------


def test_a_run_from_the_hub_packs_each_shard_as_it_arrives(repo: HubRepo, hub_env: pytest.MonkeyPatch, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    slow = ServerOptions(bytes_per_second=256 << 10)
    with HubServer(repo.root, cdn=slow) as hub:
        pin_table(hub, hub_env, tmp_path / "table.json")
        config = PrepConfig(data_dir=tmp_path / "data", source=f"hf://{hub.repo}",
                            dataset_table=tmp_path / "table.json", resize=64, workers=1, max_failure_rate=0.2,
                            checkpoint_seconds=0.0, connections=2, chunk_mib=1, formats="webdataset")  # fmt: skip
        engine = Engine(config)
        engine.run()
        assert hub.refusals == {"expired": 0, "forged": 0, "token": 0}
    history = read_history(engine.paths.status_history)
    fetch_end = max(h["t"] for h in history if h["stage"] == "fetch 5 shards")
    assert min(h["t"] for h in history if h["stage"] == "pack train") < fetch_end
    classes = bundled_classes()
    for split in ("train", "val"):
        lst = (engine.paths.recordio / f"{split}.lst").read_text().splitlines()
        labels = sorted(int(float(line.split("\t")[1])) for line in lst)
        expected = list(repo.labels[split])
        if split == "train":  # the undecodable sample is listed as failed, not packed
            failures = (engine.paths.recordio / failures_name(split)).read_text()
            assert repo.undecodable[0] in failures
            expected.remove(repo.labels["train"][0])
        assert labels == sorted(expected)
        record = mx.recordio.MXIndexedRecordIO(str(engine.paths.recordio / f"{split}.idx"),
                                               str(engine.paths.recordio / f"{split}.rec"), "r")  # fmt: skip
        header, _ = mx.recordio.unpack(record.read_idx(record.keys[0]))
        assert 0 <= int(header.label) < 8
        record.close()
    assert engine.markers.is_done("verify")  # records, lists and shards checked against each other
    assert engine.paths.synsets.read_text().splitlines()[0] == f"{classes[0].wnid}\t0\t{classes[0].words}"
    assert TOKEN not in caplog.text


def test_an_hf_source_without_its_shard_table_says_how_to_make_one(tmp_path: Path) -> None:
    config = PrepConfig(data_dir=tmp_path, source="hf://timm/imagenet-1k-wds")
    with pytest.raises(ConfigError, match="python -m scripts hub-table hf://timm/imagenet-1k-wds"):
        Engine(config).fetch()


def test_kill_9_while_pack_waits_on_a_shard_resumes_to_the_bytes_of_a_run_from_a_mirror(
    repo: HubRepo, hub_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Killed while pack waits for the next train shard, the run resumes both the fetch and the pack; the result is
    byte for byte that of a run over the same shards from a local mirror (a directory, as an S3 prefix would be)."""
    options = ["--resize", "64", "--workers", "1", "--max-failure-rate", "0.2", "--checkpoint-seconds", "0",
               "--connections", "2", "--chunk-mib", "1", "--formats", "webdataset"]  # fmt: skip
    with HubServer(repo.root, cdn=ServerOptions(bytes_per_second=128 << 10)) as hub:
        table = tmp_path / "table.json"
        pin_table(hub, hub_env, table)
        mirror = tmp_path / "mirror"
        Engine(PrepConfig(data_dir=mirror, source=str(repo.root), dataset_table=table, resize=64, workers=1,
                          max_failure_rate=0.2, checkpoint_seconds=0.0, formats="webdataset")).run()  # fmt: skip
        data = tmp_path / "data"
        argv = [sys.executable, "-m", "bootstrap", "run", "--data-dir", str(data), "--source", f"hf://{hub.repo}",
                "--dataset-table", str(table), *options]  # fmt: skip
        last = data / "archives" / repo.shards("train")[-1].name
        # the first shard packed, the last not yet downloaded
        resumed = kill_9_while_packing_then_resume(argv, data, lambda packed: packed >= 12 and not last.exists())
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming pass one" in resumed.stderr
    for folder in ("recordio", "webdataset"):
        assert digests(data / folder) == digests(mirror / folder)
