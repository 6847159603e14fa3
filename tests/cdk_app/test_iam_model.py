"""The IAM checker itself: its request model agrees with the Service Authorization Reference, and it can fail.

``iam_requests`` says which resources and condition keys AWS evaluates for
each call; here every modelled operation is checked against parliament's copy
of the Service Authorization Reference (the action exists, each resource is of
a type the action lists, every required type is present, every condition key
the model supplies is one the action documents).  The evaluator is shown to
refuse what AWS refuses: a missing tag, a wrong resource, an explicit deny,
and to refuse to guess at what it does not model.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.iam import Request, Resource, Role, UnmodelledError, role_of
from tests.fixtures.iam_requests import Call, requests_for


class FakeWorld:
    def tags(self, resource_id: str) -> dict[str, str]:
        return {"imagenet-staging:pipeline": "p"} if resource_id != "vol-untagged" else {}

    def volume_at(self, instance_id: str, device: str) -> str | None:
        return "vol-1"

    def attached_instance(self, volume_id: str) -> str | None:
        return "i-1"

    def secret_arn(self, name: str, region: str) -> str:
        return f"arn:aws:secretsmanager:{region}:123456789012:secret:{name}-AbCdEf"


def ec2(operation: str, **params: str) -> Call:
    return Call("ec2", operation, {"Action": operation, **params}, "K", "us-east-1")


def s3(method: str, path: str) -> Call:
    return Call("s3", f"{method} {path.split('?', maxsplit=1)[0]}", {}, "K", "us-east-1", path=path, protocol="rest")


def rpc(service: str, operation: str, **params: Any) -> Call:
    return Call(service, operation, params, "K", "us-east-1", protocol="json")


TAGGED = {"TagSpecification.1.ResourceType": "volume", "TagSpecification.1.Tag.1.Key": "k",
          "TagSpecification.1.Tag.1.Value": "v"}  # fmt: skip
MODELLED = [  # every operation the instances and functions make
    ec2("DescribeVolumes"), ec2("DescribeSnapshots"), ec2("DescribeInstances"),
    ec2("CreateVolume", SnapshotId="snap-1", AvailabilityZone="us-east-1a", **TAGGED),
    ec2("CreateSnapshot", VolumeId="vol-1", **{k.replace("volume", "snapshot"): v for k, v in TAGGED.items()}),
    ec2("AttachVolume", VolumeId="vol-1", InstanceId="i-1", Device="/dev/sdf"),
    ec2("DetachVolume", VolumeId="vol-1"), ec2("DeleteVolume", VolumeId="vol-1"),
    ec2("DeleteSnapshot", SnapshotId="snap-1"), ec2("TerminateInstances", **{"InstanceId.1": "i-1"}),
    ec2("ModifyInstanceAttribute", InstanceId="i-1", **{"BlockDeviceMapping.1.DeviceName": "/dev/sdf",
                                                        "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true"}),
    ec2("CreateTags", **{"ResourceId.1": "i-1", "Tag.1.Key": "k", "Tag.1.Value": "v"}),
    s3("GET", "/b?list-type=2&prefix=imagenet%2F"), s3("HEAD", "/b"), s3("GET", "/b?uploads"),
    s3("GET", "/b/k"), s3("HEAD", "/b/k"), s3("PUT", "/b/k"), s3("PUT", "/b/k?partNumber=1&uploadId=u"),
    s3("POST", "/b/k?uploads"), s3("POST", "/b/k?uploadId=u"), s3("GET", "/b/k?uploadId=u"),
    s3("DELETE", "/b/k?uploadId=u"), s3("DELETE", "/b/k"),
    rpc("ssm", "GetParameter", Name="/p/snapshot"), rpc("ssm", "PutParameter", Name="/p/status"),
    rpc("secretsmanager", "GetSecretValue", SecretId="p/source-credentials"),
    rpc("monitoring", "PutMetricData", Namespace="N"), rpc("monitoring", "EnableAlarmActions", AlarmNames=["a"]),
    rpc("monitoring", "DisableAlarmActions", AlarmNames=["a"]),
]  # fmt: skip


@cache
def reference() -> dict[str, Any]:
    import parliament

    path = Path(parliament.__file__).parent / "iam_definition.json"
    return {s["prefix"]: s for s in json.loads(path.read_text())}


def resource_types(prefix: str, arn: str) -> set[str]:
    """The Service Authorization Reference's resource types whose ARN format ``arn`` fits."""
    found = set()
    for resource in reference()[prefix]["resources"]:
        head, _, last = resource["arn"].rpartition("${")  # the last variable (object key, id, name) may hold a /
        pattern = re.sub(r"\\\$\\\{\w+\\\}", "[^:/]*", re.escape(head)) + ".*" if last else re.escape(head)
        if re.fullmatch(pattern, arn):
            found.add(str(resource["resource"]))
    assert found, f"{arn} matches no {prefix} resource type"
    return found


def _check(request: Request) -> list[str]:
    prefix, action = request.action.split(":")
    privileges = {p["privilege"]: p for p in reference()[prefix]["privileges"]}
    assert action in privileges, f"{request.action} is not an action"
    types = {r["resource_type"].rstrip("*"): r for r in privileges[action]["resource_types"]}
    required = {t.rstrip("*") for t in (r["resource_type"] for r in privileges[action]["resource_types"])
                if t.endswith("*")}  # fmt: skip
    problems, seen = [], set()
    for resource in request.resources:
        kinds = {""} if resource.arn == "*" else resource_types(prefix, resource.arn)
        kind = next(iter(sorted(kinds & set(types))), "")
        seen.add(kind)
        if not kinds & set(types):
            problems.append(f"{request.action} does not take a {kind or 'no'} resource ({resource.arn})")
    if missing := required - seen:
        problems.append(f"{request.action} needs {sorted(missing)}")
    documented = {key for r in types.values() for key in r["condition_keys"]}
    for key in request.context:
        generic = re.sub(r"/.+", "/${TagKey}", key) if key.startswith("aws:RequestTag/") else key
        if generic not in documented and not key.startswith("aws:SecureTransport"):
            problems.append(f"{request.action} documents no condition key {key}")
    return problems


@pytest.mark.parametrize("call", MODELLED, ids=lambda c: f"{c.service}:{c.operation}")
def test_the_request_model_agrees_with_the_service_authorization_reference(call: Call) -> None:
    requests = requests_for(call, FakeWorld())
    assert requests
    problems = [p for r in requests for p in _check(r)]
    assert not problems, problems


def test_tag_on_create_is_also_create_tags_with_the_create_action() -> None:
    (create, tag) = requests_for(MODELLED[3], FakeWorld())
    assert create.action == "ec2:CreateVolume" and [r.arn for r in create.resources] == [
        "arn:aws:ec2:us-east-1:123456789012:volume/*", "arn:aws:ec2:us-east-1::snapshot/snap-1"]  # fmt: skip
    assert tag.action == "ec2:CreateTags" and tag.context["ec2:CreateAction"] == ("CreateVolume",)
    assert create.context["aws:RequestTag/k"] == ("v",)


def test_an_operation_that_is_not_modelled_is_refused() -> None:
    with pytest.raises(UnmodelledError, match="no resource model for ec2:RunInstances"):
        requests_for(ec2("RunInstances"), FakeWorld())


def _role(*statements: dict[str, Any]) -> Role:
    return role_of("r", "K", [{"Version": "2012-10-17", "Statement": list(statements)}])


DELETE_OURS = {"Effect": "Allow", "Action": "ec2:DeleteVolume", "Resource": "arn:aws:ec2:*:*:volume/*",
               "Condition": {"StringEquals": {"aws:ResourceTag/imagenet-staging:pipeline": "p"}}}  # fmt: skip


def test_the_evaluator_refuses_what_aws_refuses() -> None:
    role = _role(DELETE_OURS)
    (ours,) = requests_for(ec2("DeleteVolume", VolumeId="vol-1"), FakeWorld())
    (untagged,) = requests_for(ec2("DeleteVolume", VolumeId="vol-untagged"), FakeWorld())
    (other,) = requests_for(ec2("DetachVolume", VolumeId="vol-1"), FakeWorld())
    assert role.denial(ours) is None
    assert "no identity-based policy allows the ec2:DeleteVolume" in str(role.denial(untagged))
    assert "ec2:DetachVolume" in str(role.denial(other))
    deny = {"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}
    assert "explicit deny" in str(_role(DELETE_OURS, deny).denial(ours))


def test_every_resource_of_a_request_needs_an_allow() -> None:
    """AttachVolume is authorized on the instance and the volume: allowing one is not enough."""
    role = _role({"Effect": "Allow", "Action": "ec2:AttachVolume", "Resource": "arn:aws:ec2:*:*:volume/*"})
    (attach,) = requests_for(MODELLED[5], FakeWorld())
    assert "instance/i-1" in str(role.denial(attach))


def test_wildcards_and_negated_operators() -> None:
    role = _role({"Effect": "Allow", "Action": "s3:List*", "Resource": "arn:aws:s3:::b",
                  "Condition": {"StringLike": {"s3:prefix": ["imagenet/*"]}}})  # fmt: skip
    assert role.denial(requests_for(MODELLED[12], FakeWorld())[0]) is None
    no_prefix = Request("s3:ListBucket", (Resource("arn:aws:s3:::b"),))
    assert role.denial(no_prefix) is not None  # a missing key never satisfies a positive operator
    not_other = _role({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
                       "Condition": {"StringNotEquals": {"s3:prefix": "secret/"}}})  # fmt: skip
    assert not_other.denial(no_prefix) is None


@pytest.mark.parametrize("statement", [
    {"Effect": "Allow", "NotAction": "ec2:*", "Resource": "*"},
    {"Effect": "Allow", "Action": "ec2:*", "Resource": "*", "Condition": {"ArnLike": {"aws:SourceArn": "x"}}},
    {"Effect": "Allow", "Action": "ec2:*", "Resource": "*", "Condition": {"StringEquals": {"aws:ARN": "x"}}},
    {"Effect": "Allow", "Action": "ec2:*", "Resource": "*",
     "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": "x"}}},
    {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/${aws:username}/*"},
])  # fmt: skip
def test_what_the_evaluator_does_not_model_is_an_error_not_a_pass(statement: dict[str, Any]) -> None:
    with pytest.raises(UnmodelledError):
        _role(statement)
