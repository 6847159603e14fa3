"""The instance program shipped as a CDK S3 asset, and the few user-data lines that install it.

User data only installs and starts; every decision is made by ``python -m
bootstrap`` where tests can run it.  Nothing secret is ever written here: the
instance reads its source credentials from Secrets Manager at run time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from bootstrap.contract.names import HOME
from cdk_app.constructs.grants import allow

BOOTSTRAP = Path(__file__).resolve().parent.parent.parent / "bootstrap"


class BootstrapCode(Construct):
    """The ``bootstrap/`` package as a zip asset; ``user_data()`` installs it into ``names.HOME``."""

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        self.asset = s3_assets.Asset(self, "Asset", path=str(BOOTSTRAP), exclude=["__pycache__", "*.pyc"])

    def grant_read(self, role: iam.IRole) -> None:
        _grant_object(role, self.asset)

    def user_data(self, *, requirements: str, packages: list[str], on_failure: str | None = None) -> ec2.UserData:
        """Shell that installs Python 3.11, the bootstrap package and ``requirements`` (a file inside it).

        ``on_failure`` runs when any command fails (set -e makes every failure one).
        """
        user_data = ec2.UserData.for_linux()
        user_data.add_commands("set -euo pipefail")
        if on_failure:
            user_data.add_commands(f"trap '{on_failure}' ERR")
        user_data.add_commands(
            "# Installs the bootstrap program; all the logic lives in it (python -m bootstrap --help).",
            f"dnf install -y -q {' '.join(['python3.11', 'python3.11-pip', 'unzip', *packages])}",
            f"mkdir -p {HOME}",
            f"aws s3 cp '{self.asset.s3_object_url}' {HOME}/bootstrap.zip",
            f"unzip -o -q {HOME}/bootstrap.zip -d {HOME}/bootstrap",
            f"python3.11 -m venv {HOME}/venv",
            f"{HOME}/venv/bin/pip install -q --disable-pip-version-check -r {HOME}/bootstrap/{requirements}",
        )
        return user_data


def copy_json_asset(scope: Construct, id: str, user_data: ec2.UserData, *, role: iam.IRole, path: str,
                    value: Any) -> None:  # fmt: skip
    """Ship ``value`` as a JSON file asset and copy it to ``path`` at boot: for what may outgrow user data, which
    EC2 caps at 16 KB (a hub dataset's shard table is about 150 KB)."""
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / Path(path).name
        local.write_text(json.dumps(value, sort_keys=True, indent=1))
        asset = s3_assets.Asset(scope, id, path=str(local))  # staged (copied into the cloud assembly) right here
    _grant_object(role, asset)
    user_data.add_commands(f"aws s3 cp '{asset.s3_object_url}' {path}")


def _grant_object(role: iam.IRole, asset: s3_assets.Asset) -> None:
    """GetObject on the asset's one object (the CDK's own grant would open the whole asset bucket)."""
    allow(role, ["s3:GetObject"], [asset.bucket.arn_for_objects(asset.s3_object_key)])


def write_json(scope: Construct, user_data: ec2.UserData, path: str, value: Any) -> None:
    """Write ``value`` as JSON to ``path``; CDK tokens (a volume id, a bucket name) resolve at deploy time."""
    user_data.add_commands(f"cat > {path} <<'JSON'\n{cdk.Stack.of(scope).to_json_string(value)}\nJSON")
