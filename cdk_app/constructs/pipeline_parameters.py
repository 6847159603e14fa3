"""The two SSM parameters the download instance writes: the published snapshot and its live status.

Created with placeholder values (bootstrap/parameters.py) that every reader
treats as "nothing yet".  CloudFormation writes a value only when the template
changes, so later deploys never undo what the instance published.
"""

from __future__ import annotations

import json

from aws_cdk import aws_ssm as ssm
from constructs import Construct

from bootstrap.contract.parameters import NOT_PUBLISHED, NOT_STARTED


class PipelineParameters(Construct):
    def __init__(self, scope: Construct, id: str, *, snapshot_parameter: str, status_parameter: str) -> None:
        super().__init__(scope, id)
        self.snapshot = ssm.StringParameter(
            self, "Snapshot", parameter_name=snapshot_parameter, string_value=json.dumps(NOT_PUBLISHED),
            description="The dataset snapshot: id, region, volume, manifest (python -m bootstrap publish)",
        )  # fmt: skip
        self.status = ssm.StringParameter(
            self, "Status", parameter_name=status_parameter, string_value=json.dumps(NOT_STARTED),
            description="The download instance's live status: stage, done/total, rate, ETA, last error",
        )  # fmt: skip
