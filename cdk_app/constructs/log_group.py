"""A CloudWatch log group as every part of the app keeps one: a retention, deleted with its stack."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_app.constructs.nag import accept_checkov


def log_group(scope: Construct, id: str, retention: logs.RetentionDays) -> logs.LogGroup:
    group = logs.LogGroup(scope, id, retention=retention, removal_policy=cdk.RemovalPolicy.DESTROY)
    accept_checkov(group, "CKV_AWS_158", "CloudWatch Logs encrypts every log group at rest with its own keys; these "
                   "hold progress lines and rejected flows, no secrets, so a customer key ($1/month and a key "
                   "policy) buys nothing.")  # fmt: skip
    return group
