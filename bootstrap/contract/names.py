"""Names the CDK app, the instances and the operator CLI must agree on, spelled once.

The CDK app writes them into user data and IAM policies, the instance
programs use them at run time, and ``scripts/`` looks resources up by them.
"""

from __future__ import annotations

DEFAULT_PIPELINE = "imagenet-staging"
"""The pipeline's name unless the context's ``name`` says otherwise: tag value, stack and parameter prefix."""

# -- where the bootstrap program is installed on an instance -----------------------
HOME = "/opt/imagenet-staging"
PYTHON = f"{HOME}/venv/bin/python"
CONFIG = f"{HOME}/config.json"
"""The engine's settings (JSON), written by the download instance's user data."""
DATASET_TABLE = f"{HOME}/dataset-table.json"
"""The archive table of a dataset other than ILSVRC2012 (context key ``dataset_table``), written next to it."""
UNIT = "imagenet-staging.service"
UNIT_SOURCE = f"{HOME}/bootstrap/systemd/{UNIT}"
LOG_FILE = "/var/log/imagenet-staging.log"
"""Where the unit writes; the CloudWatch agent ships it to the download stack's log group."""
AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/imagenet-staging.json"

# -- the volumes ---------------------------------------------------------------------
DATA_DIR = "/data"
"""The mount point of the data volume on the download instance and of the dataset on a GPU instance."""
DATA_DEVICE = "/dev/sdf"
"""The device name the download instance's data volume is attached as."""
READY_MARKER = "/run/imagenet-staging/dataset-ready"
PUBLISH_MOUNT = "/run/imagenet-staging/publish"
"""On the download instance: where the dataset volume is mounted while the packed data is copied onto it."""
"""Written on a GPU instance once its dataset is mounted."""

# -- parameters and metrics ------------------------------------------------------------
METRIC_NAMESPACE = "ImagenetStaging"


def heartbeat_alarm(pipeline: str) -> str:
    """The alarm on the download instance's heartbeat (a fixed name: the teardown function disarms it)."""
    return f"{pipeline}-download-heartbeat"


def heartbeat_metric(pipeline: str) -> tuple[str, str, list[dict[str, str]]]:
    """Namespace, name and dimensions of the heartbeat the run sends every minute."""
    return f"{METRIC_NAMESPACE}/{pipeline}", "Heartbeat", [{"Name": "Pipeline", "Value": pipeline}]


def snapshot_parameter(pipeline: str) -> str:
    """The SSM parameter the dataset snapshot is published to."""
    return f"/{pipeline}/snapshot"


def status_parameter(pipeline: str) -> str:
    """The SSM parameter the download instance copies its live status to."""
    return f"/{pipeline}/status"
