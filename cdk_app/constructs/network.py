"""Where the instances run: a small VPC of public subnets (or an existing one), with no inbound rules.

No NAT gateway (about $33 a month each): the instances get public addresses
and reach image-net.org and AWS directly, while their security groups accept
nothing from outside.  Operators connect with SSM Session Manager, not SSH.

An existing VPC's private subnets work too, when they reach the internet
through the VPC's NAT (the dataset source and PyPI are out there).  Then an
S3 gateway endpoint keeps the backup and the snapshot's asset traffic off the
NAT's per-GB charge, and interface endpoints serve the AWS APIs the instances
call (EC2, SSM and Session Manager, Secrets Manager, CloudWatch, Logs).
Isolated subnets (no route out at all) are refused: nothing could install.
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_app.config import ConfigError
from cdk_app.constructs.log_group import log_group
from cdk_app.constructs.nag import accept_fixed_availability_zone

Endpoint = ec2.InterfaceVpcEndpointAwsService
INTERFACE_ENDPOINTS = {
    "Ec2": Endpoint.EC2,  # volumes, snapshots, attachments, tags
    "Ssm": Endpoint.SSM,  # parameters, and Session Manager with the next two
    "SsmMessages": Endpoint.SSM_MESSAGES,
    "Ec2Messages": Endpoint.EC2_MESSAGES,
    "SecretsManager": Endpoint.SECRETS_MANAGER,  # the source login
    "Monitoring": Endpoint.CLOUDWATCH_MONITORING,  # the heartbeat
    "Logs": Endpoint.CLOUDWATCH_LOGS,  # the CloudWatch agent
}
"""Every AWS API the download instance and the GPU agent call, except S3 (a free gateway endpoint)."""


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, vpc_id: str | None, subnet_type: str = "public",
                 vpc_endpoints: bool = True) -> None:  # fmt: skip
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
        if subnet_type == "public":
            self.subnets = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PUBLIC)
        else:
            self.subnets = self._private_subnets(vpc_endpoints)

    def _private_subnets(self, vpc_endpoints: bool) -> ec2.SelectedSubnets:
        """The VPC's private subnets with a route out (a NAT), and endpoints that keep AWS traffic off it."""
        if not self.vpc.private_subnets:
            kind = "only isolated subnets" if self.vpc.isolated_subnets else "no private subnets"
            raise ConfigError(f"context key 'subnet_type': {self.vpc.vpc_id} has {kind}; the instances need a route "
                              "to the internet (the dataset source, PyPI): use subnets behind a NAT gateway, or "
                              "subnet_type=public")  # fmt: skip
        subnets = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        if vpc_endpoints:
            self.vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3,
                                          subnets=[ec2.SubnetSelection(subnets=subnets.subnets)])  # fmt: skip
            for name, service in INTERFACE_ENDPOINTS.items():
                # opens 443 to the VPC's CIDR only; private DNS makes the SDK's usual names resolve to it
                self.vpc.add_interface_endpoint(f"{name}Endpoint", service=service, private_dns_enabled=True,
                                                subnets=ec2.SubnetSelection(subnets=subnets.subnets,
                                                                            one_per_az=True))  # fmt: skip
        return subnets
