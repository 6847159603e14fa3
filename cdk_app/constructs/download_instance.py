"""The download instance: a t2 with an encrypted sc1 data volume, a least-privilege role and a few lines of user data.

The instance boots, installs the bootstrap program and starts its systemd
unit, which mounts the data volume (formatting it only if blank) and runs
every stage through to the published snapshot; the teardown function then
terminates it.  A replaced or rebooted instance resumes from the markers on
the volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from bootstrap.contract import tags
from bootstrap.contract.names import (
    AGENT_CONFIG,
    CONFIG,
    DATA_DEVICE,
    DATA_DIR,
    DATASET_TABLE,
    LOG_FILE,
    METRIC_NAMESPACE,
    UNIT,
    UNIT_SOURCE,
    heartbeat_alarm,
    heartbeat_metric,
)
from cdk_app.constructs.alerts import alerts_topic, notify
from cdk_app.constructs.bootstrap_code import BootstrapCode, copy_json_asset, write_json
from cdk_app.constructs.grants import allow, instance_role
from cdk_app.constructs.log_group import log_group
from cdk_app.constructs.nag import accept_fixed_availability_zone, acknowledge, spelled

VOLUME_TYPES = {
    "sc1": ec2.EbsDeviceVolumeType.SC1,
    "st1": ec2.EbsDeviceVolumeType.ST1,
    "gp3": ec2.EbsDeviceVolumeType.GP3,
}


def agent_config(log_group_name: str) -> dict[str, Any]:
    """CloudWatch agent: ship the unit's log file to the log group, one stream per instance."""
    files = [{"file_path": LOG_FILE, "log_group_name": log_group_name, "log_stream_name": "{instance_id}",
              "timezone": "UTC"}]  # fmt: skip
    return {"logs": {"logs_collected": {"files": {"collect_list": files}}}}


@dataclass(frozen=True)
class DownloadSettings:
    pipeline: str
    instance_type: str
    cpu_credits: str
    detailed_monitoring: bool
    ami_parameter: str
    volume_type: str
    volume_gib: int
    keep_volume: bool
    engine: dict[str, Any]
    """Keys of bootstrap's PrepConfig (source, resize, ...) passed through to config.json."""
    public_ip: bool = False
    """Ask for a public address: an existing VPC's public subnets may not assign one, and there is no NAT."""
    dataset_table: dict[str, Any] | None = None
    """The archive table of a dataset other than ILSVRC2012, written next to config.json for the engine."""
    pin_ami: bool = False
    """Resolve the AMI parameter at synth and keep it in cdk.context.json (needs an account-specific synth)."""


@dataclass(frozen=True)
class DownloadTargets:
    """What the instance writes to, owned by the storage stack."""

    bucket_name: str
    prefix: str
    snapshot_parameter: str
    status_parameter: str
    secret_name: str | None
    source: tuple[str, str] | None
    """For an s3:// source: the (bucket, prefix) the instance may read."""


class DownloadInstance(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: DownloadSettings,
        targets: DownloadTargets,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        security_group: ec2.ISecurityGroup,
    ) -> None:
        super().__init__(scope, id)
        stack = cdk.Stack.of(self)
        self.volume = ec2.Volume(
            self,
            "DataVolume",
            availability_zone=subnet.availability_zone,
            size=cdk.Size.gibibytes(settings.volume_gib),
            volume_type=VOLUME_TYPES[settings.volume_type],
            encrypted=True,
            removal_policy=cdk.RemovalPolicy.RETAIN if settings.keep_volume else cdk.RemovalPolicy.DESTROY,
        )
        cdk.Tags.of(self.volume).add(tags.DATA_VOLUME, settings.pipeline)
        self.log_group = log_group(self, "Logs", logs.RetentionDays.THREE_MONTHS)
        alerts = alerts_topic(self, settings.pipeline)
        self.errors_alarm = self._alarm_on_errors(settings.pipeline, alerts)
        self.heartbeat_alarm = self._alarm_on_silence(settings.pipeline, alerts)
        self.role = instance_role(self, "Role")
        self._grant(stack, targets, settings.pipeline)

        code = BootstrapCode(self, "Bootstrap")
        code.grant_read(self.role)
        user_data = code.user_data(requirements="requirements.txt", packages=["amazon-cloudwatch-agent"])
        config = {
            **settings.engine,
            "data_dir": DATA_DIR,
            "pipeline": settings.pipeline,
            "region": stack.region,
            "bucket": targets.bucket_name,
            "prefix": targets.prefix,
            "snapshot_parameter": targets.snapshot_parameter,
            "status_parameter": targets.status_parameter,
            "source_secret": targets.secret_name,
            "data_volume_id": self.volume.volume_id,
            "data_device": DATA_DEVICE,
            "heartbeat_alarm": heartbeat_alarm(settings.pipeline),
            "dataset_table": DATASET_TABLE if settings.dataset_table else None,
        }
        if settings.dataset_table:
            copy_json_asset(self, "DatasetTable", user_data, role=self.role, path=DATASET_TABLE,
                            value=settings.dataset_table)  # fmt: skip
        write_json(self, user_data, CONFIG, {k: v for k, v in config.items() if v is not None})
        write_json(self, user_data, AGENT_CONFIG, agent_config(self.log_group.log_group_name))
        user_data.add_commands(
            "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s "
            f"-c file:{AGENT_CONFIG}",
            f"install -m 0644 {UNIT_SOURCE} /etc/systemd/system/",
            "systemctl daemon-reload",
            f"systemctl enable --now {UNIT}",
        )
        burstable = settings.instance_type.startswith("t")
        self.instance = ec2.Instance(
            self,
            "Instance",
            instance_type=ec2.InstanceType(settings.instance_type),
            # Pinned, a newer AL2023 image does not replace a running instance on the next deploy.
            machine_image=ec2.MachineImage.from_ssm_parameter(
                settings.ami_parameter, os=ec2.OperatingSystemType.LINUX, cached_in_context=settings.pin_ami
            ),
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            security_group=security_group,
            role=self.role,
            require_imdsv2=True,
            associate_public_ip_address=True if settings.public_ip else None,
            detailed_monitoring=settings.detailed_monitoring,
            credit_specification=ec2.CpuCredits(settings.cpu_credits.upper()) if burstable else None,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        30, volume_type=ec2.EbsDeviceVolumeType.GP3, encrypted=True, delete_on_termination=True
                    ),
                )
            ],
            user_data=user_data,
            # A replacement instance would be created while the old one still holds the data volume
            # ("volume in use"); a changed user data is applied in place instead (the job resumes).
            user_data_causes_replacement=False,
            propagate_tags_to_volume_on_creation=True,
        )
        cdk.Tags.of(self.instance).add(tags.ROLE, tags.DOWNLOAD)
        acknowledge(
            self.instance,
            "EC29",
            "The instance is meant to go away: the teardown function terminates it "
            "once its snapshot has completed, so termination protection would defeat the design.",
        )
        if not settings.detailed_monitoring:
            acknowledge(
                self.instance,
                "EC28",
                "Detailed monitoring was turned off in the context "
                "(detailed_monitoring=false) to save its cost on a short-lived instance.",
            )
        for placed in (self.volume, self.instance):  # EBS attaches only within one AZ, so both name the subnet's
            accept_fixed_availability_zone(placed, "The data volume must be in the instance's AZ; both take it "
                                           "from the subnet, a literal when the VPC was looked up.")  # fmt: skip
        ec2.CfnVolumeAttachment(
            self,
            "DataVolumeAttachment",
            instance_id=self.instance.instance_id,
            volume_id=self.volume.volume_id,
            device=DATA_DEVICE,
        )

    def _alarm_on_errors(self, pipeline: str, alerts: sns.ITopic) -> cloudwatch.Alarm:
        """An ERROR line in the instance's log (a stage failed; the unit retries or needs a person)."""
        errors = logs.MetricFilter(
            self, "ErrorLines", log_group=self.log_group, filter_pattern=logs.FilterPattern.all_terms("ERROR"),
            metric_namespace=f"{METRIC_NAMESPACE}/{pipeline}", metric_name="DownloadErrors", metric_value="1",
        )  # fmt: skip
        return self._alarm(
            "ErrorsAlarm", alerts, errors.metric(statistic="Sum", period=cdk.Duration.minutes(5)),
            f"{pipeline}: the download instance logged an error; `python -m scripts status` shows the last one, "
            "and the log group has the rest.",
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, periods=1,
            missing=cloudwatch.TreatMissingData.NOT_BREACHING,
        )  # fmt: skip

    def _alarm_on_silence(self, pipeline: str, alerts: sns.ITopic) -> cloudwatch.Alarm:
        """No heartbeat for 30 minutes: user data failed, the unit gave up, or the instance hangs."""
        namespace, name, dimensions = heartbeat_metric(pipeline)
        metric = cloudwatch.Metric(namespace=namespace, metric_name=name, statistic="Sum",
                                   dimensions_map={d["Name"]: d["Value"] for d in dimensions},
                                   period=cdk.Duration.minutes(10))  # fmt: skip
        return self._alarm(
            "HeartbeatAlarm", alerts, metric,
            f"{pipeline}: the download instance has sent no heartbeat for 30 minutes; its user data or its unit "
            "failed. Connect with `aws ssm start-session` and read /var/log/cloud-init-output.log and "
            "`journalctl -u imagenet-staging`.",
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD, periods=3,
            missing=cloudwatch.TreatMissingData.BREACHING, name=heartbeat_alarm(pipeline),
        )  # fmt: skip

    def _alarm(self, id: str, alerts: sns.ITopic, metric: cloudwatch.IMetric, description: str, *,
               comparison: cloudwatch.ComparisonOperator, periods: int, missing: cloudwatch.TreatMissingData,
               name: str | None = None) -> cloudwatch.Alarm:  # fmt: skip
        alarm = cloudwatch.Alarm(self, id, alarm_name=name, alarm_description=description, metric=metric, threshold=1,
                                 evaluation_periods=periods, comparison_operator=comparison,
                                 treat_missing_data=missing)  # fmt: skip
        notify(alarm, alerts)
        return alarm

    def _grant_monitoring(self, stack: cdk.Stack, pipeline: str) -> None:
        """Its log group, its heartbeat metric (by namespace: PutMetricData has no resources) and alarm."""
        role = self.role
        self.log_group.grant_write(role)
        allow(role, ["cloudwatch:PutMetricData"], ["*"],
              StringEquals={"cloudwatch:namespace": heartbeat_metric(pipeline)[0]})  # fmt: skip
        alarm = stack.format_arn(
            service="cloudwatch",
            resource="alarm",
            resource_name=heartbeat_alarm(pipeline),
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )  # by name: the run re-arms it
        allow(role, ["cloudwatch:EnableAlarmActions"], [alarm])
        allow(role, ["logs:DescribeLogStreams"], [self.log_group.log_group_arn])  # the CloudWatch agent checks first

    def _grant_dataset_volume(self, stack: cdk.Stack, pipeline: str) -> tuple[str, str]:
        """The right-sized volume the packed data is published on: created, attached to this instance,
        snapshotted and deleted; never any other volume (the work volume carries no dataset-volume tag)."""
        role = self.role
        volumes = stack.format_arn(service="ec2", resource="volume", resource_name="*")
        instances = stack.format_arn(service="ec2", resource="instance", resource_name="*")
        dataset = {f"aws:ResourceTag/{tags.DATASET_VOLUME}": pipeline}
        allow(role, ["ec2:CreateVolume"], [volumes], StringEquals={f"aws:RequestTag/{tags.DATASET_VOLUME}": pipeline})
        allow(role, ["ec2:CreateTags"], [volumes], StringEquals={"ec2:CreateAction": "CreateVolume"})
        allow(role, ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyInstanceAttribute", "ec2:CreateSnapshot",
                     "ec2:DeleteVolume"], [volumes], StringEquals=dataset)  # fmt: skip
        allow(role, ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyInstanceAttribute"], [instances],
              StringEquals={f"aws:ResourceTag/{tags.PIPELINE}": pipeline,
                            f"aws:ResourceTag/{tags.ROLE}": tags.DOWNLOAD})  # fmt: skip
        # a customer-managed account-default EBS key: EC2 uses it on the role's behalf
        allow(role, ["kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"],
              ["*"], StringEquals={"kms:ViaService": f"ec2.{stack.region}.amazonaws.com"})  # fmt: skip
        return volumes, instances

    def _grant(self, stack: cdk.Stack, targets: DownloadTargets, pipeline: str) -> None:
        """Least privilege: its prefix, its parameters, snapshots of its own volume, its secret and logs."""
        role = self.role

        bucket, prefix = s3.Bucket.from_bucket_name(self, "Bucket", targets.bucket_name), targets.prefix
        objects = bucket.arn_for_objects(f"{prefix}*")
        allow(role, ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"], [objects])
        allow(role, ["s3:ListBucket"], [bucket.bucket_arn], StringLike={"s3:prefix": [f"{prefix}*"]})
        readable = []
        if targets.source:
            source_bucket, source_prefix = targets.source
            source = s3.Bucket.from_bucket_name(self, "SourceBucket", source_bucket)
            readable.append(source.arn_for_objects(f"{source_prefix}*"))
            allow(role, ["s3:GetObject"], readable)
            allow(role, ["s3:ListBucket"], [source.bucket_arn], StringLike={"s3:prefix": [f"{source_prefix}*"]})
        if targets.secret_name:
            allow(
                role,
                ["secretsmanager:GetSecretValue"],
                [
                    stack.format_arn(  # -??????: Secrets Manager's random suffix
                        service="secretsmanager",
                        resource="secret",
                        resource_name=f"{targets.secret_name}-??????",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        allow(
            role,
            ["ssm:PutParameter", "ssm:GetParameter"],
            [
                stack.format_arn(service="ssm", resource="parameter", resource_name=name.lstrip("/"))
                for name in (targets.snapshot_parameter, targets.status_parameter)
            ],
        )
        allow(role, ["ec2:DescribeVolumes", "ec2:DescribeSnapshots", "ec2:DescribeInstances"], ["*"])
        allow(
            role,
            ["ec2:CreateSnapshot"],
            [stack.format_arn(service="ec2", resource="volume", resource_name=self.volume.volume_id)],
        )
        snapshots = stack.format_arn(service="ec2", resource="snapshot", resource_name="*", account="")
        allow(role, ["ec2:CreateSnapshot"], [snapshots], StringEquals={f"aws:RequestTag/{tags.PIPELINE}": pipeline})
        allow(role, ["ec2:CreateTags"], [snapshots], StringEquals={"ec2:CreateAction": "CreateSnapshot"})
        self._grant_monitoring(stack, pipeline)
        wildcards = (objects, snapshots, *self._grant_dataset_volume(stack, pipeline), *readable)
        acknowledge(
            role,
            "IAM5",
            "Objects are limited to the pipeline's prefix of its bucket (and the source prefix); EC2 Describe* "
            "has no resource-level permissions; new snapshots must carry the pipeline tag; volumes may be created "
            "only with the dataset-volume tag and attached, detached, snapshotted or deleted only with it, on the "
            "pipeline's download instance; the default EBS key is used only through EC2.",
            findings=["Resource::*", *(f"Resource::{spelled(self, arn)}" for arn in wildcards)],
        )
