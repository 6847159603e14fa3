"""Where the instances run: a small VPC of public subnets (or an existing one), with no inbound rules.

No NAT gateway (about $33 a month each): the instances get public addresses
and reach image-net.org and AWS directly, while their security groups accept
nothing from outside.  Operators connect with SSM Session Manager, not SSH.
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_app.constructs.log_group import log_group
from cdk_app.constructs.nag import accept_fixed_availability_zone


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, vpc_id: str | None) -> None:
        super().__init__(scope, id)
        if vpc_id:
            self.vpc: ec2.IVpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=vpc_id)
        else:
            vpc = ec2.Vpc(
                self,
                "Vpc",
                max_azs=2,
                nat_gateways=0,
                subnet_configuration=[
                    ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
                ],
                # nothing is launched into the default group; restricting it would cost a custom-resource Lambda
                restrict_default_security_group=False,
            )
            flow_logs = log_group(self, "FlowLogs", logs.RetentionDays.ONE_MONTH)
            vpc.add_flow_log(
                "FlowLog",
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                traffic_type=ec2.FlowLogTrafficType.REJECT,
            )
            for subnet in vpc.public_subnets:
                accept_fixed_availability_zone(subnet, "A subnet lives in one AZ; with an account and region set, "
                                               "CDK writes the looked-up AZ name.")  # fmt: skip
            self.vpc = vpc
        self.download_security_group = ec2.SecurityGroup(
            self,
            "DownloadSecurityGroup",
            vpc=self.vpc,
            allow_all_outbound=True,
            description="Download instance: no inbound rules (use SSM Session Manager)",
        )
        self.fleet_security_group = ec2.SecurityGroup(
            self,
            "FleetSecurityGroup",
            vpc=self.vpc,
            allow_all_outbound=True,
            description="GPU fleet: inbound only from members of this group (multi-node training)",
        )
        self.fleet_security_group.add_ingress_rule(
            self.fleet_security_group, ec2.Port.all_traffic(), "members of the fleet talk to each other (NCCL, EFA)"
        )
        self.subnets = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PUBLIC)
