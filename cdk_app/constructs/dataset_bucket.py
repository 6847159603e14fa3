"""The S3 bucket holding the backup of /data, with its access-log bucket."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_app.constructs.nag import accept_checkov, acknowledge


def _private_bucket(scope: Construct, id: str, **props: object) -> s3.Bucket:
    return s3.Bucket(
        scope,
        id,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        removal_policy=cdk.RemovalPolicy.RETAIN,
        **props,  # type: ignore[arg-type]
    )


def dataset_bucket_name(scope: Construct, pipeline: str) -> str:
    """Known before the bucket exists, so other stacks refer to it by name instead of a CloudFormation export
    (an export would lock the long-lived stack while any ephemeral stack used it)."""
    stack = cdk.Stack.of(scope)
    return f"{pipeline}-{stack.account}-{stack.region}"


class DatasetBucket(Construct):
    """Private, TLS-only, encrypted, versioned; kept when the stack is deleted (it holds the only full copy).

    Lifecycle: incomplete multipart uploads (a killed backup) are aborted after
    7 days and superseded versions expire after 30, so re-runs do not pile up.
    """

    def __init__(self, scope: Construct, id: str, *, pipeline: str) -> None:
        super().__init__(scope, id)
        self.access_logs = _private_bucket(
            self,
            "AccessLogs",
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,  # S3 log delivery writes as itself
            lifecycle_rules=[s3.LifecycleRule(expiration=cdk.Duration.days(365))],
        )
        loop = "This is the access-log bucket; logging it to itself would loop."
        acknowledge(self.access_logs, "S1", loop)
        accept_checkov(self.access_logs, "CKV_AWS_18", loop)
        accept_checkov(self.access_logs, "CKV_AWS_21", "Access logs are written once and expire after a year; "
                       "versions of them would only cost storage.")  # fmt: skip
        self.bucket = _private_bucket(
            self,
            "Bucket",
            bucket_name=dataset_bucket_name(self, pipeline),
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="backup-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(7)),
                s3.LifecycleRule(noncurrent_version_expiration=cdk.Duration.days(30)),
            ],
        )
