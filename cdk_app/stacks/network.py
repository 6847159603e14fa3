"""Long-lived: the VPC and the security groups both the download instance and the fleets use."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.constructs.network import Network


class NetworkStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, vpc_id: str | None, subnet_type: str = "public",
                 vpc_endpoints: bool = True, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(scope, id, **kwargs)
        self.network = Network(self, "Network", vpc_id=vpc_id, subnet_type=subnet_type, vpc_endpoints=vpc_endpoints)
        cdk.CfnOutput(
            self,
            "SubnetIds",
            value=",".join(s.subnet_id for s in self.network.subnets.subnets),
            description="for python -m scripts launch-fleet --subnets",
        )
