"""Read a JUnit XML report (as pytest writes it) into test outcomes, messages and properties."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.errors import UsageError

log = logging.getLogger(__name__)

SPLAT_PROPERTY = "splat"
SESSION_SPLAT_PROPERTY = "session_splat"
SESSION = "<session>"
"""Where a session-level splat (testsuite property) is reported."""

PASS, FAIL, ERROR, SKIP, XFAIL = "pass", "fail", "error", "skip", "xfail"
_BADNESS = {ERROR: 4, FAIL: 3, SKIP: 1, XFAIL: 1, PASS: 0}


class JUnitError(UsageError):
    """A JUnit file that cannot be read or is not a JUnit report."""


@dataclass
class CaseResult:
    """One ``<testcase>``."""

    id: str
    classname: str
    name: str
    outcome: str
    message: str = ""
    time: float = 0.0
    properties: dict[str, list[str]] = field(default_factory=dict)

    @property
    def splats(self) -> list[str]:
        return self.properties.get(SPLAT_PROPERTY, [])


@dataclass
class JUnitReport:
    """All test cases of one report, by id (``classname::name``), and the suite properties."""

    path: Path
    cases: dict[str, CaseResult] = field(default_factory=dict)
    suite_properties: dict[str, list[str]] = field(default_factory=dict)

    def splat_locations(self) -> dict[str, list[str]]:
        """Splat fingerprint -> the test ids (or SESSION) where it was recorded."""
        where: dict[str, list[str]] = {}
        for value in self.suite_properties.get(SESSION_SPLAT_PROPERTY, []):
            where.setdefault(splat_key(value), []).append(SESSION)
        for case in self.cases.values():
            for value in case.splats:
                where.setdefault(splat_key(value), []).append(case.id)
        return where


def splat_key(value: str) -> str:
    """The fingerprint part of a ``kind: fingerprint`` property value."""
    value = value.strip()
    return value.split(": ", 1)[1].strip() if ": " in value else value


def _properties(elem: ET.Element) -> dict[str, list[str]]:
    props: dict[str, list[str]] = {}
    for container in elem.findall("properties"):
        for prop in container.findall("property"):
            name = prop.get("name")
            if not name:
                continue
            value = prop.get("value")
            if value is None:
                value = (prop.text or "").strip()
            props.setdefault(name, []).append(value)
    return props


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag, outcome in (("error", ERROR), ("failure", FAIL), ("skipped", SKIP)):
        child: Optional[ET.Element] = case.find(tag)
        if child is None:
            continue
        message = child.get("message") or (child.text or "").strip()
        if outcome == SKIP and (child.get("type") or "") == "pytest.xfail":
            outcome = XFAIL
        return outcome, message.strip()
    return PASS, ""


def read_junit(path: Path) -> JUnitReport:
    """Parse ``path``; raise JUnitError with a one-line message when it cannot be used."""
    path = Path(path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise JUnitError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise JUnitError(f"cannot read {path}: it is a directory") from None
    except OSError as err:
        raise JUnitError(f"cannot read {path}: {err.strerror or err}") from None
    except ET.ParseError as err:
        raise JUnitError(f"{path} is not valid XML ({err})") from None
    root = tree.getroot()
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitError(f"{path} is not a JUnit report (root element <{root.tag}>)")
    report = JUnitReport(path=path)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        for name, values in _properties(suite).items():
            report.suite_properties.setdefault(name, []).extend(values)
        for case in suite.findall("testcase"):
            classname = case.get("classname") or ""
            name = case.get("name") or ""
            case_id = f"{classname}::{name}" if classname else name
            outcome, message = _outcome(case)
            try:
                seconds = float(case.get("time") or 0)
            except ValueError:
                seconds = 0.0
            result = CaseResult(case_id, classname, name, outcome, message, seconds, _properties(case))
            old = report.cases.get(case_id)
            if old is not None:
                log.debug("%s: %s appears twice; keeping the worse outcome", path, case_id)
                if _BADNESS[old.outcome] >= _BADNESS[outcome]:
                    old.properties.setdefault(SPLAT_PROPERTY, []).extend(result.splats)
                    continue
                result.properties.setdefault(SPLAT_PROPERTY, []).extend(old.splats)
            report.cases[case_id] = result
    return report
