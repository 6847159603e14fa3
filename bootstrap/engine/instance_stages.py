"""The download instance's stages: mount the data volume, back up to S3, snapshot, publish."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from bootstrap.common.errors import BootstrapError, ConfigError
from bootstrap.common.imds import Imds
from bootstrap.contract import tags
from bootstrap.engine.context import StageContext
from bootstrap.engine.options import backup_options, device_roots
from bootstrap.instance.backup import Backup, BackupError
from bootstrap.instance.dataset_volume import DatasetVolumePublisher, PublishOptions
from bootstrap.instance.heartbeat import Heartbeat
from bootstrap.instance.snapshot import SnapshotRequest, find_data_volume, publish, take_snapshot
from bootstrap.instance.status_publisher import StatusPublisher
from bootstrap.instance.volume import mount_data_volume
from bootstrap.layout import MANIFEST

log = logging.getLogger("bootstrap.engine")


def mount_data(ctx: StageContext) -> dict[str, Any]:
    """Format (only if blank) and mount the data volume at data_dir; idempotent, run at every boot."""
    volume_id = ctx.config.data_volume_id
    if not volume_id:
        raise ConfigError("no data_volume_id configured: set it to the EBS volume to mount at data_dir")
    device = mount_data_volume(volume_id, ctx.config.data_device, ctx.paths.root,
                               roots=device_roots(ctx.config), fstab=ctx.config.fstab)  # fmt: skip
    return {"volume_id": volume_id, "device": str(device), "mount_point": str(ctx.paths.root)}


def backup(ctx: StageContext, verify_only: bool = False) -> dict[str, Any]:
    """Sync the data directory to S3 (incremental), or with ``verify_only`` compare S3 with the manifest."""

    if not verify_only and (done := ctx.done("backup", "backup")) is not None:
        log.info("backup: s3://%s/%s holds everything (run `backup` to sync changes)", ctx.config.bucket,
                 ctx.config.prefix)  # fmt: skip
        return done

    def body() -> dict[str, Any]:
        opts, job = backup_options(ctx.config), backup_job(ctx)
        if verify_only:
            problems = job.verify()
            if problems:
                shown = "\n  ".join(problems[:20])
                raise BackupError(f"the backup does not match its manifest ({len(problems)} differences):\n  "
                                  f"{shown}\nrun the backup stage again to repair it")  # fmt: skip
            log.info("backup verified: every file in the manifest is in S3 as uploaded")
            return {"verified": True}
        manifest = job.run()
        info = {
            "manifest": f"s3://{opts.bucket}/{opts.key(MANIFEST)}",
            "manifest_sha256": manifest["sha256"],
            "files": len(manifest["files"]),
            "bytes": manifest["total_bytes"],
        }
        ctx.record("backup", "backup", info, [ctx.paths.local_manifest])
        return info

    return ctx.stage("backup", body)


def snapshot(ctx: StageContext, images: dict[str, int]) -> dict[str, Any]:
    """The snapshot GPU instances restore: of a right-sized dataset volume (packed), or of the work volume."""

    def body() -> dict[str, Any]:
        done = ctx.done("snapshot", "snapshot")
        if done is not None:
            log.info("snapshot: %s already completed", done["snapshot_id"])
            return done
        backed_up = ctx.done("backup", "backup")
        if backed_up is None:
            raise BootstrapError("the data is not backed up yet: run the backup stage first")
        identity = Imds().identity()
        ec2 = ctx.client("ec2")
        work = find_data_volume(ec2, identity, ctx.paths.root, device_roots(ctx.config))
        request = SnapshotRequest(ctx.config.pipeline, ctx.dataset.name, backed_up["manifest_sha256"],
                                  backed_up.get("manifest", ""), images, backed_up.get("bytes", 0),
                                  extra_tags={tags.WORK_VOLUME: work.volume_id})  # fmt: skip
        poll = ctx.config.snapshot_poll_seconds
        if ctx.config.dataset_snapshot == "packed":
            opts = PublishOptions(ctx.config.publish_mount, device_roots(ctx.config), poll_seconds=min(poll, 2.0))
            publisher = DatasetVolumePublisher(ec2, identity, ctx.paths, request, opts, status=ctx.status)
            snap, plan = publisher.publish(poll_seconds=poll)
            volume_id, size_gib = snap["VolumeId"], plan.size_gib
        else:
            snap = take_snapshot(ec2, identity, work, request, mount_point=ctx.paths.root,
                                 state_path=ctx.paths.snapshot_record, status=ctx.status,
                                 poll_seconds=poll)  # fmt: skip
            volume_id, size_gib = work.volume_id, work.size_gib
        info = {
            "snapshot_id": snap["SnapshotId"],
            "volume_id": volume_id,
            "volume_size_gib": size_gib,
            "contents": ctx.config.dataset_snapshot,
            "work_volume_id": work.volume_id,
            "region": identity.region,
            "source_instance_id": identity.instance_id,
            "started": str(snap.get("StartTime", "")),
        }
        ctx.record("snapshot", "snapshot", info)
        return info

    return ctx.stage("snapshot", body)


def publish_snapshot(ctx: StageContext, images: dict[str, int]) -> dict[str, Any]:
    if (done := ctx.done("publish", "publish")) is not None:
        log.info("publish: %s is published in %s", done["snapshot_id"], ctx.config.snapshot_parameter)
        return done

    def body() -> dict[str, Any]:
        parameter = ctx.config.snapshot_parameter
        if not parameter:
            raise ConfigError("no snapshot_parameter configured: set it to publish the snapshot id")
        snap, backed_up = ctx.done("snapshot", "snapshot"), ctx.done("backup", "backup")
        if snap is None or backed_up is None:
            raise BootstrapError("nothing to publish yet: run the backup and snapshot stages first")
        info = {
            **snap,
            "pipeline": ctx.config.pipeline,
            "dataset": ctx.dataset.name,
            "images": images,
            "manifest": backed_up["manifest"],
            "bytes": backed_up["bytes"],
            "published": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        publish(ctx.client("ssm"), parameter, info)
        ctx.record("publish", "publish", info)
        log.info("publish: %s -> %s", info["snapshot_id"], parameter)
        return info

    return ctx.stage("publish", body)


def backup_job(ctx: StageContext) -> Backup:
    return Backup(ctx.paths.root, ctx.client("s3"), backup_options(ctx.config), ctx.status)


def heartbeat(ctx: StageContext) -> AbstractContextManager[Any]:
    """A CloudWatch heartbeat while the run lasts (when the CDK app configured its alarm)."""
    if not ctx.config.heartbeat_alarm:
        return nullcontext()
    return Heartbeat(ctx.client("cloudwatch"), ctx.config.pipeline, ctx.config.heartbeat_alarm)


def status_publisher(ctx: StageContext) -> AbstractContextManager[Any]:
    """Copies the status file to its SSM parameter while the run lasts (when one is configured)."""
    if not ctx.config.status_parameter:
        return nullcontext()
    ssm = ctx.client("ssm")
    return StatusPublisher(ctx.paths.status, ssm, ctx.config.status_parameter, ctx.config.status_interval)
