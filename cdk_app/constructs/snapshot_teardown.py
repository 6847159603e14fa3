"""Teardown automation: publish the dataset snapshot and terminate the download side; sweep leaked volumes.

- An EventBridge rule on ``EBS Snapshot Notification`` / ``createSnapshot``
  invokes ``functions/teardown.py``, which publishes the snapshot (if the
  instance has not yet) before it terminates the instance; a failed snapshot
  raises the alarm instead.  A schedule runs the same function as the backstop
  for a lost event (EBS events are best effort).
- A scheduled rule runs ``functions/janitor.py``, which deletes this
  pipeline's ``available`` volumes whose owner instance is gone.
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from bootstrap.contract import tags
from bootstrap.contract.names import heartbeat_alarm
from cdk_app.constructs.alerts import notify
from cdk_app.constructs.grants import allow
from cdk_app.constructs.log_group import log_group
from cdk_app.constructs.nag import accept_checkov, acknowledge, spelled

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
RUNTIME = lambda_.Runtime.PYTHON_3_14
SNAPSHOT_EVENTS = {
    "source": ["aws.ec2"],
    "detail_type": ["EBS Snapshot Notification"],
    "detail": {"event": ["createSnapshot"], "result": ["succeeded", "failed"]},
}
DESCRIBE_REASON = "EC2 Describe* calls do not support resource-level permissions."
FUNCTION_CHECKS = {
    "CKV_AWS_116": "A failed invocation is retried by EventBridge and raises the TeardownFailed alarm, and the "
    "scheduled sweep repeats the work; a dead-letter queue would hold events nobody replays.",
    "CKV_AWS_117": "The functions call only EC2, SSM and CloudWatch APIs; inside a VPC they would need a NAT "
    "gateway or interface endpoints, which cost more than the whole pipeline.",
    "CKV_AWS_115": "Reserved concurrency is taken from the account's pool, and a new account's limit of 10 leaves "
    "none to reserve (the deployment would fail); the functions are idempotent when they overlap.",
    "CKV_AWS_173": "The variables are tag keys, parameter and alarm names, no secrets; Lambda encrypts them at rest "
    "with its service key.",
}
"""checkov's Lambda checks, and why each is accepted for the teardown and janitor functions."""


TEARDOWN_TAGS = (
    "PIPELINE",
    "INSTANCE",
    "SCHEDULED",
    "DATASET",
    "MANIFEST",
    "MANIFEST_URL",
    "IMAGES",
    "BYTES",
    "WORK_VOLUME",
)
"""The tag keys the teardown function reads, passed as TAG_<name> (its code ships without bootstrap/)."""


def teardown_environment(pipeline: str, snapshot_parameter: str, keep_volume: bool, metric_namespace: str
                         ) -> dict[str, str]:  # fmt: skip
    """The teardown function's environment (Lambda adds AWS_REGION and the role's credentials)."""
    return {
        "PIPELINE": pipeline,
        "SNAPSHOT_PARAMETER": snapshot_parameter,
        **{f"TAG_{key}": getattr(tags, key) for key in TEARDOWN_TAGS},
        "KEEP_VOLUME": str(keep_volume).lower(),
        "METRIC_NAMESPACE": metric_namespace,
        "HEARTBEAT_ALARM": heartbeat_alarm(pipeline),
    }


class _Function(Construct):
    """A Python function from ``functions/`` with its own log group and a role that may write only to it."""

    def __init__(
        self, scope: Construct, id: str, *, module: str, description: str, environment: dict[str, str]
    ) -> None:
        super().__init__(scope, id)
        self.log_group = log_group(self, "Logs", logs.RetentionDays.THREE_MONTHS)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            handler=f"{module}.handler",
            code=lambda_.Code.from_asset(str(FUNCTIONS), exclude=["__pycache__", "*.pyc"]),
            description=description,
            environment=environment,
            timeout=cdk.Duration.minutes(1),
            memory_size=256,
            role=self.role,
            log_group=self.log_group,
        )
        self.log_group.grant_write(self.role)
        for check, reason in FUNCTION_CHECKS.items():
            accept_checkov(self.function, check, reason)
        # The function refers to its role by GetAtt already; CDK's DependsOn on the role too is what cfn-lint
        # flags (W3005), so depend on the role's policy alone: the function must not run before it exists.
        function, policy = self.function.node.default_child, self.role.node.find_child("DefaultPolicy")
        assert isinstance(function, cdk.CfnResource) and isinstance(policy.node.default_child, cdk.CfnResource)
        function.add_override("DependsOn", [cdk.Stack.of(self).get_logical_id(policy.node.default_child)])


class SnapshotTeardown(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        pipeline: str,
        snapshot_parameter: str,
        alerts: sns.ITopic,
        keep_volume: bool,
        metric_namespace: str,
        janitor_interval: cdk.Duration,
    ) -> None:
        super().__init__(scope, id)
        stack = cdk.Stack.of(self)
        instances = stack.format_arn(service="ec2", resource="instance", resource_name="*")
        volumes = stack.format_arn(service="ec2", resource="volume", resource_name="*")
        snapshots = stack.format_arn(service="ec2", resource="snapshot", resource_name="*", account="")
        ours = {"StringEquals": {f"aws:ResourceTag/{tags.PIPELINE}": pipeline}}

        self.teardown = _Function(
            self,
            "Teardown",
            module="teardown",
            description=f"{pipeline}: terminate the download instance once its dataset snapshot completed",
            environment=teardown_environment(pipeline, snapshot_parameter, keep_volume, metric_namespace),
        )
        allow(self.teardown.role, ["ec2:DescribeSnapshots", "ec2:DescribeInstances"], ["*"])
        allow(self.teardown.role, ["ec2:TerminateInstances", "ec2:ModifyInstanceAttribute"], [instances], **ours)
        # DeleteOnTermination is a change to the volume as well: the Service Authorization Reference lists the
        # volume as a resource of ModifyInstanceAttribute, so it must be the pipeline's too.
        allow(self.teardown.role, ["ec2:ModifyInstanceAttribute"], [volumes], **ours)
        parameter = stack.format_arn(service="ssm", resource="parameter", resource_name=snapshot_parameter.lstrip("/"))
        allow(self.teardown.role, ["ssm:GetParameter", "ssm:PutParameter"], [parameter])
        alarm = stack.format_arn(service="cloudwatch", resource="alarm", resource_name=heartbeat_alarm(pipeline),
                                 arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)  # fmt: skip
        allow(self.teardown.role, ["cloudwatch:DisableAlarmActions"], [alarm])
        allow(
            self.teardown.role,
            ["ec2:DeleteSnapshot"],
            [snapshots],
            StringEquals={f"aws:ResourceTag/{tags.SCHEDULED}": pipeline},
        )  # only the DLM policy's, never the dataset
        allow(
            self.teardown.role,
            ["cloudwatch:PutMetricData"],
            ["*"],
            StringEquals={"cloudwatch:namespace": metric_namespace},
        )
        acknowledge(
            self.teardown.role,
            "IAM5",
            f"{DESCRIBE_REASON} Terminate and DeleteOnTermination are limited to instances and volumes tagged with "
            "this pipeline, DeleteSnapshot to the DLM policy's snapshots; PutMetricData has no resources and is "
            "limited to the pipeline's namespace.",
            findings=["Resource::*", *(f"Resource::{spelled(self, arn)}" for arn in (instances, volumes, snapshots))],
        )
        self.rule = events.Rule(
            self,
            "SnapshotCompleted",
            description=f"{pipeline}: EBS createSnapshot results",
            event_pattern=events.EventPattern(**SNAPSHOT_EVENTS),  # type: ignore[arg-type]
            targets=[targets.LambdaFunction(self.teardown.function, retry_attempts=8)],
        )
        events.Rule(
            self,
            "TeardownSweep",
            description=f"{pipeline}: finish a completed dataset snapshot whose event was lost",
            schedule=events.Schedule.rate(janitor_interval),
            targets=[targets.LambdaFunction(self.teardown.function)],
        )

        self.alarm = cloudwatch.Alarm(
            self,
            "SnapshotFailedAlarm",
            alarm_description=f"{pipeline}: the dataset snapshot failed; the download instance was kept. "
            "Run `python -m bootstrap snapshot` on it again (or see its logs).",
            metric=cloudwatch.Metric(
                namespace=metric_namespace,
                metric_name="SnapshotFailed",
                dimensions_map={"Pipeline": pipeline},
                statistic="Sum",
                period=cdk.Duration.minutes(5),
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        notify(self.alarm, alerts)
        self.teardown_failed = cloudwatch.Alarm(
            self,
            "TeardownFailedAlarm",
            alarm_description=f"{pipeline}: the teardown function failed, so the download instance may still be "
            "running (and billing); see the function's log group, then `python -m scripts teardown download`.",
            metric=self.teardown.function.metric_errors(period=cdk.Duration.minutes(5), statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        notify(self.teardown_failed, alerts)

        self.janitor = _Function(
            self,
            "Janitor",
            module="janitor",
            description=f"{pipeline}: delete available volumes whose owner instance is gone",
            environment={"PIPELINE": pipeline, "TAG_PIPELINE": tags.PIPELINE, "TAG_OWNER": tags.OWNER},
        )
        allow(self.janitor.role, ["ec2:DescribeVolumes", "ec2:DescribeInstances"], ["*"])
        allow(self.janitor.role, ["ec2:DeleteVolume"], [volumes], **ours)
        acknowledge(
            self.janitor.role,
            "IAM5",
            f"{DESCRIBE_REASON} DeleteVolume is limited to volumes tagged with this pipeline.",
            findings=["Resource::*", f"Resource::{spelled(self, volumes)}"],
        )
        events.Rule(
            self,
            "JanitorSchedule",
            schedule=events.Schedule.rate(janitor_interval),
            targets=[targets.LambdaFunction(self.janitor.function)],
        )
