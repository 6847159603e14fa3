#!/bin/bash
set -euo pipefail
# Installs the bootstrap program; all the logic lives in it (python -m bootstrap --help).
dnf install -y -q python3.11 unzip amazon-cloudwatch-agent
mkdir -p /opt/imagenet-staging
aws s3 cp s3://cdk-hnb659fds-assets-${AWS::AccountId}-${AWS::Region}/<asset-hash>.zip /opt/imagenet-staging/bootstrap.zip
unzip -o -q /opt/imagenet-staging/bootstrap.zip -d /opt/imagenet-staging/bootstrap
python3.11 -m venv /opt/imagenet-staging/venv
/opt/imagenet-staging/venv/bin/pip install -q --disable-pip-version-check -r /opt/imagenet-staging/bootstrap/requirements.txt
cat > /opt/imagenet-staging/config.json <<'JSON'
{"source":"https://image-net.org/data/ILSVRC/2012","resize":256,"quality":90,"center_crop":false,"parts":1,"keep_tree":false,"data_dir":"/data","pipeline":"imagenet-staging","region":"${AWS::Region}","bucket":"imagenet-staging-${AWS::AccountId}-${AWS::Region}","prefix":"imagenet/","snapshot_parameter":"/imagenet-staging/snapshot","status_parameter":"/imagenet-staging/status","source_secret":"imagenet-staging/source-credentials","data_volume_id":"${DownloadDataVolumeFCE086C1}","data_device":"/dev/sdf"}
JSON
cat > /opt/aws/amazon-cloudwatch-agent/etc/imagenet-staging.json <<'JSON'
{"logs":{"logs_collected":{"files":{"collect_list":[{"file_path":"/var/log/imagenet-staging.log","log_group_name":"${DownloadLogs4F0F8A5C}","log_stream_name":"{instance_id}","timezone":"UTC"}]}}}}
JSON
/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:/opt/aws/amazon-cloudwatch-agent/etc/imagenet-staging.json
install -m 0644 /opt/imagenet-staging/bootstrap/systemd/imagenet-staging.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now imagenet-staging.service