"""A smoke deployment: the synthesized templates, in order, into moto's CloudFormation over HTTP.

moto skips what it cannot emulate (DLM, Secrets Manager secrets, bucket
policies: their properties are asserted in test_cdk_app.py); everything else
must be created, wired as the templates say.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from bootstrap.contract import tags
from bootstrap.contract.parameters import published_snapshot
from cdk_app.config import AL2023_PARAMETER
from scripts.cli import run as scripts_run
from tests.fixtures.aws_emulator import client
from tests.fixtures.cdk_synth import synth
from tests.fixtures.cfn import for_moto, publish_assets

pytestmark = pytest.mark.usefixtures("aws_endpoint")
ACCOUNT, REGION, PIPELINE = "123456789012", "us-east-1", "cfn-smoke"
MOTO_SKIPS = {"storage": {"AWS::S3::BucketPolicy", "AWS::SecretsManager::Secret", "AWS::DLM::LifecyclePolicy",
                          "AWS::CloudWatch::Alarm", "AWS::SNS::TopicPolicy"},
              "download": {"AWS::CloudWatch::Alarm", "AWS::Logs::MetricFilter"}}  # fmt: skip
"""Resource types moto's CloudFormation skips with a warning; anything else it skips is a surprise."""


def test_stacks_deploy_to_the_emulator(tmp_path: Path) -> None:
    # moto serves the AL2023 public parameter but reserves /aws/ and has no DLAMI one: stand one in
    synthesized = synth(tmp_path / "cdk.out", name=PIPELINE, gpu_ami_parameter=f"/{PIPELINE}/dlami")
    ssm, ec2, cfn = client("ssm"), client("ec2"), client("cloudformation")
    image = ssm.get_parameter(Name=AL2023_PARAMETER)["Parameter"]["Value"]
    for name, value in (("/cdk-bootstrap/hnb659fds/version", "30"), (f"/{PIPELINE}/dlami", image)):
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    assert publish_assets(synthesized.outdir, client("s3"), ACCOUNT, REGION) >= 4

    outputs = {}
    for role in ("network", "storage", "download", "fleet"):  # the order `cdk deploy --all` resolves
        name = f"{PIPELINE}-{role}"
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            cfn.create_stack(StackName=name, TemplateBody=json.dumps(for_moto(synthesized.templates[role])),
                             Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])  # fmt: skip
        unsupported = {re.sub(r".*parse (\S+) but.*", r"\1", str(w.message)) for w in skipped}
        assert unsupported == MOTO_SKIPS.get(role, set()), role
        (stack,) = cfn.describe_stacks(StackName=name)["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE", (name, stack.get("StackStatusReason"))
        outputs[role] = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    placeholder = client("ssm").get_parameter(Name=f"/{PIPELINE}/snapshot")["Parameter"]["Value"]
    assert published_snapshot(placeholder) is None  # the parameters exist, holding "nothing published yet"
    instance_id, volume_id = outputs["download"]["InstanceId"], outputs["download"]["DataVolumeId"]
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["InstanceType"] == "t2.large" and instance["ImageId"] == image
    assert {"Key": tags.PIPELINE, "Value": PIPELINE} in instance["Tags"]
    assert instance["SubnetId"] in outputs["network"]["SubnetIds"].split(",")
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["Size"] == 1000  # moto's CloudFormation drops VolumeType and Encrypted; test_cdk_app checks them
    assert volume["AvailabilityZone"] == instance["Placement"]["AvailabilityZone"]
    assert [(a["InstanceId"], a["Device"]) for a in volume["Attachments"]] == [(instance_id, "/dev/sdf")]
    groups = ec2.describe_security_groups(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [PIPELINE]}])
    inbound = {g["Description"].split(":")[0]: g["IpPermissions"] for g in groups["SecurityGroups"]}
    assert inbound["Download instance"] == []
    (fleet_rule,) = inbound["GPU fleet"]
    assert [p["GroupId"] for p in fleet_rule["UserIdGroupPairs"]] == [
        g["GroupId"] for g in groups["SecurityGroups"] if g["Description"].startswith("GPU fleet")
    ]

    template_id = outputs["fleet"]["LaunchTemplateId"]
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"]
    assert versions[0]["LaunchTemplateData"]["InstanceType"] == "g5.xlarge"

    assert client("s3").head_bucket(Bucket=f"{PIPELINE}-{ACCOUNT}-{REGION}")
    functions = {f["FunctionName"]: f for f in client("lambda").list_functions()["Functions"]}
    envs = [f["Environment"]["Variables"] for f in functions.values() if f["FunctionName"].startswith(PIPELINE)]
    assert sorted(e.get("TAG_INSTANCE", "janitor") for e in envs) == [tags.INSTANCE, "janitor"]
    assert any(t["TopicArn"].endswith(f":{PIPELINE}-alerts") for t in client("sns").list_topics()["Topics"])
    rules = client("events").list_rules(NamePrefix=PIPELINE)["Rules"]
    assert any("EBS Snapshot Notification" in r.get("EventPattern", "") for r in rules)

    # `scripts teardown download --destroy-stack`: the operator's way to remove the download side whole
    assert (
        scripts_run(["teardown", "download", "--pipeline", PIPELINE, "--region", REGION, "--destroy-stack", "--force"])
        == 0
    )
    assert f"{PIPELINE}-download" not in {s["StackName"] for s in cfn.list_stacks(
        StackStatusFilter=["CREATE_COMPLETE"])["StackSummaries"]}  # fmt: skip
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "terminated"
    # (moto keeps a stack's volumes on delete; the template's DeletionPolicy is checked in test_cdk_app)


def test_a_redeploy_with_new_settings_updates_the_download_instance_in_place(tmp_path: Path) -> None:
    """Defect 5: a changed user data (new settings, a new bootstrap/) must not replace the instance, whose
    replacement would be created while the old one holds the data volume ("volume in use").

    An account-specific synth, as ``cdk deploy`` makes it, pins the AL2023 image in the context; the second
    synth changes a setting, so the user data differs while every logical id stays.  moto then updates the
    stack without creating another instance (it also drops the instance from the stack's outputs on update,
    a moto gap; the instance is found by its stack tag instead).
    """
    pipeline, ssm, ec2, cfn = "cfn-redeploy", client("ssm"), client("ec2"), client("cloudformation")
    image = ssm.get_parameter(Name=AL2023_PARAMETER)["Parameter"]["Value"]
    context = {"account": ACCOUNT, "region": REGION, "gpu_ami_parameter": f"/{pipeline}/dlami",
               f"ssm:account={ACCOUNT}:parameterName={AL2023_PARAMETER}:region={REGION}": image,
               f"availability-zones:account={ACCOUNT}:region={REGION}": ["us-east-1a", "us-east-1b"]}  # fmt: skip
    for name, value in (("/cdk-bootstrap/hnb659fds/version", "30"), (f"/{pipeline}/dlami", image)):
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    first = synth(tmp_path / "first", name=pipeline, **context)
    second = synth(tmp_path / "second", name=pipeline, resize=128, **context)
    before, after = first.templates["download"]["Resources"], second.templates["download"]["Resources"]
    assert set(before) == set(after)  # same logical ids: nothing is replaced by a new id
    instance_id = next(k for k, v in before.items() if v["Type"] == "AWS::EC2::Instance")
    assert before[instance_id]["Properties"]["UserData"] != after[instance_id]["Properties"]["UserData"]
    assert before[instance_id]["Properties"]["ImageId"] == image  # pinned: a newer image changes nothing
    publish_assets(second.outdir, client("s3"), ACCOUNT, REGION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto's "no CloudFormation support" for alarms, policies, DLM
        for role in ("network", "storage", "download"):
            cfn.create_stack(StackName=f"{pipeline}-{role}", TemplateBody=json.dumps(for_moto(first.templates[role])),
                             Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])  # fmt: skip
        stack = f"{pipeline}-download"
        outputs = {
            o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
        }
        cfn.update_stack(StackName=stack, TemplateBody=json.dumps(for_moto(second.templates["download"])),
                         Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])  # fmt: skip
    assert cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"] == "UPDATE_COMPLETE"
    found = ec2.describe_instances(Filters=[{"Name": "tag:aws:cloudformation:stack-name", "Values": [stack]}])
    instances = [(i["InstanceId"], i["State"]["Name"]) for r in found["Reservations"] for i in r["Instances"]]
    assert instances == [(outputs["InstanceId"], "running")]  # updated in place: no second instance
    (volume,) = ec2.describe_volumes(VolumeIds=[outputs["DataVolumeId"]])["Volumes"]
    assert [a["InstanceId"] for a in volume["Attachments"]] == [outputs["InstanceId"]]
