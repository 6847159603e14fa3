"""One way to write an IAM statement, so every role in the app reads the same: actions, resources, conditions."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk_app.constructs.nag import acknowledge

SSM_CORE = "AmazonSSMManagedInstanceCore"


def instance_role(scope: Construct, id: str) -> iam.Role:
    """An EC2 role that can be reached with SSM Session Manager, the only way in: no security group admits SSH."""
    role = iam.Role(
        scope,
        id,
        assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
        managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(SSM_CORE)],
    )
    acknowledge(
        role,
        "IAM4",
        f"{SSM_CORE} is AWS's policy for Session Manager, which replaces SSH here.",
        findings=[f"Policy::arn:<AWS::Partition>:iam::aws:policy/{SSM_CORE}"],
    )
    return role


def allow(role: iam.IRole, actions: list[str], resources: list[str], **conditions: Mapping[str, object]) -> None:
    """Add ``Allow actions on resources [if conditions]`` to ``role``; e.g. ``StringEquals={"ec2:CreateAction": …}``."""
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=actions, resources=resources, conditions=dict(conditions) or None)
    )
