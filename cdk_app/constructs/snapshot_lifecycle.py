"""A DLM policy that snapshots the download instance's data volume on a schedule while it exists.

It protects days of download and packing against the loss of the volume or
instance.  It is not the dataset snapshot: that one is taken by the instance
itself (frozen filesystem, tagged with the pipeline) when the data is done.
DLM's snapshots carry a different tag, so neither `attach` nor the teardown
ever mistakes a half-written volume for the dataset, and count-based
retention never touches the dataset snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_dlm as dlm
from aws_cdk import aws_iam as iam
from constructs import Construct

from bootstrap.contract.tags import DATA_VOLUME, SCHEDULED
from cdk_app.constructs.nag import acknowledge


class SnapshotLifecycle(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        pipeline: str,
        interval_hours: int,
        retain: int,
        copy_regions: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("dlm.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AWSDataLifecycleManagerServiceRole")
            ],
        )
        acknowledge(
            self.role,
            "IAM4",
            "AWSDataLifecycleManagerServiceRole is the service role AWS documents for "
            "DLM; it only covers snapshot create/delete/copy/tag and FSR.",
            findings=["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"],
        )
        schedule = dlm.CfnLifecyclePolicy.ScheduleProperty(
            name=f"every {interval_hours} hours keep {retain}",
            copy_tags=False,
            tags_to_add=[cdk.CfnTag(key=SCHEDULED, value=pipeline)],
            create_rule=dlm.CfnLifecyclePolicy.CreateRuleProperty(interval=interval_hours, interval_unit="HOURS"),
            retain_rule=dlm.CfnLifecyclePolicy.RetainRuleProperty(count=retain),
            cross_region_copy_rules=[
                dlm.CfnLifecyclePolicy.CrossRegionCopyRuleProperty(
                    target=region,
                    encrypted=True,
                    copy_tags=True,
                    retain_rule=dlm.CfnLifecyclePolicy.CrossRegionCopyRetainRuleProperty(  # as long as at home
                        interval=-(-interval_hours * retain // 24), interval_unit="DAYS"
                    ),
                )
                for region in copy_regions
            ]
            or None,
            # no fast snapshot restore: $0.75 per AZ-hour for insurance copies nobody restores from
        )
        self.policy = dlm.CfnLifecyclePolicy(
            self,
            "Policy",
            description=f"{pipeline} scheduled snapshots of the download data volume"[:500],
            state="ENABLED",
            execution_role_arn=self.role.role_arn,
            policy_details=dlm.CfnLifecyclePolicy.PolicyDetailsProperty(
                policy_type="EBS_SNAPSHOT_MANAGEMENT",
                resource_types=["VOLUME"],
                target_tags=[cdk.CfnTag(key=DATA_VOLUME, value=pipeline)],
                schedules=[schedule],
            ),
        )
