"""A JUnit file for runs that failed before any test ran (build error, no boot), so CI always gets a report.

pytest's own writer produces the JUnit of every run that reaches pytest (it keeps ``-k``, ``--lf`` and
``record_property`` working); this module covers the runs that never get that far, with the junit-xml package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from junit_xml import TestCase, TestSuite, to_xml_report_string


def write_infra_failure(path: Path, stage: str, message: str, details: str, properties: Mapping[str, str]) -> None:
    """Write a JUnit file with one errored testcase naming the stage that failed."""
    case = TestCase(name=stage, classname="kvmh.infrastructure")
    case.add_error_info(message=message, output=details or message, error_type="infrastructure")
    suite = TestSuite("kvmh", [case], properties=dict(properties))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_xml_report_string([suite]))
