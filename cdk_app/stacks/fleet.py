"""GPU launch template(s) that give every instance the dataset at boot."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StagingConfig
from cdk_app.constructs.gpu_launch_template import FleetSettings, GpuLaunchTemplate
from cdk_app.stacks.network import NetworkStack


class FleetStack(cdk.Stack):
    def __init__(
        self, scope: Construct, id: str, *, config: StagingConfig, network: NetworkStack, **kwargs: Any
    ) -> None:
        super().__init__(scope, id, **kwargs)
        settings = FleetSettings(
            pipeline=config.name,
            instance_types=config.gpu_instance_types,
            ami_parameter=config.gpu_ami_parameter,
            root_gib=config.gpu_root_gib,
            snapshot_parameter=config.snapshot_parameter,
            volume_type=config.restored_volume_type,
            iops=config.restored_iops,
            throughput=config.restored_throughput,
            initialization_rate=config.restored_initialization_rate,
            local_nvme=config.local_nvme,
            asg=config.fleet_asg,
            user_commands=config.gpu_user_data,
        )
        net = network.network
        self.gpu = GpuLaunchTemplate(
            self,
            "Gpu",
            settings=settings,
            security_group=net.fleet_security_group,
            vpc=net.vpc,
            subnets=net.subnets.subnets,
        )
        template = self.gpu.template
        cdk.CfnOutput(
            self,
            "LaunchTemplateId",
            value=template.launch_template_id or "",
            description="python -m scripts launch-fleet --launch-template-id <id>",
        )
        cdk.CfnOutput(self, "LaunchTemplateVersion", value=template.latest_version_number)
        cdk.CfnOutput(self, "InstanceTypes", value=",".join(config.gpu_instance_types))
