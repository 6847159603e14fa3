"""What the pipeline's two SSM parameters hold before the download instance first writes them.

The CDK storage stack creates both parameters with these values, so they exist
(and their IAM grants name real resources) from the first deploy; every
reader treats them as "nothing yet", never as an error.
"""

from __future__ import annotations

import json
from typing import Any

NOT_STARTED = {"stage": "not started", "state": "waiting", "note": "the download instance copies its status here"}
NOT_PUBLISHED = {"state": "not published", "note": "the download instance publishes its dataset snapshot here"}


def published_snapshot(raw: str) -> dict[str, Any] | None:
    """A snapshot parameter's value as the published record, or ``None`` while no snapshot is published."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("snapshot_id") else None


def read_published(ssm: Any, name: str) -> dict[str, Any] | None:
    """The published snapshot record in parameter ``name``; ``None`` if it is missing or still the placeholder."""
    try:
        return published_snapshot(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None
