"""checkov -d infra --framework bicep: no failed check; every skip is an
inline `checkov:skip=CKV_...: reason` comment with a real reason, and every
skip comment still matches a check checkov actually skipped."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from conftest import INFRA, bicep_files

SKIP_COMMENT = re.compile(r"//\s*checkov:skip=(CKV2?_[A-Z]+_\d+)(.*)$")


@lru_cache(maxsize=None)
def checkov_results() -> dict:
    checkov = Path(sys.executable).with_name("checkov")
    proc = subprocess.run(
        [str(checkov), "-d", str(INFRA), "--framework", "bicep", "--output", "json",
         "--skip-download"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one entry per framework
        (report,) = [r for r in report if r.get("check_type") == "bicep"]
    return report


def test_checkov_reports_no_failed_check() -> None:
    report = checkov_results()
    failed = [f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']}"
              for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 0


def _skip_comments() -> list[tuple[str, str, str]]:
    found = []
    for path in bicep_files():
        for line in path.read_text().splitlines():
            m = SKIP_COMMENT.search(line.strip())
            if m:
                found.append((path.name, m.group(1), m.group(2)))
    return found


def test_every_skip_is_justified_inline() -> None:
    for file, check, rest in _skip_comments():
        assert rest.startswith(":"), f"{file} {check}: skip without ': reason'"
        assert len(rest[1:].strip()) >= 40, f"{file} {check}: reason too short"


def test_no_stale_skip_comments() -> None:
    skipped = {(Path(c["file_path"]).name, c["check_id"])
               for c in checkov_results()["results"]["skipped_checks"]}
    comments = {(file, check) for file, check, _ in _skip_comments()}
    assert comments == skipped
