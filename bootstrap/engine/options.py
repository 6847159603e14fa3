"""The programs' option objects, built from the one settings object."""

from __future__ import annotations

from bootstrap.common.devices import DeviceRoots
from bootstrap.common.errors import ConfigError
from bootstrap.fetch.download import FetchOptions
from bootstrap.instance.backup import BackupOptions
from bootstrap.pack.imaging import ImageOptions
from bootstrap.pack.packer import PackOptions
from bootstrap.settings import PrepConfig


def fetch_options(c: PrepConfig) -> FetchOptions:
    return FetchOptions(connections=c.connections, chunk_size=c.chunk_mib << 20)


def image_options(c: PrepConfig) -> ImageOptions:
    return ImageOptions(c.resize, c.center_crop, c.quality, c.encoding, c.color, c.pass_through, c.upscale)


def pack_options(c: PrepConfig, split: str) -> PackOptions:
    return PackOptions(
        image=image_options(c),
        workers=c.workers,
        shuffle=c.shuffle_train if split == "train" else c.shuffle_val,
        seed=c.seed,
        parts=c.parts,
        shard_bytes=c.shard_mib << 20 if "webdataset" in c.output_formats else 0,
        bucket_bytes=c.bucket_mib << 20,
        checkpoint_seconds=c.checkpoint_seconds,
        max_failure_rate=c.max_failure_rate,
    )


def backup_options(c: PrepConfig) -> BackupOptions:
    if not c.bucket:
        raise ConfigError("no bucket configured: set 'bucket' to back the data directory up to S3")
    return BackupOptions(c.bucket, c.prefix, c.storage_class, c.large_storage_class, sse=c.sse, kms_key_id=c.kms_key_id)


def device_roots(c: PrepConfig) -> DeviceRoots:
    return DeviceRoots(c.sys_root, c.dev_root)
