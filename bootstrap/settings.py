"""Configuration of the data-prep engine: defaults, then a JSON file, then flags.

The CDK app writes the JSON file next to the bootstrap code on the instance;
a person running the engine by hand passes ``--config`` or flags.  Keys are
the flag names with underscores.  An unknown key is an error, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.devices import DeviceRoots
from bootstrap.common.errors import ConfigError
from bootstrap.contract import names
from bootstrap.fetch.download import FetchOptions
from bootstrap.instance.backup import BackupOptions
from bootstrap.layout import DataLayout
from bootstrap.pack.imaging import ImageOptions
from bootstrap.pack.packer import PackOptions


@dataclass(frozen=True)
class PrepConfig:
    data_dir: Path = Path(names.DATA_DIR)
    source: str | None = None
    """https:// base URL, s3:// prefix, or local directory holding the archives."""
    source_secret: str | None = None
    """Secrets Manager secret with the source credentials (JSON)."""
    dataset_table: Path | None = None
    """Archive table JSON for another dataset; ILSVRC2012 when unset."""
    connections: int = 8
    chunk_mib: int = 64
    resize: int = 256
    center_crop: bool = False
    quality: int = 90
    encoding: str = ".jpg"
    color: int = 1
    pass_through: bool = False
    upscale: bool = False
    workers: int = 0
    parts: int = 1
    seed: int = 100
    shuffle_train: bool = True
    shuffle_val: bool = False
    keep_tree: bool = False
    max_failure_rate: float = 0.001
    checkpoint_seconds: float = 30.0
    bucket_mib: int = 128
    max_image_mib: int = 64
    sample_every: int = 50
    """verify decodes every Nth record."""
    # -- on the instance: backup, snapshot, publish, status --------------------------
    pipeline: str = names.DEFAULT_PIPELINE
    """Name used in tags, so teardown and fleets find this pipeline's resources."""
    region: str | None = None
    """AWS region; by default the instance's own (from IMDSv2) or the SDK's."""
    bucket: str | None = None
    """S3 bucket for the backup of the data directory; no backup when unset."""
    prefix: str = ""
    storage_class: str = "STANDARD"
    large_storage_class: str = "STANDARD_IA"
    """Storage class for files of 1 GiB and more (the archives)."""
    sse: str = "AES256"
    kms_key_id: str | None = None
    snapshot_parameter: str | None = None
    """SSM parameter the snapshot id is published to; no snapshot when unset."""
    status_parameter: str | None = None
    """SSM parameter the live status is copied to; none when unset."""
    status_interval: float = 30.0
    data_volume_id: str | None = None
    """The download instance's data volume; ``mount-data`` formats (once) and mounts it at data_dir."""
    data_device: str = names.DATA_DEVICE
    """The device name it is attached as (only Xen instances use it; Nitro is matched by serial)."""
    sys_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    fstab: Path = Path("/etc/fstab")

    def __post_init__(self) -> None:
        checks = {
            "connections": self.connections >= 1,
            "chunk_mib": self.chunk_mib >= 1,
            "resize": self.resize >= 0,
            "quality": 0 <= self.quality <= 100,
            "encoding": self.encoding in (".jpg", ".png"),
            "color": self.color in (-1, 0, 1),
            "workers": self.workers >= 0,
            "parts": self.parts >= 1,
            "max_failure_rate": 0.0 <= self.max_failure_rate <= 1.0,
            "checkpoint_seconds": self.checkpoint_seconds >= 0,
            "bucket_mib": self.bucket_mib >= 1,
            "max_image_mib": self.max_image_mib >= 1,
            "sample_every": self.sample_every >= 1,
            "sse": self.sse in ("AES256", "aws:kms"),
            "status_interval": self.status_interval > 0,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid value for {', '.join(bad)}: {', '.join(repr(getattr(self, k)) for k in bad)}")

    # -- derived --------------------------------------------------------------

    @property
    def paths(self) -> DataLayout:
        return DataLayout(self.data_dir)

    def fetch_options(self) -> FetchOptions:
        return FetchOptions(connections=self.connections, chunk_size=self.chunk_mib << 20)

    def image_options(self) -> ImageOptions:
        return ImageOptions(self.resize, self.center_crop, self.quality, self.encoding, self.color,
                            self.pass_through, self.upscale)  # fmt: skip

    def backup_options(self) -> BackupOptions:
        if not self.bucket:
            raise ConfigError("no bucket configured: set 'bucket' to back the data directory up to S3")
        return BackupOptions(self.bucket, self.prefix, self.storage_class, self.large_storage_class,
                             sse=self.sse, kms_key_id=self.kms_key_id)  # fmt: skip

    def device_roots(self) -> DeviceRoots:
        return DeviceRoots(self.sys_root, self.dev_root)

    def pack_options(self, split: str) -> PackOptions:
        return PackOptions(
            image=self.image_options(),
            workers=self.workers,
            shuffle=self.shuffle_train if split == "train" else self.shuffle_val,
            seed=self.seed,
            parts=self.parts,
            bucket_bytes=self.bucket_mib << 20,
            checkpoint_seconds=self.checkpoint_seconds,
            max_failure_rate=self.max_failure_rate,
        )


_FIELDS = {f.name: f for f in dataclasses.fields(PrepConfig)}
_PATHS = {"data_dir", "dataset_table", "sys_root", "dev_root", "fstab"}


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _PATHS:
        return Path(value)
    default = _FIELDS[key].default
    expected = type(default) if default is not None else str
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
    return value


def load_config(path: Path | None, overrides: dict[str, Any]) -> PrepConfig:
    """Defaults, then the JSON object in ``path``, then ``overrides`` (flags; ``None`` means not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        for key, value in raw.items():
            if key in _FIELDS:
                values[key] = _coerce(key, value)
            else:
                valid = ", ".join(sorted(_FIELDS))
                raise ConfigError(f"config file {path}: unknown key {key!r}; valid keys are: {valid}")
    for key, value in overrides.items():
        if value is not None:
            values[key] = _coerce(key, value)
    return PrepConfig(**values)
