"""The CDK app: config validation, the intent of every stack, cdk-nag, cfn-lint, the user data an instance runs.

The app is synthesized twice per session: with cdk.json's defaults, and with
every optional feature switched on.  Each synth runs cdk-nag as a validation
plugin, so merely getting a template means zero unacknowledged nag errors.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bootstrap.cli import build_parser
from bootstrap.contract import names, tags
from bootstrap.dataset.archives import dataset_from_dict, dataset_to_dict, load_dataset
from bootstrap.settings import load_config
from cdk_app.config import ConfigError, StagingConfig, from_context
from cdk_app.constructs.snapshot_teardown import teardown_environment
from scripts.synthetic_hub import pinned_table
from scripts.synthetic_imagenet import Generated
from tests.fixtures.cdk_synth import ROOT, Synthesized, cdk_json_context, cli_synth, synth
from tests.fixtures.cfn import blank_hashes, render, resources
from tests.fixtures.paths import GOLDEN

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
VARIANT = {
    "source": "s3://my-datasets/imagenet/",
    "detailed_monitoring": "false",
    "keep_data_volume": "true",
    "fleet_asg": "true",
    "dlm_copy_regions": "us-west-2,eu-west-1",
    "restored_iops": "6000",
    "restored_throughput": "500",
    "restored_initialization_rate": "200",
    "local_nvme": "true",
    "dataset_snapshot": "work-volume",
    "gpu_instance_types": "p4d.24xlarge,g5.12xlarge",
    "alarm_email": "ops@example.com",
}


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synth(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synth(tmp_path_factory.mktemp("cdk-variant"), **VARIANT)


def one(template: dict[str, Any], type_: str) -> dict[str, Any]:
    (found,) = resources(template, type_).values()
    return found["Properties"]  # type: ignore[no-any-return]


def statements(template: dict[str, Any], role_path: str) -> list[dict[str, Any]]:
    """The statements of the policies attached to the role whose logical id starts with ``role_path``."""
    found = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        roles = [r["Ref"] for r in policy["Properties"]["Roles"]]
        if any(r.startswith(role_path) for r in roles):
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    assert found, f"no policy for {role_path}"
    return found


def actions(statement: dict[str, Any]) -> list[str]:
    return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]


def allowing(stmts: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [s for s in stmts if action in actions(s)]


def user_data(template: dict[str, Any], type_: str) -> str:
    props = one(template, type_)
    return render(props["UserData"] if type_ == "AWS::EC2::Instance" else props["LaunchTemplateData"]["UserData"])


# -- config ---------------------------------------------------------------------------


def test_cdk_json_defaults_are_the_code_defaults() -> None:
    """cdk.json shows the most-edited keys; each must be a real key with the value the code would use anyway."""
    defaults = StagingConfig()
    for key, value in cdk_json_context().items():
        if key.startswith("@"):
            continue
        expected = getattr(defaults, key)
        assert (list(expected) if isinstance(expected, tuple) else expected) == value, key


def test_context_strings_from_the_command_line_are_coerced() -> None:
    config = from_context(
        {
            "data_volume_gib": "2000",
            "gpu_instance_types": "g5.xlarge, p5.48xlarge",
            "detailed_monitoring": "false",
            "vpc_id": "",
            "@aws-cdk/x": True,
            "availability-zones:account=1:region=r": ["a"],
        }
    )
    assert config.data_volume_gib == 2000 and config.gpu_instance_types == ("g5.xlarge", "p5.48xlarge")
    assert config.detailed_monitoring is False and config.vpc_id is None


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"data_volume_gib": "100"}, "'data_volume_gib': sc1 volumes are 125-16384 GiB"),
        ({"data_volume_gib": "20000"}, "'data_volume_gib': sc1 volumes are 125-16384 GiB"),
        ({"data_volume_type": "gp3", "data_volume_gib": "70000"}, "'data_volume_gib': gp3 volumes are 1-65536"),
        ({"data_volume_gib": "lots"}, "'data_volume_gib': expected int"),
        ({"restored_iops": "100000"}, "'restored_iops': gp3 IOPS are 3000-80000"),
        ({"restored_throughput": "1000"}, "'restored_throughput': .*at most restored_iops/4"),
        ({"restored_initialization_rate": "50"}, "'restored_initialization_rate'"),
        ({"download_instance_type": "T2 Large"}, "'download_instance_type': like t2.large"),
        ({"cpu_credits": "infinite"}, "'cpu_credits': standard or unlimited"),
        ({"name": "ImageNet"}, "'name': 3-32 lowercase"),
        ({"source": "ftp://x"}, "'source': an https:// URL, an s3:// prefix or hf://owner/name"),
        ({"dlm_interval_hours": "5"}, "'dlm_interval_hours'"),
        ({"detailed_monitoring": "yes"}, "'detailed_monitoring': expected bool"),
        ({"source_secret": "has spaces"}, "'source_secret': a Secrets Manager secret name"),
        ({"volume_gib": "1000"}, "unknown context key 'volume_gib'; valid keys are: .*data_volume_gib"),
        ({"gpu_user_data": '["nvidia-smi", "echo a\\nb"]'}, "'gpu_user_data': shell commands, one per list item"),
        ({"max_failure_rate": "2"}, r"'max_failure_rate': must be 0-1 \(got 2.0\)"),
        ({"dataset_table": "{not json"}, "'dataset_table': expected dict"),
        (
            {"dataset_table": '{"archives": {"train": {}}}'},
            "'dataset_table': dataset table: archives lacks val, devkit",
        ),
    ],
)
def test_invalid_context_names_the_key(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_context(context)


def test_an_existing_vpc_needs_an_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cdk_app.app import environment

    for var in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="'vpc_id': looking a VPC up needs 'account' and 'region'"):
        environment(StagingConfig(vpc_id="vpc-0123456789abcdef0"))


# -- download side --------------------------------------------------------------------


def test_data_volume_is_encrypted_sc1_1000_gib_attached_in_the_instance_az(
    default: Synthesized, variant: Synthesized
) -> None:
    t = default.templates["download"]
    volume, instance = one(t, "AWS::EC2::Volume"), one(t, "AWS::EC2::Instance")
    assert (volume["VolumeType"], volume["Size"], volume["Encrypted"]) == ("sc1", 1000, True)
    assert volume["AvailabilityZone"] == instance["AvailabilityZone"]
    assert {"Key": tags.DATA_VOLUME, "Value": "imagenet-staging"} in volume["Tags"]
    (volume_id,) = resources(t, "AWS::EC2::Volume")
    (instance_id,) = resources(t, "AWS::EC2::Instance")
    assert resources(t, "AWS::EC2::Volume")[volume_id]["DeletionPolicy"] == "Delete"  # goes with the stack
    (kept,) = resources(variant.templates["download"], "AWS::EC2::Volume").values()
    assert kept["DeletionPolicy"] == "Retain"  # keep_data_volume=true
    attachment = one(t, "AWS::EC2::VolumeAttachment")
    assert attachment == {"Device": "/dev/sdf", "InstanceId": {"Ref": instance_id}, "VolumeId": {"Ref": volume_id}}


def test_download_instance(default: Synthesized, variant: Synthesized) -> None:
    instance = one(default.templates["download"], "AWS::EC2::Instance")
    assert instance["InstanceType"] == "t2.large" and instance["CreditSpecification"] == {"CPUCredits": "unlimited"}
    assert instance["Monitoring"] is True
    assert instance["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    assert {"Key": tags.PIPELINE, "Value": "imagenet-staging"} in instance["Tags"]  # teardown may terminate it
    assert one(variant.templates["download"], "AWS::EC2::Instance")["Monitoring"] is False


def test_every_instance_and_launch_template_requires_imdsv2(default: Synthesized, variant: Synthesized) -> None:
    templates = [t for s in (default, variant) for t in s.templates.values()]
    launch_templates = [lt for t in templates for lt in resources(t, "AWS::EC2::LaunchTemplate").values()]
    assert len(launch_templates) == 4  # the instance's own and the GPU template, in both synths
    for lt in launch_templates:
        assert lt["Properties"]["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"
    for t in templates:
        for instance in resources(t, "AWS::EC2::Instance").values():
            assert "LaunchTemplate" in instance["Properties"]  # the IMDSv2 template above


def test_nothing_accepts_inbound_traffic_from_outside(default: Synthesized) -> None:
    network = default.templates["network"]
    groups = resources(network, "AWS::EC2::SecurityGroup")
    assert all("SecurityGroupIngress" not in g["Properties"] for g in groups.values())
    ingress = [
        r["Properties"]
        for t in default.templates.values()
        for r in resources(t, "AWS::EC2::SecurityGroupIngress").values()
    ]
    assert len(ingress) == 1  # the fleet's members may talk to each other, nobody else may
    assert ingress[0]["SourceSecurityGroupId"] == ingress[0]["GroupId"]
    assert resources(network, "AWS::EC2::FlowLog")


def test_download_role_is_least_privilege(default: Synthesized) -> None:
    stmts = statements(default.templates["download"], "DownloadRole")
    (volume_id,) = resources(default.templates["download"], "AWS::EC2::Volume")
    on_volume, on_snapshots, on_dataset_volumes = allowing(stmts, "ec2:CreateSnapshot")
    assert volume_id in json.dumps(on_volume["Resource"]) and "Condition" not in on_volume
    assert on_snapshots["Condition"] == {"StringEquals": {f"aws:RequestTag/{tags.PIPELINE}": "imagenet-staging"}}
    dataset_volume = {"StringEquals": {f"aws:ResourceTag/{tags.DATASET_VOLUME}": "imagenet-staging"}}
    assert on_dataset_volumes["Condition"] == dataset_volume
    assert {json.dumps(s["Condition"]) for s in allowing(stmts, "ec2:CreateTags")} == {
        json.dumps({"StringEquals": {"ec2:CreateAction": action}}) for action in ("CreateSnapshot", "CreateVolume")
    }
    (create,) = allowing(stmts, "ec2:CreateVolume")  # only the dataset volume it publishes on
    assert create["Condition"] == {"StringEquals": {f"aws:RequestTag/{tags.DATASET_VOLUME}": "imagenet-staging"}}
    (delete,) = allowing(stmts, "ec2:DeleteVolume")  # never its data volume: that one has no dataset-volume tag
    assert delete["Condition"] == dataset_volume
    (writes,) = allowing(stmts, "s3:PutObject")
    assert render(writes["Resource"]).endswith(":s3:::imagenet-staging-${AWS::AccountId}-${AWS::Region}/imagenet/*")
    (listing,) = allowing(stmts, "s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["imagenet/*"]}}
    (params,) = allowing(stmts, "ssm:PutParameter")
    assert [render(r).rsplit(":", 1)[1] for r in params["Resource"]] == [
        "parameter/imagenet-staging/snapshot",
        "parameter/imagenet-staging/status",
    ]
    granted = {a for s in stmts for a in actions(s)}
    assert not granted & {"ec2:TerminateInstances", "s3:DeleteObject"}
    assert not [a for a in granted if a.endswith("*")]
    assert {a for s in stmts if s["Resource"] == "*" and "Condition" not in s for a in actions(s)} == {
        "ec2:DescribeVolumes",
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstances",
    }
    (heartbeat,) = allowing(stmts, "cloudwatch:PutMetricData")  # no resource-level permissions: its namespace only
    assert heartbeat["Condition"] == {"StringEquals": {"cloudwatch:namespace": "ImagenetStaging/imagenet-staging"}}
    (asset,) = [s for s in allowing(stmts, "s3:GetObject") if "cdk-hnb659fds-assets" in render(s["Resource"])]
    assert blank_hashes(render(asset["Resource"])).endswith("/<asset-hash>.zip")  # that one object, nothing else


def test_download_user_data_matches_golden_and_passes_shellcheck(default: Synthesized) -> None:
    check_golden(
        "userdata-download.txt", shell=True, rendered=user_data(default.templates["download"], "AWS::EC2::Instance")
    )


def test_the_config_written_to_the_instance_is_what_bootstrap_accepts(default: Synthesized, tmp_path: Path) -> None:
    script = user_data(default.templates["download"], "AWS::EC2::Instance")
    body = re.search(r"cat > /opt/imagenet-staging/config.json <<'JSON'\n(.*?)\nJSON", script, re.S)
    assert body is not None
    (tmp_path / "config.json").write_text(body.group(1))
    config = load_config(tmp_path / "config.json", {})  # unknown keys or wrong types would raise ConfigError
    assert (config.pipeline, config.snapshot_parameter, config.status_parameter) == (
        "imagenet-staging",
        "/imagenet-staging/snapshot",
        "/imagenet-staging/status",
    )
    assert config.source_secret == "imagenet-staging/source-credentials" and config.data_device == "/dev/sdf"
    (volume_id,) = resources(default.templates["download"], "AWS::EC2::Volume")
    assert config.data_volume_id == f"${{{volume_id}}}"  # the volume's id, resolved at deploy time


USER_DATA_LIMIT = 16 * 1024
"""EC2's limit on user data, in raw form before base64 (RunInstances: "User data is limited to 16 KB")."""


def hub_table(shards: int) -> dict[str, Any]:
    """A shard table of timm/imagenet-1k-wds's shape; with 1024 train shards, its size (and 64 val ones)."""
    return pinned_table(shards, 64, shard_bytes=146_000_000, counts={"train": 1_281_167, "val": 50_000})


@pytest.mark.parametrize("kind", ["ilsvrc layout", "hub shards"])
def test_another_dataset_s_table_reaches_the_instance_next_to_the_config(tmp_path: Path, archives: Generated,
                                                                         kind: str) -> None:  # fmt: skip
    """``dataset_table`` (JSON text with ``-c``) reaches the instance as a file the engine reads as its table: an
    asset copied at boot, since a hub table (150 KB) would never fit the 16 KB of user data."""
    if kind == "hub shards":
        table, source = hub_table(1024), "hf://timm/imagenet-1k-wds"
    else:
        table, source = json.loads(archives.table.read_text()), "s3://my-bucket/ilsvrc/"
    synthesized = synth(tmp_path / "cdk.out", dataset_table=json.dumps(table), max_failure_rate="0.05", source=source)
    script = user_data(synthesized.templates["download"], "AWS::EC2::Instance")
    assert len(script.encode()) < USER_DATA_LIMIT
    written = {path: body for path, body in re.findall(r"cat > (\S+) <<'JSON'\n(.*?)\nJSON", script, re.S)}
    (tmp_path / "config.json").write_text(written["/opt/imagenet-staging/config.json"])
    (asset_hash,) = re.findall(r"aws s3 cp 's3://[^/]+/(\w+)\.json' /opt/imagenet-staging/dataset-table\.json", script)
    shipped = synthesized.outdir / f"asset.{asset_hash}.json"
    config = load_config(tmp_path / "config.json", {"dataset_table": str(shipped)})
    assert config.max_failure_rate == 0.05
    assert (
        json.loads(written["/opt/imagenet-staging/config.json"])["dataset_table"]
        == "/opt/imagenet-staging/dataset-table.json"
    )
    assert dataset_to_dict(load_dataset(config.dataset_table)) == dataset_to_dict(dataset_from_dict(table))
    # the instance may read that one object and no other of the asset bucket
    role = next(r for r in resources(synthesized.templates["download"], "AWS::IAM::Policy").values()
                if asset_hash in json.dumps(r))  # fmt: skip
    assert asset_hash in json.dumps(role["Properties"]["PolicyDocument"])


def test_an_hf_source_needs_its_shard_table() -> None:
    with pytest.raises(ConfigError, match="'dataset_table': the shard table of timm/imagenet-1k-wds: python -m scripts "
                                          "hub-table hf://timm/imagenet-1k-wds writes it"):  # fmt: skip
        from_context({"source": "hf://timm/imagenet-1k-wds"})
    config = from_context({"source": "hf://timm/imagenet-1k-wds", "dataset_table": json.dumps(hub_table(3))})
    assert config.uses_secret  # the token lives in the source secret


def test_no_credentials_in_any_user_data(default: Synthesized, variant: Synthesized) -> None:
    scripts = [user_data(s.templates["download"], "AWS::EC2::Instance") for s in (default, variant)]
    scripts += [user_data(s.templates["fleet"], "AWS::EC2::LaunchTemplate") for s in (default, variant)]
    for script in scripts:
        lowered = script.lower()
        for word in ("password", "access_key", "token", "aws_secret", "akia", "authorization"):
            assert word not in lowered
    for synthesized in (default, variant):
        for secret in resources(synthesized.templates["storage"], "AWS::SecretsManager::Secret").values():
            assert "SecretString" not in secret["Properties"]  # the value is set out of band, never in a template


PINNED_AMI = "ami-0123456789abcdef0"
ACCOUNT_CONTEXT = {  # the AL2023 image as `cdk deploy` caches it in cdk.context.json: a new one never replaces
    "account": "123456789012", "region": "us-east-1",
    "ssm:account=123456789012:parameterName=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64:"
    "region=us-east-1": PINNED_AMI,
}  # fmt: skip
LOOKED_UP_VPC = {  # what `cdk synth` with credentials caches in cdk.context.json for vpc_id
    "vpc-provider:account=123456789012:filter.vpc-id=vpc-0123456789abcdef0:region=us-east-1:"
    "returnAsymmetricSubnets=true": {
        "vpcId": "vpc-0123456789abcdef0", "vpcCidrBlock": "10.1.0.0/16", "ownerAccountId": "123456789012",
        "availabilityZones": [], "subnetGroups": [{"name": "Public", "type": "Public", "subnets": [
            {"subnetId": "subnet-0aaaaaaaaaaaaaaaa", "cidr": "10.1.0.0/24", "availabilityZone": "us-east-1b",
             "routeTableId": "rtb-0aaaaaaaaaaaaaaaa"},
            {"subnetId": "subnet-0bbbbbbbbbbbbbbbb", "cidr": "10.1.1.0/24", "availabilityZone": "us-east-1c",
             "routeTableId": "rtb-0bbbbbbbbbbbbbbbb"}]}]},
    "vpc_id": "vpc-0123456789abcdef0",
}  # fmt: skip


def _looked_up(*groups: tuple[str, str, str]) -> dict[str, Any]:
    """LOOKED_UP_VPC with other subnet groups: (name, type, first CIDR digit)."""
    key = next(iter(LOOKED_UP_VPC))
    subnet_groups = [{"name": name, "type": kind, "subnets": [
        {"subnetId": f"subnet-0{digit}{az[-1]}{'0' * 14}", "cidr": f"10.1.{digit}{i}.0/24",
         "availabilityZone": az, "routeTableId": f"rtb-0{digit}{az[-1]}{'0' * 14}"}
        for i, az in enumerate(("us-east-1b", "us-east-1c"))]} for name, kind, digit in groups]  # fmt: skip
    return {**LOOKED_UP_VPC, key: {**LOOKED_UP_VPC[key], "subnetGroups": subnet_groups}}


LOOKED_UP_AZS = {"availability-zones:account=123456789012:region=us-east-1": ["us-east-1a", "us-east-1b"]}


@pytest.mark.parametrize(("lookups", "az"), [(LOOKED_UP_VPC, "us-east-1b"), (LOOKED_UP_AZS, "us-east-1a")],
                         ids=["existing-vpc", "new-vpc"])  # fmt: skip
def test_an_account_specific_synth_puts_volume_and_instance_in_one_literal_az(
    lookups: dict[str, Any], az: str, tmp_path: Path
) -> None:
    """What `cdk deploy` with credentials synthesizes: lookups answered from cdk.context.json, nothing to fix."""
    synthesized = synth(tmp_path, **ACCOUNT_CONTEXT, **lookups)
    t = synthesized.templates["download"]
    volume, instance = one(t, "AWS::EC2::Volume"), one(t, "AWS::EC2::Instance")
    assert volume["AvailabilityZone"] == instance["AvailabilityZone"] == az
    assert instance["ImageId"] == PINNED_AMI  # resolved once, kept in cdk.context.json
    if "vpc_id" in lookups:  # its public subnets need not assign addresses, and there is no NAT: ask for one
        (interface,) = instance["NetworkInterfaces"]
        assert interface["SubnetId"] == "subnet-0aaaaaaaaaaaaaaaa" and interface["AssociatePublicIpAddress"] is True
        assert not resources(synthesized.templates["network"], "AWS::EC2::VPC")  # used, not created
    lint = subprocess.run([str(VENV_BIN / "cfn-lint"), "--", *map(str, tmp_path.glob("*.template.json"))],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (lint.returncode, lint.stdout) == (0, "")


def test_private_subnets_get_endpoints_and_no_public_address(tmp_path: Path) -> None:
    """An existing VPC's private subnets (behind its NAT): the AWS APIs through endpoints, no public address."""
    lookups = _looked_up(("Public", "Public", "1"), ("Private", "Private", "2"))
    synthesized = synth(tmp_path, **ACCOUNT_CONTEXT, **lookups, subnet_type="private")
    network, download = synthesized.templates["network"], synthesized.templates["download"]
    endpoints = resources(network, "AWS::EC2::VPCEndpoint").values()
    services = {render(e["Properties"]["ServiceName"]).split(".")[-1]: e["Properties"] for e in endpoints}
    assert set(services) == {"s3", "ec2", "ssm", "ssmmessages", "ec2messages", "secretsmanager", "monitoring", "logs"}
    assert services["s3"]["VpcEndpointType"] == "Gateway"
    assert sorted(services["s3"]["RouteTableIds"]) == ["rtb-02b00000000000000", "rtb-02c00000000000000"]
    assert all(p["PrivateDnsEnabled"] for name, p in services.items() if name != "s3")
    instance = one(download, "AWS::EC2::Instance")
    assert instance["SubnetId"].startswith("subnet-02") and "NetworkInterfaces" not in instance
    outputs = synthesized.templates["network"]["Outputs"]["SubnetIds"]["Value"]
    assert outputs == "subnet-02b00000000000000,subnet-02c00000000000000"  # launch-fleet's subnets: private too
    lint = subprocess.run([str(VENV_BIN / "cfn-lint"), "--", *map(str, tmp_path.glob("*.template.json"))],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (lint.returncode, lint.stdout) == (0, "")


def test_isolated_subnets_are_refused_with_what_to_do(tmp_path: Path) -> None:
    lookups = _looked_up(("Isolated", "Isolated", "3"))
    with pytest.raises(ConfigError, match=r"only isolated subnets; the instances need a route to the internet"):
        synth(tmp_path, **ACCOUNT_CONTEXT, **lookups, subnet_type="private")


def test_private_subnets_need_an_existing_vpc() -> None:
    with pytest.raises(ConfigError, match="private subnets need an existing VPC"):
        StagingConfig(subnet_type="private")


# -- storage --------------------------------------------------------------------------


def test_an_existing_source_secret_is_used_not_created(tmp_path: Path) -> None:
    synthesized = synth(tmp_path, source_secret="team/imagenet-login")
    assert not resources(synthesized.templates["storage"], "AWS::SecretsManager::Secret")
    (read,) = allowing(statements(synthesized.templates["download"], "DownloadRole"), "secretsmanager:GetSecretValue")
    assert render(read["Resource"]).endswith(":secret:team/imagenet-login-??????")
    script = user_data(synthesized.templates["download"], "AWS::EC2::Instance")
    assert '"source_secret":"team/imagenet-login"' in script


def test_bucket_is_private_tls_only_encrypted_logged_and_kept(default: Synthesized) -> None:
    t = default.templates["storage"]
    buckets = resources(t, "AWS::S3::Bucket")
    data = next(b for b in buckets.values() if "LoggingConfiguration" in b["Properties"])
    props = data["Properties"]
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = props["LifecycleConfiguration"]["Rules"]
    assert {"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}, "Status": "Enabled"} in rules
    assert data["DeletionPolicy"] == "Retain"
    for policy in resources(t, "AWS::S3::BucketPolicy").values():
        deny = policy["Properties"]["PolicyDocument"]["Statement"][0]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(resources(t, "AWS::S3::BucketPolicy")) == 2


def test_parameters_exist_from_the_first_deploy_holding_nothing_yet(default: Synthesized) -> None:
    from bootstrap.contract.parameters import NOT_STARTED, published_snapshot

    found = {p["Name"]: p["Value"] for p in map(lambda r: r["Properties"],
             resources(default.templates["storage"], "AWS::SSM::Parameter").values())}  # fmt: skip
    assert set(found) == {"/imagenet-staging/snapshot", "/imagenet-staging/status"}
    assert published_snapshot(found["/imagenet-staging/snapshot"]) is None  # every reader sees "not published"
    assert json.loads(found["/imagenet-staging/status"]) == NOT_STARTED


def test_alerts_reach_a_tls_only_topic_from_every_stack(default: Synthesized, variant: Synthesized) -> None:
    storage, download = default.templates["storage"], default.templates["download"]
    (topic,) = resources(storage, "AWS::SNS::Topic").values()
    assert topic["Properties"]["TopicName"] == "imagenet-staging-alerts"
    (policy,) = resources(storage, "AWS::SNS::TopicPolicy").values()
    (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert not resources(storage, "AWS::SNS::Subscription")
    (email,) = resources(variant.templates["storage"], "AWS::SNS::Subscription").values()
    assert (email["Properties"]["Protocol"], email["Properties"]["Endpoint"]) == ("email", "ops@example.com")
    (errors,) = resources(download, "AWS::Logs::MetricFilter").values()
    assert errors["Properties"]["FilterPattern"] == '"ERROR"'  # the level field of an error line
    alarms = {a["Properties"]["MetricName"]: a for a in resources(download, "AWS::CloudWatch::Alarm").values()}
    assert set(alarms) == {"DownloadErrors", "Heartbeat"}
    for alarm in alarms.values():
        assert render(alarm["Properties"]["AlarmActions"][0]).endswith(
            ":sns:${AWS::Region}:${AWS::AccountId}:imagenet-staging-alerts"
        )  # by name, no export


def test_source_secret_holds_no_credential(default: Synthesized, variant: Synthesized) -> None:
    secret = one(default.templates["storage"], "AWS::SecretsManager::Secret")
    assert "SecretString" not in secret and secret["Name"] == "imagenet-staging/source-credentials"
    assert json.loads(secret["GenerateSecretString"]["SecretStringTemplate"]) == {"username": "", "access_key": ""}
    assert not resources(variant.templates["storage"], "AWS::SecretsManager::Secret")  # an s3:// source needs none


def test_dlm_policy_targets_only_the_data_volume(default: Synthesized, variant: Synthesized) -> None:
    details = one(default.templates["storage"], "AWS::DLM::LifecyclePolicy")["PolicyDetails"]
    assert details["TargetTags"] == [{"Key": tags.DATA_VOLUME, "Value": "imagenet-staging"}]
    (schedule,) = details["Schedules"]
    assert schedule["CreateRule"] == {"Interval": 24, "IntervalUnit": "HOURS"}
    assert schedule["RetainRule"] == {"Count": 3}
    # never the dataset's tags: attach and the teardown must not take a half-written volume for the dataset
    assert schedule["CopyTags"] is False and schedule["TagsToAdd"] == [
        {"Key": tags.SCHEDULED, "Value": "imagenet-staging"}
    ]
    assert "CrossRegionCopyRules" not in schedule and "FastRestoreRule" not in schedule
    (variant_schedule,) = one(variant.templates["storage"], "AWS::DLM::LifecyclePolicy")["PolicyDetails"]["Schedules"]
    assert [r["Target"] for r in variant_schedule["CrossRegionCopyRules"]] == ["us-west-2", "eu-west-1"]
    assert "FastRestoreRule" not in variant_schedule  # never on scheduled snapshots nobody restores


def test_snapshot_events_reach_the_teardown_function(default: Synthesized) -> None:
    t = default.templates["storage"]
    rules = resources(t, "AWS::Events::Rule")
    (snapshot_rule,) = [r["Properties"] for r in rules.values() if "EventPattern" in r["Properties"]]
    assert snapshot_rule["EventPattern"] == {
        "source": ["aws.ec2"],
        "detail-type": ["EBS Snapshot Notification"],
        "detail": {"event": ["createSnapshot"], "result": ["succeeded", "failed"]},
    }
    functions = resources(t, "AWS::Lambda::Function")
    target_arn = snapshot_rule["Targets"][0]["Arn"]["Fn::GetAtt"][0]
    env = functions[target_arn]["Properties"]["Environment"]["Variables"]
    assert env == teardown_environment("imagenet-staging", "/imagenet-staging/snapshot", False, "ImagenetStaging")
    assert env["TAG_INSTANCE"] == tags.INSTANCE and env["HEARTBEAT_ALARM"] == "imagenet-staging-download-heartbeat"
    scheduled = [r["Properties"] for r in rules.values() if "ScheduleExpression" in r["Properties"]]
    assert [r["ScheduleExpression"] for r in scheduled] == ["rate(1 hour)"] * 2  # the janitor; the teardown sweep
    swept = {r["Targets"][0]["Arn"]["Fn::GetAtt"][0] for r in scheduled}
    assert target_arn in swept  # a lost snapshot event is made good by the same function on a schedule
    policies = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources(t, "AWS::IAM::Policy").values()
        if p["Properties"]["Roles"] == [{"Ref": functions[target_arn]["Properties"]["Role"]["Fn::GetAtt"][0]}]
    ]
    (publish,) = [
        s for statements in policies for s in statements if s["Action"] == ["ssm:GetParameter", "ssm:PutParameter"]
    ]
    assert render(publish["Resource"]).endswith(":parameter/imagenet-staging/snapshot")
    alarms = {a["Properties"]["MetricName"]: a["Properties"] for a in resources(t, "AWS::CloudWatch::Alarm").values()}
    assert (alarms["SnapshotFailed"]["Namespace"], alarms["SnapshotFailed"]["Threshold"]) == ("ImagenetStaging", 1)
    assert alarms["Errors"]["Dimensions"][0]["Value"] == {"Ref": target_arn}  # the teardown function failing
    (topic,) = resources(t, "AWS::SNS::Topic")
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": topic}]
    teardown = statements(t, "SnapshotTeardownRole")
    (terminate,) = allowing(teardown, "ec2:TerminateInstances")
    assert terminate["Condition"] == {"StringEquals": {f"aws:ResourceTag/{tags.PIPELINE}": "imagenet-staging"}}
    (delete_snapshot,) = allowing(teardown, "ec2:DeleteSnapshot")  # the DLM policy's only, never the dataset's
    assert delete_snapshot["Condition"] == {"StringEquals": {f"aws:ResourceTag/{tags.SCHEDULED}": "imagenet-staging"}}
    (delete,) = allowing(statements(t, "SnapshotTeardownJanitorRole"), "ec2:DeleteVolume")
    assert delete["Condition"] == terminate["Condition"]


# -- fleet ----------------------------------------------------------------------------


def test_gpu_role_creates_attaches_and_deletes_only_what_it_should(default: Synthesized) -> None:
    stmts = statements(default.templates["fleet"], "GpuRole")
    ours = {f"aws:ResourceTag/{tags.PIPELINE}": "imagenet-staging"}
    from_snapshot, new_volume = allowing(stmts, "ec2:CreateVolume")
    assert render(from_snapshot["Resource"]).endswith(":snapshot/*") and from_snapshot["Condition"] == {
        "StringEquals": ours
    }
    assert new_volume["Condition"] == {"StringEquals": {f"aws:RequestTag/{tags.PIPELINE}": "imagenet-staging"}}
    on_gpus, on_ours = allowing(stmts, "ec2:AttachVolume")
    assert render(on_gpus["Resource"]).endswith(":instance/*")
    # documented keys only (aws:ARN is not a condition key of these actions): the pipeline's GPU instances
    assert on_gpus["Condition"] == {"StringEquals": {**ours, f"aws:ResourceTag/{tags.ROLE}": tags.GPU}}
    assert "ec2:ModifyInstanceAttribute" in on_gpus["Action"]  # DeleteOnTermination
    assert render(on_ours["Resource"]).endswith(":volume/*") and on_ours["Condition"] == {"StringEquals": ours}
    assert allowing(stmts, "ec2:DeleteVolume") == [on_ours]
    (kms,) = allowing(stmts, "kms:CreateGrant")  # a customer-managed default EBS key, used through EC2 only
    assert kms["Condition"]["StringEquals"]["kms:ViaService"] == {"Fn::Join": ["", ["ec2.", {"Ref": "AWS::Region"},
                                                                                 ".amazonaws.com"]]}  # fmt: skip
    data = one(default.templates["fleet"], "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]
    instance_tags = next(t["Tags"] for t in data["TagSpecifications"] if t["ResourceType"] == "instance")
    assert {"Key": tags.ROLE, "Value": tags.GPU} in instance_tags  # the tag `teardown fleet` and the role rely on


def test_gpu_user_data_runs_the_attach_agent(default: Synthesized, variant: Synthesized) -> None:
    script = user_data(default.templates["fleet"], "AWS::EC2::LaunchTemplate")
    check_golden("userdata-gpu.txt", shell=True, rendered=script)
    for synthesized, initialization_rate in ((default, "auto"), (variant, 200)):
        line = user_data(synthesized.templates["fleet"], "AWS::EC2::LaunchTemplate").splitlines()[-1]
        argv = shlex.split(line.split("-m bootstrap ", 1)[1])
        args = build_parser().parse_args(argv)  # the flags exist: argparse would exit on an unknown one
        config = synthesized.config
        assert args.stage == "attach" and args.snapshot_parameter == config.snapshot_parameter
        assert (args.pipeline, str(args.mount_point), args.volume_type) == (config.name, "/data", "gp3")
        assert (args.iops, args.throughput) == (config.restored_iops, config.restored_throughput)
        assert args.initialization_rate == initialization_rate and args.shutdown_on_failure
        assert args.local_nvme is (synthesized is variant)


def test_the_user_s_commands_run_once_the_dataset_is_mounted(tmp_path: Path) -> None:
    commands = ["nvidia-smi > /var/log/gpus.txt", "su ec2-user -c 'python train.py --data /data/recordio' &"]
    synthesized = synth(tmp_path / "cdk.out", gpu_user_data=json.dumps(commands))  # as `-c gpu_user_data=[...]`
    script = user_data(synthesized.templates["fleet"], "AWS::EC2::LaunchTemplate")
    lines = script.splitlines()
    assert lines[-2:] == commands
    assert "-m bootstrap attach" in lines[-4] and lines[-3].startswith("# the context's gpu_user_data")
    plain = re.sub(r"\$\{[A-Za-z0-9:.]+\}", "RESOLVED", script)
    checked = subprocess.run(
        ["shellcheck", "-s", "bash", "-"], input=plain, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout


def test_launch_template_and_optional_group(default: Synthesized, variant: Synthesized) -> None:
    data = one(default.templates["fleet"], "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]
    assert data["InstanceType"] == "g5.xlarge" and data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    parameters = default.templates["fleet"]["Parameters"].values()
    assert default.config.gpu_ami_parameter in [p.get("Default") for p in parameters]  # resolved at deploy time
    assert set(default.templates["fleet"]["Outputs"]) >= {"LaunchTemplateId", "LaunchTemplateVersion"}
    assert not resources(default.templates["fleet"], "AWS::AutoScaling::AutoScalingGroup")
    group = one(variant.templates["fleet"], "AWS::AutoScaling::AutoScalingGroup")
    assert (group["MinSize"], group["DesiredCapacity"]) == ("0", "0")


# -- whole templates ------------------------------------------------------------------


def test_whole_templates_match_the_snapshot(default: Synthesized) -> None:
    """One snapshot of everything, asset hashes blanked; review the diff, then rerun with UPDATE_GOLDEN=1."""
    check_golden("cdk-templates.json", json.dumps(default.templates, indent=1, sort_keys=True) + "\n")


def test_cfn_lint_finds_nothing(default: Synthesized, variant: Synthesized) -> None:
    templates = [str(p) for s in (default, variant) for p in sorted(s.outdir.glob("*.template.json"))]
    assert len(templates) == 8
    result = subprocess.run([str(VENV_BIN / "cfn-lint"), "--", *templates], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_cdk_nag_reports_an_unacknowledged_finding(tmp_path: Path) -> None:
    """The plugin is wired in: an app that breaks a rule does not synthesize (so the synths above prove zero)."""
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3

    from cdk_app.app import build

    app = cdk.App(context=cdk_json_context(), outdir=str(tmp_path))
    stacks = build(app, StagingConfig())
    s3.Bucket(stacks["storage"], "Careless")  # no TLS policy, no access logs
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    failing = {
        (v["ruleName"], c["constructPath"])
        for p in report["pluginReports"]
        for v in p["violations"]
        for c in v["violatingConstructs"]
    }
    assert failing == {
        ("AwsSolutions-S1", "imagenet-staging-storage/Careless/Resource"),
        ("AwsSolutions-S10", "imagenet-staging-storage/Careless/Resource"),
    }


@pytest.mark.slow
def test_the_cdk_cli_synthesizes_offline_and_refuses_bad_context(tmp_path: Path) -> None:
    """The front door: `cdk synth` from cdk.json, with no credentials and no network, as a user would first run it."""
    ok = cli_synth(tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "ok").glob("*.template.json")) == [
        f"imagenet-staging-{role}.template.json" for role in ("download", "fleet", "network", "storage")]  # fmt: skip
    assert "WARNING" not in ok.stderr and "ERROR" not in ok.stderr  # nag findings and CDK warnings alike
    bad = cli_synth(tmp_path / "bad", "data_volume_gib=100")
    assert bad.returncode != 0
    assert "context key 'data_volume_gib': sc1 volumes are 125-16384 GiB" in bad.stderr


def check_golden(name: str, rendered: str, *, shell: bool = False) -> None:
    """Compare with tests/golden/``name`` (asset hashes blanked); ``shell``: also run shellcheck on the script."""
    golden, text = GOLDEN / name, blank_hashes(rendered)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"{name} changed; review, then rerun with UPDATE_GOLDEN=1 ({golden})"
    if shell:
        # references (${Logical.Id}, ${AWS::Region}) are filled in by CloudFormation; shellcheck sees a word
        plain = re.sub(r"\$\{[A-Za-z0-9:.]+\}", "RESOLVED", rendered)
        result = subprocess.run(
            ["shellcheck", "-s", "bash", "-"], input=plain, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout


def test_summary_reads_back_what_would_be_deployed(default: Synthesized) -> None:
    from cdk_app.summary import render as describe_assembly

    text = describe_assembly(default.outdir)
    for expected in ("imagenet-staging-download: imagenet-staging: download instance", "volume sc1 1000 GiB encrypted",
                     "instance t2.large (unlimited credits, detailed monitoring)", "DLM policy: every 24 h, keep 3",
                     "launch template (g5.xlarge; IMDSv2 required; runs user data)",
                     "rule on EBS Snapshot Notification"):  # fmt: skip
        assert expected in text


def test_a_silent_download_instance_raises_the_heartbeat_alarm(default: Synthesized) -> None:
    """User data that fails (no unit ever runs) or a unit that gives up: no heartbeat, and missing data alarms."""
    t = default.templates["download"]
    (alarm,) = [a["Properties"] for a in resources(t, "AWS::CloudWatch::Alarm").values()
                if a["Properties"].get("MetricName") == "Heartbeat"]  # fmt: skip
    assert alarm["AlarmName"] == names.heartbeat_alarm("imagenet-staging")
    assert (alarm["TreatMissingData"], alarm["ComparisonOperator"]) == ("breaching", "LessThanThreshold")
    assert alarm["Namespace"] == names.heartbeat_metric("imagenet-staging")[0] and alarm["AlarmActions"]
    script = user_data(t, "AWS::EC2::Instance")
    body = re.search(r"cat > /opt/imagenet-staging/config.json <<'JSON'\n(.*?)\nJSON", script, re.S)
    assert body and json.loads(body.group(1))["heartbeat_alarm"] == alarm["AlarmName"]  # the run sends it


def test_a_gpu_instance_whose_user_data_fails_shuts_down() -> None:
    """The launch template terminates on shutdown, so a failed set-up stops billing (and frees its volumes)."""
    lines = (GOLDEN / "userdata-gpu.txt").read_text().splitlines()
    assert lines[1] == "set -euo pipefail" and lines[2].startswith("trap 'shutdown -h +1 ") and lines[2].endswith("ERR")


def test_redeploying_changed_code_or_settings_never_replaces_the_download_instance(tmp_path: Path) -> None:
    """A replacement would be created while the old instance still holds the data volume: "volume in use".

    CDK names an instance whose user data causes replacement after a hash of that user data; a stable logical
    id means CloudFormation updates the instance in place (user data needs a stop and start; the unit resumes).
    """
    ids = []
    for resize in (256, 128):  # a different engine setting, as a change to bootstrap/ changes the asset hash
        t = synth(tmp_path / str(resize), resize=resize).templates["download"]
        (instance_id,) = resources(t, "AWS::EC2::Instance")
        ids.append(instance_id)
    assert ids[0] == ids[1]
