#!/bin/bash
set -euo pipefail
# Installs the bootstrap program; all the logic lives in it (python -m bootstrap --help).
dnf install -y -q python3.11 unzip
mkdir -p /opt/imagenet-staging
aws s3 cp s3://cdk-hnb659fds-assets-${AWS::AccountId}-${AWS::Region}/<asset-hash>.zip /opt/imagenet-staging/bootstrap.zip
unzip -o -q /opt/imagenet-staging/bootstrap.zip -d /opt/imagenet-staging/bootstrap
python3.11 -m venv /opt/imagenet-staging/venv
/opt/imagenet-staging/venv/bin/pip install -q --disable-pip-version-check -r /opt/imagenet-staging/bootstrap/requirements-attach.txt
cd /opt/imagenet-staging && /opt/imagenet-staging/venv/bin/python -m bootstrap attach --pipeline imagenet-staging --snapshot-parameter /imagenet-staging/snapshot --mount-point /data --volume-type gp3 --shutdown-on-failure --iops 3000 --throughput 125