"""Ephemeral: the download instance and its data volume; gone once the dataset snapshot has completed."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StagingConfig
from cdk_app.constructs.dataset_bucket import dataset_bucket_name
from cdk_app.constructs.download_instance import DownloadInstance, DownloadSettings, DownloadTargets
from cdk_app.stacks.network import NetworkStack
from cdk_app.stacks.storage import StorageStack


class DownloadStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StagingConfig,
        network: NetworkStack,
        storage: StorageStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self.add_stack_dependency(storage, "its bucket, secret and teardown rule must exist before the instance runs")
        settings = DownloadSettings(
            pipeline=config.name,
            instance_type=config.download_instance_type,
            cpu_credits=config.cpu_credits,
            detailed_monitoring=config.detailed_monitoring,
            ami_parameter=config.download_ami_parameter,
            volume_type=config.data_volume_type,
            volume_gib=config.data_volume_gib,
            keep_volume=config.keep_data_volume,
            engine=config.engine,
            dataset_table=config.dataset_table,
            pin_ami=not cdk.Token.is_unresolved(self.account),
            public_ip=config.vpc_id is not None and config.subnet_type == "public",
        )
        source = urlsplit(config.source)
        targets = DownloadTargets(
            bucket_name=dataset_bucket_name(self, config.name),
            prefix=config.backup_prefix,
            snapshot_parameter=config.snapshot_parameter,
            status_parameter=config.status_parameter,
            secret_name=config.secret_name if config.uses_secret else None,
            source=(source.netloc, source.path.lstrip("/")) if source.scheme == "s3" else None,
        )
        net = network.network
        self.download = DownloadInstance(
            self,
            "Download",
            settings=settings,
            targets=targets,
            vpc=net.vpc,
            subnet=net.subnets.subnets[0],
            security_group=net.download_security_group,
        )
        cdk.CfnOutput(
            self,
            "InstanceId",
            value=self.download.instance.instance_id,
            description="connect: aws ssm start-session --target <id>",
        )
        cdk.CfnOutput(self, "DataVolumeId", value=self.download.volume.volume_id)
        cdk.CfnOutput(self, "LogGroup", value=self.download.log_group.log_group_name)
