"""Every IAM policy of the synthesized templates, audited offline by parliament against AWS's IAM database.

parliament knows each action's resource types and condition keys (the Service
Authorization Reference), so it catches what cdk-nag and cfn-lint do not: a
condition key that is not valid for an action (the ``aws:ARN`` of an earlier
GPU role), an ARN of the wrong resource type, an unknown action.  Intrinsics
are resolved to plausible values first.  A finding is fixed, or acknowledged
below with the reason; anything else fails.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.cdk_synth import Synthesized
from tests.fixtures.deployment import resolved

Finding = tuple[str, str, str, str]
"""(policy logical id, parliament issue, action or detail, the detail as JSON)."""
ACKNOWLEDGED = {
    # (policy's logical-id prefix, parliament issue, action or detail) -> why it stays
    ("DownloadRole", "RESOURCE_MISMATCH", "ec2:CreateSnapshot"): "CreateSnapshot needs the volume and the new "
    "snapshot; they are two statements on purpose (the volume by id, the snapshot by its request tag), and "
    "parliament judges each statement alone",
    ("DownloadRole", "RESOURCE_MISMATCH", "ec2:AttachVolume"): "the dataset volume it publishes on is attached "
    "to the instance: the instance by its download-role tag, the volume by its dataset-volume tag, two statements",
    ("DownloadRole", "RESOURCE_MISMATCH", "ec2:DetachVolume"): "the same as AttachVolume",
    ("DownloadRole", "RESOURCE_MISMATCH", "ec2:ModifyInstanceAttribute"): "the same: DeleteOnTermination on the "
    "dataset volume, the instance and the volume each by its tag",
    ("DownloadRole", "RESOURCE_STAR", "kms:"): "as for the GPU role: the account's default EBS key, through EC2 only",
    ("GpuRole", "RESOURCE_MISMATCH", "ec2:CreateVolume"): "the same: the source snapshot by the pipeline tag, "
    "the new volume by its request tag",
    ("GpuRole", "RESOURCE_MISMATCH", "ec2:AttachVolume"): "the same: the instance by its GPU-role tag, the "
    "volume by the pipeline tag",
    ("GpuRole", "RESOURCE_MISMATCH", "ec2:DetachVolume"): "the same as AttachVolume",
    ("GpuRole", "RESOURCE_MISMATCH", "ec2:ModifyInstanceAttribute"): "the same: the instance by its GPU-role tag, "
    "the volume whose DeleteOnTermination it changes by the pipeline tag",
    ("SnapshotTeardownRole", "RESOURCE_MISMATCH", "ec2:ModifyInstanceAttribute"): "the same: the download "
    "instance and its data volume, each by the pipeline tag",
    ("GpuRole", "RESOURCE_STAR", "kms:"): "the account's default EBS key is not known at deploy "
    "time; kms:ViaService limits every use to EC2 in the region",
}


def _findings(default_synth: Synthesized) -> list[Finding]:
    from parliament import analyze_policy_string

    found = []
    for t in default_synth.templates.values():
        for logical_id, resource in t["Resources"].items():
            if resource["Type"] != "AWS::IAM::Policy":
                continue
            document = resolved(resource["Properties"]["PolicyDocument"], t)
            for finding in analyze_policy_string(json.dumps(document)).findings:
                details = finding.detail if isinstance(finding.detail, list) else [finding.detail]
                for detail in details:
                    subject = detail.get("action", "") if isinstance(detail, dict) else str(detail)
                    found.append((logical_id, finding.issue, subject, json.dumps(detail, default=str)))
    return found


def _matches(key: tuple[str, str, str], finding: Finding) -> bool:
    prefix, issue, subject = key
    return finding[0].startswith(prefix) and finding[1] == issue and finding[2].startswith(subject)


def test_every_policy_passes_parliament_or_is_acknowledged_with_a_reason(default_synth: Synthesized) -> None:
    unexplained = [f for f in _findings(default_synth) if not any(_matches(key, f) for key in ACKNOWLEDGED)]
    assert not unexplained, "\n".join(" ".join(f) for f in unexplained)


def test_acknowledgements_are_still_needed(default_synth: Synthesized) -> None:
    """A fixed finding's acknowledgement goes too, so the list never hides a new finding of the same kind."""
    found = _findings(default_synth)
    stale = [key for key in ACKNOWLEDGED if not any(_matches(key, f) for f in found)]
    assert not stale, stale


@pytest.mark.parametrize("condition", [{"StringEquals": {"aws:ARN": "${ec2:SourceInstanceARN}"}}])
def test_parliament_would_catch_the_old_self_condition(condition: dict[str, Any]) -> None:
    """The check can fail: the GPU role's earlier self condition is an unknown key for AttachVolume."""
    from parliament import analyze_policy_string

    statement = {"Effect": "Allow", "Action": "ec2:AttachVolume", "Resource": "arn:aws:ec2:*:*:instance/*",
                 "Condition": condition}  # fmt: skip
    issues = {
        f.issue for f in analyze_policy_string(json.dumps({"Version": "2012-10-17", "Statement": [statement]})).findings
    }
    assert "UNKNOWN_CONDITION_FOR_ACTION" in issues
