"""The engine: every stage against one data directory, each resumable and skipped once its marker says done.

    fetch     archives from the source, size + MD5 verified
    organise  devkit -> classes in sorted-WNID order, val labels, synsets.txt,
              counts checked against the dataset table
    pack      one pass over each image archive -> .rec/.idx/.lst (+ the class
              tree with keep_tree), failures listed with reasons
    verify    every record re-read, offsets and labels checked, a sample decoded
    inspect   a contact-sheet PNG per split
    backup, snapshot, publish: on the download instance (``instance_stages``)

This package is the composition root: the only place that imports from every
program (``dataset``, ``fetch``, ``pack``, ``instance``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bootstrap.dataset.devkit import Devkit
from bootstrap.engine import data_stages, instance_stages
from bootstrap.engine.context import SPLITS, StageContext
from bootstrap.layout import pack_marker
from bootstrap.pack.packer import PackReport
from bootstrap.settings import PrepConfig

log = logging.getLogger(__name__)


class Engine:
    """The stages as methods, for the CLI and tests; each is a plain function of a ``StageContext``."""

    def __init__(self, config: PrepConfig) -> None:
        self.ctx = StageContext.of(config)
        self.config, self.paths, self.markers, self.status = config, self.ctx.paths, self.ctx.markers, self.ctx.status

    def mount_data(self) -> dict[str, Any]:
        return instance_stages.mount_data(self.ctx)

    def fetch(self) -> None:
        data_stages.fetch(self.ctx)

    def organise(self) -> Devkit:
        return data_stages.organise(self.ctx)

    def pack(self) -> dict[str, PackReport]:
        return data_stages.pack(self.ctx)

    def verify(self) -> None:
        data_stages.verify(self.ctx)

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
        """Every stage this configuration asks for, each skipped when already done."""
        if self.markers.is_done("run"):
            log.info("everything is already done (%s); nothing to do", self.markers.root / "run.done")
            return self.summary()
        with instance_stages.status_publisher(self.ctx), instance_stages.heartbeat(self.ctx):
            self.fetch()
            self.organise()
            self.pack()
            self.verify()
            self.inspect()
            if self.config.bucket:
                self.backup()
            if self.config.snapshot_parameter:
                self.snapshot()
                self.publish()
            summary = self.summary()
            self.markers.mark("run", summary)
            self.status.update(stage="run", state="done")
        return summary

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data_dir": str(self.paths.root), "recordio": str(self.paths.recordio), "splits": {}}
        for stage in ("backup", "publish"):
            info = self.markers.info(stage)
            if info:
                out[stage] = info
        for split in SPLITS:
            info = self.markers.info(pack_marker(split))
            if info:
                out["splits"][split] = {
                    "packed": info["packed"],
                    "failed": info["failed"],
                    "files": info["outputs"],
                    "failures": str(self.paths.recordio / info["failures_file"]),
                }
        return out


def describe(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
