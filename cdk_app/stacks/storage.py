"""Long-lived, kept on teardown: the backup bucket, the source secret, snapshot lifecycle and teardown automation."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StagingConfig
from cdk_app.constructs.alerts import Alerts
from cdk_app.constructs.dataset_bucket import DatasetBucket
from cdk_app.constructs.pipeline_parameters import PipelineParameters
from cdk_app.constructs.snapshot_lifecycle import SnapshotLifecycle
from cdk_app.constructs.snapshot_teardown import SnapshotTeardown
from cdk_app.constructs.source_secret import SourceSecret


class StorageStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, config: StagingConfig, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        self.dataset_bucket = DatasetBucket(self, "DatasetBucket", pipeline=config.name)
        self.source_secret = (
            SourceSecret(self, "SourceSecret", secret_name=config.secret_name) if config.creates_secret else None
        )
        self.parameters = PipelineParameters(
            self, "Parameters", snapshot_parameter=config.snapshot_parameter, status_parameter=config.status_parameter
        )
        if config.dlm_interval_hours:
            SnapshotLifecycle(
                self,
                "SnapshotLifecycle",
                pipeline=config.name,
                interval_hours=config.dlm_interval_hours,
                retain=config.dlm_retain,
                copy_regions=config.dlm_copy_regions,
            )
        self.alerts = Alerts(self, "Alerts", pipeline=config.name, email=config.alarm_email)
        self.teardown = SnapshotTeardown(
            self,
            "SnapshotTeardown",
            pipeline=config.name,
            snapshot_parameter=config.snapshot_parameter,
            alerts=self.alerts.topic,
            keep_volume=config.keep_data_volume,
            metric_namespace=config.metric_namespace,
            janitor_interval=cdk.Duration.minutes(config.janitor_interval_minutes),
        )
        cdk.CfnOutput(self, "BucketName", value=self.dataset_bucket.bucket.bucket_name)
        cdk.CfnOutput(
            self,
            "AlertsTopic",
            value=self.alerts.topic.topic_arn,
            description="subscribe to hear of a failed snapshot or teardown, or of errors on the instance",
        )
        cdk.CfnOutput(
            self,
            "SnapshotParameter",
            value=self.parameters.snapshot.parameter_name,
            description="the instance publishes the dataset snapshot here (python -m scripts status)",
        )
        cdk.CfnOutput(self, "StatusParameter", value=self.parameters.status.parameter_name)
        if self.source_secret:
            cdk.CfnOutput(
                self,
                "SourceSecretName",
                value=config.secret_name,
                description="set it: aws secretsmanager put-secret-value --secret-id ... --secret-string ...",
            )
