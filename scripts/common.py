"""What every operator command shares: its errors, the deployed config, AWS clients, the published snapshot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bootstrap.common.errors import BootstrapError, ConfigError
from bootstrap.contract.parameters import read_published
from cdk_app.config import StagingConfig, from_context


class OperatorError(BootstrapError):
    """An operator command could not do what was asked; the message says why."""


def deployed_config(path: Path = Path("cdk.json")) -> StagingConfig:
    """The CDK context `cdk deploy` used (./cdk.json), so the defaults name what was deployed; flags override."""
    try:
        context = json.loads(path.read_text()).get("context", {})
    except FileNotFoundError:
        return StagingConfig()
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    try:
        return from_context(context)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def add_pipeline_args(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    parser.add_argument("--pipeline", default=deployed.name, help="default: 'name' in ./cdk.json")
    parser.add_argument("--snapshot-parameter", default=deployed.snapshot_parameter)
    parser.add_argument("--region")


def clients(args: argparse.Namespace, *services: str) -> list[Any]:
    from bootstrap.common.aws import client

    return [client(name, region=args.region) for name in services]


def require_published(ssm: Any, name: str) -> dict[str, Any]:
    published = read_published(ssm, name)
    if published is None:
        raise OperatorError(f"{name} holds no snapshot yet: the download instance has not published one "
                            "(python -m scripts status shows where it is)")  # fmt: skip
    return published
