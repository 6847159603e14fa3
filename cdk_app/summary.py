"""What ``cdk deploy`` would create, read back from a cloud assembly: ``python -m cdk_app.summary cdk.out``.

Reads only the templates, so it shows what was synthesized, not what the
code meant to synthesize.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Props = dict[str, Any]


def _instance(p: Props) -> str:
    credits = p.get("CreditSpecification", {}).get("CPUCredits", "no")
    return f"instance {p['InstanceType']} ({credits} credits{', detailed monitoring' if p.get('Monitoring') else ''})"


def _volume(p: Props) -> str:
    return f"volume {p.get('VolumeType', 'gp2')} {p['Size']} GiB{' encrypted' if p.get('Encrypted') else ''}"


def _launch_template(p: Props) -> str:
    data = p["LaunchTemplateData"]
    imds = "IMDSv2 required" if data.get("MetadataOptions", {}).get("HttpTokens") == "required" else "IMDSv1 allowed"
    kind = data.get("InstanceType", "instance's own")
    return f"launch template ({kind}; {imds}{'; runs user data' if 'UserData' in data else ''})"


def _dlm(p: Props) -> str:
    (schedule,) = p["PolicyDetails"]["Schedules"]
    rule = schedule["CreateRule"]
    return f"DLM policy: every {rule['Interval']} h, keep {schedule['RetainRule']['Count']}"


def _rule(p: Props) -> str:
    if "ScheduleExpression" in p:
        return f"schedule {p['ScheduleExpression']}"
    return f"rule on {', '.join(p['EventPattern'].get('detail-type', []))}"


def _bucket(p: Props) -> str:
    name = p.get("BucketName")
    logged = " with access logs" if "LoggingConfiguration" in p else ""
    return f"bucket{' (named)' if name else ''}{logged}"


HIGHLIGHTS: dict[str, Callable[[Props], str]] = {
    "AWS::EC2::Instance": _instance,
    "AWS::EC2::Volume": _volume,
    "AWS::EC2::LaunchTemplate": _launch_template,
    "AWS::DLM::LifecyclePolicy": _dlm,
    "AWS::Events::Rule": _rule,
    "AWS::S3::Bucket": _bucket,
}


def summarize(template: dict[str, Any]) -> list[str]:
    resources = template.get("Resources", {}).values()
    lines = [HIGHLIGHTS[r["Type"]](r.get("Properties", {})) for r in resources if r["Type"] in HIGHLIGHTS]
    counts = Counter(r["Type"].removeprefix("AWS::") for r in resources if not r["Type"].startswith("AWS::CDK"))
    lines.append(", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
    return lines


def stacks(assembly: Path) -> dict[str, dict[str, Any]]:
    manifest = json.loads((assembly / "manifest.json").read_text())
    found = {}
    for name, artifact in manifest["artifacts"].items():
        if artifact["type"] == "aws:cloudformation:stack":
            found[name] = json.loads((assembly / artifact["properties"]["templateFile"]).read_text())
    return found


def render(assembly: Path) -> str:
    out = []
    for name, template in stacks(assembly).items():
        out.append(f"{name}: {template.get('Description', '')}")
        for line in summarize(template):
            out.extend(textwrap.wrap(line, width=110, initial_indent="    ", subsequent_indent="      "))
    return "\n".join(out)


if __name__ == "__main__":
    print(render(Path(sys.argv[1] if len(sys.argv) > 1 else "cdk.out")))
