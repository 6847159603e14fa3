"""checkov's CloudFormation checks on the synthesized templates: every finding fixed or skipped with a reason.

checkov runs from its own venv (``.venv-checkov``; ``make deps`` installs it)
with ``--skip-download``, so it never reaches Prisma Cloud.  A skip lives in
the resource's ``checkov`` metadata, written next to the construct it
excuses (``cdk_app/constructs/nag.py: accept_checkov``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.fixtures.cdk_synth import ROOT, Synthesized

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def checkov(directory: Path) -> dict[str, Any]:
    assert CHECKOV.exists(), "checkov is not installed: run `make deps`"
    done = subprocess.run([str(CHECKOV), "-d", str(directory), "--framework", "cloudformation",
                           "--compact", "--skip-download", "-o", "json"], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.stdout.strip(), done.stderr
    found = json.loads(done.stdout)
    reports = found if isinstance(found, list) else [found]
    (report,) = [r for r in reports if r.get("check_type") == "cloudformation"] or [{"results": {}, "summary": {}}]
    assert "Traceback" not in done.stderr, done.stderr
    return dict(report)


def test_no_checkov_finding_is_left_unexplained(default_synth: Synthesized) -> None:
    report = checkov(default_synth.outdir)
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in report["results"].get("failed_checks", [])]
    assert not failed, "\n".join(failed)
    assert report["summary"]["resource_count"] >= 50 and report["summary"]["passed"] > 100  # it really ran
    skipped = report["results"].get("skipped_checks", [])
    reasons = [s["check_result"].get("suppress_comment", "") for s in skipped]
    assert skipped and all(len(r) > 40 for r in reasons), "every skip says why"


def test_checkov_would_catch_an_unencrypted_volume(tmp_path: Path) -> None:
    template = {"Resources": {"Data": {"Type": "AWS::EC2::Volume",
                                       "Properties": {"AvailabilityZone": "us-east-1a", "Size": 8}}}}  # fmt: skip
    (tmp_path / "t.template.json").write_text(json.dumps(template))
    failed = {f["check_id"] for f in checkov(tmp_path)["results"].get("failed_checks", [])}
    assert "CKV_AWS_3" in failed  # "Ensure all data stored in the EBS is securely encrypted"
