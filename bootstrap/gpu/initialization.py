"""Hydration: a volume from a snapshot is fully loaded in minutes, at a rate chosen from its size.

A restored volume fetches its blocks from S3 lazily, on first read, so the
first epoch reads at a fraction of the volume's speed.  EBS's Provisioned Rate
for Volume Initialization (100-300 MiB/s, set at CreateVolume) loads every
block at that rate instead.  ``rate_for`` picks the lowest rate (in steps of
10) that initializes the volume within a target time, so a right-sized
ImageNet volume is fully initialized in under five minutes.

``watch`` then polls DescribeVolumeStatus (``InitializationStatusDetails``:
progress 0-100; EBS may take up to five minutes to update it) and records
when initialization completed in the ready marker and an instance tag.  EBS
also sends an initialization event to EventBridge; polling needs no rule and
works the same wherever the agent runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bootstrap.contract.tags import INITIALIZED as TAG_INITIALIZED

log = logging.getLogger(__name__)
RATE_MIB_S = (100, 300)
TARGET_SECONDS = 240.0
"""Fully initialized within four minutes where 300 MiB/s allows it (up to 70 GiB)."""


def rate_for(size_gib: int, within_seconds: float = TARGET_SECONDS) -> int:
    """The provisioned initialization rate (MiB/s) that loads ``size_gib`` within ``within_seconds``."""
    needed = size_gib * 1024 / within_seconds
    return int(min(RATE_MIB_S[1], max(RATE_MIB_S[0], -(-needed // 10) * 10)))


def seconds_to_initialize(size_gib: int, rate_mib_s: int) -> float:
    """Every block of the volume at the provisioned rate."""
    return size_gib * 1024 / rate_mib_s


def progress(ec2: Any, volume_id: str) -> dict[str, Any]:
    """The volume's InitializationStatusDetails, ``{}`` while EBS reports none yet."""
    statuses = ec2.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"]
    return dict(statuses[0].get("InitializationStatusDetails", {})) if statuses else {}


def watch(ec2: Any, volume_id: str, instance_id: str, ready_marker: Path, *, poll_seconds: float = 30.0,
          timeout_seconds: float = 6 * 3600, sleep: Callable[[float], None] = time.sleep,
          ) -> dict[str, Any]:  # fmt: skip
    """Wait until the volume is fully initialized; record it in the ready marker and the instance's tags."""
    started = time.monotonic()
    while True:
        details = progress(ec2, volume_id)
        if details.get("Progress") == 100:
            break
        if time.monotonic() - started > timeout_seconds:
            log.warning("initialization of %s still at %s%% after %.0fs; giving up watching", volume_id,
                        details.get("Progress", "?"), timeout_seconds)  # fmt: skip
            return details
        sleep(poll_seconds)
    done = datetime.now(UTC).isoformat(timespec="seconds")
    marker = json.loads(ready_marker.read_text()) if ready_marker.exists() else {"volume_id": volume_id}
    marker.update(initialized=done, initialization_type=details.get("InitializationType", "default"))
    ready_marker.write_text(json.dumps(marker))
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": TAG_INITIALIZED, "Value": done}])
    log.info("%s is fully initialized (%s)", volume_id, details.get("InitializationType", "default"))
    return details
