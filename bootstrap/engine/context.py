"""What every stage works with: the settings, the data volume's layout, the dataset, markers and status."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bootstrap.common import aws
from bootstrap.common.aws import resolve_region
from bootstrap.common.errors import ArchiveError, BootstrapError
from bootstrap.common.imds import Imds
from bootstrap.common.progress import StatusFile
from bootstrap.common.state import Markers
from bootstrap.dataset.archives import DatasetSpec, load_dataset
from bootstrap.layout import DataLayout
from bootstrap.settings import PrepConfig

T = TypeVar("T")
SPLITS = ("val", "train")


@dataclass
class StageContext:
    config: PrepConfig
    paths: DataLayout
    dataset: DatasetSpec
    markers: Markers
    status: StatusFile
    _region: str | None = None

    @classmethod
    def of(cls, config: PrepConfig) -> StageContext:
        paths = config.paths
        return cls(config, paths, load_dataset(config.dataset_table), Markers(paths.state), StatusFile(paths.status))

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
        path = self.archive(role)
        if not path.exists():
            raise ArchiveError(f"{path} is missing: run the fetch stage first")
        return path

    def stage(self, name: str, body: Callable[[], T]) -> T:
        """Run ``body`` as stage ``name``: the status says running, then done or failed with the error."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.status.update(stage=name, state="running", last_error=None)
        try:
            result = body()
        except BootstrapError as e:
            self.status.update(stage=name, state="failed", last_error=str(e))
            raise
        self.status.update(stage=name, state="done")
        return result
