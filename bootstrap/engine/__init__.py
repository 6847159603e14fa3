"""The engine: every stage against one data directory, each resumable and skipped once its marker says done.

    fetch     archives from the source, size + MD5 verified
    organise  devkit -> classes in sorted-WNID order, val labels, synsets.txt,
              counts checked against the dataset table
    pack      one pass over each image archive -> .rec/.idx/.lst (+ WebDataset
              shards and the class tree, as ``formats`` asks), failures listed
    verify    every record re-read, offsets and labels checked, a sample decoded;
              every shard member and tree file against its record
    inspect   a contact-sheet PNG per split
    backup, snapshot, publish: on the download instance (``instance_stages``)

This package is the composition root: the only place that imports from every
program (``dataset``, ``fetch``, ``pack``, ``instance``).
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from bootstrap.dataset.devkit import Devkit
from bootstrap.engine import data_stages, following, instance_stages, timeline
from bootstrap.engine.background_backup import BackgroundBackup
from bootstrap.engine.context import SPLITS, STAGE_MARKERS, StageContext
from bootstrap.layout import pack_marker
from bootstrap.pack.packer import PackReport
from bootstrap.settings import PrepConfig

log = logging.getLogger(__name__)


class Engine:
    """The stages as methods, for the CLI and tests; each is a plain function of a ``StageContext``."""

    def __init__(self, config: PrepConfig, *, force: bool = False, rebuild_from: str | None = None,
                 read_only: bool = False) -> None:  # fmt: skip
        self.ctx = StageContext.of(config, force=force, read_only=read_only)
        if rebuild_from is not None:
            log.info("rebuilding from %s: its marker and every later one are cleared", rebuild_from)
            self.ctx.rebuild_from(rebuild_from)
        self.config, self.paths, self.markers, self.status = config, self.ctx.paths, self.ctx.markers, self.ctx.status

    def mount_data(self) -> dict[str, Any]:
        return instance_stages.mount_data(self.ctx)

    def fetch(self) -> None:
        data_stages.fetch(self.ctx)

    def organise(self) -> Devkit:
        return data_stages.organise(self.ctx)

    def pack(self) -> dict[str, PackReport]:
        return data_stages.pack(self.ctx)

    def verify(self, again: bool = True) -> None:
        """Asked for by name, verify reads everything again; as part of ``run`` only when something changed."""
        data_stages.verify(self.ctx, again=again)

    def inspect(self) -> list[Path]:
        return data_stages.inspect(self.ctx)

    def backup(self, verify_only: bool = False) -> dict[str, Any]:
        return instance_stages.backup(self.ctx, verify_only)

    def snapshot(self) -> dict[str, Any]:
        return instance_stages.snapshot(self.ctx, self.images())

    def publish(self) -> dict[str, Any]:
        return instance_stages.publish_snapshot(self.ctx, self.images())

    def images(self) -> dict[str, int]:
        """Packed images per split, as published."""
        return {split: v["packed"] for split, v in self.summary()["splits"].items()}

    def run(self) -> dict[str, Any]:
        """Every stage this configuration asks for, each skipped while its marker still holds (``done``)."""
        if all(self.ctx.done(marker, stage) is not None for marker, stage in self.wanted()):
            log.info("everything is already done (%s); nothing to do", self.paths.root)
        if not self.config.bucket:
            log.info("backup will be skipped: no bucket is set (--bucket, or bucket in the config)")
        if not self.config.snapshot_parameter:
            log.info("snapshot and publish will be skipped: no snapshot parameter is set (--snapshot-parameter, or "
                     "snapshot_parameter in the config)")  # fmt: skip
        with instance_stages.status_publisher(self.ctx), instance_stages.heartbeat(self.ctx):
            self.status.update(stage="run", state="running")
            with self.backing_up_early():
                self.fetch_organise_pack()
                self.verify(again=False)
                self.inspect()
            if self.config.bucket:
                self.backup()
            if self.config.snapshot_parameter:
                self.snapshot()
                self.publish()
            summary = self.summary()
            self.markers.mark("run", summary)
            self.status.update(stage="run", state="done")
            self.draw_timeline()
        return summary

    def backing_up_early(self) -> AbstractContextManager[Any]:
        """With a bucket and ``backup_while_packing``, what is final goes to S3 while the rest is made."""
        if not (self.config.bucket and self.config.backup_while_packing) or self.ctx.read_only:
            return nullcontext()
        if self.ctx.done("backup", "backup") is not None:
            return nullcontext()
        return BackgroundBackup(self.ctx, instance_stages.backup_job(self.ctx))

    def draw_timeline(self) -> None:
        """``timeline.png`` from the status history, and its numbers in the log; a picture never fails the run."""
        if self.ctx.read_only:
            return
        try:
            drawn = timeline.draw(self.paths.status_history, self.paths.timeline)
        except OSError as e:
            log.warning("could not draw the timeline: %s", e)
            return
        if drawn:
            log.info("timeline: %s -> %s", drawn, self.paths.timeline)

    def fetch_organise_pack(self) -> None:
        """One after another; or, with ``follow_download`` and archives still to fetch, pack following the fetch."""
        if not self.config.follow_download or self.ctx.done("fetch", "fetch") is not None:
            self.fetch()
            self.organise()
            self.pack()
            return
        with following.BackgroundFetch(self.ctx, self.fetch) as background:
            try:
                if not self.ctx.dataset.sharded:  # the hub's classes are bundled: no devkit to wait for
                    background.wait_verified("devkit")
                self.organise()
                data_stages.pack(self.ctx, following=background)
            except BaseException as e:
                if e is background.error:  # the download failed, not the pack that followed it: say so last
                    self.status.update(stage="fetch", state="failed", last_error=str(e))
                raise

    def wanted(self) -> list[tuple[str, str]]:
        """(marker, stage) of everything ``run`` does with this configuration."""
        stages = ["fetch", "organise", "pack", "verify", "inspect"]
        stages += ["backup"] if self.config.bucket else []
        stages += ["snapshot", "publish"] if self.config.snapshot_parameter else []
        return [(marker, stage) for stage in stages for marker in STAGE_MARKERS[stage]]

    def summary(self) -> dict[str, Any]:
        formats = self.config.output_formats
        out: dict[str, Any] = {"data_dir": str(self.paths.root), "recordio": str(self.paths.recordio),
                               "formats": list(formats), "splits": {}}  # fmt: skip
        out |= {"webdataset": str(self.paths.webdataset)} if "webdataset" in formats else {}
        out |= {"tree": str(self.paths.tree)} if "tree" in formats else {}
        for stage in ("backup", "publish"):
            info = self.ctx.done(stage, stage)
            if info is not None:
                out[stage] = info
        for split in SPLITS:
            info = self.ctx.done(pack_marker(split), "pack")
            if info is not None:
                out["splits"][split] = {
                    "packed": info["packed"],
                    "failed": info["failed"],
                    "files": info["outputs"],
                    "shards": info.get("shards", []),
                    "failures": str(self.paths.recordio / info["failures_file"]),
                }
        return out


def describe(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
