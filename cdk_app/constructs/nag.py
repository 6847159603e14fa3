"""cdk-nag, checkov and cfn-lint acknowledgements, kept next to the construct they excuse, each with its reason.

cdk-nag 3 matches acknowledgements exactly, so a rule that reports findings
(IAM4, IAM5) is acknowledged finding by finding: a new wildcard added later
is an error until someone writes down why it is acceptable.  checkov reads
its skips from the resource's ``checkov`` metadata, where the reason is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from constructs import IConstruct


def spelled(scope: IConstruct, resource: str) -> str:
    """``resource`` as cdk-nag names it in a finding: pseudo-parameter tokens become ``<AWS::AccountId>`` etc."""
    stack = cdk.Stack.of(scope)
    for token, name in ((stack.partition, "Partition"), (stack.region, "Region"), (stack.account, "AccountId")):
        if cdk.Token.is_unresolved(token):
            resource = resource.replace(token, f"<AWS::{name}>")
    return resource


def acknowledge(construct: IConstruct, rule: str, reason: str, findings: Sequence[str] = ()) -> None:
    """Accept AwsSolutions ``rule`` (or just its ``findings``) on ``construct`` and its children."""
    ids = [f"AwsSolutions-{rule}[{finding}]" for finding in findings] or [f"AwsSolutions-{rule}"]
    for id in ids:
        cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=f"AwsSolutions::{id}", reason=reason))


def accept_fixed_availability_zone(construct: IConstruct, reason: str) -> None:
    """Accept a literal AZ (cfn-lint W3010), which an environment-specific synth writes for looked-up subnets."""
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id="CloudFormation-Validate::W3010", reason=reason))
    resource = construct.node.default_child
    assert isinstance(resource, cdk.CfnResource)
    resource.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3010"]}})


def accept_checkov(construct: IConstruct, check: str, reason: str) -> None:
    """Skip checkov's ``check`` (``CKV_AWS_…``) on ``construct``'s resource, with the reason in the template."""
    resource = construct.node.default_child if not isinstance(construct, cdk.CfnResource) else construct
    assert isinstance(resource, cdk.CfnResource)
    skips = list((resource.get_metadata("checkov") or {}).get("skip", []))
    resource.add_metadata("checkov", {"skip": [*skips, {"id": check, "comment": reason}]})
