"""What a smoke run is, before anything is created: its names, its CDK context, its dataset and its cost.

Everything here is pure.  Every name derives from the run id, which is unique
per run (``smoke-<UTC time>-<random>``), so a smoke run never touches a real
pipeline's stacks, bucket, parameters or snapshots, and everything it made
can be found again from that id alone (``--cleanup RUN_ID``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bootstrap.common.errors import ConfigError
from bootstrap.contract import names
from cdk_app.config import AL2023_PARAMETER
from scripts.instance_types import InstanceTable

RUN_ID = re.compile(r"^smoke-\d{8}-\d{6}-[0-9a-f]{4}$")
ROLES = ("network", "storage", "download", "fleet")
"""The stacks, in the order ``cdk deploy --all`` creates them (and the reverse of the order they are deleted in)."""
INSTANCE_TYPE = "t3.small"
"""The download instance and the fleet's one instance: 2 vCPUs and 2 GiB pack a few dozen images in seconds, and
attach and read-check need no GPU, so the fleet's "GPU" instance is the same cheap type (on AL2023, not the DLAMI)."""
ROOT_GIB = 30
"""The fleet template's smallest root volume (``gpu_root_gib``); the download instance's is 30 GiB too."""
DATA_VOLUME = ("sc1", 125)
"""The same volume type as the real run, at sc1's minimum size."""


@dataclass(frozen=True)
class TinyDataset:
    """A few dozen images, the awkward cases included: 2 of the 50 train images cannot be decoded (truncated, empty).
    (``scripts.synthetic_imagenet.Spec`` with these numbers makes it.)"""

    classes: int = 5
    train_per_class: int = 10
    val_per_class: int = 2


DATASET = TinyDataset()
MAX_FAILURE_RATE = 0.05
"""The 2 undecodable images of 50 are 4%: the real run's 0.1% would (rightly) fail the pack."""


def new_run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"smoke-{now:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}"


@dataclass(frozen=True)
class SmokePlan:
    run_id: str
    account: str
    region: str
    instance_type: str = INSTANCE_TYPE

    def __post_init__(self) -> None:
        if not RUN_ID.match(self.run_id):
            raise ConfigError(f"{self.run_id!r} is not a smoke run id (like smoke-20261204-101500-a1b2): --cleanup "
                              "takes the id a smoke run printed, and nothing else")  # fmt: skip

    @property
    def pipeline(self) -> str:
        return self.run_id

    @property
    def source_bucket(self) -> str:
        """A bucket of the run's own for the tiny dataset (at most 59 characters: S3 allows 63)."""
        return f"{self.run_id}-source-{self.account}-{self.region}"

    source_prefix = "ilsvrc/"

    @property
    def source(self) -> str:
        return f"s3://{self.source_bucket}/{self.source_prefix}"

    @property
    def stacks(self) -> dict[str, str]:
        return {role: f"{self.pipeline}-{role}" for role in ROLES}

    @property
    def snapshot_parameter(self) -> str:
        return names.snapshot_parameter(self.pipeline)

    @property
    def status_parameter(self) -> str:
        return names.status_parameter(self.pipeline)

    def context(self, dataset_table: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        """The CDK context the smoke stacks are deployed with: the user's cdk.json context (their network, their
        engine settings), less what would reach beyond the run (``NOT_INHERITED``), with the smoke's own settings."""
        volume_type, volume_gib = DATA_VOLUME
        return {key: value for key, value in user.items() if key not in NOT_INHERITED} | {
            "name": self.pipeline,
            "source": self.source,
            "dataset_table": dataset_table,
            "max_failure_rate": MAX_FAILURE_RATE,
            "download_instance_type": self.instance_type,
            "data_volume_type": volume_type,
            "data_volume_gib": volume_gib,
            "detailed_monitoring": False,
            "dlm_interval_hours": 0,
            "dlm_copy_regions": [],
            "gpu_instance_types": [self.instance_type],
            "gpu_ami_parameter": AL2023_PARAMETER,
            "gpu_root_gib": ROOT_GIB,
            "fleet_asg": False,
            "local_nvme": False,
        }


NOT_INHERITED = ("alarm_email", "source_secret", "source_needs_credentials", "keep_data_volume", "account", "region")
"""Keys of the user's context a smoke run drops: no email subscription to confirm, no secret of theirs, nothing
kept; account and region are the ones the smoke run was started in."""


def expected_images(train_undecodable: int = 2) -> dict[str, int]:
    """What the fleet instance must read back: every image but the undecodable ones, which are listed instead."""
    d = DATASET
    return {"train": d.classes * d.train_per_class - train_undecodable, "val": d.classes * d.val_per_class}


@dataclass(frozen=True)
class Durations:
    """Hours each billed thing exists."""

    download: float
    """The download instance, its root and its data volume: from the deploy to the teardown function."""
    fleet: float
    """The fleet instance, its root and its restored volume: from its launch to its termination."""
    run: float
    """The whole run (the snapshot, the buckets and the small fixed things live this long at most)."""


ASSUMED = Durations(download=0.3, fleet=0.15, run=0.5)
"""A smoke run as planned: about 15 minutes of the download side (boot, installs, the run, the snapshot), 10 of
the fleet instance (boot, installs, attach, the check), half an hour in all with the deploy and teardown."""
DATASET_GIB = 2
"""The packed data volume and each volume restored from it: a few MB of records on the smallest sensible volume."""
MINIMUM_HOURS = 1 / 60
"""EC2 (Linux) and EBS bill per second with a 60-second minimum."""


def estimate_cost(plan: SmokePlan, durations: Durations, prices: dict[str, Any], table: InstanceTable
                  ) -> dict[str, float]:  # fmt: skip
    """USD per item for these durations, from the price table (``scripts/prices.json``) and the instance table."""
    month = float(prices["hours_per_month"])
    ebs = prices["ebs_gb_month"]
    volume_type, volume_gib = DATA_VOLUME
    per_hour = float(table[plan.instance_type].usd_hour)

    def hours(h: float) -> float:
        return max(h, MINIMUM_HOURS)

    items = {
        "download instance": per_hour * hours(durations.download),
        "download volumes (root gp3, data sc1, dataset gp3)": (
            ROOT_GIB * ebs["gp3"] + volume_gib * ebs[volume_type] + DATASET_GIB * ebs["gp3"]
        ) / month * hours(durations.download),
        "fleet instance": per_hour * hours(durations.fleet),
        "fleet volumes (root gp3, restored dataset gp3)": (ROOT_GIB + DATASET_GIB) * ebs["gp3"] / month
        * hours(durations.fleet),
        "public IPv4 addresses": prices["public_ipv4_hour"] * (hours(durations.download) + hours(durations.fleet)),
        "dataset snapshot": DATASET_GIB * prices["snapshot_gb_month"] / month * durations.run,
    }  # fmt: skip
    return {name: round(usd, 6) for name, usd in items.items()}
