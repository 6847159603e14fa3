"""What every stage works with: the settings, the data volume's layout, the dataset, markers and status.

A stage's marker is trusted only while it holds (``done``): made with the
settings in force now (else refused, or cleared with ``--rebuild-from`` /
``--force``), and its outputs still as they were made (else the stage and
everything after it is redone, saying which file changed).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bootstrap.common import aws
from bootstrap.common.aws import resolve_region
from bootstrap.common.errors import ArchiveError, BootstrapError, SettingsChangedError
from bootstrap.common.imds import Imds
from bootstrap.common.progress import StatusFile
from bootstrap.common.state import Markers
from bootstrap.common.storage import storage_error
from bootstrap.dataset.archives import DatasetSpec, load_dataset
from bootstrap.engine.bindings import bound_settings, changed_outputs, fingerprints
from bootstrap.layout import STAGES, DataLayout, fetch_marker, pack_marker
from bootstrap.settings import PrepConfig, differences

T = TypeVar("T")
log = logging.getLogger("bootstrap.engine")
SPLITS = ("val", "train")


RESERVE_BYTES = 256 << 10
RECORD_KEYS = ("settings", "fingerprints", "accepted")
"""What ``record`` adds to a stage's own information (not part of what it reports)."""
STAGE_MARKERS = {"fetch": ("fetch",), "organise": ("organise",), "pack": tuple(pack_marker(s) for s in SPLITS),
                 "verify": ("verify",), "inspect": ("inspect",), "backup": ("backup",), "snapshot": ("snapshot",),
                 "publish": ("publish",)}  # fmt: skip


def made_with(paths: DataLayout) -> dict[str, Any]:
    """The settings the data directory's done stages were made with (a later stage's record wins).

    A single stage run by hand takes these for every setting not given, so ``backup`` after ``run --resize 128``
    does not compare against the default 256 and refuse.
    """
    markers, found = Markers(paths.state), {}
    for stage in STAGES:
        for marker in STAGE_MARKERS[stage]:
            info = markers.info(marker) or {}
            for key in ("settings", "accepted"):
                recorded = info.get(key)
                found.update(recorded if isinstance(recorded, dict) else {})
    found.pop("dataset", None)
    return found


@dataclass
class StageContext:
    config: PrepConfig
    paths: DataLayout
    dataset: DatasetSpec
    markers: Markers
    status: StatusFile
    force: bool = False
    """Rebuild from the first stage whose settings changed, instead of refusing."""
    read_only: bool = False
    """Write nothing (a read-only /data, or a look while another process writes): no markers, no status."""
    _region: str | None = None

    @classmethod
    def of(cls, config: PrepConfig, *, force: bool = False, read_only: bool = False) -> StageContext:
        paths = config.paths
        status = StatusFile(None) if read_only else StatusFile(paths.status, paths.status_history)
        return cls(config, paths, load_dataset(config.dataset_table), Markers(paths.state), status, force,
                   read_only)  # fmt: skip

    def _keep_reserve(self) -> None:
        if self.read_only or self.paths.reserve.exists():
            return
        try:
            self.paths.reserve.parent.mkdir(parents=True, exist_ok=True)
            with open(self.paths.reserve, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError:
            self.paths.reserve.unlink(missing_ok=True)  # the disk is full already: the stage will say so

    # -- markers bound to their settings and outputs ---------------------------------------

    def bound(self, stage: str) -> dict[str, Any]:
        return bound_settings(self.config, self.dataset, stage)

    def record(self, marker: str, stage: str, info: dict[str, Any], outputs: Iterable[Path] = (),
               accepted: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Mark ``marker`` done, with the settings that shaped it and its outputs' fingerprints.

        ``accepted``: settings it passed under that do not shape the output (a failure rate), so they are not
        compared, but a stage run by hand later takes them (``made_with``).
        """
        if self.read_only:
            return
        record = {**info, "settings": self.bound(stage), "fingerprints": fingerprints(self.paths.root, outputs),
                  "accepted": accepted or {}}  # fmt: skip
        self.markers.mark(marker, record)

    def done(self, marker: str, stage: str, *, check_outputs: bool = True) -> dict[str, Any] | None:
        """``marker``'s record if it still holds; ``None`` when it must be (re)done.

        ``check_outputs=False`` trusts the outputs' fingerprints (verify reads every byte instead).
        """
        info = self.markers.info(marker)
        if info is None:
            return None
        changed = differences(info.get("settings"), self.bound(stage))
        if changed and not self.force:
            raise SettingsChangedError(
                f"{marker}: what is in {self.paths.root} was made with other settings ({'; '.join(changed)}). Run "
                f"again with --rebuild-from {stage} to rebuild it and everything after it with these settings "
                "(--force: from wherever settings changed), or go back to the settings it was made with"
            )
        if changed:
            log.warning("%s: settings changed (%s); rebuilding from %s", marker, "; ".join(changed), stage)
            self.rebuild_from(stage)
            return None
        broken = changed_outputs(self.paths.root, info.get("fingerprints")) if check_outputs else []
        if broken:
            log.warning("%s: %s changed since it was made (%s); doing %s again", marker,
                        "its output" if len(broken) == 1 else "its outputs", "; ".join(broken), stage)  # fmt: skip
            self.rebuild_from(stage, broken)
            return None
        return {k: v for k, v in info.items() if k not in RECORD_KEYS}

    def rebuild_from(self, stage: str, broken: Iterable[str] = ()) -> None:
        """Forget ``stage`` and every stage after it, so they are done again (the outputs are rewritten then)."""
        if self.read_only:
            return
        for later in STAGES[STAGES.index(stage) :]:
            for marker in (*STAGE_MARKERS[later], "run"):
                self.markers.clear(marker)
            if later == "pack":  # half-made splits, and the formats a pack with other settings may have left
                for stale in (*(self.paths.work(split) for split in SPLITS), self.paths.webdataset, self.paths.tree):
                    shutil.rmtree(stale, ignore_errors=True)
        if stage == "fetch":  # only the archives that changed are fetched again
            archive_markers = Markers(self.paths.archive_dir.markers)
            for relpath in broken:
                archive_markers.clear(fetch_marker(Path(relpath.split(":")[0]).name))

    def region(self) -> str:
        """The configured region, else the SDK's, else the instance's (looked up once)."""
        if self._region is None:
            self._region = resolve_region(self.config.region, lambda: Imds().identity().region)
        return self._region

    def client(self, service: str) -> Any:
        """A boto3 client in ``region()``: no client on the instance is ever made without one."""
        return aws.client(service, region=self.region())

    def archive(self, role: str) -> Path:
        return self.paths.archives / self.dataset.archive(role).name

    def require_archive(self, role: str) -> Path:
        return self.require_file(self.dataset.archive(role).name)

    def require_file(self, name: str) -> Path:
        """A downloaded file of the dataset (an archive, a shard), which must be there."""
        path = self.paths.archives / name
        if not path.exists():
            raise ArchiveError(f"{path} is missing: run the fetch stage first")
        return path

    def stage(self, name: str, body: Callable[[], T]) -> T:
        """Run ``body`` as stage ``name``: the status says running, then done or failed with the error.

        A full, read-only or foreign filesystem anywhere in the stage becomes one ``StorageError`` naming the
        path (exit 3: a person must act), recorded as the status's last error.
        """
        self.status.update(stage=name, state="running", last_error=None)
        self._keep_reserve()
        try:
            result = body()
        except OSError as e:
            mapped = storage_error(e, f"running {name}")
            if mapped is None:
                raise
            self.paths.reserve.unlink(missing_ok=True)  # room to record why
            self.status.update(stage=name, state="failed", last_error=str(mapped))
            raise mapped from None
        except BootstrapError as e:
            self.status.update(stage=name, state="failed", last_error=str(e))
            raise
        self.status.update(stage=name, state="done")
        return result
