"""``cdk synth`` / ``cdk deploy`` entry point: read the context once, build the four stacks, check them with cdk-nag."""

from __future__ import annotations

import os
import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from bootstrap.contract import tags
from cdk_app.config import ConfigError, StagingConfig, from_context
from cdk_app.stacks.download import DownloadStack
from cdk_app.stacks.fleet import FleetStack
from cdk_app.stacks.network import NetworkStack
from cdk_app.stacks.storage import StorageStack


def environment(config: StagingConfig) -> cdk.Environment | None:
    """The context's account/region, else the CLI's (CDK_DEFAULT_*); none at all means an environment-agnostic synth."""
    account = config.account or os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = config.region or os.environ.get("CDK_DEFAULT_REGION")
    if config.vpc_id and not (account and region):
        raise ConfigError("context key 'vpc_id': looking a VPC up needs 'account' and 'region' (or AWS credentials)")
    return cdk.Environment(account=account, region=region) if account or region else None


def build(app: cdk.App, config: StagingConfig) -> dict[str, cdk.Stack]:
    env = environment(config)
    prefix = config.name
    network = NetworkStack(
        app,
        f"{prefix}-network",
        vpc_id=config.vpc_id,
        subnet_type=config.subnet_type,
        vpc_endpoints=config.vpc_endpoints,
        env=env,
        description=f"{prefix}: VPC and security groups (long-lived)",
    )
    storage = StorageStack(
        app,
        f"{prefix}-storage",
        config=config,
        env=env,
        description=f"{prefix}: backup bucket, source secret, snapshot lifecycle and teardown (long-lived)",
    )
    download = DownloadStack(
        app,
        f"{prefix}-download",
        config=config,
        network=network,
        storage=storage,
        env=env,
        description=f"{prefix}: download instance and data volume (ephemeral)",
    )
    fleet = FleetStack(
        app, f"{prefix}-fleet", config=config, network=network, env=env, description=f"{prefix}: GPU launch template"
    )
    stacks: dict[str, cdk.Stack] = {"network": network, "storage": storage, "download": download, "fleet": fleet}
    for stack in stacks.values():
        cdk.Tags.of(stack).add(tags.PIPELINE, config.name)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stacks


def main() -> None:
    app = cdk.App()
    try:
        config = from_context(app.node.get_all_context())
        build(app, config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.synth()


if __name__ == "__main__":
    main()
