"""The GPU launch template: DLAMI, IMDSv2, encrypted root, and user data that attaches the dataset at boot.

Its role may create volumes only from this pipeline's snapshots and only
tagged as this pipeline's, attach and flag volumes only on the instance
itself, and detach or delete only the pipeline's volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from bootstrap.contract import tags
from bootstrap.contract.names import DATA_DIR, HOME, PYTHON
from cdk_app.constructs.bootstrap_code import BootstrapCode
from cdk_app.constructs.grants import allow, instance_role
from cdk_app.constructs.nag import acknowledge, spelled


@dataclass(frozen=True)
class FleetSettings:
    pipeline: str
    instance_types: tuple[str, ...]
    ami_parameter: str
    root_gib: int
    snapshot_parameter: str
    volume_type: str
    iops: int
    throughput: int
    initialization_rate: str
    """auto, off, or MiB/s (python -m bootstrap attach --initialization-rate)."""
    local_nvme: bool
    asg: bool
    user_commands: tuple[str, ...] = ()
    """The user's own commands, after the attach step (a failing one shuts the instance down like any other)."""


def attach_command(s: FleetSettings) -> str:
    """The one line of user data that gives the instance its dataset (see ``python -m bootstrap attach --help``)."""
    args = [
        f"--pipeline {s.pipeline}",
        f"--snapshot-parameter {s.snapshot_parameter}",
        f"--mount-point {DATA_DIR}",
        f"--volume-type {s.volume_type}",
        "--shutdown-on-failure",
    ]
    if s.volume_type == "gp3":
        args += [f"--iops {s.iops}", f"--throughput {s.throughput}"]
    if s.initialization_rate != "auto":
        args.append(f"--initialization-rate {s.initialization_rate}")
    if s.local_nvme:
        args.append("--local-nvme")
    return f"cd {HOME} && {PYTHON} -m bootstrap attach {' '.join(args)}"


class GpuLaunchTemplate(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: FleetSettings,
        security_group: ec2.ISecurityGroup,
        vpc: ec2.IVpc,
        subnets: list[ec2.ISubnet],
    ) -> None:
        super().__init__(scope, id)
        self.role = instance_role(self, "Role")
        self._grant(settings)
        code = BootstrapCode(self, "Bootstrap")
        code.grant_read(self.role)
        # a GPU instance whose set-up failed would bill for nothing: it shuts down, and so terminates
        shut_down = 'shutdown -h +1 "imagenet-staging: user data failed at line $LINENO"'
        user_data = code.user_data(requirements="requirements-attach.txt", packages=[], on_failure=shut_down)
        user_data.add_commands(attach_command(settings))
        if settings.user_commands:
            user_data.add_commands(f"# the context's gpu_user_data: the dataset is mounted read-only at {DATA_DIR}",
                                   *settings.user_commands)  # fmt: skip
        self.template = ec2.LaunchTemplate(
            self,
            "Template",
            launch_template_name=f"{settings.pipeline}-gpu",
            instance_type=ec2.InstanceType(settings.instance_types[0]),
            machine_image=ec2.MachineImage.from_ssm_parameter(settings.ami_parameter, os=ec2.OperatingSystemType.LINUX),
            role=self.role,
            security_group=security_group,
            require_imdsv2=True,
            http_put_response_hop_limit=2,  # containers on the instance can still reach IMDS
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        settings.root_gib,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                        delete_on_termination=True,
                    ),
                )
            ],
            instance_initiated_shutdown_behavior=ec2.InstanceInitiatedShutdownBehavior.TERMINATE,
            user_data=user_data,
        )
        # the one tag only the launch template sets: `teardown fleet` and the role's conditions rely on it
        cdk.Tags.of(self.template).add(tags.ROLE, tags.GPU)
        if settings.asg:
            self.group = autoscaling.AutoScalingGroup(
                self,
                "Group",
                vpc=vpc,
                vpc_subnets=ec2.SubnetSelection(subnets=subnets),
                launch_template=self.template,
                min_capacity=0,
                max_capacity=64,
                desired_capacity=0,
            )
            acknowledge(
                self.group,
                "AS3",
                "Scaling is done by hand (set the desired capacity); there is no scaling activity worth notifying.",
            )

    def _grant(self, s: FleetSettings) -> None:
        stack = cdk.Stack.of(self)

        instances = stack.format_arn(service="ec2", resource="instance", resource_name="*")
        volumes = stack.format_arn(service="ec2", resource="volume", resource_name="*")
        snapshots = stack.format_arn(service="ec2", resource="snapshot", resource_name="*", account="")
        ours = f"aws:ResourceTag/{tags.PIPELINE}"
        allow(
            self.role,
            ["ssm:GetParameter"],
            [stack.format_arn(service="ssm", resource="parameter", resource_name=s.snapshot_parameter.lstrip("/"))],
        )
        allow(self.role, ["ec2:DescribeSnapshots", "ec2:DescribeVolumes", "ec2:DescribeVolumeStatus",
                          "ec2:DescribeInstances"], ["*"])  # fmt: skip
        allow(self.role, ["ec2:CreateVolume"], [snapshots], StringEquals={ours: s.pipeline})
        allow(self.role, ["ec2:CreateVolume"], [volumes], StringEquals={f"aws:RequestTag/{tags.PIPELINE}": s.pipeline})
        allow(self.role, ["ec2:CreateTags"], [volumes], StringEquals={"ec2:CreateAction": "CreateVolume"})
        # Documented condition keys only (Service Authorization Reference: aws:ResourceTag on the instance
        # resource of each action): the pipeline's GPU instances, which only the launch template tags so.
        allow(
            self.role,
            ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyInstanceAttribute", "ec2:CreateTags"],
            [instances],
            StringEquals={ours: s.pipeline, f"aws:ResourceTag/{tags.ROLE}": tags.GPU},
        )
        # A customer-managed account-default EBS key: EC2 uses it on the role's behalf (kms:ViaService)
        allow(
            self.role,
            ["kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"],
            ["*"],
            StringEquals={"kms:ViaService": f"ec2.{stack.region}.amazonaws.com"},
        )
        # ModifyInstanceAttribute too: DeleteOnTermination is a change to the volume (the Service Authorization
        # Reference lists the volume as one of its resources)
        allow(
            self.role,
            ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteVolume", "ec2:ModifyInstanceAttribute"],
            [volumes],
            StringEquals={ours: s.pipeline},
        )
        acknowledge(
            self.role,
            "IAM5",
            "EC2 Describe* has no resource-level permissions; volumes may be created "
            "only from snapshots tagged with this pipeline and only with its tag, attached only to the "
            "pipeline's GPU instances (tagged so by the launch template alone), deleted only when tagged with the "
            "pipeline.",
            findings=["Resource::*", *(f"Resource::{spelled(self, arn)}" for arn in (instances, volumes, snapshots))],
        )
