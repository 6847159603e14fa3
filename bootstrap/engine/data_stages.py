"""The data path's stages: fetch, organise, pack, verify, inspect.

The organising of images into classes happens inside pack's single archive
pass: reading the 140 GB train archive twice (once to sort, once to pack)
would double the slowest part of the job on an sc1 disk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bootstrap.common.aws import secret_string
from bootstrap.common.errors import ArchiveError, BootstrapError, ConfigError, FetchError
from bootstrap.common.state import atomic_write_bytes, atomic_write_json, read_state
from bootstrap.dataset.archives import HUB_SCHEME
from bootstrap.dataset.devkit import Devkit, SynsetClass, bundled_classes, read_devkit
from bootstrap.dataset.streams import StreamFactory, shard_stream, train_stream, val_stream
from bootstrap.engine.context import SPLITS, StageContext
from bootstrap.engine.following import BackgroundFetch, discard
from bootstrap.engine.options import fetch_options, pack_options
from bootstrap.fetch.download import fetch_all
from bootstrap.fetch.sources import open_source, resolve_credentials
from bootstrap.layout import pack_marker
from bootstrap.pack.contact_sheet import contact_sheet
from bootstrap.pack.packer import PackReport, SplitJob, pack_split
from bootstrap.pack.plan import part_names
from bootstrap.pack.tree import TreeWriter, write_tree_meta
from bootstrap.pack.verify import check_failures, verify_split
from bootstrap.pack.verify_formats import verify_shards, verify_tree

log = logging.getLogger("bootstrap.engine")


def fetch(ctx: StageContext) -> None:
    if ctx.done("fetch", "fetch") is not None:
        log.info("fetch: every archive is here and verified")
        return

    def body() -> None:
        config = ctx.config
        if not config.source:
            raise ConfigError("no source configured: set 'source' (https:// URL, s3:// prefix or directory)")
        hub = config.source.startswith(HUB_SCHEME)
        if hub and not ctx.dataset.sharded:
            raise ConfigError(f"source {config.source} serves WebDataset shards: set dataset_table to the shard "
                              f"table `python -m scripts hub-table {config.source}` writes")  # fmt: skip
        credentials = resolve_credentials(
            config.source_secret, fetch_secret=lambda name: secret_string(name, ctx.client("secretsmanager")), hub=hub
        )
        source = open_source(config.source, credentials, s3=lambda: ctx.client("s3"),
                             stall_seconds=config.stall_seconds, revision=ctx.dataset.revision)  # fmt: skip
        paths = fetch_all(source, ctx.dataset, ctx.paths.archives, fetch_options(config), status=ctx.status)
        pinned = {"shards": len(paths)} if ctx.dataset.sharded else {a.role: a.md5 for a in ctx.dataset.files()}
        ctx.record("fetch", "fetch", pinned, paths.values())

    ctx.stage("fetch", body)


def load_classes(ctx: StageContext) -> Devkit:
    """The classes in sorted-WNID order and the validation labels: saved by organise, else read from the devkit."""
    saved = read_state(ctx.paths.classes) if ctx.done("organise", "organise") is not None else None
    try:
        if saved is not None:
            return Devkit([SynsetClass(**c) for c in saved["classes"]], list(saved["val_wnids"]))
    except (KeyError, TypeError) as e:
        log.warning("%s is not a class table (%s); reading the devkit again", ctx.paths.classes, e)
    # the hub's shards carry their labels, in the order of ILSVRC2012's classes, which we bundle
    devkit = Devkit(bundled_classes(), []) if ctx.dataset.sharded else read_devkit(ctx.require_archive("devkit"))
    expected_classes, expected_val = ctx.dataset.classes, None if ctx.dataset.sharded else ctx.dataset.val_images
    if expected_classes is not None and len(devkit.classes) != expected_classes:
        raise ArchiveError(
            f"the devkit lists {len(devkit.classes)} leaf classes but the dataset table promises "
            f"{expected_classes}; the devkit or the table is wrong"
        )
    if expected_val is not None and len(devkit.val_wnids) != expected_val:
        raise ArchiveError(
            f"the devkit's ground truth has {len(devkit.val_wnids)} lines but the dataset table "
            f"promises {expected_val} validation images"
        )
    synsets = "".join(f"{c.wnid}\t{c.label}\t{c.words}\n" for c in devkit.classes)
    atomic_write_bytes(ctx.paths.synsets, synsets.encode())
    classes = [dataclasses.asdict(c) for c in devkit.classes]
    atomic_write_json(ctx.paths.classes, {"classes": classes, "val_wnids": devkit.val_wnids})
    ctx.record("organise", "organise", {"classes": len(devkit.classes), "val": len(devkit.val_wnids)},
               [ctx.paths.classes, ctx.paths.synsets])  # fmt: skip
    log.info("organise: %d classes, %d validation labels", len(devkit.classes), len(devkit.val_wnids))
    return devkit


def organise(ctx: StageContext) -> Devkit:
    return ctx.stage("organise", lambda: load_classes(ctx))


def pack(ctx: StageContext, following: BackgroundFetch | None = None) -> dict[str, PackReport]:
    """Pack each split; with ``following``, from its archive while it downloads (accepted once its MD5 matches)."""

    def body() -> dict[str, PackReport]:
        devkit = load_classes(ctx)
        classes = devkit.by_wnid()
        max_image = ctx.config.max_image_mib << 20
        tree = "tree" in ctx.config.output_formats
        if tree:  # what torchvision's ImageNet needs beside the class folders
            write_tree_meta(ctx.paths.tree, devkit, None if ctx.dataset.sharded else ctx.require_archive("devkit"))
        reports = {}
        for split in SPLITS:
            follow = following if following is not None and not following.verified(split) else None
            expected = ctx.dataset.train_images if split == "train" else ctx.dataset.val_images
            stream: StreamFactory
            if ctx.dataset.sharded:
                stream, size = _shard_input(ctx, split, devkit, max_image, follow)
            else:
                path = ctx.archive(split) if follow else ctx.require_archive(split)
                opener = follow.opener(split) if follow else None
                if split == "train":
                    stream = partial(train_stream, path, classes, max_image, opener=opener)
                else:
                    stream = partial(val_stream, path, classes, devkit.val_wnids, max_image, opener=opener)
                size = follow.size(split) if follow else os.path.getsize(path)
            job = SplitJob(split, stream, size, expected, ctx.paths.recordio,
                           ctx.paths.pack_work(split), pack_options(ctx.config, split), ctx.status,
                           TreeWriter(ctx.paths.tree / split) if tree else None, settings=ctx.bound("pack"),
                           rebuild=ctx.force, shard_dir=ctx.paths.webdataset)  # fmt: skip
            done = ctx.done(pack_marker(split), "pack")
            prior = PackReport(**_report_fields(done)) if done is not None else None
            record = partial(_record_pack, ctx)
            reports[split] = _pack_following(follow, job, prior, record) if follow else pack_split(job, prior, record)
        return reports

    return ctx.stage("pack", body)


def _shard_input(ctx: StageContext, split: str, devkit: Devkit, max_image: int, follow: BackgroundFetch | None,
                 ) -> tuple[StreamFactory, int]:  # fmt: skip
    """``split``'s shards as one stream (each opened once verified, when following the fetch), and their size."""
    specs = ctx.dataset.split_files(split)
    paths = [ctx.paths.archives / spec.name if follow else ctx.require_file(spec.name) for spec in specs]
    sizes = [int(spec.size or 0) for spec in specs]  # pinned by the table
    opener = follow.shard_opener(split) if follow else None
    stream = partial(shard_stream, paths, sizes, devkit.classes, max_image, opener=opener)
    return stream, sum(sizes)


def _pack_following(following: BackgroundFetch, job: SplitJob, prior: PackReport | None,
                    record: Callable[[PackReport], None]) -> PackReport:  # fmt: skip
    """``pack_split`` on an archive still downloading: recorded only once the archive verifies; thrown away if the
    download fails, before or after the pack finished reading.  Shards are read only once verified, so a failed
    download of one leaves the pack's checkpoint to resume from."""

    def verified_then_record(report: PackReport) -> None:
        following.wait_verified(job.split)
        record(report)

    try:
        return pack_split(job, prior, verified_then_record)
    except BaseException as e:
        if following.error is None and not isinstance(e, FetchError):
            raise  # the pack's own failure: its checkpoint stays, to resume from
        if not following.ctx.dataset.sharded:
            discard(following.ctx, job.split, job.work.root)
        if following.error is not None:
            raise following.error from None  # the download's own error (a wrong MD5, a source that gave up)
        raise


def _report_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {f.name: info[f.name] for f in dataclasses.fields(PackReport) if f.name in info}


def _record_pack(ctx: StageContext, report: PackReport) -> None:
    outputs = [ctx.paths.recordio / name for name in (*report.outputs, report.failures_file)]
    outputs += [ctx.paths.webdataset / name for name in report.shards]
    ctx.record(pack_marker(report.split), "pack", dataclasses.asdict(report), outputs,
               accepted={"max_failure_rate": ctx.config.max_failure_rate})  # fmt: skip


def pack_report(ctx: StageContext, split: str, *, check_outputs: bool = True) -> PackReport:
    info = ctx.done(pack_marker(split), "pack", check_outputs=check_outputs)
    if info is None:
        raise BootstrapError(f"{split} is not packed yet: run the pack stage first")
    return PackReport(**_report_fields(info))


def verify(ctx: StageContext, *, again: bool = False) -> None:
    """Verify the packed output, unless it was verified and has not changed since (``again``: regardless)."""
    if not again and ctx.done("verify", "verify") is not None:
        log.info("verify: the packed output was verified and has not changed since")
        return

    def body() -> None:
        devkit = load_classes(ctx)
        classes, formats, paths, parts = len(devkit.classes), ctx.config.output_formats, ctx.paths, ctx.config.parts
        verified = []
        for split in SPLITS:
            report = pack_report(ctx, split, check_outputs=False)  # verify reads every byte of them
            verify_split(paths.recordio, split, parts=parts, classes=classes, expected=report.packed,
                         sample_every=ctx.config.sample_every, status=ctx.status)  # fmt: skip
            check_failures(paths.recordio / report.failures_file, report.failed)
            verified += [paths.recordio / name for name in report.outputs]
            if "webdataset" in formats:
                verify_shards(paths.webdataset, paths.recordio, split, parts=parts, expected=report.packed,
                              status=ctx.status)  # fmt: skip
                verified += [paths.webdataset / name for name in report.shards]
            if "tree" in formats:
                verify_tree(paths.tree / split, paths.recordio, split, parts=parts, expected=report.packed,
                            labels={c.wnid: c.label for c in devkit.classes}, status=ctx.status)  # fmt: skip
        ctx.record("verify", "verify", {"formats": list(formats)}, verified)

    ctx.stage("verify", body)


def inspect(ctx: StageContext) -> list[Path]:
    if ctx.done("inspect", "inspect") is not None:
        return [ctx.paths.contact_sheet(split) for split in SPLITS]

    def body() -> list[Path]:
        names = [c.words for c in load_classes(ctx).classes]
        sheets = []
        for split in SPLITS:
            pack_report(ctx, split)
            first = part_names(split, ctx.config.parts)[0]
            out = ctx.paths.contact_sheet(split)
            shown = contact_sheet(ctx.paths.recordio / first.rec, ctx.paths.recordio / first.idx, names, out,
                                  split=split)  # fmt: skip
            log.info("inspect: %s shows %d random %s records with their class names", out, shown, split)
            sheets.append(out)
        ctx.record("inspect", "inspect", {}, sheets)
        return sheets

    return ctx.stage("inspect", body)
